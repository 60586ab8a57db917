"""The Internet checksum (RFC 1071) and the pseudo-header sums TCP, UDP and ICMPv6 use.

Owns the one implementation of the ones'-complement sum for the whole tree. Sums are
kept as plain ``int``: ``ones_sum`` returns the folded 16-bit sum of a buffer in network
byte order, not yet complemented; :func:`fold` folds a wide sum, :func:`finish` turns a
sum into the checksum field, :func:`verify` checks a received buffer whose checksum field
is included. Callers may add unfolded partial sums (addresses, lengths, header words)
freely and fold once at the end: end-around carry makes the order irrelevant.

Zero, explicitly (RFC 1071 §1, RFC 768, RFC 8200 §8.1):

* A buffer of zeros sums to 0; any other buffer sums to 1..0xFFFF, never 0 (a sum that is
  a multiple of 0xFFFF is 0xFFFF, ones'-complement "negative zero"). A received buffer is
  valid when its sum, checksum field included, is 0xFFFF, so an all-zero buffer is never
  valid and the checksum of an all-zero message is 0xFFFF (Linux's ``csum_fold`` agrees).
* UDP: a computed checksum of 0 is transmitted as 0xFFFF (:func:`finish_udp`), over both
  families. On receive a field of 0 means "no checksum" over IPv4 (:func:`udp4_ok`) and is
  invalid over IPv6 (:func:`udp6_ok`).
* TCP, ICMP, ICMPv6 and the IPv4 header never remap: their 0 is sent as 0.

Size threshold: from :data:`NUMPY_FROM` bytes the words are summed with numpy (the order
of additions does not matter, so they are summed little-endian and swapped once); below,
the buffer is one big integer reduced modulo 0xFFFF (2**16 = 1 mod 0xFFFF, so that is
the sum of its 16-bit words). Both paths give the same value for every input; the
threshold is speed only.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

#: From this many bytes the sum is taken with numpy.
NUMPY_FROM: Final = 256

IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17

_ADDR4: Final = struct.Struct("!2H")
_ADDR6: Final = struct.Struct("!8H")
_ADDRS4: Final = struct.Struct("!4H")
_ADDRS6: Final = struct.Struct("!16H")
_IPV4_WORDS: Final = struct.Struct("!10H")


def fold(total: int) -> int:
    """Fold a wide sum into 16 bits with end-around carry (0 stays 0)."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Ones'-complement sum of ``data`` (big-endian 16-bit words, an odd last byte padded
    with zero) plus ``initial`` (any non-negative int, folded or not), folded to 16 bits:
    0 only when both are zero."""
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\0"
        n += 1
    if n >= NUMPY_FROM:
        le = fold(int(np.frombuffer(data, dtype="<u2").sum(dtype=np.uint64)))
        return fold(((le & 0xFF) << 8) + (le >> 8) + initial)
    total = int.from_bytes(data, "big") + initial
    rem = total % 0xFFFF
    return 0xFFFF if rem == 0 and total else rem


def finish(total: int) -> int:
    """The checksum field for a sum (folded or not): its ones' complement, 16 bits. Two
    inline folds cover every sum below 2**32 (the hot paths); wider sums loop."""
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    if total >> 16:
        total = fold(total)
    return ~total & 0xFFFF


def finish_udp(total: int) -> int:
    """:func:`finish` for UDP: a computed 0 is sent as 0xFFFF (RFC 768, RFC 8200 §8.1)."""
    return finish(total) or 0xFFFF


def verify(data: bytes | bytearray | memoryview, initial: int = 0) -> bool:
    """Whether ``data`` (checksum field included) plus ``initial`` sums to 0xFFFF."""
    return ones_sum(data, initial) == 0xFFFF


def ipv4_header_ok(buf: bytes | bytearray | memoryview, start: int, ihl: int) -> bool:
    """Whether the IPv4 header of ``ihl`` bytes at ``buf[start:]`` checks out (RFC 791;
    the common 20-byte header is summed as ten words, without a slice)."""
    if ihl == 20:
        return fold(sum(_IPV4_WORDS.unpack_from(buf, start))) == 0xFFFF
    return verify(buf[start : start + ihl])


def ipv4_header_checksum(header: bytes | bytearray | memoryview) -> int:
    """The checksum field of a 20-byte IPv4 header whose own field is zero."""
    return ~fold(sum(_IPV4_WORDS.unpack_from(header))) & 0xFFFF


def addr_sum(addr: bytes) -> int:
    """Unfolded sum of the 16-bit words of a 4- or 16-byte address."""
    return sum((_ADDR4 if len(addr) == 4 else _ADDR6).unpack(addr))


def addrs_sum(src: bytes, dst: bytes) -> int:
    """Unfolded sum of two addresses of one family (the pseudo-header's address part)."""
    return sum((_ADDRS4 if len(src) == 4 else _ADDRS6).unpack(src + dst))


def pseudo_v4(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded sum of the IPv4 pseudo-header (RFC 793 / RFC 768)."""
    return ones_sum(src + dst, proto + length)


def pseudo_v6(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded sum of the IPv6 pseudo-header (RFC 8200 §8.1)."""
    return ones_sum(src + dst, fold(length + proto))


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Unfolded pseudo-header sum for either family (chosen by the address length)."""
    return addrs_sum(src, dst) + proto + length


def udp4_ok(src: bytes, dst: bytes, segment: bytes | memoryview) -> bool:
    """Whether a UDP segment received over IPv4 checks out; a zero field means the sender
    computed none (RFC 768), which is accepted."""
    if segment[6] == 0 and segment[7] == 0:
        return True
    return verify(segment, pseudo(src, dst, IPPROTO_UDP, len(segment)))


def udp6_ok(src: bytes, dst: bytes, segment: bytes | memoryview) -> bool:
    """Whether a UDP segment received over IPv6 checks out; a zero field is invalid
    (RFC 8200 §8.1: the checksum is mandatory)."""
    if segment[6] == 0 and segment[7] == 0:
        return False
    return verify(segment, pseudo(src, dst, IPPROTO_UDP, len(segment)))


def slice_sums(data: bytes | memoryview, size: int, count: int) -> list[int]:
    """Folded sums of each ``size``-byte slice of ``data`` (``count`` slices, the last
    possibly short; a slice past the end sums to 0): the full slices in one numpy
    reduction when there are two or more of an even size, the rest one by one. The
    values are those of :func:`ones_sum` on each slice."""
    full = min(len(data) // size, count)
    sums: list[int] = []
    if full >= 2 and size % 2 == 0:
        words = np.frombuffer(data[: full * size], dtype="<u2").reshape(full, size // 2)
        for s in words.sum(axis=1, dtype=np.uint64).tolist():
            le = fold(s)
            sums.append(((le & 0xFF) << 8) | (le >> 8))
    else:
        full = 0
    for i in range(full, count):
        sums.append(ones_sum(data[i * size : (i + 1) * size]))
    return sums
