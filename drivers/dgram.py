"""The ``dgram`` netdev (QEMU 7.2+, ``net/dgram.c``): one frame per datagram.

``local`` and ``remote`` are QAPI ``SocketAddress`` values. QEMU's order of decisions:

1. ``remote`` of type inet is converted first (``convert_host_port``: IPv4, names
   resolved, ``strtol`` port); a multicast address selects multicast mode, where
   ``local`` may be absent, an inet interface address ("localaddr 'H' is not a valid IPv4
   address"; its port is ignored) or an fd (replaced by a fresh member socket, ``dup2``'d
   onto it: "cloned"; beyond QEMU, whose code for this reads the fd union as an inet
   address, the clone joins on the fd's ``IP_MULTICAST_IF`` if it has one); any other
   local type: "only support inet or fd type for local".
2. Otherwise "dgram requires local= parameter"; with ``remote``: "don't set remote with
   local.fd", "remote and local types must be the same"; without: "type=inet or
   type=unix requires remote parameter".
3. inet: bound to local (``SO_REUSEADDR``), sends to remote, receives from anyone
   (info ``udp=LH:LP/RH:RP``, the ports as given); unix: the local path is unlinked and
   bound, datagrams go to the remote path (``udp=LPATH:RPATH``); fd: an inherited or
   named socket, sending on it as connected (``fd=N unix|inet``); vsock and others: "only
   support inet or fd type for local".

Multicast info: ``mcast=G:P`` (``fd=N (cloned mcast=G:P)`` for an fd).

Beyond QEMU: IPv6 addresses and groups (see :mod:`netstack.net.sockaddr`); the bound unix
path is removed when the netdev goes away (QEMU leaves it); zero-length and over-long
datagrams are counted (``malformed``) and dropped, where QEMU stops reading at a
zero-length one and truncates long ones.

Deviation: before binding, QEMU unlinks whatever is at the local unix path; here only a
stale *socket* is removed (as :mod:`netstack.chardev.sockaddr` does), so a mistyped path
cannot delete a user's file - bind() then fails with "Address already in use".
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import TYPE_CHECKING, Any

from drivers.socket.dgramsock import mcast_socket, os_error, udp_socket
from drivers.socket.transport import DatagramTransport
from netstack.driver import DriverHost, DriverSpec
from netstack.errors import GenericError
from netstack.net.sockaddr import (
    UNIX_PATH_MAX,
    InetAddr,
    address_type,
    convert_host_port,
    fd_param,
    host_fd_lookup,
    ipv4_interface,
)
from netstack.qapi import NetdevDgramOptions
from netstack.qapi.sockets import (
    FdSocketAddress,
    InetSocketAddress,
    SocketAddress,
    UnixSocketAddress,
)

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.qapi import Netdev


class DgramNetdev(DatagramTransport):
    """A ``dgram`` netdev; ``path`` is the unix socket file it bound, if any."""

    type = "dgram"

    def __init__(
        self, name: str, host: DriverHost, sock: socket.socket, dest: Any, path: str | None
    ) -> None:
        super().__init__(name, host, sock, dest)
        self.path = path

    def cleanup(self) -> None:
        super().cleanup()
        path, self.path = self.path, None
        if path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    opts = netdev.options
    assert isinstance(opts, NetdevDgramOptions)
    remote, local = opts.remote, opts.local
    remote_inet: InetAddr | None = None
    if remote is not None and isinstance(remote.data, InetSocketAddress):
        remote_inet = await convert_host_port(remote.data.host, remote.data.port)
        if remote_inet.is_multicast:
            return [_mcast(host, netdev.id, remote_inet, local)]
    if local is None:
        raise GenericError("dgram requires local= parameter")
    if remote is not None:
        if local.type == "fd":
            raise GenericError("don't set remote with local.fd")
        if remote.type != local.type:
            raise GenericError("remote and local types must be the same")
    elif local.type != "fd":
        raise GenericError("type=inet or type=unix requires remote parameter")
    data = local.data
    if isinstance(data, InetSocketAddress):
        assert remote_inet is not None
        laddr = await convert_host_port(data.host, data.port)
        if laddr.family != remote_inet.family:
            raise GenericError("remote and local addresses must be of the same family")
        sock = udp_socket(laddr)
        client = DgramNetdev(netdev.id, host, sock, remote_inet.sockaddr, None)
        client.info_str = f"udp={laddr}/{remote_inet}"
        return [client]
    if isinstance(data, UnixSocketAddress):
        assert remote is not None and isinstance(remote.data, UnixSocketAddress)
        return [_unix(host, netdev.id, data.path, remote.data.path)]
    if isinstance(data, FdSocketAddress):
        sock, fd = _fd_socket(host, netdev.id, data)
        client = DgramNetdev(netdev.id, host, sock, None, None)
        client.info_str = f"fd={fd} {address_type(sock.family)}"
        return [client]
    raise GenericError("only support inet or fd type for local")


def _remove_stale(path: str) -> None:
    """Unlink a socket left at ``path``; anything else is left for bind() to refuse."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise os_error(f"failed to unlink socket {path}", exc) from exc


