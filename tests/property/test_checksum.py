"""Properties of ``netstack.proto.checksum`` (hypothesis).

* Against a naive RFC 1071 word loop written here: ``ones_sum``, ``fold``, ``finish``,
  ``verify``, the pseudo-header sums and ``slice_sums``, on both sides of the numpy
  threshold, with odd lengths and wide initial sums.
* The zero cases: an all-zero buffer sums to 0 and never verifies; UDP's computed 0 is
  sent as 0xFFFF; a UDP zero field is accepted over IPv4 and refused over IPv6.
* Every former checksum copy (the user netdev's IPv4 and IPv6 ``csum``, the virtio-net
  segmenter's two-fold ``_csum``, the TCP builder's and the segmenter's slice sums) is
  written out below as it was, and the call sites that now use this module give the same
  bytes. The one difference: the former IPv4 ``csum`` returned 0xFFFF for an all-zero
  buffer below 513 bytes, so an all-zero ICMP message (an echo reply with id 0, seq 0
  and a zero payload) got the field 0, which Linux rejects; it now gets 0xFFFF.
"""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from netstack.proto import checksum as ck
from netstack.proto import ipv4
from netstack.proto import ipv6 as pk

SETTINGS = settings(max_examples=300, deadline=None)
ADDR4 = st.binary(min_size=4, max_size=4)
ADDR6 = st.binary(min_size=16, max_size=16)


