"""The UDP flow sockets of the user netdev, one class for IPv4 and IPv6.

Owns the host fds behind the UDP NAT (:class:`~.udp_nat.UdpNat`) of either family: one
socket per guest source (address, port), opened on the flow's first
:class:`~.udp_nat.UdpSend`, closed on :class:`~.udp_nat.UdpClose` or when the netdev goes
away; the TTL (IPv4) or unicast hop limit (IPv6) the guest's datagram carried is set on
the socket before a send when it changed; errors the host queues (``IP_RECVERR`` /
``IPV6_RECVERR``, :func:`.hostsock.read_errors`) and datagrams from the far end are
handed to the family's NAT through the callbacks given at construction. As in libslirp
(``udp.c``/``udp6.c``): a send that fails with ``ECONNREFUSED`` (an earlier datagram's
error, reported late) is sent again once; a soft failure (``EAGAIN``, ``ENOBUFS``) drops
the datagram and counts it; any other failure is the NAT's to answer (IPv4 "network
unreachable", IPv6 "no route"), and is logged.

What differs between the families is data (:class:`UdpFamily`: the socket factory, the
TTL option, the counter and log labels) and the callbacks; the code is the same.

Invariant: every fd opened here is closed by :meth:`UdpFlowSockets.close` or when its flow
closes; no host input raises out of a loop callback (an unexpected exception is reported
through ``internal_error`` and the netdev keeps serving); each socket event ends with
``after_input`` then the client's ``flush``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterator
from typing import Final, Generic, Literal, NamedTuple, TypeVar

from . import hostsock
from .hostecho import ErrorSink
from .hostsock import HostError
from .udp_nat import UdpSend

FlowKey = tuple[bytes, int]

_SOFT_ERRORS: Final = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)


#: The counter of datagrams dropped on a soft send failure, in the table of the family's
#: owner (the gateway for IPv4, the IPv6 service for IPv6).
N = TypeVar("N", bound=str)
#: The gauge of open flow sockets in :meth:`UdpFlowSockets.counters`.
UdpSocketsGauge = Literal["udp-sockets", "udp6-sockets"]


class UdpFamily(NamedTuple, Generic[N]):
    """What one address family's UDP flow sockets need to know."""

    label: str  # in log lines: "<label> socket", "<label> send", ...
    make_socket: Callable[[], socket.socket]
    ttl_option: tuple[int, int]  # (level, option) of the TTL / unicast hop limit
    dropped: N  # counter of datagrams dropped on a soft send failure
    sockets: UdpSocketsGauge  # counter of open flow sockets


UDP4: Final[UdpFamily[Literal["udp-send-dropped"]]] = UdpFamily(
    "UDP", hostsock.udp_flow_socket, (socket.IPPROTO_IP, socket.IP_TTL), "udp-send-dropped",
    "udp-sockets",
)  # fmt: skip
UDP6: Final[UdpFamily[Literal["udp6-send-dropped"]]] = UdpFamily(
    "UDP6", hostsock.udp6_flow_socket, (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
    "udp6-send-dropped", "udp6-sockets",
)  # fmt: skip


class UdpFlowSockets(Generic[N]):
    """The UDP flow sockets of one address family of one user netdev."""

    def __init__(
        self, fam: UdpFamily[N], loop: asyncio.AbstractEventLoop, count: Callable[[N], None], *,
        open_failed: Callable[[FlowKey], object],
        send_failed: Callable[[UdpSend, float], None],
        host_error_in: Callable[[FlowKey, HostError, float], None],
        datagram_in: Callable[[FlowKey, str, int, bytes, float], None],
        after_input: Callable[[float], None], flush: Callable[[float], None],
        host_error: ErrorSink, internal_error: Callable[[str], None],
    ) -> None:  # fmt: skip
        self.fam = fam
        self._loop = loop
        self._count = count
        self._open_failed = open_failed
        self._send_failed = send_failed
        self._host_error_in = host_error_in
        self._datagram_in = datagram_in
        self._after_input = after_input
        self._flush = flush
        self._host_error = host_error
        self._internal_error = internal_error
        self.socks: dict[FlowKey, socket.socket] = {}
        self._ttl: dict[FlowKey, int] = {}
        self.closed = False

    def __len__(self) -> int:
        return len(self.socks)

    def __iter__(self) -> Iterator[FlowKey]:
        return iter(self.socks)

    def send(self, a: UdpSend, now: float) -> None:
        """Send a guest datagram on its flow's socket (opened on first use)."""
        if self.closed:
            return
        fam = self.fam
        sock = self.socks.get(a.key)
        if sock is None:
            try:
                sock = fam.make_socket()
            except OSError as exc:
                self._host_error(f"{fam.label} socket", exc)
                self._open_failed(a.key)
                return
            self._watch(a.key, sock)
        if self._ttl.get(a.key) != a.ttl:
            try:
                sock.setsockopt(*fam.ttl_option, max(1, min(a.ttl, 255)))
                self._ttl[a.key] = a.ttl
            except OSError:
                pass
        for _attempt in range(2):
            try:
                sock.sendto(a.payload, (a.host, a.port))
                return
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    continue  # an earlier datagram's error, reported late: send again
                if exc.errno in _SOFT_ERRORS:
                    self._count(fam.dropped)
                    return
                self._send_failed(a, now)
                self._host_error(f"{fam.label} send", exc)
                return

    def _watch(self, key: FlowKey, sock: socket.socket) -> None:
        self.socks[key] = sock
        self._loop.add_reader(sock.fileno(), self._readable, key, sock)

    def _readable(self, key: FlowKey, sock: socket.socket) -> None:
        if self.closed or self.socks.get(key) is not sock:
            return
        now = self._loop.time()
        label = self.fam.label
        try:
            for err in hostsock.read_errors(sock):
                self._host_error_in(key, err, now)
            for _ in range(hostsock.RX_BATCH):
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno != errno.ECONNREFUSED:  # reported through the error queue
                        self._host_error(f"{label} receive", exc)
                    break
                self._datagram_in(key, str(addr[0]), int(addr[1]), data, now)
            self._after_input(now)
        except Exception:
            self._internal_error(f"{label} flow")
        self._flush(now)

    def bound(self, key: FlowKey) -> tuple[str, int] | None:
        """Where flow ``key``'s host socket is bound (None: no socket yet)."""
        sock = self.socks.get(key)
        if sock is None:
            return None
        addr = sock.getsockname()
        return str(addr[0]), int(addr[1])

    def adopt(self, key: FlowKey, sock: socket.socket) -> None:
        """Take a bound flow socket made elsewhere (live migration) for flow ``key``."""
        self.close_flow(key)
        self._watch(key, sock)

    def close_flow(self, key: FlowKey) -> None:
        """Close flow ``key``'s socket, if it has one."""
        sock = self.socks.pop(key, None)
        self._ttl.pop(key, None)
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    def counters(self) -> dict[str, int]:
        return {self.fam.sockets: len(self.socks)}

    def close(self) -> None:
        """Close every socket (the netdev goes away)."""
        self.closed = True
        for key in list(self.socks):
            self.close_flow(key)
