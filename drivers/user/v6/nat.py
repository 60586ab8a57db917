"""The IPv6 NAT of the user netdev: guest UDP over IPv6 to host sockets, the DNS relay at the
IPv6 DNS address, and where guest TCP over IPv6 connects to.

Follows libslirp's ``udp6.c`` and ``sotranslate_out`` with the IPv4 side's
choices (:mod:`..udp_nat`, :mod:`..dns`, :class:`..nat_policy.TcpPolicy`), so a guest sees the
same network over either family:

* the host address (``ipv6-host``, fec0::2, and its fe80:: form fe80::2, which libslirp's
  ``in6_equal_host`` matches too) reaches host loopback ``::1``, and answers from ``::1``
  come back from the address the guest used;
* the DNS address (``ipv6-dns``, fec0::3, and fe80::3): UDP port 53 goes to a
  :class:`~..dns.DnsRelay` of its own (its upstream list is the IPv4 relay's, re-read at
  every use, so ``/etc/resolv.conf`` changes reach both), other ports are dropped; TCP goes
  to the first upstream (port 53 to the upstream's port), like IPv4's DNS over TCP;
* every other routable destination (global unicast: what the router hands over as beyond
  the link) is reached directly through an ``AF_INET6`` socket; the router has already
  refused multicast, link-local, in-prefix and v4-mapped destinations, and checked the hop
  limit (the host socket sends with the hop limit less one);
* ``restrict=on``: guest UDP is dropped except answers to UDP hostfwd flows (DHCPv6 is
  the router's and still answered); TCP is refused by the adapter before it asks here;
* errors the host reports on a flow socket (``IPV6_RECVERR``: destination unreachable,
  time exceeded) go back to the guest as ICMPv6 errors quoting a reconstruction of its
  datagram; a send the host refuses outright (no IPv6 route) is answered with
  "no route to destination".

One UDP host socket per guest (address, port), as on IPv4 (:class:`UdpNat6` is
:class:`~..udp_nat.UdpNat` with IPv6 address mapping); hostfwd answers are claimed by the
same :attr:`~..udp_nat.UdpNat.forward_lookup` mechanism.

Sans-IO: guest datagrams come from the router (:meth:`Nat6.udp_in` is its UDP handler) and
host events through :meth:`Nat6.udp_from_host`, :meth:`Nat6.udp_host_error`,
:meth:`Nat6.udp_send_failed` and :meth:`Nat6.dns_from_upstream`; work for the host goes
into the router's :class:`~..endpoint.Outbox` (the netdev's) as actions of their own classes
(:class:`UdpSend6`, :class:`UdpClose6`, :class:`Upstream6`: the client's pump runs them
through :meth:`.host.Ipv6Service.act`; a :class:`~..udp_nat.UdpReply` goes to hostfwd's
socket like IPv4's), frames through the router. Nothing here raises on input.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter
from typing import Any, ClassVar, Final, Literal

from netstack.counters import Family, FamilyKey, by_name
from netstack.proto import ipv6 as pk

from ..dns import DnsRelay, ToGuest, Upstream
from ..udp_nat import UdpClose, UdpNat, UdpReply, UdpSend
from . import Ipv6Router, Packet6, icmp6
from . import addr as a6

DNS_PORT: Final = 53
HOST_LOOPBACK: Final = "::1"


class UdpSend6(UdpSend):
    """:class:`~..udp_nat.UdpSend` on an IPv6 flow's host socket."""

    __slots__ = ()


class UdpClose6(UdpClose):
    """:class:`~..udp_nat.UdpClose` of an IPv6 flow's host socket."""

    __slots__ = ()


class Upstream6(Upstream):
    """:class:`~..dns.Upstream` query of the IPv6 relay (its own upstream sockets)."""

    __slots__ = ()


Action6 = UdpSend6 | UdpClose6 | UdpReply | Upstream6
#: (family, sockaddr) to connect to, or an errno to refuse with.
TcpTarget = tuple[int, tuple[Any, ...]] | int


