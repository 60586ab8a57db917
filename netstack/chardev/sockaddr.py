"""Socket addresses of socket chardevs: listen, connect, and QEMU's texts for them.

Owns the translation of QAPI socket addresses (:mod:`netstack.qapi.sockets`) into bound,
listening or connected non-blocking sockets, following ``util/qemu-sockets.c`` (QEMU
10.0): ``inet_listen_saddr`` (port ranges with ``to``, the IPv4/IPv6 family matrix,
``IPV6_V6ONLY`` off when neither or both families are asked for, ``SO_REUSEADDR``),
``inet_connect_saddr``, ``unix_listen_saddr`` / ``unix_connect_saddr`` (Linux abstract
names, ``tight`` address length, a temporary path for an empty one), vsock, and ``fd``
addresses. Error texts are QEMU's (``Failed to connect to 'PATH': <strerror>``, ...).

It also renders the ``query-chardev`` filenames of ``chardev/char-socket.c``:
:func:`address_text` (``qemu_chr_socket_address``, used with the ``disconnected:``
prefix) and :func:`connected_text` (``qemu_chr_compute_filename``).

Deviation: before binding, QEMU unlinks whatever file is at a unix socket's path; here
only a stale *socket* is removed, so a mistyped path cannot delete a user's file (the
bind then fails with ``Address already in use``).

Invariants: nothing here blocks the loop (name resolution goes through
``loop.getaddrinfo``, connects through ``loop.sock_connect``); a socket is returned only
when fully set up, and closed on every error path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import tempfile
from collections.abc import Callable
from typing import Any

from netstack.errors import GenericError
from netstack.qapi.sockets import (
    FdSocketAddress,
    InetSocketAddress,
    SocketAddressData,
    UnixSocketAddress,
    VsockSocketAddress,
)

#: ``sizeof(((struct sockaddr_un *)0)->sun_path)`` on Linux.
SUN_PATH_MAX = 108

FdLookup = Callable[[str], int]


def _err(text: str, exc: OSError | None = None, code: int | None = None) -> GenericError:
    """``error_setg_errno``: ``text: strerror(errno)``."""
    num = code if code is not None else (exc.errno if exc is not None else 0)
    return GenericError(f"{text}: {os.strerror(num or 0)}")


# -- texts -----------------------------------------------------------------------------------


def address_text(
    addr: SocketAddressData, *, listen: bool, protocol: str = "tcp", prefix: str = ""
) -> str:
    """``qemu_chr_socket_address``: the address as ``-chardev`` would spell it."""
    server = ",server=on" if listen else ""
    if isinstance(addr, InetSocketAddress):
        return f"{prefix}{protocol}:{addr.host}:{addr.port}{server}"
    if isinstance(addr, UnixSocketAddress):
        extra = ""
        if addr.abstract:
            extra = ",abstract=on" + (",tight=on" if addr.tight else "")
        return f"{prefix}unix:{addr.path}{extra}{server}"
    if isinstance(addr, FdSocketAddress):
        return f"{prefix}fd:{addr.fd}{server}"
    return f"{prefix}vsock:{addr.cid}:{addr.port}"


def _cstr(name: Any) -> str:
    """A unix socket name as C's ``%s`` prints ``sun_path`` (abstract names are empty)."""
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return str(name).split("\0", 1)[0]


def _numeric(sa: Any) -> tuple[str, str]:
    host, port = socket.getnameinfo(sa, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
    return host, port


def connected_text(sock: socket.socket, *, listen: bool, protocol: str = "tcp") -> str:
    """``qemu_chr_compute_filename``: ``unix:P[,server=on]`` or
    ``tcp:LHOST:LPORT[,server=on] <-> RHOST:RPORT`` (IPv6 hosts in brackets)."""
    try:
        if sock.family == socket.AF_UNIX:
            if listen:
                return f"unix:{_cstr(sock.getsockname())},server=on"
            return f"unix:{_cstr(sock.getpeername())}"
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            left, right = ("[", "]") if sock.family == socket.AF_INET6 else ("", "")
            lhost, lport = _numeric(sock.getsockname())
            phost, pport = _numeric(sock.getpeername())
            server = ",server=on" if listen else ""
            return (
                f"{protocol}:{left}{lhost}{right}:{lport}{server} <-> {left}{phost}{right}:{pport}"
            )
    except OSError:
        pass
    return "unknown"


def local_address(sock: socket.socket) -> SocketAddressData:
    """``socket_local_address``: where a listening socket really is."""
    name = sock.getsockname()
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = _numeric(name)
        if sock.family == socket.AF_INET:
            return InetSocketAddress(host=host, port=port, ipv4=True)
        return InetSocketAddress(host=host, port=port, ipv6=True)
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes) and name[:1] == b"\0":
            return UnixSocketAddress(
                path=_cstr(name[1:]), abstract=True, tight=len(name) < SUN_PATH_MAX
            )
        return UnixSocketAddress(path=_cstr(name))
    cid, port = name
    return VsockSocketAddress(cid=str(cid), port=str(port))


# -- inet --------------------------------------------------------------------------------------


