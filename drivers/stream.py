"""The ``stream`` netdev (QEMU 7.2+, ``net/stream.c``).

Frames travel over one stream connection with the 4-byte length framing; ``addr`` is a
QAPI ``SocketAddress`` (``inet``, ``unix`` including Linux ``abstract``/``tight`` names,
``vsock``, ``fd``), opened by :mod:`netstack.chardev.sockaddr` with QEMU's error texts.

* ``server=on`` - listens (a unix path is replaced; an empty one becomes a temporary
  ``qemu-socket-XXXXXX``), one client at a time, link down until one connects. Info
  ``listening`` (QEMU 7.2 printed an empty string), then the client's URI (``tcp:H:P`` of
  the peer for inet, ``unix:PATH`` of the listening socket for unix), ``listening`` again
  at its end. A listen failure does not fail ``netdev_add`` (QEMU listens in the
  background): the info becomes ``error: ...``.
* client (default) - connects in the background with the link down (info ``connecting``),
  ``TCP_NODELAY``; then the server's URI and the link up. A failure shows ``error: ...``
  (7.2: ``connection error``). With ``reconnect-ms=N`` (or the deprecated ``reconnect=S``)
  it retries N ms after a failure or the end of a connection (info ``connecting``);
  without, the info keeps the last URI after the end (10.0; 7.2 empties it).
* Events: ``NETDEV_STREAM_CONNECTED {netdev-id, addr}`` (``addr`` as above: the local
  address for unix, the peer's for inet) and ``NETDEV_STREAM_DISCONNECTED {netdev-id}``.

Validation (client): "'reconnect' and 'reconnect-ms' are mutually exclusive"; (server)
"'reconnect' and 'reconnect-ms' options are incompatible with socket in server mode".

Deviations: accepted connections get ``TCP_NODELAY`` as connecting ones do (QEMU leaves
Nagle on for them); a client on an ``fd`` address does not reconnect (the fd is gone after the
first connection; QEMU would pick up whatever reused the number). The listening unix
socket file is removed when the netdev goes away, as QEMU's channel finalizer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import TYPE_CHECKING

from drivers.socket.dgramsock import set_nodelay
from drivers.socket.transport import StreamTransport
from netstack.chardev.sockaddr import FdLookup, connect, listen
from netstack.driver import DriverHost, DriverSpec
from netstack.errors import GenericError
from netstack.net.fdio import FdWatch
from netstack.net.sockaddr import address_of, host_fd_lookup, socket_uri
from netstack.qapi import NetdevStreamOptions
from netstack.qapi.sockets import FdSocketAddress, SocketAddress

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.qapi import Netdev


class StreamNetdev(StreamTransport):
    """What the stream server and client share: events on connect and disconnect."""

    type = "stream"

    def __init__(self, name: str, host: DriverHost, addr: SocketAddress) -> None:
        super().__init__(name, host)
        self.host = host
        self.addr = addr

    def _fd_lookup(self) -> FdLookup | None:
        data = self.addr.data
        if not isinstance(data, FdSocketAddress) or data.fd[:1].isdigit():
            return None
        named = host_fd_lookup(self.host)

        def lookup(name: str) -> int:
            fd = named(name) if named is not None else None
            if fd is None:
                raise GenericError(f"File descriptor named '{name}' has not been found")
            return fd

        return lookup

    def _connected(self, sock: socket.socket, local: bool) -> None:
        """Start on ``sock``; report the local (unix) or the peer's address."""
        self.attach(sock)
        self.link_down = False
        try:
            name = sock.getsockname() if local else sock.getpeername()
            addr = address_of(sock.family, name)
        except (OSError, GenericError) as exc:
            self.log.warning("%s: cannot tell the connection's address: %s", self.name, exc)
            addr = {"type": "unix", "path": ""}
        self.info_str = socket_uri(addr)
        self.host.emit_event("NETDEV_STREAM_CONNECTED", {"netdev-id": self.name, "addr": addr})

    def connection_lost(self, error: OSError | None) -> None:
        super().connection_lost(error)
        self.host.emit_event("NETDEV_STREAM_DISCONNECTED", {"netdev-id": self.name})