class UdpNat6(UdpNat):
    """The UDP flow table for IPv6 guests: the host address maps to ``::1``."""

    send_action: ClassVar[type[UdpSend]] = UdpSend6
    close_action: ClassVar[type[UdpClose]] = UdpClose6

    def __init__(self, host_addr: bytes, host_forms: frozenset[bytes], **kw: Any) -> None:
        super().__init__(host_addr, **kw)
        self.host_forms = host_forms

    def host_destination(self, dst: bytes) -> str:
        return HOST_LOOPBACK if dst in self.host_forms else a6.text(dst)

    def guest_source(self, host: str) -> bytes:
        if host == HOST_LOOPBACK:
            return self.host_addr
        return a6.parse(host.partition("%")[0]) or a6.UNSPECIFIED


#: What :class:`Nat6` counts itself.
Nat6Counter = Literal[
    "restrict-dropped",
    "udp6-dns-other-port",
    "tcp6-not-routed",
    "udp6-flow-gone",
    "udp6-host-error-ignored",
]
#: ``udp6-host-error-TYPE-CODE``: ICMPv6 errors from the host for a flow, relayed, per type
#: and code.
UDP6_HOST_ERROR: Final = Family("udp6-host-error")


class Nat6:
    """UDP, DNS and the TCP policy for the IPv6 guests of one user netdev."""

    def __init__(
        self, router: Ipv6Router, dns4: DnsRelay, *, udp_max_flows: int | None = None
    ) -> None:
        cfg = router.cfg
        self.router = router
        self.cfg = cfg
        self.host_forms = frozenset({cfg.host, a6.link_local(cfg.host)})
        self.dns_forms = frozenset({cfg.dns, a6.link_local(cfg.dns)})
        kw = {} if udp_max_flows is None else {"max_flows": udp_max_flows}
        self.udp = UdpNat6(cfg.host, self.host_forms, **kw)
        self._dns4 = dns4
        self.dns = DnsRelay(dns4.upstreams)
        self._actions: list[Any] = router.outbox.actions
        self.stats: Counter[Nat6Counter | FamilyKey] = Counter()

    def _upstreams(self) -> list[tuple[int, str, int]]:
        """The upstream list, shared with the IPv4 relay (the adapter refreshes that one)."""
        self.dns.upstreams = self._dns4.upstreams
        return self.dns.upstreams

    # -- guest -> host ---------------------------------------------------------------------

    def udp_in(self, p: Packet6, now: float) -> None:
        """A guest UDP datagram (the router's UDP handler: length and checksum checked, the
        payload trimmed to the UDP length; DHCPv6 and multicast already taken)."""
        m = p.payload
        sport, dport = (m[0] << 8) | m[1], (m[2] << 8) | m[3]
        data = bytes(m[pk.UDP_HLEN :])
        if self.cfg.restrict:  # only answers to UDP hostfwd flows pass (as on IPv4)
            reply = self.udp.reply_to_forward(p.src, sport, p.dst, dport, data)
            if reply is None:
                self.stats["restrict-dropped"] += 1
            else:
                self._actions.append(reply)
            return
        if p.dst in self.dns_forms:
            if dport == DNS_PORT:
                self._upstreams()
                self._dns_results(self.dns.query(p.src, sport, data, now), now)
            else:
                self.stats["udp6-dns-other-port"] += 1
            return
        send = self.udp.outbound(p.src, sport, p.dst, dport, data, p.hop_limit - 1, now)
        if send is not None:
            self._actions.append(send)

    def _dns_results(self, results: list[Upstream | ToGuest], now: float) -> None:
        for item in results:
            if isinstance(item, ToGuest):
                src = self.cfg.dns
                if a6.is_link_local(item.client_ip):
                    src = a6.link_local(self.cfg.dns)
                self.router.udp_to_guest(src, DNS_PORT, item.client_ip, item.client_port,
                                         item.payload, now)  # fmt: skip
            else:
                self._actions.append(Upstream6(*item))

    def tcp_target(self, dst: bytes, dport: int) -> TcpTarget:
        """Where a guest's TCP connection to ``dst``:``dport`` goes (``restrict`` is the
        caller's check)."""
        if dst in self.host_forms:
            return socket.AF_INET6, (HOST_LOOPBACK, dport)
        if dst in self.dns_forms:
            upstreams = self._upstreams()
            if not upstreams:
                return errno.ECONNREFUSED
            family, host, port = upstreams[0]
            return family, (host, port if dport == DNS_PORT else dport)
        if (
            not a6.is_unicast(dst) or a6.is_link_local(dst) or self.cfg.in_prefix(dst)
            or a6.is_v4_mapped(dst) or dst in self.router.local
        ):  # fmt: skip
            self.stats["tcp6-not-routed"] += 1
            return errno.ECONNREFUSED
        return socket.AF_INET6, (a6.text(dst), dport)

    # -- host -> guest ---------------------------------------------------------------------

    def udp_from_host(
        self, key: tuple[bytes, int], host: str, port: int, payload: bytes, now: float
    ) -> None:
        """A datagram that arrived on a flow's host socket."""
        src = self.udp.inbound(key, host, port, now)
        if src is None:
            self.stats["udp6-flow-gone"] += 1
            return
        if src == self.cfg.host:
            flow = self.udp.flows.get(key)
            if flow is not None and flow.dst[0] in self.host_forms:
                src = flow.dst[0]  # answer from the form of the host address the guest used
        self.router.udp_to_guest(src, port, key[0], key[1], payload, now)

    def udp_host_error(
        self, key: tuple[bytes, int], host: str, port: int, icmp_type: int, code: int,
        offender: str | None, head: bytes, now: float,
    ) -> None:  # fmt: skip
        """The host reported an ICMPv6 error for a datagram sent on flow ``key`` to
        ``host:port`` (``head``: the start of that datagram's payload)."""
        if key not in self.udp.flows:
            return
        if icmp_type not in (icmp6.DST_UNREACH, icmp6.TIME_EXCEEDED):
            self.stats["udp6-host-error-ignored"] += 1  # e.g. Packet Too Big: the host fragments
            return
        self._error(key, host, port, icmp_type, code, offender, head, now)

    def udp_send_failed(self, a: UdpSend, now: float) -> None:
        """The host refused to send ``a`` (no route): the guest hears "no route"."""
        self._error(a.key, a.host, a.port, icmp6.DST_UNREACH, icmp6.UNREACH_NO_ROUTE, None,
                    a.payload, now)  # fmt: skip

    def _error(
        self, key: tuple[bytes, int], host: str, port: int, icmp_type: int, code: int,
        offender: str | None, head: bytes, now: float,
    ) -> None:  # fmt: skip
        guest_dst = self.udp.guest_source(host)
        flow = self.udp.flows.get(key)
        if flow is not None and guest_dst == self.cfg.host and flow.dst[0] in self.host_forms:
            guest_dst = flow.dst[0]
        quote = pk.quote_udp(key[0], guest_dst, key[1], port, head[:64])
        src = self.udp.guest_source(offender) if offender else guest_dst
        if not a6.is_unicast(src):
            src = self.cfg.host
        self.router.icmp_error_to(key[0], icmp_type, code, 0, quote, src=src, now=now)
        self.stats[UDP6_HOST_ERROR.key(icmp_type, code)] += 1

    def dns_from_upstream(self, source: tuple[str, int], payload: bytes, now: float) -> None:
        self._upstreams()
        answer = self.dns.answer(source, payload, now)
        if answer is not None:
            self._dns_results([answer], now)

    def close_flow(self, key: tuple[bytes, int]) -> None:
        """Forget a flow whose socket could not be opened."""
        self.udp.close(key)

    # -- timers and views ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self._upstreams()
        self._dns_results(self.dns.tick(now), now)
        self._actions.extend(self.udp.expire(now))

    def next_deadline(self) -> float | None:
        times = [t for t in (self.dns.next_deadline(), self.udp.next_deadline()) if t is not None]
        return min(times, default=None)

    def counters(self) -> dict[str, int]:
        """Drops and work, the shared machines' counters renamed (``udp-`` -> ``udp6-``,
        ``dns-`` -> ``dns6-``) so they stay apart from the IPv4 ones."""
        total: Counter[str] = Counter(by_name(self.stats))
        for part in (by_name(self.udp.counters), by_name(self.dns.counters)):
            for name, value in part.items():
                head, sep, tail = name.partition("-")
                total[f"{head}6{sep}{tail}" if head in ("udp", "dns") else name] += value
        return dict(total)
