"""Datagram and legacy stream sockets opened the way ``net/socket.c`` and ``net/dgram.c``
open them, with their error texts (``error_setg_errno``: ``TEXT: strerror``).

* :func:`mcast_socket` - ``net_socket_mcast_create`` / ``net_dgram_mcast_create``: the
  address must be multicast ("specified mcastaddr A (0x...) does not contain a multicast
  address"), ``SO_REUSEADDR``, bound to group:port, ``IP_ADD_MEMBERSHIP`` on the local
  interface address (or any), ``IP_MULTICAST_LOOP`` on (several peers on one host hear
  each other, and a sender hears itself), ``IP_MULTICAST_IF`` when an interface address is
  given. The TTL is left at the kernel default (1).
* :func:`udp_socket` - a bound unicast datagram socket (``SO_REUSEADDR``, "can't bind
  ip=A to socket").
* :func:`tcp_socket` - a non-blocking stream socket of the address's family.

Beyond QEMU: IPv6 addresses (``InetAddr`` of family ``AF_INET6``), multicast groups in
``ff00::/8`` joined with ``IPV6_JOIN_GROUP`` on the default interface.

Invariant: a socket is returned non-blocking and fully set up, or closed and an error
raised.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct

from netstack.errors import GenericError
from netstack.net.sockaddr import InetAddr


def os_error(text: str, exc: OSError) -> GenericError:
    """``error_setg_errno(errp, errno, text)``."""
    return GenericError(f"{text}: {os.strerror(exc.errno or 0)}")


def _new(family: int, kind: int, what: str) -> socket.socket:
    try:
        return socket.socket(family, kind)
    except OSError as exc:
        raise os_error(f"can't create {what} socket", exc) from exc


def _reuse(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    except OSError as exc:
        sock.close()
        raise os_error("can't set socket option SO_REUSEADDR", exc) from exc


def _bind(sock: socket.socket, addr: InetAddr) -> None:
    try:
        sock.bind(addr.sockaddr)
    except OSError as exc:
        sock.close()
        raise os_error(f"can't bind ip={addr.host} to socket", exc) from exc


def mcast_socket(group: InetAddr, interface: str | None) -> socket.socket:
    """A socket bound to and member of multicast ``group`` (``interface``: dotted IPv4)."""
    if not group.is_multicast:
        if group.family == socket.AF_INET6:
            raise GenericError(
                f"specified mcastaddr {group.host} does not contain a multicast address"
            )
        value = struct.unpack(">I", socket.inet_aton(group.host))[0]
        raise GenericError(
            f"specified mcastaddr {group.host} (0x{value:08x}) does not contain a multicast address"
        )
    sock = _new(group.family, socket.SOCK_DGRAM, "datagram")
    _reuse(sock)
    _bind(sock, group)
    packed = socket.inet_pton(group.family, group.host)
    try:
        if group.family == socket.AF_INET6:
            mreq6 = packed + struct.pack("@I", 0)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)
        else:
            local = socket.inet_aton(interface or "0.0.0.0")
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, packed + local)
    except OSError as exc:
        sock.close()
        raise os_error(f"can't add socket to multicast group {group.host}", exc) from exc
    try:
        if group.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    except OSError as exc:
        sock.close()
        raise os_error("can't force multicast message to loopback", exc) from exc
    if interface is not None and group.family == socket.AF_INET:
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        except OSError as exc:
            sock.close()
            raise os_error("can't set the default network send interface", exc) from exc
    sock.setblocking(False)
    return sock


def udp_socket(local: InetAddr) -> socket.socket:
    """A datagram socket bound to ``local`` (``SO_REUSEADDR`` set first)."""
    sock = _new(local.family, socket.SOCK_DGRAM, "datagram")
    _reuse(sock)
    _bind(sock, local)
    sock.setblocking(False)
    return sock


def tcp_socket(family: int) -> socket.socket:
    """A non-blocking stream socket ("can't create stream socket")."""
    sock = _new(family, socket.SOCK_STREAM, "stream")
    sock.setblocking(False)
    return sock


def set_nodelay(sock: socket.socket) -> None:
    """``socket_set_nodelay``: disable Nagle where the socket has it (errors ignored)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