def ai_family(addr: InetSocketAddress) -> int:
    """``inet_ai_family_from_address``: the getaddrinfo family the ipv4/ipv6 flags ask for."""
    v4, v6 = addr.ipv4, addr.ipv6
    if v4 is False and v6 is False:
        raise GenericError("Cannot disable IPv4 and IPv6 at same time")
    if v4 and v6:
        return socket.AF_INET6 if not addr.host else socket.AF_UNSPEC
    if v6 or v4 is False:
        return socket.AF_INET6
    if v4 or v6 is False:
        return socket.AF_INET
    return socket.AF_UNSPEC


async def _resolve(
    host: str | None, port: str | None, family: int, flags: int, shown: tuple[str, str]
) -> list[Any]:
    loop = asyncio.get_running_loop()
    try:
        return await loop.getaddrinfo(
            host, port, family=family, type=socket.SOCK_STREAM, flags=flags
        )
    except socket.gaierror as exc:
        raise GenericError(
            f"address resolution failed for {shown[0]}:{shown[1]}: {exc.strerror}"
        ) from exc


def _keep_alive(sock: socket.socket, addr: InetSocketAddress) -> None:
    if addr.keep_alive:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError as exc:
            sock.close()
            raise _err("Unable to set keep-alive option on socket", exc) from exc


def _protocol(addr: InetSocketAddress, proto: int) -> int:
    mptcp = getattr(socket, "IPPROTO_MPTCP", None)
    return mptcp if addr.mptcp and mptcp is not None else proto


def _try_bind(sock: socket.socket, addr: InetSocketAddress, family: int, sa: Any) -> None:
    v6only = 0 if (addr.ipv4 is None and addr.ipv6 is None) or (addr.ipv4 and addr.ipv6) else 1
    while True:
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        try:
            sock.bind(sa)
            return
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno == errno.EADDRINUSE and not v6only:
                v6only = 1
                continue
            raise


async def inet_listen(addr: InetSocketAddress, backlog: int) -> socket.socket:
    """``inet_listen_saddr`` (port offset 0)."""
    flags = socket.AI_PASSIVE
    if addr.numeric:
        flags |= socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    family = ai_family(addr)
    results = await _resolve(
        addr.host or None, addr.port or None, family, flags, (addr.host, addr.port)
    )
    created = False
    last = 0
    for fam, kind, proto, _canon, sa in results:
        port_min = sa[1]
        port_max = addr.to if addr.to is not None else port_min
        for port in range(port_min, port_max + 1):
            try:
                sock = socket.socket(fam, kind, _protocol(addr, proto))
            except OSError as exc:
                if port == port_min:
                    last = exc.errno or 0
                    break
                raise _err("Failed to recreate failed listening socket", exc) from exc
            created = True
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                _try_bind(sock, addr, fam, (sa[0], port, *sa[2:]))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    last = exc.errno
                    continue
                raise _err("Failed to bind socket", exc) from exc
            try:
                sock.listen(backlog)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    last = exc.errno
                    continue
                raise _err("Failed to listen on socket", exc) from exc
            _keep_alive(sock, addr)
            sock.setblocking(False)
            return sock
    what = "Failed to find an available port" if created else "Failed to create a socket"
    raise _err(what, code=last)


async def inet_connect(addr: InetSocketAddress) -> socket.socket:
    """``inet_connect_saddr``: try every resolved address; the last error wins."""
    flags = socket.AI_CANONNAME | socket.AI_ADDRCONFIG | getattr(socket, "AI_V4MAPPED", 0)
    family = ai_family(addr)
    results = await _resolve(addr.host, addr.port, family, flags, (addr.host, addr.port))
    loop = asyncio.get_running_loop()
    error: GenericError | None = None
    for fam, kind, proto, _canon, sa in results:
        try:
            sock = socket.socket(fam, kind, _protocol(addr, proto))
        except OSError as exc:
            error = _err(f"Failed to create socket family {fam}", exc)
            continue
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, sa)
        except OSError as exc:
            sock.close()
            error = _err(f"Failed to connect to '{addr.host}:{addr.port}'", exc)
            continue
        except BaseException:
            sock.close()
            raise
        _keep_alive(sock, addr)
        return sock
    raise error or GenericError(f"Failed to connect to '{addr.host}:{addr.port}'")


# -- unix ------------------------------------------------------------------------------------


def _unix_sockaddr(addr: UnixSocketAddress, path: str) -> str | bytes:
    encoded = os.fsencode(path)
    abstract = bool(addr.abstract)
    if len(encoded) > SUN_PATH_MAX or (abstract and len(encoded) > SUN_PATH_MAX - 1):
        raise GenericError(f"UNIX socket path '{path}' is too long")
    if not abstract:
        return path
    name = b"\0" + encoded
    if addr.tight is False:
        name = name.ljust(SUN_PATH_MAX, b"\0")
    return name


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _err(f"Failed to unlink socket {path}", exc) from exc
    if not stat.S_ISSOCK(st.st_mode):
        return  # not ours to delete: bind() reports EADDRINUSE
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _err(f"Failed to unlink socket {path}", exc) from exc


