"""The Internet checksum (RFC 1071) and the pseudo-header sums TCP and UDP use.

``ones_sum`` returns the 16-bit ones'-complement sum of a buffer in network byte order,
not yet complemented; ``fold`` and ``finish`` turn partial sums into a checksum field.
Large buffers are summed with numpy (the order of additions does not matter for a
ones'-complement sum, so words can be summed as little-endian and swapped once at the end).
"""

from __future__ import annotations

import numpy as np

_NUMPY_FROM = 256


def fold(total: int) -> int:
    """Fold a wide sum into 16 bits with end-around carry."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Ones'-complement sum of ``data`` (big-endian 16-bit words), folded to 16 bits."""
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\0"
        n += 1
    if n >= _NUMPY_FROM:
        le = int(np.frombuffer(data, dtype="<u2").sum(dtype=np.uint64))
        le = fold(le)
        total = ((le & 0xFF) << 8) | (le >> 8)
    else:
        # 2**16 = 1 (mod 0xFFFF), so a big integer is congruent to the sum of its 16-bit
        # words; a non-zero sum folds to 1..0xFFFF, never 0.
        total = int.from_bytes(data, "big") + initial
        rem = total % 0xFFFF
        return 0xFFFF if rem == 0 and total else rem
    return fold(total + initial)


def finish(total: int) -> int:
    """The checksum field value for a folded sum (complemented, 0 stays 0xFFFF-free)."""
    return (~fold(total)) & 0xFFFF


def pseudo_v4(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Sum of the IPv4 pseudo-header (RFC 793 / 768)."""
    return ones_sum(src + dst, proto + length)


def pseudo_v6(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Sum of the IPv6 pseudo-header (RFC 8200 §8.1)."""
    return ones_sum(src + dst, fold(length + proto))
