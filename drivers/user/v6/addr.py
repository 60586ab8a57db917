"""IPv6 addresses on the user netdev's virtual link: classes, multicast mapping, virtual MACs.

Owns the address arithmetic every IPv6 machine here shares (RFC 4291): multicast,
link-local, unspecified and loopback tests; prefix matching (libslirp's ``in6_equal_net``)
and masking; solicited-node multicast groups (RFC 4291 §2.7.1) and their Ethernet mapping
``33:33`` + the low 32 bits (RFC 2464 §7); and libslirp's virtual MACs for its own IPv6
addresses, ``52:56`` + the low 32 bits of the address (``in6_compute_ethaddr``: fe80::2 and
fec0::2 both become ``52:56:00:00:00:02``). Addresses are 16-byte ``bytes`` throughout.
"""

from __future__ import annotations

import socket
from typing import Final

UNSPECIFIED: Final = bytes(16)
LOOPBACK: Final = bytes(15) + b"\x01"
ALL_NODES: Final = bytes.fromhex("ff020000000000000000000000000001")
ALL_ROUTERS: Final = bytes.fromhex("ff020000000000000000000000000002")
#: All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
ALL_DHCP: Final = bytes.fromhex("ff020000000000000000000000010002")
SOLICITED_PREFIX: Final = bytes.fromhex("ff0200000000000000000001ff")
LINK_LOCAL_PREFIX: Final = bytes.fromhex("fe800000000000000000000000000000")
#: libslirp's router link-local address (``LINKLOCAL_ADDR``): RAs come from it.
ROUTER_LINK_LOCAL: Final = bytes.fromhex("fe800000000000000000000000000002")
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"


def parse(text: str) -> bytes | None:
    """``inet_pton(AF_INET6, text)``, or None when it does not parse."""
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None


def text(addr: bytes) -> str:
    """The canonical text form (RFC 5952, as ``inet_ntop`` writes it)."""
    return socket.inet_ntop(socket.AF_INET6, addr)


def is_multicast(addr: bytes) -> bool:
    return addr[0] == 0xFF


def is_link_local(addr: bytes) -> bool:
    return addr[0] == 0xFE and addr[1] & 0xC0 == 0x80


def is_unspecified(addr: bytes) -> bool:
    return addr == UNSPECIFIED


def is_loopback(addr: bytes) -> bool:
    return addr == LOOPBACK


def is_v4_mapped(addr: bytes) -> bool:
    return addr[:12] == _V4_MAPPED


def is_unicast(addr: bytes) -> bool:
    """Whether ``addr`` can name one node: not multicast, unspecified or loopback."""
    return addr[0] != 0xFF and addr != UNSPECIFIED and addr != LOOPBACK


def in_prefix(addr: bytes, prefix: bytes, prefixlen: int) -> bool:
    """Whether the first ``prefixlen`` bits of ``addr`` and ``prefix`` are equal."""
    if prefixlen <= 0:
        return True
    shift = 128 - prefixlen
    return int.from_bytes(addr, "big") >> shift == int.from_bytes(prefix, "big") >> shift


def mask(addr: bytes, prefixlen: int) -> bytes:
    """``addr`` with every bit past ``prefixlen`` cleared."""
    if prefixlen <= 0:
        return UNSPECIFIED
    value = int.from_bytes(addr, "big") >> (128 - prefixlen) << (128 - prefixlen)
    return value.to_bytes(16, "big")


def with_host_bits(prefix: bytes, prefixlen: int, host: int) -> bytes:
    """The address ``prefix``/``prefixlen`` with host part ``host`` (taken modulo its size)."""
    bits = 128 - prefixlen
    value = int.from_bytes(mask(prefix, prefixlen), "big") | (host & ((1 << bits) - 1))
    return value.to_bytes(16, "big")


def link_local(iid_of: bytes) -> bytes:
    """``fe80::`` with the low 64 bits of ``iid_of``."""
    return LINK_LOCAL_PREFIX[:8] + iid_of[8:]


def solicited_node(addr: bytes) -> bytes:
    """The solicited-node multicast group of ``addr`` (ff02::1:ffXX:XXXX)."""
    return SOLICITED_PREFIX + addr[13:]


def is_solicited_node(addr: bytes) -> bool:
    return addr[:13] == SOLICITED_PREFIX


def multicast_mac(group: bytes) -> bytes:
    """The Ethernet address an IPv6 multicast group maps to (RFC 2464 §7)."""
    return b"\x33\x33" + group[12:]


def virtual_mac(addr: bytes) -> bytes:
    """libslirp's MAC for one of its own IPv6 addresses: ``52:56`` + the low 32 bits."""
    return b"\x52\x56" + addr[12:]


def is_ipv6_multicast_mac(mac: bytes) -> bool:
    return mac[0] == 0x33 and mac[1] == 0x33