def _unix(host: DriverHost, name: str, local: str, remote: str) -> NetClient:
    _remove_stale(local)
    for path in (local, remote):
        if len(os.fsencode(path)) >= UNIX_PATH_MAX:
            raise GenericError(f"UNIX socket path '{path}' is too long")
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    except OSError as exc:
        raise os_error("can't create datagram socket", exc) from exc
    try:
        sock.bind(local)
    except OSError as exc:
        sock.close()
        raise os_error(f"can't bind unix={local} to socket", exc) from exc
    client = DgramNetdev(name, host, sock, os.fsencode(remote), local)
    client.info_str = f"udp={local}:{remote}"
    return client


def _fd_socket(host: DriverHost, name: str, addr: FdSocketAddress) -> tuple[socket.socket, int]:
    fd = fd_param(addr.fd, host_fd_lookup(host))
    try:
        os.set_blocking(fd, False)
    except OSError as exc:
        raise GenericError(
            f"{name}: Can't use file descriptor {fd}: {os.strerror(exc.errno or 0)}"
        ) from exc
    try:
        return socket.socket(fileno=fd), fd
    except OSError:
        os.close(fd)
        raise GenericError(f"File descriptor '{addr.fd}' is not a socket") from None


def _mcast(host: DriverHost, name: str, group: InetAddr, local: SocketAddress | None) -> NetClient:
    info = f"mcast={group}"
    if local is None:
        sock = mcast_socket(group, None)
    elif isinstance(local.data, InetSocketAddress):
        interface = ipv4_interface(local.data.host)
        if interface is None:
            raise GenericError(f"localaddr '{local.data.host}' is not a valid IPv4 address")
        sock = mcast_socket(group, interface)
    elif isinstance(local.data, FdSocketAddress):
        sock, fd = _fd_socket(host, name, local.data)
        try:
            fresh = mcast_socket(group, _multicast_interface(sock))
        except GenericError:
            sock.close()
            raise
        sock.detach()
        os.dup2(fresh.fileno(), fd)
        fresh.close()
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        info = f"fd={fd} (cloned mcast={group})"
    else:
        raise GenericError("only support inet or fd type for local")
    client = DgramNetdev(name, host, sock, group.sockaddr, None)
    client.info_str = info
    return client


def _multicast_interface(sock: socket.socket) -> str | None:
    """The ``IP_MULTICAST_IF`` of an inherited IPv4 socket, if it set one."""
    if sock.family != socket.AF_INET:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
    except OSError:
        return None
    address = socket.inet_ntoa(raw) if len(raw) == 4 else "0.0.0.0"
    return None if address == "0.0.0.0" else address


SPEC = DriverSpec(
    "dgram",
    create,
    "a datagram socket: unicast, multicast or unix (local.type=...,remote.type=...)",
)
