"""The ``l2tpv3`` netdev: Ethernet frames over an L2TPv3 pseudowire (UDP or IP protocol 115).

Follows QEMU's ``net/l2tpv3.c`` (``net_init_l2tpv3``; reference §5). Options, defaults and
errors, checked in QEMU's order:

1. ``offset`` above 256 -> ``offset must be less than 256 bytes``;
2. exactly one of ``rxcookie``/``txcookie`` -> ``require both 'rxcookie' and 'txcookie' or
   neither``;
3. ``udp=on`` without both ``srcport`` and ``dstport`` -> ``need both src and dst port for
   udp``;
4. ``src`` is resolved (``could not resolve src, errno = TEXT``), the socket made (``socket
   creation failed, errno = N``) and bound (``could not bind socket err=N``), then ``dst``
   is resolved (``could not resolve dst, error = TEXT``).

Transport is raw IP protocol 115 unless ``udp=on`` (raw sockets need CAP_NET_RAW), IPv4
unless ``ipv6=on``; ``rxsession`` defaults to ``txsession``; no cookie, no counter, no
offset by default. The socket is bound to ``src`` but never connected: like QEMU the
netdev takes datagrams from any sender and relies on cookie and session to filter them.
``info network`` shows ``l2tpv3: connected``. Encapsulation is
:mod:`netstack.proto.l2tpv3`.

Data path: the socket's reader drains up to :data:`RX_BATCH` datagrams per wake-up
(``recv_into`` into one preallocated buffer until EAGAIN; QEMU uses ``recvmmsg``) and sends
the frames that pass the header checks to the peer as one batch. When the peer queues
part of it, reading pauses until the queue's completion callback. Frames from the peer
go out with one ``sendmsg`` each (header and frame as two iovecs, no copy); EAGAIN or
ENOBUFS stops the batch there, the rest stays queued in the core, and the writer
callback flushes it once the socket is writable. Other send errors drop that frame
(counted, logged rate-limited), as QEMU does.

Deviations from QEMU, on purpose:

* ``cookie64=off`` means 32-bit cookies. QEMU takes the mere presence of ``cookie64``
  (even ``=off``) as 64-bit; here the value is honoured (``cookie64=on`` or absent mean
  what they say). A QEMU peer configured with ``cookie64=off`` must be matched here with
  ``cookie64=on``.
* 32-bit cookies compare the low 32 bits of ``rxcookie`` (QEMU never matches an
  ``rxcookie`` above 0xffffffff in 32-bit mode); see :mod:`netstack.proto.l2tpv3`.
* IPv4 IP-mode datagrams have their IP header skipped by its IHL (QEMU: fixed 20 bytes).
* Offset padding is zeros (QEMU: uninitialised); a frame that hits EAGAIN does not use up
  a counter value.
* Datagrams up to 64 KiB are received whole (QEMU 7.2 truncates frames past 16 KiB), and
  the receive buffer is raised to :data:`SOCKET_RCVBUF` (best effort) because one Python
  wake-up costs more than one of QEMU's.
* Header check failures are counted per reason and logged rate-limited (QEMU prints only
  the first one, ever).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from netstack.driver import DriverHost, DriverSpec
from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.proto.l2tpv3 import (
    IPPROTO_L2TP,
    MAX_OFFSET,
    DropReporter,
    L2TPv3Params,
    L2TPv3Session,
)
from netstack.qapi import NetdevL2TPv3Options

if TYPE_CHECKING:
    import asyncio
    import logging

    from netstack.qapi import Netdev

#: Datagrams read per wake-up of the socket reader (QEMU's ``MAX_L2TPV3_MSGCNT``).
RX_BATCH = 64
#: Receive buffer: the largest IP datagram fits whole.
RX_BUFSIZE = 65536
#: Receive socket buffer asked for (the kernel caps it at ``net.core.rmem_max``).
SOCKET_RCVBUF = 2 * 1024 * 1024
#: Seconds between two log lines about the same kind of trouble.
LOG_INTERVAL = 30.0

_BACKPRESSURE = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)


class Transport:
    """How to open one end: address family, socket type and protocol, and the ports."""

    __slots__ = ("dstport", "family", "proto", "socktype", "srcport")

    def __init__(self, udp: bool, ipv6: bool, srcport: str | None, dstport: str | None):
        self.family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.socktype = socket.SOCK_DGRAM if udp else socket.SOCK_RAW
        self.proto = 0 if udp else IPPROTO_L2TP
        self.srcport = srcport
        self.dstport = dstport


def params_from_options(opts: NetdevL2TPv3Options) -> tuple[L2TPv3Params, Transport]:
    """Validate and default the options in QEMU's order (the checks before any socket)."""
    if opts.offset is not None and opts.offset > MAX_OFFSET:
        raise GenericError("offset must be less than 256 bytes")
    has_cookie = opts.rxcookie is not None or opts.txcookie is not None
    if has_cookie and (opts.rxcookie is None or opts.txcookie is None):
        raise GenericError("require both 'rxcookie' and 'txcookie' or neither")
    udp = bool(opts.udp)
    if udp and (opts.srcport is None or opts.dstport is None):
        raise GenericError("need both src and dst port for udp")
    ipv6 = bool(opts.ipv6)
    cookie_len = (8 if opts.cookie64 else 4) if has_cookie else 0
    counter = bool(opts.counter)
    params = L2TPv3Params(
        udp=udp,
        ipv6=ipv6,
        txsession=opts.txsession,
        rxsession=opts.txsession if opts.rxsession is None else opts.rxsession,
        cookie_len=cookie_len,
        txcookie=opts.txcookie or 0,
        rxcookie=opts.rxcookie or 0,
        counter=counter,
        pincounter=bool(opts.pincounter),
        offset=opts.offset or 0,
    )
    transport = Transport(udp, ipv6, opts.srcport if udp else None, opts.dstport if udp else None)
    return params, transport


