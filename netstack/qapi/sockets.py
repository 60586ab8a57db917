"""Socket address types of ``qapi/sockets.json`` (QEMU 10.0).

Owns ``InetSocketAddress``, ``UnixSocketAddress``, ``VsockSocketAddress``,
``FdSocketAddress`` and the two unions over them:

* :class:`SocketAddress` - the flat union (``{"type": "inet", "host": ..., "port": ...}``)
  used by ``-netdev stream|dgram`` and the ``NETDEV_STREAM_CONNECTED`` event;
* :class:`SocketAddressLegacy` - the wrapped form (``{"type": "unix", "data": {"path":
  ...}}``) used by chardevs (``ChardevSocket.addr``, ``ChardevUdp``).

Both unions have the same Python shape, ``(type, data)``; only the wire layout differs.
QEMU 7.2 has the same members (``abstract``/``tight``/``mptcp`` are conditional on Linux /
``HAVE_IPPROTO_MPTCP`` in both; 10.1 adds keep-alive tuning members not modelled here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

from .schema import QEnum, UnionInfo, opt, req

SOCKET_ADDRESS_TYPE: Final = QEnum("SocketAddressType", ("inet", "unix", "vsock", "fd"))


@dataclass(frozen=True, kw_only=True)
class InetSocketAddress:
    """An IPv4/IPv6 host and port (or port range up to ``to``); ports are strings."""

    qapi_name: ClassVar[str] = "InetSocketAddress"
    host: str = req("str")
    port: str = req("str")
    numeric: bool | None = opt("bool")
    to: int | None = opt("uint16")
    ipv4: bool | None = opt("bool")
    ipv6: bool | None = opt("bool")
    keep_alive: bool | None = opt("bool")
    mptcp: bool | None = opt("bool")


@dataclass(frozen=True, kw_only=True)
class UnixSocketAddress:
    """A Unix domain socket path; ``abstract``/``tight`` select Linux abstract names."""

    qapi_name: ClassVar[str] = "UnixSocketAddress"
    path: str = req("str")
    abstract: bool | None = opt("bool")
    tight: bool | None = opt("bool")


@dataclass(frozen=True, kw_only=True)
class VsockSocketAddress:
    """A vsock context id and port (strings, like QEMU)."""

    qapi_name: ClassVar[str] = "VsockSocketAddress"
    cid: str = req("str")
    port: str = req("str")


@dataclass(frozen=True, kw_only=True)
class FdSocketAddress:
    """A file descriptor number or a monitor fd name (wire member ``str``)."""

    qapi_name: ClassVar[str] = "FdSocketAddress"
    fd: str = req("str", name="str")


SocketAddressData = InetSocketAddress | UnixSocketAddress | VsockSocketAddress | FdSocketAddress

_VARIANTS: Final = {
    "inet": InetSocketAddress,
    "unix": UnixSocketAddress,
    "vsock": VsockSocketAddress,
    "fd": FdSocketAddress,
}


@dataclass(frozen=True, kw_only=True)
class SocketAddress:
    """QAPI ``SocketAddress`` (flat union): ``type`` plus the matching ``data``."""

    qapi_name: ClassVar[str] = "SocketAddress"
    qapi_union: ClassVar[UnionInfo] = UnionInfo("type", "data", _VARIANTS)
    type: str = req(SOCKET_ADDRESS_TYPE)
    data: SocketAddressData


@dataclass(frozen=True, kw_only=True)
class SocketAddressLegacy:
    """QAPI ``SocketAddressLegacy`` (wrapped union ``{"type": T, "data": {...}}``)."""

    qapi_name: ClassVar[str] = "SocketAddressLegacy"
    qapi_union: ClassVar[UnionInfo] = UnionInfo("type", "data", _VARIANTS, wrapped=True)
    type: str = req(SOCKET_ADDRESS_TYPE)
    data: SocketAddressData
