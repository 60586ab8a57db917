"""The host end of the user netdev's echo relays (ICMP and ICMPv6): the sockets guest pings
beyond the gateway leave through, and the readers of their replies.

Owns, for one address family of one netdev, the sockets of the mechanism
:func:`.hostsock.icmp_mode` chose: ``ping`` - a ping socket per echo flow, opened with the
flow's first request (the kernel sets the echo identifier and gives each socket its own
replies); ``raw`` - one raw socket for every flow, opened with the first request and closed
when the relay has no flow left (requests carry the relay's ``host_id``, replies are
matched back by it); ``none`` - no socket: requests are counted (the family's
``relay_unavailable``) and dropped. The flows are the family's sans-IO
:class:`.icmp_relay.EchoFlows` (the gateway's ``icmp``, the IPv6 router's ``echo``); what
differs between the families - socket openers, message codecs, whether the guest's hop
limit is applied - is an :class:`EchoFamily` (:mod:`.v4.host` and :mod:`.v6.host` define theirs).

A reader takes at most :data:`.hostsock.RX_BATCH` datagrams per wake-up, hands each echo
reply to ``reply`` (the machine's ``ping_reply``), runs ``after_input`` if given (the IPv6
side re-reads its deadline), then the owner's ``flush``.

Invariant: every fd opened here is closed by :meth:`EchoSockets.close_flow` (its flow
ended) or :meth:`EchoSockets.close`; no host input raises out of a reader (an unexpected
exception goes to ``internal_error``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from . import hostsock
from .icmp_relay import EchoFlows, FlowKey

#: (echo identifier, sequence number, payload) of an echo reply.
EchoReply = tuple[int, int, bytes]
ReplySink = Callable[[FlowKey, str, int, bytes, float], None]
ErrorSink = Callable[[str, OSError], None]
#: A counter name of the family's owner (the gateway, the IPv6 service).
N = TypeVar("N", bound=str)


@dataclass(frozen=True, slots=True)
class EchoFamily(Generic[N]):
    """What one address family's echo relay does its own way."""

    #: Names in log topics: ``NAME send``, ``raw NAME socket``, ``PING_NAME socket``.
    name: str
    ping_name: str
    #: Counters, in the owner's table: a failed send, a relay without sockets.
    send_failed: N
    relay_unavailable: N
    open_ping: Callable[[], socket.socket]
    open_raw: Callable[[], socket.socket]
    #: The message to send: (host_id, seq, payload, for the raw socket) -> ICMP message.
    request: Callable[[int, int, bytes, bool], bytes]
    #: The echo reply in a datagram read from a ping (False) or the raw (True) socket.
    parse: Callable[[bytes, bool], EchoReply | None]
    #: (level, option) that carries the guest's hop limit; None: the host's default.
    hop_option: tuple[int, int] | None = None


class EchoSockets(Generic[N]):
    """The echo sockets of one address family of one user netdev."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, family: EchoFamily[N], mode: str,
        flows: EchoFlows[Any, Any], count: Callable[[N], None], *, reply: ReplySink,
        flush: Callable[[float], None], host_error: ErrorSink,
        internal_error: Callable[[str], None],
        after_input: Callable[[float], None] | None = None,
    ) -> None:  # fmt: skip
        self.family = family
        self.mode = mode
        self.ping: dict[FlowKey, socket.socket] = {}
        self.raw: socket.socket | None = None
        self.closed = False
        self._loop = loop
        self._flows = flows
        self._count = count
        self._reply = reply
        self._flush = flush
        self._after_input = after_input
        self._host_error = host_error
        self._internal_error = internal_error
        self._hops: dict[int, int] = {}  # fd -> hop limit set on it

    def send(
        self, key: FlowKey, host_id: int, host: str, seq: int, payload: bytes, hops: int
    ) -> None:
        """An echo request of flow ``key`` to ``host`` (its socket is opened if needed)."""
        sock = self._socket(key)
        if sock is None:
            return
        fam = self.family
        if fam.hop_option is not None:
            self._set_hops(sock, fam.hop_option, hops)
        try:
            sock.sendto(fam.request(host_id, seq, payload, self.mode == "raw"), (host, 0))
        except OSError as exc:
            self._count(fam.send_failed)
            self._host_error(f"{fam.name} send", exc)

    def close_flow(self, key: FlowKey) -> None:
        """Flow ``key`` ended (it is gone from the flow table): close its ping socket, and
        the raw socket with the last flow."""
        sock = self.ping.pop(key, None)
        if sock is not None:
            self._forget(sock)
        if self.raw is not None and not self._flows.flows:
            self._forget(self.raw)
            self.raw = None

    def close(self) -> None:
        """Close every socket (the netdev goes away)."""
        self.closed = True
        for key in list(self.ping):
            self.close_flow(key)
        if self.raw is not None:
            self._forget(self.raw)
            self.raw = None

    # -- sockets ---------------------------------------------------------------------------

    def _socket(self, key: FlowKey) -> socket.socket | None:
        fam = self.family
        if self.mode == "ping":
            sock = self.ping.get(key)
            if sock is None:
                try:
                    sock = fam.open_ping()
                except OSError as exc:
                    self._host_error(f"{fam.ping_name} socket", exc)
                    self._flows.close(key)
                    return None
                self.ping[key] = sock
                self._loop.add_reader(sock.fileno(), self._ping_readable, key, sock)
            return sock
        if self.mode == "raw":
            if self.raw is None:
                try:
                    self.raw = fam.open_raw()
                except OSError as exc:
                    self._host_error(f"raw {fam.name} socket", exc)
                    return None
                self._loop.add_reader(self.raw.fileno(), self._raw_readable)
            return self.raw
        self._count(fam.relay_unavailable)
        return None

    def _set_hops(self, sock: socket.socket, option: tuple[int, int], hops: int) -> None:
        hops = max(1, min(hops, 255))
        if self._hops.get(sock.fileno()) != hops:
            try:
                sock.setsockopt(*option, hops)
                self._hops[sock.fileno()] = hops
            except OSError:
                pass

    def _forget(self, sock: socket.socket) -> None:
        self._hops.pop(sock.fileno(), None)
        self._loop.remove_reader(sock.fileno())
        sock.close()

    # -- readers ---------------------------------------------------------------------------

    def _ping_readable(self, key: FlowKey, sock: socket.socket) -> None:
        if self.closed or self.ping.get(key) is not sock:
            return
        now = self._loop.time()
        parse = self.family.parse
        try:
            for data, addr in hostsock.drain(sock):
                echo = parse(data, False)
                if echo is not None:
                    self._reply(key, str(addr[0]), echo[1], echo[2], now)
            if self._after_input is not None:
                self._after_input(now)
        except Exception:
            self._internal_error(f"{self.family.ping_name} socket")
        self._flush(now)

    def _raw_readable(self) -> None:
        sock = self.raw
        if self.closed or sock is None:
            return
        now = self._loop.time()
        parse = self.family.parse
        try:
            for data, addr in hostsock.drain(sock):
                echo = parse(data, True)
                if echo is None:
                    continue
                key = self._flows.key_for_host_id(echo[0])
                if key is not None:
                    self._reply(key, str(addr[0]), echo[1], echo[2], now)
            if self._after_input is not None:
                self._after_input(now)
        except Exception:
            self._internal_error(f"raw {self.family.name} socket")
        self._flush(now)