class StreamServer(StreamNetdev):
    """``server=on``: one client at a time."""

    def __init__(self, name: str, host: DriverHost, addr: SocketAddress) -> None:
        super().__init__(name, host, addr)
        self.info_str = "initializing"
        self.listener: socket.socket | None = None
        self.path: str | None = None
        self._accepting: FdWatch | None = None

    async def open(self) -> None:
        try:
            sock, path = await listen(self.addr.data, backlog=0, fd_lookup=self._fd_lookup())
        except GenericError as exc:
            self.info_str = f"error: {exc.desc}"
            self.link_down = True
            self.log.warning("%s: %s", self.name, exc.desc)
            return
        self.listener, self.path = sock, path
        self._accepting = FdWatch(self.loop, sock.fileno(), self._on_acceptable)
        self.link_down = True
        self.info_str = "listening"
        self._accept()

    def _accept(self) -> None:
        if self._accepting is not None:
            self._accepting.set_reading(True)

    def _on_acceptable(self) -> None:
        if self.listener is None:
            return
        try:
            conn, _peer = self.listener.accept()
        except OSError:
            return
        if self._accepting is not None:
            self._accepting.set_reading(False)
        set_nodelay(conn)  # beyond QEMU (see drivers.socket): no Nagle stalls
        self._connected(conn, local=conn.family == socket.AF_UNIX)

    def connection_lost(self, error: OSError | None) -> None:
        self.info_str = "listening"
        super().connection_lost(error)
        self._accept()

    def cleanup(self) -> None:
        super().cleanup()
        listener = self.listener
        if self._accepting is not None:
            self._accepting.close()
            self._accepting = None
        if listener is not None:
            listener.close()
            self.listener = None
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None


class StreamClient(StreamNetdev):
    """The default: connects, and with ``reconnect_ms`` keeps reconnecting."""

    def __init__(self, name: str, host: DriverHost, addr: SocketAddress, reconnect_ms: int) -> None:
        super().__init__(name, host, addr)
        self.info_str = "connecting"
        self.link_down = True
        self.reconnect_ms = reconnect_ms
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def start(self) -> None:
        self._task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            sock = await connect(self.addr.data, fd_lookup=self._fd_lookup())
        except GenericError as exc:
            self.info_str = f"error: {exc.desc}"
            self.log.warning("%s: %s", self.name, exc.desc)
            self._task = None
            self._arm_reconnect()
            return
        self._task = None
        if self._closed:
            sock.close()
            return
        set_nodelay(sock)
        self._connected(sock, local=False)

    def connection_lost(self, error: OSError | None) -> None:
        super().connection_lost(error)
        self._arm_reconnect()

    def _arm_reconnect(self) -> None:
        if isinstance(self.addr.data, FdSocketAddress) or self._closed:
            return
        if self.reconnect_ms > 0 and self._timer is None:
            self.info_str = "connecting"
            self._timer = self.loop.call_later(self.reconnect_ms / 1000, self._reconnect)

    def _reconnect(self) -> None:
        self._timer = None
        if not self._closed:
            self.start()

    def cleanup(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        super().cleanup()


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    opts = netdev.options
    assert isinstance(opts, NetdevStreamOptions)
    if not opts.server:
        if opts.reconnect is not None and opts.reconnect_ms is not None:
            raise GenericError("'reconnect' and 'reconnect-ms' are mutually exclusive")
        reconnect_ms = 0
        if opts.reconnect_ms is not None:
            reconnect_ms = opts.reconnect_ms & 0xFFFFFFFF
        elif opts.reconnect is not None:
            reconnect_ms = (opts.reconnect * 1000) & 0xFFFFFFFF
        client = StreamClient(netdev.id, host, opts.addr, reconnect_ms)
        client.start()
        return [client]
    if opts.reconnect is not None or opts.reconnect_ms is not None:
        raise GenericError(
            "'reconnect' and 'reconnect-ms' options are incompatible with socket in server mode"
        )
    server = StreamServer(netdev.id, host, opts.addr)
    await server.open()
    return [server]


SPEC = DriverSpec(
    "stream",
    create,
    "a stream socket, client or server (addr.type=inet|unix|fd,...[,server=on])",
)
