"""Properties of ``netstack.proto.vnet.to_plain`` (hypothesis).

* TSO and USO: for any payload, MSS, address family, VLAN tagging and TCP options, the
  segments carry the payload in order, none is longer than the MSS, sequence numbers are
  contiguous, every length field matches, and every checksum verifies with an
  independent (naive, pure-Python) RFC 1071 implementation written here.
* Totality: any bytes behind any header give a list of frames, never an exception.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.proto import vnet


def naive_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def verifies(data: bytes, pseudo: bytes = b"") -> bool:
    """A checksummed region (with its checksum in place) sums to 0xffff."""
    return naive_sum(pseudo + data) == 0xFFFF


def build(
    v4: bool, vlan: bool, tcp: bool, payload: bytes, opts: int, seq: int
) -> tuple[bytes, int, int]:
    """(frame with a partial checksum, l3 offset, l4 offset)."""
    eth = b"\x02" * 6 + b"\x04" * 6
    if vlan:
        eth += b"\x81\x00\x00\x05"
    eth += b"\x08\x00" if v4 else b"\x86\xdd"
    l3 = len(eth)
    if tcp:
        l4h = struct.pack("!HHIIBBHHH", 1234, 80, seq, 1, (5 + opts) << 4, 0x18, 65535, 0, 0)
        l4h += b"\x01" * (4 * opts)
    else:
        l4h = struct.pack("!HHHH", 53, 5353, 8 + len(payload), 0)
    proto = 6 if tcp else 17
    l4len = len(l4h) + len(payload)
    if v4:
        src, dst = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
        iph = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + l4len, 0x1234, 0x4000, 64, proto, 0, src, dst
        )
    else:
        src, dst = b"\xfd" + b"\0" * 14 + b"\x01", b"\xfd" + b"\0" * 14 + b"\x02"
        iph = struct.pack("!IHBB16s16s", 0x60000000, l4len, proto, 64, src, dst)
    l4 = l3 + len(iph)
    frame = bytearray(eth + iph + l4h + payload)
    pseudo = naive_sum(src + dst + struct.pack("!HH", proto, l4len))
    struct.pack_into("!H", frame, l4 + (16 if tcp else 6), pseudo)
    return bytes(frame), l3, l4


def pseudo_header(seg: bytes, l3: int, l4: int, v4: bool, proto: int) -> bytes:
    addrs = seg[l3 + 12 : l3 + 20] if v4 else seg[l3 + 8 : l3 + 40]
    return addrs + struct.pack("!HH", proto, len(seg) - l4)


@settings(max_examples=150, deadline=None)
@given(
    v4=st.booleans(),
    vlan=st.booleans(),
    tcp=st.booleans(),
    payload=st.binary(min_size=0, max_size=6000),
    mss=st.integers(min_value=1, max_value=2000),
    opts=st.integers(min_value=0, max_value=10),
    seq=st.integers(min_value=0, max_value=0xFFFFFFFF),
)
def test_segments_reassemble_and_verify(
    v4: bool, vlan: bool, tcp: bool, payload: bytes, mss: int, opts: int, seq: int
) -> None:
    frame, l3, l4 = build(v4, vlan, tcp, payload, opts, seq)
    gso = (vnet.GSO_TCPV4 if v4 else vnet.GSO_TCPV6) if tcp else vnet.GSO_UDP_L4
    csum_off = 16 if tcp else 6
    segs = vnet.to_plain([vnet.pack(vnet.NEEDS_CSUM, gso, 0, mss, l4, csum_off) + frame])
    assert len(segs) == max(1, -(-len(payload) // mss))
    hl = (5 + opts) * 4 if tcp else 8
    data = b""
    for i, seg in enumerate(segs):
        chunk = seg[l4 + hl :]
        assert len(chunk) <= mss
        assert seg[:l3] == frame[:l3]
        if v4:
            assert struct.unpack_from("!H", seg, l3 + 2)[0] == len(seg) - l3
            assert struct.unpack_from("!H", seg, l3 + 4)[0] == (0x1234 + i) & 0xFFFF
            assert verifies(seg[l3:l4])
        else:
            assert struct.unpack_from("!H", seg, l3 + 4)[0] == len(seg) - l4
        proto = 6 if tcp else 17
        assert verifies(seg[l4:], pseudo_header(seg, l3, l4, v4, proto))
        if tcp:
            assert struct.unpack_from("!I", seg, l4 + 4)[0] == (seq + len(data)) & 0xFFFFFFFF
            push = seg[l4 + 13] & 0x08
            assert bool(push) == (i == len(segs) - 1)
        else:
            assert struct.unpack_from("!H", seg, l4 + 4)[0] == 8 + len(chunk)
        data += chunk
    assert data == payload


@settings(max_examples=300, deadline=None)
@given(
    flags=st.integers(0, 255),
    gso=st.integers(0, 255),
    fields=st.tuples(*[st.integers(0, 0xFFFF)] * 4),
    body=st.binary(max_size=300),
)
def test_to_plain_is_total(
    flags: int, gso: int, fields: tuple[int, int, int, int], body: bytes
) -> None:
    header = vnet.pack(flags, gso, *fields)
    out = vnet.to_plain([header + body, body, header])
    assert isinstance(out, list) and all(isinstance(f, bytes) for f in out)


@settings(max_examples=200, deadline=None)
@given(
    v4=st.booleans(),
    gso=st.sampled_from([vnet.GSO_TCPV4, vnet.GSO_TCPV6, vnet.GSO_UDP_L4, vnet.GSO_UDP]),
    mss=st.integers(0, 3000),
    start=st.integers(0, 200),
    cut=st.integers(0, 200),
    payload=st.binary(max_size=3000),
)
def test_truncated_or_lying_headers_never_raise(
    v4: bool, gso: int, mss: int, start: int, cut: int, payload: bytes
) -> None:
    frame, _l3, _l4 = build(v4, False, gso != vnet.GSO_UDP_L4, payload, 0, 7)
    frame = frame[: max(0, len(frame) - cut)]
    vnet.to_plain([vnet.pack(vnet.NEEDS_CSUM, gso, 0, mss, start, 16) + frame])
