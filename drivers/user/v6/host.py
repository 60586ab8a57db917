"""The IPv6 side of the user netdev: the router and the NAT wired behind the gateway's port,
and the host sockets they need.

Owns, for one user netdev with IPv6 enabled (``ipv6=``, QEMU's quirk kept in
:func:`.families_enabled`): the :class:`~.Ipv6Router` (NDP, RAs with prefix and
RDNSS, ICMPv6 echo, DHCPv6), the :class:`~.nat.Nat6` (UDP NAT, DNS relay, TCP policy) and
every host fd they use - UDP flow sockets (:class:`..udpflows.UdpFlowSockets` with
:data:`..udpflows.UDP6`, shared with :mod:`..v4.host`: ``AF_INET6``, ``IPV6_RECVERR``), DNS upstream
sockets for the IPv6 relay (one per upstream family), and the ICMPv6 echo sockets
(:class:`..hostecho.EchoSockets` with :data:`ECHO6`, shared with :mod:`..v4.host`: a ping socket
per echo flow, or one raw ICMPv6 socket, or none - :func:`..hostsock.icmp_mode`).

Wiring into the gateway (:class:`~..v4.router.Gateway`, which owns the port's one input pass)
and the netdev's contract (:mod:`..endpoint`): Ethernet type 0x86DD is registered in
``eth_handlers`` (:meth:`Ipv6Service.input`), the router's MACs (``52:56:xx``) are
accepted by the gateway's MAC filter (:meth:`~..v4.router.Gateway.accept_mac`; the router
filters again: multicast, or one of its MACs); the router writes its frames and events
straight into the netdev's outbox, and this object is one entry of the netdev's
deadlines (:meth:`~Ipv6Service.on_deadline` runs the router's and the NAT's timers). The
router and the NAT write their host actions into that outbox too, as classes of the IPv6
side's own (:data:`ACTIONS`); the client's one pump hands them to :meth:`Ipv6Service.act`,
which runs them on the fds owned here (a :class:`~..udp_nat.UdpReply` for hostfwd is the
client's to run, as on IPv4). After every entry - a guest frame, a host socket event, a call
from hostfwd - this object's deadline is asked again; host socket events end with the
client's ``flush`` (given at construction), the pump.
Guest TCP over IPv6 is the client's (its splicer is shared by both families): it
registers the router's TCP handler and asks :meth:`Nat6.tcp_target` and :meth:`Ipv6Service.l2_for`.

Invariant: every fd opened here is closed by :meth:`Ipv6Service.close` (or when its flow
ends); no guest or host input raises out of a loop callback (an unexpected exception is
reported through ``internal_error`` and the netdev keeps serving).
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, Literal

from netstack.counters import by_name
from netstack.proto import ipv6 as pk

from .. import conntable, hostsock
from ..conntable import ConnRow
from ..dns import Upstream
from ..hostecho import EchoFamily, EchoReply, EchoSockets, ErrorSink
from ..options import UserConfig
from ..tcp import Segment, ethernet_header
from ..udp_nat import UdpSend
from ..udpflows import UDP6, FlowKey, UdpFlowSockets
from ..v4.router import Gateway
from . import Ipv6Router, PingClose, PingSend, icmp6, ipv6_config
from .nat import Nat6, UdpClose6, UdpSend6, Upstream6

ETH_P_IPV6: Final = 0x86DD
#: The host actions this side runs (:meth:`Ipv6Service.act`).
ACTIONS: Final = (UdpSend6, UdpClose6, Upstream6, PingSend, PingClose)


def _echo_request(host_id: int, seq: int, payload: bytes, raw: bool) -> bytes:
    return icmp6.echo_request(host_id, seq, payload)  # the kernel fills in the checksum


def _echo_reply(data: bytes, raw: bool) -> EchoReply | None:
    return icmp6.parse_echo_reply(data)  # raw ICMPv6: no IPv6 header in front


#: The ICMPv6 echo relay's host end (the guest's hop limit is applied).
ECHO6: Final[EchoFamily[Literal["icmp6-send-failed", "icmp6-relay-unavailable"]]] = EchoFamily(
    "ICMPv6", "ping6", "icmp6-send-failed", "icmp6-relay-unavailable", hostsock.ping6_socket,
    hostsock.raw_icmp6_socket,
    _echo_request, _echo_reply, (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
)  # fmt: skip


#: What :class:`Ipv6Service` counts itself (its host sockets' failures).
Ipv6ServiceCounter = Literal[
    "dns6-send-failed", "udp6-send-dropped", "icmp6-send-failed", "icmp6-relay-unavailable"
]


class Ipv6Service:
    """Router, NAT and host sockets for the IPv6 guests of one user netdev."""

    def __init__(
        self, name: str, cfg: UserConfig, gw: Gateway, loop: asyncio.AbstractEventLoop, *,
        flush: Callable[[float], None], host_error: ErrorSink,
        internal_error: Callable[[str], None], icmp_mode: str | None = None,
        offloaded: Callable[[], bool] = lambda: False,
        udp_max_flows: int | None = None, icmp_max_flows: int | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.cfg = ipv6_config(cfg)
        self._gw = gw
        self._loop = loop
        self._flush = flush
        self._host_error = host_error
        self._internal_error = internal_error
        #: Whether the frame being input came with checksum offload / TSO (the client's).
        self._offloaded = offloaded
        self.router = Ipv6Router(self.cfg, now=loop.time(), echo_max_flows=icmp_max_flows,
                                 outbox=gw.outbox)  # fmt: skip
        self.nat = Nat6(self.router, gw.dns, udp_max_flows=udp_max_flows)
        self.router.ip_handlers[pk.IPPROTO_UDP] = self.nat.udp_in
        self._dns = hostsock.UpstreamSockets(loop, self._dns_answer, host_error)
        self.stats: Counter[Ipv6ServiceCounter] = Counter()
        self.udp = UdpFlowSockets(
            UDP6, loop, self.count, open_failed=self.nat.close_flow,
            send_failed=self._send_failed, host_error_in=self._udp_host_error,
            datagram_in=self.nat.udp_from_host, after_input=self._changed, flush=flush,
            host_error=host_error, internal_error=internal_error,
        )  # fmt: skip
        self.closed = False
        mode = icmp_mode if icmp_mode is not None else hostsock.icmp_mode(socket.AF_INET6)
        self.echo = EchoSockets(
            loop, ECHO6, mode, self.router.echo, self.count, reply=self.router.ping_reply,
            flush=flush, host_error=host_error, internal_error=internal_error,
            after_input=self._changed,
        )  # fmt: skip
        gw.eth_handlers[ETH_P_IPV6] = self.input
        for mac in self.router.macs:
            gw.accept_mac(mac)
        gw.deadlines.changed(self)

    # -- the gateway's view ----------------------------------------------------------------

    def input(self, frame: bytes, now: float) -> None:
        """An Ethernet frame of type 0x86DD from the guest side (the gateway's handler)."""
        self.router.input(frame, now, offloaded=self._offloaded())
        self._changed(now)

    def on_deadline(self, now: float) -> None:
        self.router.tick(now)
        self.nat.tick(now)

    tick = on_deadline

    def next_deadline(self) -> float | None:
        when = self.router.next_deadline()
        nat = self.nat.next_deadline()
        return when if nat is None or (when is not None and when < nat) else nat

    def _changed(self, now: float) -> None:
        """After an entry: the router's or the NAT's deadline may have moved."""
        if not self.closed:
            self._gw.deadlines.changed(self)

    def act(self, action: object, now: float) -> None:
        """Run one of the IPv6 side's host actions (:data:`ACTIONS`; the client's pump
        dispatches them here; none once closed)."""
        if self.closed:
            return
        try:
            if isinstance(action, UdpSend6):
                self.udp.send(action, now)
            elif isinstance(action, Upstream6):
                self._dns_send(action)
            elif isinstance(action, UdpClose6):
                self.udp.close_flow(action.key)
            elif isinstance(action, PingSend):
                a = action
                self.echo.send(a.key, a.host_id, a.host, a.seq, a.payload, a.hop_limit)
            elif isinstance(action, PingClose):
                self.echo.close_flow(action.key)
        except Exception:
            self._internal_error("IPv6 host action")

    @property
    def icmp_mode(self) -> str:
        return self.echo.mode

    # -- services for the client and hostfwd -----------------------------------------------

    def l2_for(self, seg: Segment) -> bytes:
        """The Ethernet header of guest-bound TCP frames of the flow ``seg`` belongs to
        (``seg`` came from the guest): to the guest's MAC, from the MAC of the address the
        guest talks to (the router's for addresses beyond the link)."""
        r = self.router
        mac = seg.mac or r.neighbors.lookup(seg.src) or bytes(6)
        return ethernet_header(mac, r.local.get(seg.dst, r.mac), True)

    def src_mac(self, address: bytes) -> bytes:
        """The MAC frames from ``address`` (ours, or one beyond the router) carry."""
        r = self.router
        return r.local.get(address, r.mac)

    def guest_mac(self, address: bytes) -> bytes | None:
        return self.router.neighbors.lookup(address)

    def solicit(self, address: bytes, now: float) -> None:
        """Ask for a guest's MAC (a Neighbor Solicitation); the answer is learnt."""
        self.router.solicit(address)
        self._changed(now)

    def udp_to_guest(
        self, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes, now: float
    ) -> None:
        self.router.udp_to_guest(src, sport, dst, dport, payload, now)
        self._changed(now)

    def link_up(self, now: float) -> None:
        """The port's link came up: advertise again from the start of the burst."""
        self.router.link_up(now)

    # -- UDP flows -------------------------------------------------------------------------

    def _send_failed(self, a: UdpSend, now: float) -> None:
        self.nat.udp_send_failed(a, now)  # an ICMPv6 error: the guest's MAC may be asked
        self._changed(now)

    def _udp_host_error(self, key: FlowKey, err: hostsock.HostError, now: float) -> None:
        self.nat.udp_host_error(key, err.host, err.port, err.icmp_type, err.code,
                                err.offender, err.head, now)  # fmt: skip

    # -- DNS upstreams of the IPv6 relay ---------------------------------------------------

    def _dns_send(self, a: Upstream) -> None:
        if not self._dns.send(a.family, a.payload, a.host, a.port):
            self.stats["dns6-send-failed"] += 1

    def _dns_answer(self, upstream: tuple[str, int], data: bytes) -> None:
        if self.closed:
            return
        now = self._loop.time()
        try:
            self.nat.dns_from_upstream(upstream, data, now)
            self._changed(now)
        except Exception:
            self._internal_error("DNS upstream (IPv6 relay)")
        self._flush(now)

    # -- views -----------------------------------------------------------------------------

    def count(self, name: Ipv6ServiceCounter) -> None:
        """Count one ``name`` (for the host sockets)."""
        self.stats[name] += 1

    def counters(self) -> dict[str, int]:
        total: Counter[str] = Counter(by_name(self.stats))
        total.update(self.router.counters())
        total.update(self.nat.counters())
        total.update(self.udp.counters())
        return dict(total)

    def conn_rows(self, now: float) -> list[ConnRow]:
        """Connection-table rows (``info usernet``, ``query-user-connections``) of the IPv6
        UDP flows and ICMPv6 echo flows, newest first per table."""
        return [
            *conntable.udp_rows(self.nat.udp.flows, self.udp.socks, now),
            *conntable.icmp_rows(self.router.echo.flows, self.echo.ping, self.echo.raw, now),
        ]

    def leases(self, now: float) -> list[dict[str, Any]]:
        return self.router.leases(now)

    def addresses_for(self, mac: bytes) -> list[tuple[str, int]]:
        return self.router.addresses_for(mac)

    # -- life ------------------------------------------------------------------------------

    def close(self) -> list[bytes]:
        """Close every fd; returns the final Router Advertisement (router lifetime 0) for
        the client to send while its peer is still attached."""
        if self.closed:
            return []
        self.closed = True
        self.udp.close()
        self.echo.close()
        self._dns.close()
        self._gw.deadlines.drop(self)
        return self.router.final_advertisement()
