"""Receive coalescing (sans-IO): segments a TSO split produced merge back into one
super-frame that :func:`netstack.proto.vnet.to_plain` cuts into the same segments; what
must not merge (other flows, gaps, PSH, bad checksums, non-TCP) passes with a plain
header."""

from __future__ import annotations

import socket

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.proto import vnet
from netstack.proto.tcpcoalesce import coalesce

A, B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def superframe(size: int, mss: int, sport: int = 1000, seq: int = 7, psh: bool = True) -> bytes:
    tcp = dpkt.tcp.TCP(
        sport=sport, dport=80, seq=seq, ack=99, off=8, win=500,
        flags=dpkt.tcp.TH_ACK | (dpkt.tcp.TH_PUSH if psh else 0),
        opts=b"\x01\x01\x08\x0a" + bytes(8), data=bytes(range(256)) * (size // 256 + 1),
    )  # fmt: skip
    tcp.data = tcp.data[:size]
    ip = dpkt.ip.IP(src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("10.0.0.2"),
                    p=6, id=300, data=tcp)  # fmt: skip
    ip.len = 20 + len(tcp)
    frame = bytes(dpkt.ethernet.Ethernet(dst=B, src=A, type=0x0800, data=ip))
    hdr = vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 14 + 20 + 32, mss, 34, 16)
    return hdr + frame


def segments(size: int, mss: int, **kw: int | bool) -> list[bytes]:
    return vnet.to_plain([superframe(size, mss, **kw)])  # type: ignore[arg-type]


def test_split_then_merge_round_trips() -> None:
    segs = segments(20000, 1448)
    assert len(segs) == 14
    merged = coalesce(segs)
    assert len(merged) == 1
    flags, gso, _hl, size, start, off = vnet.unpack(merged[0])
    assert (flags, gso, size, start, off) == (vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 1448, 34, 16)
    assert vnet.to_plain(merged) == segs


def test_what_does_not_merge() -> None:
    one = segments(4000, 1000, psh=False)
    other = segments(3000, 1000, sport=2000, psh=False)
    mixed = [one[0], other[0], one[1], other[1]]
    assert [vnet.unpack(f)[1] for f in coalesce(mixed)] == [0, 0, 0, 0]
    gap = [one[0], one[2]]
    assert all(f[:12] == vnet.PLAIN_HDR for f in coalesce(gap))
    bad = bytearray(one[1])
    bad[-1] ^= 0xFF  # corrupt payload: the checksum no longer matches
    out = coalesce([one[0], bytes(bad), one[2], one[3]])
    assert [f[12:] for f in out] == [one[0], bytes(bad), one[2], one[3]]
    arp = B + A + b"\x08\x06" + bytes(28)
    assert coalesce([arp]) == [vnet.PLAIN_HDR + arp]
    # a PSH segment ends a run; the next run starts after it
    segs = segments(6000, 1000) + segments(3000, 1000, seq=6007)
    merged = coalesce(segs)
    assert len(merged) == 2 and vnet.to_plain(merged) == segs


@settings(max_examples=40)
@given(st.integers(1, 60000), st.integers(200, 1460))
def test_round_trip_property(size: int, mss: int) -> None:
    segs = segments(size, mss)
    assert vnet.to_plain(coalesce(segs)) == segs


@given(st.lists(st.binary(max_size=120), max_size=8))
def test_total(frames: list[bytes]) -> None:
    assert [f[12:] for f in coalesce(frames) if f[:12] == vnet.PLAIN_HDR] == frames
