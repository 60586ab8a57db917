"""The IPv4 host sockets of the user netdev: the fds behind the gateway's host actions.

Owns, for one user netdev, every host fd the IPv4 gateway (:class:`~.router.Gateway`) asks
for through its :attr:`~.router.Gateway.actions`: the UDP flow sockets
(:class:`..udpflows.UdpFlowSockets` with :data:`..udpflows.UDP4`, shared with :mod:`..v6.host`;
``IP_RECVERR`` errors come back to the guest as ICMP errors),
one socket per address family for the DNS relay's upstreams (:class:`~..dns.Upstream`), and
the ICMP echo sockets (:class:`..hostecho.EchoSockets` with :data:`ECHO4`: a ping socket per
echo flow, or one raw socket, or none - :func:`..hostsock.icmp_mode`). It is the IPv4
counterpart of the host-socket half of :mod:`..v6.host`; the client runs the gateway's actions
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
import logging
import socket
import struct
from collections.abc import Callable
from typing import Final, Literal

from netstack.proto import ipv4

from .. import conntable, hostsock
from ..conntable import ConnRow
from ..dns import Upstream
from ..hostecho import EchoFamily, EchoReply, EchoSockets, ErrorSink
from ..hostsock import HostError
from ..icmp_relay import PingClose, PingSend
from ..udp_nat import UdpClose, UdpSend
from ..udpflows import UDP4, FlowKey, UdpFlowSockets
from .router import Action, Gateway

_ECHO: Final = struct.Struct("!BBHHH")
#: The host actions this side runs (:meth:`Ipv4Sockets.act`).
ACTIONS: Final = (UdpSend, UdpClose, Upstream, PingSend, PingClose)


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
ECHO4: Final[EchoFamily[Literal["icmp-send-failed", "icmp-relay-unavailable"]]] = EchoFamily(
    "ICMP", "ping", "icmp-send-failed", "icmp-relay-unavailable", hostsock.ping_socket,
    hostsock.raw_icmp_socket, _echo_request, _echo_reply,
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
        self.udp = UdpFlowSockets(
            UDP4, loop, gw.count, open_failed=gw.udp.close, send_failed=self._udp_send_failed,
            host_error_in=self._udp_host_error, datagram_in=self._udp_datagram,
            after_input=lambda now: None, flush=flush, host_error=host_error,
            internal_error=internal_error,
        )  # fmt: skip
        self._dns = hostsock.UpstreamSockets(loop, self._dns_answer, host_error)
        self.closed = False
        mode = icmp_mode if icmp_mode is not None else hostsock.icmp_mode()
        self.echo = EchoSockets(
            loop, ECHO4, mode, gw.icmp, gw.count, reply=gw.ping_reply, flush=flush,
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
            self.udp.send(action, now)
        elif isinstance(action, Upstream):
            self._dns_send(action)
        elif isinstance(action, UdpClose):
            self.udp.close_flow(action.key)
        elif isinstance(action, PingSend):
            a = action
            self.echo.send(a.key, a.host_id, a.host, a.seq, a.payload, a.ttl)
        elif isinstance(action, PingClose):
            self.echo.close_flow(action.key)

    # -- UDP flows -------------------------------------------------------------------------

    def _udp_send_failed(self, a: UdpSend, now: float) -> None:
        # libslirp answers a failed send with "network unreachable"
        self._gw.udp_host_error(a.key, a.host, a.port, ipv4.ICMP_UNREACH, ipv4.UNREACH_NET,
                                None, a.payload)  # fmt: skip

    def _udp_host_error(self, key: FlowKey, err: HostError, now: float) -> None:
        self._gw.udp_host_error(key, err.host, err.port, err.icmp_type, err.code,
                                err.offender, err.head)  # fmt: skip

    def _udp_datagram(self, key: FlowKey, host: str, port: int, data: bytes, now: float) -> None:
        self._gw.udp_from_host(key, host, port, data, now)

    def udp_bound(self, key: FlowKey) -> tuple[str, int] | None:
        """Where flow ``key``'s host socket is bound (None: no socket yet)."""
        return self.udp.bound(key)

    def udp_adopt(self, key: FlowKey, sock: socket.socket) -> None:
        """Take a bound flow socket made elsewhere (live migration) for flow ``key``."""
        self.udp.adopt(key, sock)

    def udp_close(self, key: FlowKey) -> None:
        """Close flow ``key``'s socket (the flow moved away)."""
        self.udp.close_flow(key)

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
        return self.udp.counters()

    def conn_rows(self, now: float) -> list[ConnRow]:
        """Connection-table rows of the UDP flows and the ICMP echo flows, newest first per
        table."""
        gw = self._gw
        return [
            *conntable.udp_rows(gw.udp.flows, self.udp.socks, now),
            *conntable.icmp_rows(gw.icmp.flows, self.echo.ping, self.echo.raw, now),
        ]

    def close(self) -> None:
        """Close every fd (the netdev goes away)."""
        if self.closed:
            return
        self.closed = True
        self.udp.close()
        self.echo.close()
        self._dns.close()