async def _resolve(
    loop: asyncio.AbstractEventLoop, host: str, port: str | None, t: Transport, what: str
) -> tuple[Any, ...]:
    try:
        infos = await loop.getaddrinfo(host, port, family=t.family, type=t.socktype, proto=t.proto)
    except (socket.gaierror, UnicodeError) as exc:
        text = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise GenericError(what.format(text)) from None
    if not infos:
        raise GenericError(what.format("no address"))
    return tuple(infos[0][4])


async def open_socket(
    loop: asyncio.AbstractEventLoop, src: str, dst: str, t: Transport
) -> tuple[socket.socket, tuple[Any, ...]]:
    """Resolve ``src``, make and bind the socket, resolve ``dst`` (QEMU's order and texts)."""
    src_addr = await _resolve(loop, src, t.srcport, t, "could not resolve src, errno = {}")
    try:
        sock = socket.socket(t.family, t.socktype, t.proto)
    except OSError as exc:
        raise GenericError(f"socket creation failed, errno = {exc.errno}") from None
    try:
        try:
            sock.bind(src_addr)
        except OSError as exc:
            raise GenericError(f"could not bind socket err={exc.errno}") from None
        dst_addr = await _resolve(loop, dst, t.dstport, t, "could not resolve dst, error = {}")
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
    except BaseException:
        sock.close()
        raise
    return sock, dst_addr


