"""Host forwarding (``hostfwd``) of the user netdev: listening host sockets towards the guest.

Follows QEMU's ``net/slirp.c`` (``slirp_hostfwd``, ``hmp_hostfwd_add``/``_remove``) and
libslirp's ``slirp_add_hostfwd``. Owns, per rule, one bound host socket:

* TCP: a listening socket (host port 0 = kernel-chosen; the real port is what ``info
  usernet`` shows); each accepted connection is handed to
  :meth:`~.tcp.TcpSplicer.forward`, which opens it towards ``guest:guest_port`` from the
  peer's guest-side address (127.0.0.1 appears as the host address, 10.0.2.2; other peers
  keep their address) and port. The guest's MAC comes from the gateway's ARP table or the
  DHCP lease of the guest address; while it is unknown the connection waits (an ARP
  request is sent, retried every :data:`MAC_RETRY` s, at most :data:`MAC_TRIES` times,
  then the host connection is closed and counted).
* UDP: a bound datagram socket; each datagram goes to ``guest:guest_port`` from the
  sender's guest-side address and port (a per-source flow), and the guest's datagrams
  back to that address and port leave from the bound socket to the sender (the NAT asks
  :meth:`HostForwarder.reply_target`, a table lookup, and hands the datagram back as a
  :class:`~.udp_nat.UdpReply` action that :meth:`HostForwarder.udp_reply` performs). At
  most :data:`UDP_FLOWS` flows per netdev are remembered (least recently used forgotten
  first).

IPv6 (netstack's extension of the rule syntax, :func:`.options.parse_hostfwd`): a rule's
host side is an ``AF_INET6`` socket (``IPV6_V6ONLY``) when its host address is bracketed,
and its guest side the guest's IPv6 address when that is; any mix works. Connections and
datagrams towards an IPv6 guest go through the netdev's IPv6 side (:mod:`.v6.host`: the
guest's MAC from its neighbor table - a Neighbor Solicitation asks while it is unknown -
UDP through its router). The guest-side source of a host peer: host loopback (127.0.0.1,
::1) and any peer of the other family appear as the host address of the guest's family
(10.0.2.2 or fec0::2); other peers keep their address. A rule towards a family the netdev
does not serve (``ipv4=off``/``ipv6=off``) fails to set up.

Deviations from QEMU: ``unix:`` rules are refused (``Could not set up host forwarding
rule``). Established connections outlive the removal of their rule (as in libslirp).
Invariant: every fd opened here is closed by :meth:`remove` or :meth:`close`; no host or
guest input raises out of a loop callback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, Literal, cast

from netstack.proto import ipv4
from netstack.proto.vnet import PLAIN_HDR

from .endpoint import Deadlines
from .options import HostFwdRule, ip_text
from .tcp import TcpSplicer, ethernet_header
from .udp_nat import UdpReply
from .v4.router import Gateway

if TYPE_CHECKING:
    from .v6.host import Ipv6Service

ACCEPT_BATCH: Final = 16
RECV_BATCH: Final = 64
MAC_RETRY: Final = 0.2
MAC_TRIES: Final = 15
UDP_FLOWS: Final = 1024
_LOOPBACK6: Final = bytes(15) + b"\x01"
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"

#: (guest address, guest port, guest-side peer address, peer port)
ReplyKey = tuple[bytes, int, bytes, int]


#: The names this module counts under (``query-netdev`` counters).
HostfwdCounter = Literal[
    "hostfwd-accept-failed",
    "hostfwd-accepted",
    "hostfwd-guest-unreachable",
    "hostfwd-internal-error",
    "hostfwd-tcp-forwarded",
    "hostfwd-udp-flow-evicted",
    "hostfwd-udp-send-failed",
    "hostfwd-udp-to-guest",
    "hostfwd-udp-to-host",
]


def _aton(host: str) -> bytes | None:
    try:
        return socket.inet_aton(host)
    except OSError:
        return None


def _pton6(host: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        return None


class Forward:
    """One bound rule."""

    __slots__ = ("guest", "rule", "sock")

    def __init__(self, rule: HostFwdRule, sock: socket.socket, guest: bytes) -> None:
        self.rule = rule
        self.sock = sock
        self.guest = guest

    @property
    def bound(self) -> tuple[str, int]:
        addr = self.sock.getsockname()
        return str(addr[0]), int(addr[1])


class _Pending:
    __slots__ = ("fwd", "local", "local_port", "sock", "tries")

    def __init__(self, fwd: Forward, sock: socket.socket, local: bytes, local_port: int) -> None:
        self.fwd = fwd
        self.sock = sock
        self.local = local
        self.local_port = local_port
        self.tries = 0


class HostForwarder:
    """Every hostfwd rule of one user netdev."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, gw: Gateway, tcp: TcpSplicer, *,
        send: Callable[[list[bytes]], None], flush: Callable[[float], None],
        log: logging.Logger, v6: Ipv6Service | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:  # fmt: skip
        self._loop = loop
        self._deadlines = deadlines if deadlines is not None else Deadlines()
        self._gw = gw
        self._v6 = v6
        self._tcp = tcp
        self._send = send
        self._flush = flush
        self._log = log
        self.forwards: list[Forward] = []
        self.stats: Counter[HostfwdCounter] = Counter()
        self._replies: OrderedDict[ReplyKey, tuple[Forward, tuple[str, int]]] = OrderedDict()
        self._pending: list[_Pending] = []
        #: When waiting connections next retry finding the guest's MAC (a deadline of the
        #: netdev's :class:`~.endpoint.Deadlines`).
        self._retry_at: float | None = None
        gw.udp.forward_lookup = self.reply_target
        if v6 is not None:
            v6.nat.udp.forward_lookup = self.reply_target

    # -- rules -----------------------------------------------------------------------------

    def add(self, rule: HostFwdRule) -> Forward:
        """Bind ``rule``; raises OSError (or ValueError for unsupported rules)."""
        if rule.unix:
            raise ValueError("unix host forwarding is not supported by netstack")
        if rule.guest_v6:
            if self._v6 is None:
                raise ValueError("IPv6 is disabled on this netdev (ipv6=off)")
            guest = socket.inet_pton(socket.AF_INET6, rule.guest_addr or "")
        else:
            if not self._gw.cfg.ipv4:
                raise ValueError("IPv4 is disabled on this netdev (ipv4=off)")
            guest = socket.inet_aton(rule.guest_addr or ip_text(self._gw.cfg.dhcp_start))
        kind = socket.SOCK_DGRAM if rule.udp else socket.SOCK_STREAM
        family = socket.AF_INET6 if rule.host_v6 else socket.AF_INET
        sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if rule.host_v6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((rule.host_addr, rule.host_port))
            if not rule.udp:
                sock.listen(128)
        except OSError:
            sock.close()
            raise
        fwd = Forward(rule, sock, guest)
        self.forwards.append(fwd)
        handler = self._udp_readable if rule.udp else self._acceptable
        self._loop.add_reader(sock.fileno(), handler, fwd)
        return fwd

    def find(self, udp: bool, host_addr: str, host_port: int) -> Forward | None:
        for fwd in self.forwards:
            addr, port = fwd.bound
            if fwd.rule.udp == udp and addr == host_addr and port == host_port:
                return fwd
        return None

    def remove(self, fwd: Forward) -> None:
        """Close the rule's socket; established TCP connections stay."""
        if fwd not in self.forwards:
            return
        self.forwards.remove(fwd)
        self._loop.remove_reader(fwd.sock.fileno())
        fwd.sock.close()
        for key in [k for k, v in self._replies.items() if v[0] is fwd]:
            del self._replies[key]
        for p in [p for p in self._pending if p.fwd is fwd]:
            self._pending.remove(p)
            p.sock.close()

    def close(self) -> None:
        for fwd in list(self.forwards):
            self.remove(fwd)
        self._retry_at = None
        self._deadlines.drop(self)
        udps = [self._gw.udp] + ([self._v6.nat.udp] if self._v6 is not None else [])
        for udp in udps:
            if udp.forward_lookup == self.reply_target:
                udp.forward_lookup = None

    def _guest_side(self, host: str, guest: bytes) -> bytes:
        """The guest-side address of host peer ``host`` talking to ``guest``: loopback and
        the other family appear as the host address of ``guest``'s family."""
        v6 = self._v6
        if len(guest) == 16 and v6 is not None:
            raw6 = _pton6(host)
            if raw6 is None or raw6 == _LOOPBACK6 or raw6[:12] == _V4_MAPPED:
                return v6.cfg.host
            return raw6
        raw = _aton(host)
        return self._gw.host_ip if raw is None or raw[0] == 127 else raw

    # -- TCP -------------------------------------------------------------------------------

    def _acceptable(self, fwd: Forward) -> None:
        if fwd not in self.forwards:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = fwd.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.stats["hostfwd-accept-failed"] += 1
                self._log.debug("hostfwd accept failed: %s", exc)
                break
            self.stats["hostfwd-accepted"] += 1
            try:
                local = self._guest_side(str(peer[0]), fwd.guest)
                self._start(_Pending(fwd, conn, local, int(peer[1])))
            except Exception:
                self.stats["hostfwd-internal-error"] += 1
                self._log.exception("hostfwd: handing a connection to the guest failed")
                conn.close()

    def _guest_mac(self, guest: bytes) -> bytes | None:
        if len(guest) == 16:
            return self._v6.guest_mac(guest) if self._v6 is not None else None
        gw = self._gw
        mac = gw.arp.get(guest)
        if mac is not None:
            return mac
        addr = int.from_bytes(guest, "big")
        for slot in gw.dhcp.slots:
            if slot.addr == addr and slot.state == "bound" and slot.mac is not None:
                return slot.mac
        return None

    def _start(self, p: _Pending) -> bool:
        guest = p.fwd.guest
        v6 = self._v6 if len(guest) == 16 else None
        mac = self._guest_mac(guest)
        if mac is None:
            if p not in self._pending:
                self._pending.append(p)
            gw = self._gw
            if v6 is not None:  # a Neighbor Solicitation, through the IPv6 side's output
                now = self._loop.time()
                v6.solicit(guest, now)
                self._flush(now)
            else:
                arp = ipv4.arp_packet(1, gw.mac, gw.host_ip, bytes(6), guest,
                                      ipv4.BROADCAST_MAC)  # fmt: skip
                self._send([PLAIN_HDR + arp if self._tcp.cfg.vnet else arp])  # the TCP form
            if self._retry_at is None:
                self._retry_at = self._loop.time() + MAC_RETRY
                self._deadlines.changed(self)
            return False
        src_mac = v6.src_mac(p.local) if v6 is not None else self._gw.mac
        l2 = ethernet_header(mac, src_mac, v6 is not None)
        self._tcp.forward(p.sock, p.fwd.guest, p.fwd.rule.guest_port, p.local, p.local_port, l2)
        self.stats["hostfwd-tcp-forwarded"] += 1
        return True

    def next_deadline(self) -> float | None:
        return self._retry_at

    def on_deadline(self, now: float) -> None:
        if self._retry_at is not None and now >= self._retry_at:
            self._retry_at = None
            self._retry()

    def _retry(self) -> None:
        pending, self._pending = self._pending, []
        for p in pending:
            p.tries += 1
            if p.tries > MAC_TRIES:
                self.stats["hostfwd-guest-unreachable"] += 1
                p.sock.close()
                continue
            try:
                self._start(p)
            except Exception:
                self.stats["hostfwd-internal-error"] += 1
                self._log.exception("hostfwd: handing a connection to the guest failed")
                p.sock.close()

    # -- UDP -------------------------------------------------------------------------------

    def _udp_readable(self, fwd: Forward) -> None:
        if fwd not in self.forwards:
            return
        now = self._loop.time()
        gw = self._gw
        guest, gport = fwd.guest, fwd.rule.guest_port
        for _ in range(RECV_BATCH):
            try:
                data, peer = fwd.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # a late ICMP error for an earlier reply
            src, sport = self._guest_side(str(peer[0]), guest), int(peer[1])
            key = (guest, gport, src, sport)
            self._replies[key] = (fwd, (str(peer[0]), sport))
            self._replies.move_to_end(key)
            while len(self._replies) > UDP_FLOWS:
                self._replies.popitem(last=False)
                self.stats["hostfwd-udp-flow-evicted"] += 1
            self.stats["hostfwd-udp-to-guest"] += 1
            if len(guest) == 16:
                if self._v6 is not None:
                    self._v6.udp_to_guest(src, sport, guest, gport, data, now)
            else:
                gw.ip_to_guest(src, guest, ipv4.IPPROTO_UDP,
                               ipv4.udp_segment(src, guest, sport, gport, data))  # fmt: skip
        self._flush(now)

    def reply_target(self, key: ReplyKey) -> tuple[Forward, tuple[str, int]] | None:
        """The forwarded flow a guest datagram (guest address and port, guest-side peer
        address and port) answers, or None; a lookup, no I/O."""
        entry = self._replies.get(key)
        if entry is not None:
            self._replies.move_to_end(key)
        return entry

    def udp_reply(self, action: UdpReply) -> None:
        """Send a guest's answer to a forwarded flow from the forward's socket."""
        fwd, peer = cast("tuple[Forward, tuple[str, int]]", action.target)
        try:
            fwd.sock.sendto(action.payload, peer)
            self.stats["hostfwd-udp-to-host"] += 1
        except OSError:
            self.stats["hostfwd-udp-send-failed"] += 1
