"""The IPv4 host sockets of the user netdev: the fds behind the gateway's host actions.

Owns, for one user netdev, every host fd the IPv4 gateway (:class:`~.router.Gateway`) asks
for through its :attr:`~.router.Gateway.actions`: the UDP flow sockets (one per guest
source, opened on the first :class:`~.udp_nat.UdpSend`, closed on
:class:`~.udp_nat.UdpClose`; ``IP_RECVERR`` errors come back to the guest as ICMP errors),
one socket per address family for the DNS relay's upstreams (:class:`~.dns.Upstream`), and
the ICMP echo sockets (:class:`.hostecho.EchoSockets` with :data:`ECHO4`: a ping socket per
echo flow, or one raw socket, or none - :func:`.hostsock.icmp_mode`). It is the IPv4
counterpart of the host-socket half of :mod:`.host6`; the client runs the gateway's actions
through :meth:`Ipv4Sockets.act`, and every host socket event ends with the client's
``flush`` (given at construction), which sends what the gateway produced and runs the
actions that followed.

As in libslirp, an echo request leaves with the host's default TTL (the guest's TTL is
applied to UDP flows; the IPv6 side applies the guest's hop limit to echoes too).

Invariant: every fd opened here is closed by :meth:`Ipv4Sockets.close` (or when its flow
ends); no host input raises out of a loop callback (an unexpected exception is reported
through ``internal_error`` and the netdev keeps serving).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import Callable
from typing import Final

from . import conntable, hostsock, ipv4
from .conntable import ConnRow
from .dns import Upstream
from .hostecho import EchoFamily, EchoReply, EchoSockets, ErrorSink
from .icmp_relay import PingClose, PingSend
from .router import Action, Gateway
from .udp_nat import UdpClose, UdpSend

_ECHO: Final = struct.Struct("!BBHHH")
_SOFT_ERRORS: Final = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)


def _echo_request(host_id: int, seq: int, payload: bytes, raw: bool) -> bytes:
    if raw:  # the raw socket sends the message as given: the checksum is ours
        rest = struct.pack("!HH", host_id, seq)
        return ipv4.icmp_message(ipv4.ICMP_ECHO, 0, rest, payload)
    return _ECHO.pack(ipv4.ICMP_ECHO, 0, 0, host_id, seq) + payload  # the kernel completes it


def _echo_reply(data: bytes, raw: bool) -> EchoReply | None:
    if raw:  # a raw IPv4 socket reads the IP header too
        data = data[(data[0] & 15) * 4 if data else 0 :]
    if len(data) < 8 or data[0] != ipv4.ICMP_ECHOREPLY:
        return None
    return (data[4] << 8) | data[5], (data[6] << 8) | data[7], data[8:]


#: The ICMP relay's host end.
ECHO4: Final = EchoFamily(
    "ICMP", "ping", "icmp", hostsock.ping_socket, hostsock.raw_icmp_socket, _echo_request,
    _echo_reply,
)  # fmt: skip


class Ipv4Sockets:
    """The IPv4 host sockets of one user netdev."""

    def __init__(
        self, name: str, gw: Gateway, loop: asyncio.AbstractEventLoop, log: logging.Logger, *,
        flush: Callable[[float], None], host_error: ErrorSink,
        internal_error: Callable[[str], None], icmp_mode: str | None = None,
    ) -> None:  # fmt: skip
        self._gw = gw
        self._loop = loop
        self._flush = flush
        self._host_error = host_error
        self._internal_error = internal_error
        self._udp: dict[tuple[bytes, int], socket.socket] = {}
        self._udp_ttl: dict[tuple[bytes, int], int] = {}
        self._dns = hostsock.UpstreamSockets(loop, self._dns_answer, host_error)
        self.closed = False
        mode = icmp_mode if icmp_mode is not None else hostsock.icmp_mode()
        self.echo = EchoSockets(
            loop, ECHO4, mode, gw.icmp, gw.stats, reply=gw.ping_reply, flush=flush,
            host_error=host_error, internal_error=internal_error,
        )  # fmt: skip
        if mode == "none":
            log.warning(
                "user %s: ICMP echo relay unavailable (net.ipv4.ping_group_range forbids ping "
                "sockets and CAP_NET_RAW is missing): guest pings beyond the gateway are "
                "dropped",
                name,
            )

    @property
    def icmp_mode(self) -> str:
        return self.echo.mode

    def act(self, action: Action, now: float) -> None:
        """Run one of the gateway's host actions (none once closed)."""
        if self.closed:
            return
        if isinstance(action, UdpSend):
            self._udp_send(action, now)
        elif isinstance(action, Upstream):
            self._dns_send(action)
        elif isinstance(action, UdpClose):
            self._close_udp(action.key)
        elif isinstance(action, PingSend):
            a = action
            self.echo.send(a.key, a.host_id, a.host, a.seq, a.payload, a.ttl)
        elif isinstance(action, PingClose):
            self.echo.close_flow(action.key)

    # -- UDP flows -------------------------------------------------------------------------

    def _udp_send(self, a: UdpSend, now: float) -> None:
        sock = self._udp.get(a.key)
        if sock is None:
            try:
                sock = hostsock.udp_flow_socket()
            except OSError as exc:
                self._host_error("UDP socket", exc)
                self._gw.udp.close(a.key)
                return
            self._udp[a.key] = sock
            self._loop.add_reader(sock.fileno(), self._udp_readable, a.key, sock)
        if self._udp_ttl.get(a.key) != a.ttl:
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, max(1, min(a.ttl, 255)))
                self._udp_ttl[a.key] = a.ttl
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
                    self._gw.stats["udp-send-dropped"] += 1
                    return
                # libslirp answers a failed send with "network unreachable"
                self._gw.udp_host_error(a.key, a.host, a.port, ipv4.ICMP_UNREACH,
                                        ipv4.UNREACH_NET, None, a.payload)  # fmt: skip
                self._host_error("UDP send", exc)
                return

    def _udp_readable(self, key: tuple[bytes, int], sock: socket.socket) -> None:
        if self.closed or self._udp.get(key) is not sock:
            return
        now = self._loop.time()
        gw = self._gw
        try:
            for err in hostsock.read_errors(sock):
                gw.udp_host_error(key, err.host, err.port, err.icmp_type, err.code,
                                  err.offender, err.head)  # fmt: skip
            for _ in range(hostsock.RX_BATCH):
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno != errno.ECONNREFUSED:  # reported through the error queue
                        self._host_error("UDP receive", exc)
                    break
                gw.udp_from_host(key, addr[0], addr[1], data, now)
        except Exception:
            self._internal_error("UDP flow")
        self._flush(now)

    def udp_bound(self, key: tuple[bytes, int]) -> tuple[str, int] | None:
        """Where flow ``key``'s host socket is bound (None: no socket yet)."""
        sock = self._udp.get(key)
        if sock is None:
            return None
        addr = sock.getsockname()
        return str(addr[0]), int(addr[1])

    def udp_adopt(self, key: tuple[bytes, int], sock: socket.socket) -> None:
        """Take a bound flow socket made elsewhere (live migration) for flow ``key``."""
        self._close_udp(key)
        self._udp[key] = sock
        self._loop.add_reader(sock.fileno(), self._udp_readable, key, sock)

    def udp_close(self, key: tuple[bytes, int]) -> None:
        """Close flow ``key``'s socket (the flow moved away)."""
        self._close_udp(key)

    def _close_udp(self, key: tuple[bytes, int]) -> None:
        sock = self._udp.pop(key, None)
        self._udp_ttl.pop(key, None)
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    # -- DNS upstreams ---------------------------------------------------------------------

    def _dns_send(self, a: Upstream) -> None:
        if not self._dns.send(a.family, a.payload, a.host, a.port):
            self._gw.stats["dns-send-failed"] += 1

    def _dns_answer(self, upstream: tuple[str, int], data: bytes) -> None:
        if self.closed:
            return
        now = self._loop.time()
        try:
            self._gw.dns_from_upstream(upstream, data, now)
        except Exception:
            self._internal_error("DNS upstream")
        self._flush(now)

    # -- views and life --------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return {"udp-sockets": len(self._udp)}

    def conn_rows(self, now: float) -> list[ConnRow]:
        """Connection-table rows of the UDP flows and the ICMP echo flows, newest first per
        table."""
        gw = self._gw
        return [
            *conntable.udp_rows(gw.udp.flows, self._udp, now),
            *conntable.icmp_rows(gw.icmp.flows, self.echo.ping, self.echo.raw, now),
        ]

    def close(self) -> None:
        """Close every fd (the netdev goes away)."""
        if self.closed:
            return
        self.closed = True
        for key in list(self._udp):
            self._close_udp(key)
        self.echo.close()
        self._dns.close()