def naive_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 §4.1, word by word with end-around carry."""
    if len(data) % 2:
        data += b"\0"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


# -- the former copies, as they were -------------------------------------------------------


def former_ipv4_csum(data: bytes | memoryview, initial: int = 0) -> int:
    if len(data) > 512:
        return ck.ones_sum(data, ck.fold(initial))
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return (int.from_bytes(data, "big") + initial) % 0xFFFF or 0xFFFF


def former_ipv6_csum(data: bytes | memoryview, initial: int = 0) -> int:
    if len(data) >= 1024:
        return ck.ones_sum(data, initial)
    if len(data) & 1:
        data = bytes(data) + b"\0"
    value = int.from_bytes(data, "big")
    total = (value % 0xFFFF + initial) % 0xFFFF
    return 0xFFFF if total == 0 and (value or initial) else total


def former_vnet_csum(total: int) -> int:
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def former_slice_sums(data: memoryview, mss: int, count: int, *, vnet: bool) -> list[int]:
    full = len(data) // mss
    use = (full and mss % 2 == 0 and mss >= 64) if vnet else (full >= 2 and mss % 2 == 0)
    sums: list[int] = []
    if use:
        words = np.frombuffer(data[: full * mss], dtype="<u2").reshape(full, mss // 2)
        for s in words.sum(axis=1, dtype=np.uint64).tolist():
            le = ck.fold(s)
            sums.append(((le & 0xFF) << 8) | (le >> 8))
    else:
        full = 0
    for i in range(full, count):
        sums.append(ck.ones_sum(data[i * mss : (i + 1) * mss]))
    return sums


def former_addr_sum4(addr: bytes) -> int:
    value: int = struct.unpack("!I", addr)[0]
    return (value >> 16) + (value & 0xFFFF)


# -- against the naive reference -----------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=1200), st.integers(0, 1 << 40))
def test_ones_sum_is_the_word_loop(data: bytes, initial: int) -> None:
    assert ck.ones_sum(data, initial) == naive_sum(data, initial)
    assert ck.ones_sum(memoryview(data), initial) == naive_sum(data, initial)


@SETTINGS
@given(st.integers(0, 1 << 64))
def test_finish_and_fold(total: int) -> None:
    assert ck.fold(total) == naive_sum(b"", total)
    assert ck.finish(total) == ~naive_sum(b"", total) & 0xFFFF
    if total < 1 << 32:
        assert ck.finish(total) == former_vnet_csum(total)
    assert ck.finish_udp(total) == (ck.finish(total) or 0xFFFF)


@SETTINGS
@given(st.binary(min_size=2, max_size=1200))
def test_a_filled_in_checksum_verifies(data: bytes) -> None:
    msg = b"\0\0" + data
    field = ck.finish(ck.ones_sum(msg))
    filled = field.to_bytes(2, "big") + data
    assert ck.verify(filled)
    assert naive_sum(filled) == 0xFFFF


@SETTINGS
@given(st.integers(0, 1200))
def test_zero_buffers(n: int) -> None:
    zeros = bytes(n)
    assert ck.ones_sum(zeros) == 0
    assert not ck.verify(zeros)
    assert ck.finish(ck.ones_sum(zeros)) == 0xFFFF
    assert ck.verify(b"\xff\xff" + zeros)


@SETTINGS
@given(ADDR4, ADDR4, ADDR6, ADDR6, st.integers(0, 255), st.integers(0, 0xFFFF))
def test_pseudo_headers(
    s4: bytes, d4: bytes, s6: bytes, d6: bytes, proto: int, length: int
) -> None:
    want4 = naive_sum(s4 + d4 + bytes((0, proto)) + length.to_bytes(2, "big"))
    assert ck.pseudo_v4(s4, d4, proto, length) == want4
    assert ck.fold(ck.pseudo(s4, d4, proto, length)) == want4
    assert ck.addr_sum(s4) == former_addr_sum4(s4)
    want6 = naive_sum(s6 + d6 + length.to_bytes(4, "big") + bytes((0, 0, 0, proto)))
    assert ck.pseudo_v6(s6, d6, proto, length) == want6
    assert ck.fold(ck.pseudo(s6, d6, proto, length)) == want6
    assert ck.fold(ck.addr_sum(s6)) == naive_sum(s6)


@SETTINGS
@given(st.binary(max_size=4000), st.integers(1, 1500), st.booleans())
def test_slice_sums(data: bytes, mss: int, vnet: bool) -> None:
    view = memoryview(data)
    count = max(1, -(-len(data) // mss))
    got = ck.slice_sums(view, mss, count)
    want = [naive_sum(data[i * mss : (i + 1) * mss]) for i in range(count)]
    assert got == want
    assert got == former_slice_sums(view, mss, count, vnet=vnet)


# -- the former call sites give the same bytes ---------------------------------------------


@SETTINGS
@given(st.binary(max_size=1500), st.integers(0, 1 << 20))
def test_former_family_sums_agree_but_for_zero(data: bytes, initial: int) -> None:
    assert former_ipv6_csum(data, initial) == ck.ones_sum(data, initial)
    if any(data) or initial:
        assert former_ipv4_csum(data, initial) == ck.ones_sum(data, initial)
    elif len(data) <= 512:
        assert former_ipv4_csum(data, initial) == 0xFFFF  # the old quirk
        assert ck.ones_sum(data, initial) == 0


@SETTINGS
@given(ADDR4, ADDR4, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=1500))
def test_ipv4_udp_segment_bytes(src: bytes, dst: bytes, sp: int, dp: int, payload: bytes) -> None:
    ulen = 8 + len(payload)
    initial = former_addr_sum4(src) + former_addr_sum4(dst) + 17 + ulen + sp + dp + ulen
    value = ~former_ipv4_csum(payload, initial) & 0xFFFF
    want = struct.pack("!HHHH", sp, dp, ulen, value or 0xFFFF) + payload
    seg = ipv4.udp_segment(src, dst, sp, dp, payload)
    assert seg == want
    assert ck.udp4_ok(src, dst, seg)
    former_ok = former_ipv4_csum(seg, former_addr_sum4(src) + former_addr_sum4(dst) + 17 + ulen)
    assert former_ok == 0xFFFF
    assert ck.udp4_ok(src, dst, seg[:6] + b"\0\0" + seg[8:])


@SETTINGS
@given(st.integers(0, 255), st.integers(0, 255), st.binary(min_size=4, max_size=4),
       st.binary(max_size=1500))  # fmt: skip
def test_ipv4_icmp_message_bytes(kind: int, code: int, rest: bytes, body: bytes) -> None:
    msg = bytes([kind, code, 0, 0]) + rest + body
    got = ipv4.icmp_message(kind, code, rest, body)
    assert ck.verify(got)
    value = ~former_ipv4_csum(msg) & 0xFFFF
    if any(msg):
        assert got == msg[:2] + value.to_bytes(2, "big") + msg[4:]
    else:
        assert got[2:4] == b"\xff\xff"


@SETTINGS
@given(st.binary(min_size=20, max_size=60))
def test_ipv4_header_check(hdr: bytes) -> None:
    ihl = len(hdr) & ~3
    want = former_ipv4_csum(hdr[:ihl]) == 0xFFFF
    assume(any(hdr[:ihl]))
    assert ipv4.header_ok(hdr, 0, ihl) == want


@SETTINGS
@given(ADDR6, ADDR6, st.sampled_from([6, 17, 58]), st.binary(min_size=8, max_size=1500))
def test_ipv6_with_checksum_bytes(src: bytes, dst: bytes, proto: int, body: bytes) -> None:
    at = 6 if proto == 17 else 2
    seg = body[:at] + b"\0\0" + body[at + 2 :]
    pseudo = former_ipv6_csum(src + dst, ck.fold(len(seg) + proto))
    value = ~former_ipv6_csum(seg, pseudo) & 0xFFFF
    if proto == 17 and value == 0:
        value = 0xFFFF
    want = seg[:at] + value.to_bytes(2, "big") + seg[at + 2 :]
    got = pk.with_checksum(src, dst, proto, seg, at)
    assert got == want
    assert pk.checksum_ok(src, dst, proto, got)
    if proto == 17:
        assert ck.udp6_ok(src, dst, got)
        assert not ck.udp6_ok(src, dst, got[:6] + b"\0\0" + got[8:])


@SETTINGS
@given(st.binary(min_size=20, max_size=20))
def test_ipv4_header_checksum(hdr: bytes) -> None:
    zeroed = hdr[:10] + b"\0\0" + hdr[12:]
    field = ck.ipv4_header_checksum(zeroed)
    assert field == ~naive_sum(zeroed) & 0xFFFF
    filled = zeroed[:10] + field.to_bytes(2, "big") + zeroed[12:]
    assert ck.ipv4_header_ok(filled, 0, 20) and ck.ipv4_header_ok(b"\0" * 3 + filled, 3, 20)
    assert ck.ipv4_header_ok(filled, 0, 20) == ck.verify(filled)
