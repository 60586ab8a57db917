"""UDP NAT: guest UDP flows mapped to host sockets.

Follows libslirp's ``udp.c``/``socket.c``: one host socket per guest
source (address, port) - an endpoint-independent mapping, so a guest socket that talks to
several peers keeps one host port - sending to wherever the guest addresses; the host
address (10.0.2.2) reaches host loopback (127.0.0.1) and answers from 127.0.0.1 appear to
come from the host address; a flow lives :data:`IDLE` seconds (libslirp's ``SO_EXPIRE``,
240 s) after its last datagram, or :data:`DNS_IDLE` seconds (``SO_EXPIREFAST``) after an
answer from port 53.

Beyond libslirp: the table holds at most ``max_flows`` flows (a new flow past that is
dropped and counted, never an unbounded number of fds); ICMP errors the host kernel
reports on a flow's socket (``IP_RECVERR``: port unreachable when the host refuses, and
the other destination-unreachable and time-exceeded codes) go back to the guest as ICMP
errors quoting a reconstruction of the guest's datagram (:meth:`UdpNat.icmp_error`).

hostfwd (UDP) answers: :attr:`UdpNat.forward_lookup`, when set by the adapter, is asked
first about every guest datagram (a lookup in the forwarder's table, no I/O); one that
answers a forwarded flow becomes a :class:`UdpReply` action (the adapter sends it from
the forward's socket) and opens no flow here.

Sans-IO: :meth:`UdpNat.outbound` returns the :class:`UdpSend` the adapter performs (the
adapter opens the socket the first time it sees a key and closes it on :class:`UdpClose`);
:meth:`UdpNat.inbound` maps a host datagram back to the guest.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable
from typing import ClassVar, Final, Literal, NamedTuple

IDLE: Final = 240.0
DNS_IDLE: Final = 10.0
DEFAULT_MAX_FLOWS: Final = 1024
LOOPBACK: Final = "127.0.0.1"

FlowKey = tuple[bytes, int]  # guest address, guest port
#: ``lookup((src, sport, dst, dport))`` -> the forwarded flow a guest datagram answers
#: (the adapter's token), or None. A table lookup: it performs no I/O.
ForwardLookup = Callable[[tuple[bytes, int, bytes, int]], object]


class UdpReply(NamedTuple):
    """Send ``payload`` to the host peer of a forwarded (hostfwd) flow ``target``."""

    target: object
    payload: bytes


#: The names this module counts under (``query-netdev`` counters).
UdpNatCounter = Literal[
    "udp-flow-limit",
    "udp-flows-expired",
    "udp-flows-opened",
    "udp-hostfwd-replies",
]


class UdpSend(NamedTuple):
    """Send ``payload`` from the flow's host socket (open it first if new)."""

    key: FlowKey
    host: str
    port: int
    payload: bytes
    ttl: int


class UdpClose(NamedTuple):
    """Close the flow's host socket."""

    key: FlowKey


class UdpFlow:
    """One guest source and its mapping state."""

    __slots__ = ("created", "dst", "expires", "key", "rx", "ttl", "tx")

    def __init__(self, key: FlowKey, now: float) -> None:
        self.key = key
        self.created = now
        self.expires = now + IDLE
        self.dst: tuple[bytes, int] = (b"\0\0\0\0", 0)  # the last guest-side destination
        self.ttl = 0
        self.tx = 0
        self.rx = 0


class UdpNat:
    """The UDP flow table of one user netdev."""

    #: The action classes this table's flows leave as (a family's own, so the netdev's
    #: one pump can hand each to that family's flow sockets).
    send_action: ClassVar[type[UdpSend]] = UdpSend
    close_action: ClassVar[type[UdpClose]] = UdpClose

    def __init__(
        self,
        host_addr: bytes,
        *,
        max_flows: int = DEFAULT_MAX_FLOWS,
        idle: float = IDLE,
        dns_idle: float = DNS_IDLE,
    ) -> None:
        self.host_addr = host_addr
        self.max_flows = max_flows
        self.idle = idle
        self.dns_idle = dns_idle
        self.flows: dict[FlowKey, UdpFlow] = {}
        self.counters: Counter[UdpNatCounter] = Counter()
        self._wake: float | None = None
        self.forward_lookup: ForwardLookup | None = None

    def host_destination(self, dst: bytes) -> str:
        """Where a guest destination is on the host side."""
        return LOOPBACK if dst == self.host_addr else socket.inet_ntoa(dst)

    def guest_source(self, host: str) -> bytes:
        """The guest-side address of a host-side peer."""
        if host == LOOPBACK:
            return self.host_addr
        try:
            return socket.inet_aton(host)
        except OSError:
            return b"\0\0\0\0"

    def outbound(
        self, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes, ttl: int,
        now: float,
    ) -> UdpSend | UdpReply | None:  # fmt: skip
        """A guest datagram to NAT (or the answer to a forwarded flow); None when it is
        dropped (flow table full)."""
        reply = self.reply_to_forward(src, sport, dst, dport, payload)
        if reply is not None:
            return reply
        key = (src, sport)
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= self.max_flows:
                self.counters["udp-flow-limit"] += 1
                return None
            flow = UdpFlow(key, now)
            self.flows[key] = flow
            self.counters["udp-flows-opened"] += 1
        flow.dst = (dst, dport)
        flow.tx += 1
        self._touch(flow, now + self.idle)
        return self.send_action(key, self.host_destination(dst), dport, payload, ttl)

    def reply_to_forward(
        self, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes
    ) -> UdpReply | None:
        """The :class:`UdpReply` for a guest datagram that answers a forwarded flow."""
        lookup = self.forward_lookup
        if lookup is None:
            return None
        target = lookup((src, sport, dst, dport))
        if target is None:
            return None
        self.counters["udp-hostfwd-replies"] += 1
        return UdpReply(target, payload)

    def inbound(self, key: FlowKey, host: str, port: int, now: float) -> bytes | None:
        """A datagram from ``host:port`` on flow ``key``: its guest-side source address
        (None if the flow is gone)."""
        flow = self.flows.get(key)
        if flow is None:
            return None
        flow.rx += 1
        self._touch(flow, now + (self.dns_idle if port == 53 else self.idle))
        return self.guest_source(host)

    def _touch(self, flow: UdpFlow, expires: float) -> None:
        flow.expires = expires
        if self._wake is None or expires < self._wake:
            self._wake = expires

    def close(self, key: FlowKey) -> UdpClose | None:
        """Forget a flow (its socket failed); the adapter closes the socket."""
        return self.close_action(key) if self.flows.pop(key, None) is not None else None

    def expire(self, now: float) -> list[UdpClose]:
        """Flows idle past their time, to close."""
        if self._wake is None or now < self._wake:
            return []
        gone = [key for key, flow in self.flows.items() if flow.expires <= now]
        for key in gone:
            del self.flows[key]
        self.counters["udp-flows-expired"] += len(gone)
        self._wake = min((f.expires for f in self.flows.values()), default=None)
        close = self.close_action
        return [close(key) for key in gone]

    def next_deadline(self) -> float | None:
        return self._wake
