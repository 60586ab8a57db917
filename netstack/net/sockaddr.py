"""Socket addresses as QEMU's net backends parse, resolve and print them.

Owns, with QEMU's error texts and quirks:

* the legacy ``host:port`` syntax of ``-netdev socket`` (``net/net.c`` ``parse_host_port``
  and ``convert_host_port``): split at the first ``:``; an empty host is INADDR_ANY; a host
  starting with a digit must be an IPv4 address in ``inet_aton`` syntax (``127.1`` and
  ``0x7f.1`` are valid); any other host is resolved (``gethostbyname``, first IPv4
  address); the port is read like ``strtol(port, &end, 0)`` - base auto-detected, leading
  blanks and a sign allowed, trailing garbage ignored - and truncated to 16 bits as
  ``htons`` does (``-1`` is 65535, ``70000`` is 4464);
* :class:`InetAddr`, a resolved IPv4/IPv6 address with QEMU's ``inet_ntoa``-style text;
* the ``SocketAddress`` form of a bound or peer name (``socket_sockaddr_to_address``; the
  ``addr`` member of ``NETDEV_STREAM_CONNECTED``: ``port`` as a string, ``ipv4`` or
  ``ipv6`` true, Linux abstract unix names with ``abstract``/``tight``) and its URI
  (``socket_uri``: ``tcp:H:P``, ``unix:PATH``, ``fd:N``, ``vsock:C:P``);
* file-descriptor parameters (``monitor_fd_param``): digits are an fd number of this
  process, anything else a name the control plane registered.

Beyond QEMU: IPv6. ``[addr]:port`` in the legacy syntax and an IPv6 literal as the host of
an ``InetSocketAddress`` give an :class:`InetAddr` of family ``AF_INET6``; QEMU rejects
both (``can't resolve host address '['``), so no valid QEMU configuration changes meaning.

Name resolution runs in the loop's executor; everything else is pure. Opening sockets for
QAPI ``SocketAddress`` values (listen/connect) is :mod:`netstack.chardev.sockaddr`'s job.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from netstack.errors import GenericError

#: ``sizeof(((struct sockaddr_un *)0)->sun_path)`` on Linux.
UNIX_PATH_MAX: Final = 108
_LONG_MAX: Final = (1 << 63) - 1
_INT_MAX: Final = (1 << 31) - 1
_STRTOL_RX: Final = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX](?=[0-9a-fA-F])|0|)([0-9a-fA-F]*)")

FdLookup = Callable[[str], int | None]
"""Looks up a file descriptor the control plane holds under a name (QMP ``getfd``)."""


def qemu_strtol(text: str) -> int | None:
    """``qemu_strtol(text, &end, 0, &value)``: the leading number of ``text``, or None.

    None when no digits can be read or the value does not fit a C ``long`` (QEMU's
    ``-EINVAL`` / ``-ERANGE``); trailing characters are ignored, as with an end pointer.
    """
    match = _STRTOL_RX.match(text)
    assert match is not None
    sign, prefix, digits = match.groups()
    if prefix.lower() == "0x":
        base = 16
    elif prefix == "0":
        base = 8
    else:
        base = 10
    valid = "0123456789abcdef"[:base]
    count = 0
    for ch in digits.lower():
        if ch not in valid:
            break
        count += 1
    digits = digits[:count]
    if not digits:
        if prefix:  # "0", or "0x" followed by no hex digit: the "0" was read
            return 0
        return None
    if len(digits.lstrip("0")) > 24:  # beyond a C long in base 8, 10 or 16 (ERANGE);
        return None  # and int() would refuse thousands of digits
    value = int(digits, base)
    if sign == "-":
        value = -value
    if value > _LONG_MAX or value < -_LONG_MAX - 1:
        return None
    return value


@dataclass(frozen=True)
class InetAddr:
    """A resolved IP address and port; ``str()`` is QEMU's ``%s:%d`` (``[v6]:port``)."""

    family: int
    host: str
    port: int

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def is_any(self) -> bool:
        return self.host in ("0.0.0.0", "::")

    @property
    def is_multicast(self) -> bool:
        if self.family == socket.AF_INET6:
            return self.host.lower().startswith("ff")
        return 224 <= int(self.host.split(".", 1)[0]) <= 239

    def __str__(self) -> str:
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def split_host_port(text: str) -> tuple[str, str]:
    """Split legacy ``host:port`` at the first colon (``[v6]:port`` beyond QEMU)."""
    if text.startswith("["):
        end = text.find("]:")
        if end > 0:
            return text[1:end], text[end + 2 :]
    host, sep, port = text.partition(":")
    if not sep:
        raise GenericError(f"host address '{text}' doesn't contain ':' separating host from port")
    return host, port


