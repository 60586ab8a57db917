"""ICMP echo relay: guest pings to addresses beyond the gateway, through the host.

Follows libslirp's ``ip_icmp.c``: echo requests to the gateway's own
addresses are answered by the router; echo requests to other addresses leave through
an unprivileged ICMP datagram socket (``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)``, which
``net.ipv4.ping_group_range`` must allow) and the replies come back to the guest; the host
address (10.0.2.2) reaches host loopback. ``restrict=on`` drops them (the router's job).

The mechanism is the adapter's choice (:mod:`.hostsock`): ping sockets (the kernel sets
the echo identifier and routes replies to the socket); a raw ICMP socket when ping sockets
are forbidden and the process has CAP_NET_RAW (echo identifiers are then this relay's own
``host_id`` values, unique per flow, and replies are matched by it); otherwise echoes are
dropped and counted. libslirp falls back to UDP port 7 instead; that is not done here.

A flow is one guest (address, echo identifier); it lives :data:`IDLE` seconds after its
last echo; at most ``max_flows`` flows exist (more are dropped and counted). Sans-IO:
:meth:`EchoFlows.outbound` returns a send action, :meth:`EchoFlows.reply` maps a reply
back, :meth:`EchoFlows.expire` returns close actions for idle flows.

:class:`EchoFlows` is that table for either family; a family supplies its address text
and its action types (:class:`IcmpRelay` here for IPv4 with :class:`PingSend` /
:class:`PingClose`; :class:`.v6.icmp6.EchoRelay` for ICMPv6 with its own pair, so an
adapter tells them apart by type).
"""

from __future__ import annotations

import abc
import socket
from collections import Counter
from typing import ClassVar, Final, Generic, Literal, NamedTuple, TypeVar

IDLE: Final = 60.0
DEFAULT_MAX_FLOWS: Final = 256
LOOPBACK: Final = "127.0.0.1"

FlowKey = tuple[bytes, int]  # guest address, guest echo identifier
SendT = TypeVar("SendT")
CloseT = TypeVar("CloseT")


class PingSend(NamedTuple):
    """Send an echo request for flow ``key`` (open its socket first if new)."""

    key: FlowKey
    host_id: int
    host: str
    seq: int
    payload: bytes
    ttl: int


class PingClose(NamedTuple):
    key: FlowKey


class _Flow:
    __slots__ = ("dst", "expires", "host_id", "key")

    def __init__(self, key: FlowKey, host_id: int) -> None:
        self.key = key
        self.host_id = host_id
        self.expires = 0.0
        self.dst = b""


#: What the echo flows of either family count.
EchoCounter = Literal[
    "icmp-flow-limit", "icmp-echo-relayed", "icmp-reply-mismatch", "icmp-echo-replies",
    "icmp6-flow-limit", "icmp6-echo-relayed", "icmp6-reply-mismatch", "icmp6-echo-replies",
]  # fmt: skip


class EchoNames(NamedTuple):
    """One family's names of the :data:`EchoCounter` counters."""

    flow_limit: EchoCounter
    echo_relayed: EchoCounter
    reply_mismatch: EchoCounter
    echo_replies: EchoCounter