def unix_listen(
    addr: UnixSocketAddress, backlog: int, mode: int | None = None
) -> tuple[socket.socket, str | None]:
    """``unix_listen_saddr``; returns the socket and the file it created (None if
    abstract). ``mode`` (e.g. 0o600) is applied to the socket file, without a window in
    which it has wider permissions."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise _err("Failed to create Unix socket", exc) from exc
    try:
        path = addr.path
        abstract = bool(addr.abstract)
        temp = not path and not abstract
        if temp:
            tmpdir = os.environ.get("TMPDIR") or "/tmp"
            try:
                fd, path = tempfile.mkstemp(prefix="qemu-socket-", dir=tmpdir)
            except OSError as exc:
                raise _err(
                    f"Failed to make a temporary socket {tmpdir}/qemu-socket-XXXXXX", exc
                ) from exc
            os.close(fd)
        sockaddr = _unix_sockaddr(addr, path)
        if not abstract:
            if temp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                _remove_stale(path)
        old_umask = os.umask(0o777 & ~mode) if mode is not None and not abstract else None
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            raise _err(f"Failed to bind socket to {path}", exc) from exc
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if mode is not None and not abstract:
            os.chmod(path, mode)
        try:
            sock.listen(backlog)
        except OSError as exc:
            if not abstract:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise _err("Failed to listen on socket", exc) from exc
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock, None if abstract else path


async def unix_connect(addr: UnixSocketAddress) -> socket.socket:
    """``unix_connect_saddr``."""
    sockaddr = _unix_sockaddr(addr, addr.path)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        raise _err("Failed to create socket", exc) from exc
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, sockaddr)
    except OSError as exc:
        sock.close()
        raise _err(f"Failed to connect to '{addr.path}'", exc) from exc
    except BaseException:
        sock.close()
        raise
    return sock


# -- vsock and fd --------------------------------------------------------------------------------


def _vsock_sockaddr(addr: VsockSocketAddress) -> tuple[int, int]:
    def number(text: str) -> int | None:
        if not text.isdigit() or not text.isascii():
            return None
        value = int(text)
        return value if value <= 0xFFFFFFFF else None

    cid, port = number(addr.cid), number(addr.port)
    if cid is None:
        raise GenericError(f"Failed to parse cid '{addr.cid}'")
    if port is None:
        raise GenericError(f"Failed to parse port '{addr.port}'")
    return cid, port


def _vsock_family() -> int:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise GenericError("socket family AF_VSOCK unsupported")
    return int(family)


def vsock_listen(addr: VsockSocketAddress, backlog: int) -> socket.socket:
    sockaddr = _vsock_sockaddr(addr)
    try:
        sock = socket.socket(_vsock_family(), socket.SOCK_STREAM)
    except OSError as exc:
        raise _err("Failed to create socket", exc) from exc
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise _err("Failed to bind socket", exc) from exc
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _err("Failed to listen on socket", exc) from exc
    sock.setblocking(False)
    return sock


async def vsock_connect(addr: VsockSocketAddress) -> socket.socket:
    sockaddr = _vsock_sockaddr(addr)
    family = _vsock_family()
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise _err(f"Failed to create socket family {family}", exc) from exc
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, sockaddr)
    except OSError as exc:
        sock.close()
        raise _err(f"Failed to connect to '{addr.cid}:{addr.port}'", exc) from exc
    return sock


def fd_socket(addr: FdSocketAddress, lookup: FdLookup | None) -> socket.socket:
    """``socket_get_fd``: a monitor fd name through ``lookup``, else an fd number."""
    if lookup is not None:
        fd = lookup(addr.fd)
    else:
        text = addr.fd.strip()
        if not (text.lstrip("+-").isdigit() and text.isascii()):
            raise _err(f"Unable to parse FD number {addr.fd}", code=errno.EINVAL)
        fd = int(text)
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise GenericError(f"File descriptor '{addr.fd}' is not a socket") from None
    sock.setblocking(False)
    return sock


async def listen(
    addr: SocketAddressData,
    *,
    backlog: int,
    mode: int | None = None,
    fd_lookup: FdLookup | None = None,
) -> tuple[socket.socket, str | None]:
    """``socket_listen``: a listening socket and the file it created, if any."""
    if isinstance(addr, InetSocketAddress):
        return await inet_listen(addr, backlog), None
    if isinstance(addr, UnixSocketAddress):
        return unix_listen(addr, backlog, mode)
    if isinstance(addr, VsockSocketAddress):
        return vsock_listen(addr, backlog), None
    sock = fd_socket(addr, fd_lookup)
    try:
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise _err("Failed to listen on fd socket", exc) from exc
    return sock, None


async def connect(addr: SocketAddressData, *, fd_lookup: FdLookup | None = None) -> socket.socket:
    """``socket_connect``."""
    if isinstance(addr, InetSocketAddress):
        return await inet_connect(addr)
    if isinstance(addr, UnixSocketAddress):
        return await unix_connect(addr)
    if isinstance(addr, VsockSocketAddress):
        return await vsock_connect(addr)
    return fd_socket(addr, fd_lookup)