def _inet_aton(host: str) -> str | None:
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def _inet6_literal(host: str) -> str | None:
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))
    except (OSError, ValueError):
        return None


async def convert_host_port(host: str, port: str) -> InetAddr:
    """QEMU's ``convert_host_port`` (plus IPv6 literals); resolves names off the loop."""
    family = socket.AF_INET
    if host == "":
        addr = "0.0.0.0"
    elif host[0].isascii() and host[0].isdigit() and ":" not in host:
        parsed = _inet_aton(host)
        if parsed is None:
            raise GenericError(f"host address '{host}' is not a valid IPv4 address")
        addr = parsed
    elif ":" in host and (v6 := _inet6_literal(host)) is not None:
        family, addr = socket.AF_INET6, v6
    elif host[0].isascii() and host[0].isdigit():
        raise GenericError(f"host address '{host}' is not a valid IPv4 address")
    else:
        loop = asyncio.get_running_loop()
        try:
            addr = await loop.run_in_executor(None, socket.gethostbyname, host)
        except (OSError, UnicodeError):
            raise GenericError(f"can't resolve host address '{host}'") from None
    value = qemu_strtol(port)
    if value is None:
        raise GenericError(f"port number '{port}' is invalid")
    return InetAddr(family, addr, value & 0xFFFF)


async def parse_host_port(text: str) -> InetAddr:
    """QEMU's ``parse_host_port``: legacy ``host:port`` to an address."""
    host, port = split_host_port(text)
    return await convert_host_port(host, port)


def ipv4_interface(text: str) -> str | None:
    """``inet_aton`` of a ``localaddr=`` interface address (dotted form), or None."""
    return _inet_aton(text) if text else None


def address_of(family: int, name: Any) -> dict[str, Any]:
    """The QAPI ``SocketAddress`` (as JSON members) of a socket name from the kernel.

    ``name`` is what ``getsockname``/``getpeername`` returned for ``family``. Follows
    ``socket_sockaddr_to_address``: numeric host, ``port`` as a string, ``ipv4`` or
    ``ipv6`` true; unix paths, with ``abstract`` and ``tight`` for abstract names.
    """
    if family in (socket.AF_INET, socket.AF_INET6):
        host, port = name[0], name[1]
        flag = "ipv4" if family == socket.AF_INET else "ipv6"
        return {"type": "inet", "host": host, "port": str(port), flag: True}
    if family == socket.AF_UNIX:
        if isinstance(name, bytes):
            if name.startswith(b"\0"):
                path = name[1:].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                tight = len(name) < UNIX_PATH_MAX
                return {"type": "unix", "path": path, "abstract": True, "tight": tight}
            name = name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return {"type": "unix", "path": str(name)}
    vsock = getattr(socket, "AF_VSOCK", None)
    if vsock is not None and family == vsock:
        return {"type": "vsock", "cid": str(name[0]), "port": str(name[1])}
    raise GenericError(f"socket family {family} unsupported")


def address_type(family: int) -> str:
    """``SocketAddressType_str`` of a socket family (``inet``, ``unix``, ``vsock``)."""
    if family in (socket.AF_INET, socket.AF_INET6):
        return "inet"
    if family == socket.AF_UNIX:
        return "unix"
    return "vsock"


def socket_uri(addr: dict[str, Any]) -> str:
    """QEMU's ``socket_uri`` of a ``SocketAddress`` (JSON members)."""
    kind = addr["type"]
    if kind == "inet":
        return f"tcp:{addr['host']}:{addr['port']}"
    if kind == "unix":
        return f"unix:{addr['path']}"
    if kind == "fd":
        return f"fd:{addr['str']}"
    if kind == "vsock":
        return f"vsock:{addr['cid']}:{addr['port']}"
    return "unknown address type"


def fd_param(text: str, lookup: FdLookup | None = None) -> int:
    """``monitor_fd_param``: an fd number (digits) or a named fd of the control plane."""
    if text[:1].isascii() and text[:1].isdigit():
        if not text.isascii() or not text.isdigit() or int(text) > _INT_MAX:
            raise GenericError(f"Invalid file descriptor number '{text}'")
        return int(text)
    fd = lookup(text) if lookup is not None else None
    if fd is None:
        raise GenericError(f"File descriptor named '{text}' has not been found")
    return fd


def host_fd_lookup(host: object) -> FdLookup | None:
    """The host's named-fd lookup (``monitor_fd(name) -> int | None``), if it has one."""
    lookup = getattr(host, "monitor_fd", None)
    return lookup if callable(lookup) else None