class EchoFlows(Generic[SendT, CloseT]):
    """Echo flows of one user netdev, for one address family (see the module text).

    A family's subclass gives its counter names (:attr:`NAMES`), its loopback text
    (:attr:`LOOPBACK`), the host-side text of a guest-side address (:meth:`_host_text`),
    the guest-side address of a host (:meth:`_guest_addr`) and its action types
    (:meth:`_send`, :meth:`_close`)."""

    NAMES: ClassVar[EchoNames] = EchoNames(
        "icmp-flow-limit", "icmp-echo-relayed", "icmp-reply-mismatch", "icmp-echo-replies"
    )
    LOOPBACK = "127.0.0.1"

    def __init__(
        self, host_addr: bytes, *, max_flows: int = DEFAULT_MAX_FLOWS, idle: float = IDLE
    ) -> None:
        self.host_addr = host_addr
        self.max_flows = max_flows
        self.idle = idle
        self.flows: dict[FlowKey, _Flow] = {}
        self._by_host_id: dict[int, _Flow] = {}
        self._next_id = 1
        self.counters: Counter[EchoCounter] = Counter()
        self._wake: float | None = None

    @abc.abstractmethod
    def _host_text(self, dst: bytes) -> str: ...

    @abc.abstractmethod
    def _guest_addr(self, host: str) -> bytes | None: ...

    @abc.abstractmethod
    def _send(
        self, key: FlowKey, host_id: int, host: str, seq: int, payload: bytes, hops: int
    ) -> SendT: ...

    @abc.abstractmethod
    def _close(self, key: FlowKey) -> CloseT: ...

    def outbound(
        self, src: bytes, dst: bytes, ident: int, seq: int, payload: bytes, hops: int, now: float
    ) -> SendT | None:
        """An echo request from guest ``src`` (identifier ``ident``) to ``dst``, sent with
        ``hops`` as its TTL / hop limit; None when the flow table is full."""
        key = (src, ident)
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= self.max_flows:
                self.counters[self.NAMES.flow_limit] += 1
                return None
            host_id = self._next_id
            while host_id in self._by_host_id:
                host_id = host_id % 0xFFFF + 1
            self._next_id = host_id % 0xFFFF + 1
            flow = _Flow(key, host_id)
            self.flows[key] = flow
            self._by_host_id[host_id] = flow
        flow.dst = dst
        flow.expires = now + self.idle
        if self._wake is None or flow.expires < self._wake:
            self._wake = flow.expires
        host = self.LOOPBACK if dst == self.host_addr else self._host_text(dst)
        self.counters[self.NAMES.echo_relayed] += 1
        return self._send(key, flow.host_id, host, seq, payload, hops)

    def key_for_host_id(self, host_id: int) -> FlowKey | None:
        flow = self._by_host_id.get(host_id)
        return flow.key if flow is not None else None

    def reply(self, key: FlowKey, host: str) -> bytes | None:
        """The guest-side source of an echo reply from ``host`` on flow ``key``; None if the
        flow is gone or ``host`` is not where its last echo went."""
        flow = self.flows.get(key)
        if flow is None:
            return None
        src = self.host_addr if host == self.LOOPBACK else self._guest_addr(host)
        if src is None:
            return None
        if src != flow.dst:
            self.counters[self.NAMES.reply_mismatch] += 1
            return None
        self.counters[self.NAMES.echo_replies] += 1
        return src

    def close(self, key: FlowKey) -> CloseT | None:
        flow = self.flows.pop(key, None)
        if flow is None:
            return None
        self._by_host_id.pop(flow.host_id, None)
        return self._close(key)

    def expire(self, now: float) -> list[CloseT]:
        if self._wake is None or now < self._wake:
            return []
        out = []
        for key in [k for k, f in self.flows.items() if f.expires <= now]:
            closed = self.close(key)
            if closed is not None:
                out.append(closed)
        self._wake = min((f.expires for f in self.flows.values()), default=None)
        return out

    def next_deadline(self) -> float | None:
        return self._wake


class IcmpRelay(EchoFlows[PingSend, PingClose]):
    """IPv4 echo flows of one user netdev."""

    def _host_text(self, dst: bytes) -> str:
        return socket.inet_ntoa(dst)

    def _guest_addr(self, host: str) -> bytes | None:
        try:
            return socket.inet_aton(host)
        except OSError:
            return None

    def _send(
        self, key: FlowKey, host_id: int, host: str, seq: int, payload: bytes, hops: int
    ) -> PingSend:
        return PingSend(key, host_id, host, seq, payload, hops)

    def _close(self, key: FlowKey) -> PingClose:
        return PingClose(key)
