"""The ``socket`` netdev: QEMU's legacy socket backend (``net/socket.c``).

Exactly one of ``fd``, ``listen``, ``connect``, ``mcast``, ``udp`` selects the mode
("exactly one of listen=, connect=, mcast= or udp= is required"); ``localaddr`` belongs to
``mcast``/``udp`` ("localaddr= is only valid with mcast= or udp=") and ``udp`` needs it
("localaddr= is mandatory with udp="). Addresses use the legacy ``host:port`` syntax of
:mod:`netstack.net.sockaddr`. Modes, link state and ``info network`` text:

* ``listen=H:P`` - one peer at a time; link down until a peer connects (info empty), up
  while connected (``socket: connection from H:P``), down and empty again at its end,
  then the next peer is accepted. ``listen(fd, 0)``.
* ``connect=H:P`` - non-blocking connect, ``TCP_NODELAY``; info ``socket: connect to
  H:P``; the link is up from the start (frames wait in the queue until the connection is
  made). At the end of the connection the link goes down and the info is emptied; no
  reconnection.
* ``mcast=G:P[,localaddr=A]`` - see :func:`~drivers.socket.dgramsock.mcast_socket`;
  frames go to G:P, and the netdev hears its own (``socket: mcast=G:P``).
* ``udp=R:P,localaddr=L:P`` - bound to L, sends to R, receives from anyone
  (``socket: udp=R:P``).
* ``fd=N`` - an inherited socket (or a named fd of the control plane); ``SOCK_STREAM``
  behaves as a connected ``connect=`` (``socket: fd=N``), ``SOCK_DGRAM`` sends on the
  connected socket (``socket: fd=N inet|unix``); other types fail ("socket type=T for
  fd=N must be either SOCK_DGRAM or SOCK_STREAM"). The netdev owns and closes the fd.

Beyond QEMU (no valid QEMU configuration changes meaning):

* IPv6: ``[addr]:port`` wherever ``host:port`` is accepted; IPv6 multicast groups.
* A failed ``connect=`` is logged and shown as ``error: Failed to connect to 'H:P':
  REASON`` (QEMU shows an empty string and says nothing).
* ``x-reconnect-ms=N`` with ``connect=`` (``x_reconnect_ms``, read from the options once
  the schema carries it, like the other ``x-`` extensions): after a failed attempt or the
  end of a connection, retry every N ms; the link is down while not connected.
* Accepted connections get ``TCP_NODELAY`` too (QEMU leaves Nagle on for them: with a
  peer advertising a small window, Nagle and delayed ACKs stall each segment ~40 ms).
* A ``SOCK_DGRAM`` ``fd=`` always sends on the connected socket (QEMU's ``sendto`` with
  a zeroed IPv4 address fails for inet sockets).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import TYPE_CHECKING

from drivers.socket.dgramsock import mcast_socket, os_error, set_nodelay, tcp_socket, udp_socket
from drivers.socket.transport import DatagramTransport, StreamTransport
from netstack.driver import DriverHost, DriverSpec
from netstack.errors import GenericError
from netstack.net.fdio import FdWatch
from netstack.net.sockaddr import (
    InetAddr,
    address_type,
    fd_param,
    host_fd_lookup,
    ipv4_interface,
    parse_host_port,
)
from netstack.qapi import NetdevSocketOptions

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.qapi import Netdev

_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN, errno.EINTR)


class SocketStream(StreamTransport):
    """A ``socket`` netdev over a stream connection (``fd=`` of type ``SOCK_STREAM``)."""

    type = "socket"

    def connection_lost(self, error: OSError | None) -> None:
        self.info_str = ""
        super().connection_lost(error)


class SocketListen(SocketStream):
    """``listen=``: serves one peer at a time."""

    def __init__(self, name: str, host: DriverHost, listener: socket.socket) -> None:
        super().__init__(name, host)
        self.listener: socket.socket | None = listener
        self.link_down = True
        self._accepting = FdWatch(self.loop, listener.fileno(), self._on_acceptable)
        self._accept()

    def _accept(self) -> None:
        self._accepting.set_reading(True)

    def _stop_accepting(self) -> None:
        self._accepting.set_reading(False)

    def _on_acceptable(self) -> None:
        if self.listener is None:
            return
        try:
            conn, peer = self.listener.accept()
        except OSError:
            return  # EAGAIN, or the peer gave up meanwhile: wait for the next one
        self._stop_accepting()
        set_nodelay(conn)  # beyond QEMU, which leaves Nagle on for accepted peers
        self.attach(conn)
        self.link_down = False
        self.info_str = f"socket: connection from {_peer_text(conn.family, peer)}"

    def connection_lost(self, error: OSError | None) -> None:
        super().connection_lost(error)
        self._accept()

    def cleanup(self) -> None:
        self._accepting.close()
        super().cleanup()
        if self.listener is not None:
            self.listener.close()
            self.listener = None


class SocketConnect(SocketStream):
    """``connect=``: one connection (or, with ``x-reconnect-ms``, one at a time, retried)."""

    def __init__(self, name: str, host: DriverHost, addr: InetAddr, reconnect_ms: int = 0) -> None:
        super().__init__(name, host)
        self.addr = addr
        self.reconnect_ms = reconnect_ms
        self.connecting = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.info_str = f"socket: connect to {addr}"

    def start(self, sock: socket.socket, connected: bool) -> None:
        """Use ``sock``, connected or with a connect in progress."""
        self.detach()
        self._set_socket(sock)
        set_nodelay(sock)
        if connected:
            self._connected()
        else:
            self.connecting = True
            self.blocked = True
            self._start_writing()

    def _connected(self) -> None:
        self.connecting = False
        self.blocked = False
        self.link_down = False
        self.info_str = f"socket: connect to {self.addr}"
        self._start_reading()
        self.flush_queued()

    def _on_writable(self) -> None:
        if not self.connecting:
            super()._on_writable()
            return
        self._stop_writing()
        sock = self.sock
        assert sock is not None
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == 0:
            self._connected()
        else:
            self._failed(OSError(code, os.strerror(code)))

    def _failed(self, error: OSError) -> None:
        self.connecting = False
        self.detach()
        self.link_down = True
        reason = os.strerror(error.errno or 0)
        self.log.warning("%s: can't connect to %s: %s", self.name, self.addr, reason)
        self.info_str = f"error: Failed to connect to '{self.addr}': {reason}"
        self.flush_queued()
        self._arm_retry()

    def connection_lost(self, error: OSError | None) -> None:
        if self.connecting:
            self._failed(error or OSError(errno.ECONNREFUSED, "refused"))
            return
        super().connection_lost(error)
        self._arm_retry()

    def _arm_retry(self) -> None:
        if self.reconnect_ms > 0 and self._timer is None and not self._closed:
            self._timer = self.loop.call_later(self.reconnect_ms / 1000, self._retry)

    def _retry(self) -> None:
        self._timer = None
        if self._closed:
            return
        try:
            sock = tcp_socket(self.addr.family)
        except GenericError as exc:
            self.info_str = f"error: {exc.desc}"
            self._arm_retry()
            return
        code = sock.connect_ex(self.addr.sockaddr)
        if code and code not in _IN_PROGRESS:
            sock.close()
            self._failed(OSError(code, os.strerror(code)))
            return
        self.info_str = f"socket: connect to {self.addr}"
        self.start(sock, connected=code == 0)

    def cleanup(self) -> None:
        self._closed = True
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        super().cleanup()


class SocketDatagram(DatagramTransport):
    """``mcast=``, ``udp=`` and ``SOCK_DGRAM`` ``fd=``."""

    type = "socket"


def _peer_text(family: int, peer: tuple[str, int] | tuple[str, int, int, int]) -> str:
    if family == socket.AF_INET6:
        return f"[{peer[0]}]:{peer[1]}"
    return f"{peer[0]}:{peer[1]}"


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    opts = netdev.options
    assert isinstance(opts, NetdevSocketOptions)
    chosen = (opts.fd, opts.listen, opts.connect, opts.mcast, opts.udp)
    if sum(value is not None for value in chosen) != 1:
        raise GenericError("exactly one of listen=, connect=, mcast= or udp= is required")
    if opts.localaddr is not None and opts.mcast is None and opts.udp is None:
        raise GenericError("localaddr= is only valid with mcast= or udp=")
    reconnect_ms: int | None = getattr(opts, "x_reconnect_ms", None)
    if reconnect_ms is not None and opts.connect is None:
        raise GenericError("x-reconnect-ms= is only valid with connect=")
    if opts.fd is not None:
        return [_from_fd(host, netdev.id, opts.fd)]
    if opts.listen is not None:
        return [await _listen(host, netdev.id, opts.listen)]
    if opts.connect is not None:
        return [await _connect(host, netdev.id, opts.connect, reconnect_ms or 0)]
    if opts.mcast is not None:
        return [await _mcast(host, netdev.id, opts.mcast, opts.localaddr)]
    assert opts.udp is not None
    if opts.localaddr is None:
        raise GenericError("localaddr= is mandatory with udp=")
    return [await _udp(host, netdev.id, opts.udp, opts.localaddr)]


def _from_fd(host: DriverHost, name: str, text: str) -> NetClient:
    fd = fd_param(text, host_fd_lookup(host))
    try:
        os.set_blocking(fd, False)
    except OSError as exc:
        raise GenericError(
            f"{name}: Can't use file descriptor {fd}: {os.strerror(exc.errno or 0)}"
        ) from exc
    try:
        sock = socket.socket(fileno=fd)
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    except OSError:
        os.close(fd)
        raise GenericError("can't get socket option SO_TYPE") from None
    if kind == socket.SOCK_STREAM:
        client = SocketStream(name, host)
        set_nodelay(sock)
        client.attach(sock)
        client.info_str = f"socket: fd={fd}"
        return client
    if kind == socket.SOCK_DGRAM:
        dgram = SocketDatagram(name, host, sock, None)
        dgram.info_str = f"socket: fd={fd} {address_type(sock.family)}"
        return dgram
    sock.close()
    raise GenericError(f"socket type={kind} for fd={fd} must be either SOCK_DGRAM or SOCK_STREAM")


async def _listen(host: DriverHost, name: str, text: str) -> NetClient:
    addr = await parse_host_port(text)
    sock = tcp_socket(addr.family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr.sockaddr)
        except OSError as exc:
            raise os_error(f"can't bind ip={addr.host} to socket", exc) from exc
        try:
            sock.listen(0)
        except OSError as exc:
            raise os_error("can't listen on socket", exc) from exc
    except BaseException:
        sock.close()
        raise
    return SocketListen(name, host, sock)


async def _connect(host: DriverHost, name: str, text: str, reconnect_ms: int) -> NetClient:
    addr = await parse_host_port(text)
    sock = tcp_socket(addr.family)
    code = sock.connect_ex(addr.sockaddr)
    if code and code not in _IN_PROGRESS:
        sock.close()
        raise GenericError(f"can't connect socket: {os.strerror(code)}")
    client = SocketConnect(name, host, addr, reconnect_ms)
    client.start(sock, connected=code == 0)
    return client


async def _mcast(host: DriverHost, name: str, text: str, localaddr: str | None) -> NetClient:
    group = await parse_host_port(text)
    interface = None
    if localaddr is not None:
        interface = ipv4_interface(localaddr)
        if interface is None:
            raise GenericError(f"localaddr '{localaddr}' is not a valid IPv4 address")
    sock = mcast_socket(group, interface)
    client = SocketDatagram(name, host, sock, group.sockaddr)
    client.info_str = f"socket: mcast={group}"
    return client


async def _udp(host: DriverHost, name: str, remote_text: str, local_text: str) -> NetClient:
    local = await parse_host_port(local_text)
    remote = await parse_host_port(remote_text)
    if local.family != remote.family:
        raise GenericError("localaddr= and udp= must be of the same address family")
    sock = udp_socket(local)
    client = SocketDatagram(name, host, sock, remote.sockaddr)
    client.info_str = f"socket: udp={remote}"
    return client


SPEC = DriverSpec(
    "socket",
    create,
    "a legacy socket (listen=|connect=|mcast=|udp=H:P[,localaddr=H[:P]] or fd=N)",
)