class L2TPv3Client(NetClient):
    """One l2tpv3 netdev: a bound datagram socket and its encapsulation state."""

    type = "l2tpv3"

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        dst: tuple[Any, ...],
        session: L2TPv3Session,
        loop: asyncio.AbstractEventLoop,
        log: logging.Logger,
    ) -> None:
        super().__init__(name)
        self.info_str = "l2tpv3: connected"
        self.session = session
        self.dst = dst
        self.tx_errors = 0
        self.rx_errors = 0
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._log = log
        self._buf = bytearray(RX_BUFSIZE)
        self._view = memoryview(self._buf)
        self._reading = False
        self._writing = False
        self._closed = False
        self._in_send = False
        self._sent_cb_fired = False
        self._drop_reporter = DropReporter(LOG_INTERVAL)
        self._tx_error_logged_at: float | None = None

    def start(self) -> None:
        """Begin reading the socket."""
        self._set_reading(True)

    # -- socket -> peer ------------------------------------------------------------------

    def _set_reading(self, on: bool) -> None:
        if on == self._reading or self._closed:
            return
        self._reading = on
        if on:
            self._loop.add_reader(self._fd, self._on_readable)
        else:
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        recv_into = self._sock.recv_into
        buf = self._buf
        view = self._view
        payload_start = self.session.rx_payload_start
        dropped_before = self.session.drops.total
        frames: list[bytes] = []
        append = frames.append
        for _ in range(RX_BATCH):
            try:
                n = recv_into(buf)
            except BlockingIOError:
                break
            except OSError as exc:  # e.g. a queued ICMP error on the socket
                self.rx_errors += 1
                self._log.debug("l2tpv3 %s: receive error: %s", self.name, exc)
                break
            start = payload_start(buf, n)
            if start >= 0:
                append(view[start:n].tobytes())
        dropped = self.session.drops.total - dropped_before
        if dropped:
            self.stats.malformed += dropped
            line = self._drop_reporter.report(self.session, self._loop.time())
            if line is not None:
                self._log.warning("l2tpv3 %s: %s", self.name, line)
        if frames:
            self._send_up(frames)

    def _send_up(self, frames: list[bytes]) -> None:
        self._in_send = True
        self._sent_cb_fired = False
        try:
            sent = self.send(frames, False, self._on_sent)
        finally:
            self._in_send = False
        if sent < len(frames) and not self._sent_cb_fired:
            self._set_reading(False)

    def _on_sent(self, _delivered: int) -> None:
        self._sent_cb_fired = True
        if not self._in_send:
            self._set_reading(True)

    # -- peer -> socket ------------------------------------------------------------------

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        count = len(frames)
        if self._closed:
            return count
        session = self.session
        headers = session.tx_headers(count)
        sendmsg = self._sock.sendmsg
        dst = self.dst
        i = 0
        while i < count:
            try:
                while i < count:
                    sendmsg((headers[i], frames[i]), (), 0, dst)
                    i += 1
            except OSError as exc:
                if exc.errno in _BACKPRESSURE:
                    session.tx_commit(i)
                    self._set_writing(True)
                    return i
                self._tx_error(exc)
                i += 1
        session.tx_commit(count)
        return count

    def _tx_error(self, exc: OSError) -> None:
        self.tx_errors += 1
        self.stats.tx_dropped += 1
        now = self._loop.time()
        last = self._tx_error_logged_at
        if last is None or now - last >= LOG_INTERVAL:
            self._tx_error_logged_at = now
            self._log.warning(
                "l2tpv3 %s: send failed (%d so far): %s", self.name, self.tx_errors, exc
            )

    def _set_writing(self, on: bool) -> None:
        if on == self._writing or self._closed:
            return
        self._writing = on
        if on:
            self._loop.add_writer(self._fd, self._on_writable)
        else:
            self._loop.remove_writer(self._fd)

    def _on_writable(self) -> None:
        self._set_writing(False)
        self.flush_queued()

    # -- life ----------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Driver counters: datagrams sent and accepted, drops per reason, socket errors."""
        s = self.session
        out = {"tx-datagrams": s.tx_frames, "rx-datagrams": s.rx_frames}
        out.update({f"drop-{k.lower().replace(' ', '-')}": v for k, v in s.drops.as_dict().items()})
        out["tx-errors"] = self.tx_errors
        out["rx-errors"] = self.rx_errors
        return out

    def cleanup(self) -> None:
        if self._closed:
            return
        self._set_reading(False)
        self._set_writing(False)
        self._closed = True
        self._sock.close()


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    opts = netdev.options
    assert isinstance(opts, NetdevL2TPv3Options)
    params, transport = params_from_options(opts)
    sock, dst = await open_socket(host.loop, opts.src, opts.dst, transport)
    client = L2TPv3Client(netdev.id, sock, dst, L2TPv3Session(params), host.loop, host.log)
    client.start()
    return [client]


SPEC = DriverSpec(
    "l2tpv3",
    create,
    "Ethernet over L2TPv3 (src=,dst=,txsession=N[,udp=on,srcport=,dstport=,...])",
)
