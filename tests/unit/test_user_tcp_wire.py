"""Guest TCP codecs: segment parsing, options, frame building, checksums (checked with
scapy), TSO super-frames, RST and ICMP answers, the RTO estimator."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, TCPerror
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.layers.l2 import Ether

from drivers.user.tcp import (
    FrameBuilder,
    ethernet_header,
    parse_frame,
    parse_l4,
    reset_for,
    unreachable_for,
)
from drivers.user.tcp.rto import RtoEstimator
from netstack.proto import vnet
from netstack.proto.checksum import ones_sum, slice_sums
from netstack.proto.tcp import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    Segment,
    parse_sack_blocks,
    parse_syn_options,
    sack_option,
    seq_diff,
    syn_options,
)

US4, GUEST4 = bytes([93, 184, 216, 34]), bytes([10, 0, 2, 15])
US6, GUEST6 = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("fec0" + "00" * 13 + "15")
MAC_US, MAC_GUEST = bytes.fromhex("52550a000202"), bytes.fromhex("525400123456")


def builder(v6: bool = False, offload: bool = False) -> FrameBuilder:
    src, dst = (US6, GUEST6) if v6 else (US4, GUEST4)
    l2 = ethernet_header(MAC_GUEST, MAC_US, v6)
    return FrameBuilder(src, dst, 80, 40000, l2=l2, vnet=offload)


def scapy_checksums_ok(frame: bytes) -> bool:
    pkt = Ether(frame)
    ip = pkt[IPv6] if IPv6 in pkt else pkt[IP]
    tcp = pkt[TCP]
    got = (tcp.chksum, ip.chksum if IP in pkt else None)
    del tcp.chksum
    if IP in pkt:
        del ip.chksum
    again = Ether(bytes(pkt))
    want = (again[TCP].chksum, again[IP].chksum if IP in again else None)
    return got == want


@pytest.mark.parametrize("v6", [False, True])
def test_frame_roundtrip_and_checksums(v6: bool) -> None:
    b = builder(v6)
    frame = b.frame(0xFFFFFFF0, 12345, ACK | PSH, 513, b"hello world", syn_options(1460, 7, True))
    assert scapy_checksums_ok(frame)
    seg = parse_frame(frame)
    assert isinstance(seg, Segment)
    assert (seg.src, seg.dst, seg.sport, seg.dport) == (b.src, b.dst, 80, 40000)
    assert (seg.seq, seg.ack, seg.flags, seg.wnd) == (0xFFFFFFF0, 12345, ACK | PSH, 513)
    assert bytes(seg.payload) == b"hello world"
    assert seg.mac == MAC_US
    assert parse_syn_options(seg.options) == (1460, 7, True, False)


def test_short_frames_are_padded_to_60() -> None:
    frame = builder().frame(1, 2, ACK, 3)
    assert len(frame) == 60
    seg = parse_frame(frame)
    assert isinstance(seg, Segment) and len(seg.payload) == 0


def test_bad_checksum_rejected_unless_offloaded() -> None:
    frame = bytearray(builder().frame(1, 2, ACK, 3, b"data"))
    frame[54] ^= 0xFF  # the first payload byte (the frame ends in 2 padding bytes)
    assert parse_frame(bytes(frame)) == "tcp-bad-checksum"
    partial = vnet.pack(vnet.NEEDS_CSUM) + bytes(frame)
    assert isinstance(parse_frame(partial, vnet=True), Segment)
    valid = vnet.pack(vnet.DATA_VALID) + bytes(frame)
    assert isinstance(parse_frame(valid, vnet=True), Segment)
    assert parse_frame(vnet.PLAIN_HDR + bytes(frame), vnet=True) == "tcp-bad-checksum"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "eth-short"),
        (b"\0" * 12 + b"\x08\x06" + b"\0" * 40, "not-ip"),
        (b"\0" * 12 + b"\x08\x00" + b"\x45" + b"\0" * 40, "ip-malformed"),
    ],
)
def test_garbage_gives_reasons(frame: bytes, reason: str) -> None:
    assert parse_frame(frame) == reason


def test_fragments_and_other_protocols_are_refused() -> None:
    frame = bytearray(builder().frame(1, 2, ACK, 3, b"x" * 40))
    frame[20] |= 0x20  # MF
    frame[24:26] = b"\0\0"
    frame[24:26] = struct.pack("!H", (~ones_sum(bytes(frame[14:34]))) & 0xFFFF)
    assert parse_frame(bytes(frame)) == "ip-fragment"


def test_parse_l4_and_offsets() -> None:
    l4 = bytes(builder().frame(5, 6, SYN, 100, b"", syn_options(1000, None, False))[34:58])
    seg = parse_l4(US4, GUEST4, l4)
    assert isinstance(seg, Segment) and seg.flags == SYN
    assert parse_l4(US4, GUEST4, l4[:10]) == "tcp-short"
    bad = bytearray(l4)
    bad[12] = 0x20  # data offset 8 bytes
    assert parse_l4(US4, GUEST4, bytes(bad), verify=False) == "tcp-bad-offset"


def test_options() -> None:
    opts = bytes((2, 4, 5, 0xB4, 4, 2, 8, 10)) + bytes(8) + bytes((1, 3, 3, 20))
    assert parse_syn_options(opts) == (1460, 14, True, True)
    assert parse_syn_options(b"\x02") == (None, None, False, False)
    assert parse_syn_options(bytes((3, 3))) == (None, None, False, False)
    blocks = [(1, 5), (0xFFFFFFF0, 16)]
    assert parse_sack_blocks(sack_option(blocks)) == blocks
    assert parse_sack_blocks(b"\x05\x07" + bytes(5)) == []
    assert len(syn_options(1460, 7, True)) % 4 == 0
    assert seq_diff(5, 0xFFFFFFFE) == 7 and seq_diff(0xFFFFFFFE, 5) == -7


@pytest.mark.parametrize("v6", [False, True])
def test_burst_cuts_at_mss_with_valid_checksums(v6: bool) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    frames = builder(v6).burst(0xFFFFF000, 7, ACK | PSH | FIN, 99, memoryview(data), 1000)
    assert len(frames) == 11
    got = b""
    for i, f in enumerate(frames):
        assert scapy_checksums_ok(f)
        seg = parse_frame(f)
        assert isinstance(seg, Segment)
        assert seg.seq == (0xFFFFF000 + 1000 * i) & 0xFFFFFFFF
        last = i == len(frames) - 1
        assert bool(seg.flags & FIN) == last and bool(seg.flags & PSH) == last
        got += bytes(seg.payload)
    assert got == data


def test_payload_sums_match_scalar() -> None:
    data = memoryview(bytes(range(251)) * 50)
    sums = slice_sums(data, 1000, 13)
    assert sums == [ones_sum(data[i * 1000 : (i + 1) * 1000]) for i in range(13)]


@pytest.mark.parametrize("v6", [False, True])
def test_tso_super_frame(v6: bool) -> None:
    b = builder(v6, offload=True)
    data = bytes(range(256)) * 200  # 51200 bytes
    (frame,) = b.burst(100, 200, ACK | PSH, 300, memoryview(data), 1400)
    flags, gso, hdr_len, gso_size, start, off = vnet.unpack(frame)
    assert flags == vnet.NEEDS_CSUM and gso_size == 1400 and off == 16
    assert gso == (vnet.GSO_TCPV6 if v6 else vnet.GSO_TCPV4)
    assert start == 14 + (40 if v6 else 20) and hdr_len == start + 20
    segs = vnet.to_plain([frame])
    assert len(segs) == 37
    assert all(scapy_checksums_ok(s) for s in segs)
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in segs) == data
    # the same frame read back by the parser is one big segment (not checksum-verified)
    seg = parse_frame(frame, vnet=True)
    assert isinstance(seg, Segment) and bytes(seg.payload) == data


def test_tso_frame_with_zero_ip_length_is_the_rest_of_the_frame() -> None:
    b = builder(offload=True)
    (frame,) = b.burst(1, 2, ACK, 3, memoryview(b"z" * 3000), 1000)
    zeroed = bytearray(frame)
    zeroed[12 + 16 : 12 + 18] = b"\0\0"
    zeroed[12 + 24 : 12 + 26] = b"\0\0"
    zeroed[12 + 24 : 12 + 26] = struct.pack("!H", ~ones_sum(bytes(zeroed[26:46])) & 0xFFFF)
    seg = parse_frame(bytes(zeroed), vnet=True)
    assert isinstance(seg, Segment) and len(seg.payload) == 3000


def test_checksum_partial_small_frame_completes() -> None:
    frame = builder(offload=True).frame(1, 2, ACK, 3, b"abc")
    assert vnet.unpack(frame)[0] == vnet.NEEDS_CSUM
    (plain,) = vnet.to_plain([frame])
    assert scapy_checksums_ok(plain)


def test_max_burst() -> None:
    assert builder(offload=True).max_burst(1460) == 65495 // 1460 * 1460
    assert builder(True, offload=True).max_burst(1440) == 65515 // 1440 * 1440
    assert builder().max_burst(1460) == 64 * 1460


def guest_segment(flags: int, payload: bytes = b"", v6: bool = False) -> Segment:
    src, dst = (GUEST6, US6) if v6 else (GUEST4, US4)
    return Segment(src, dst, 40000, 80, 1000, 2000, flags, 100, b"", payload, MAC_GUEST)


def test_reset_for() -> None:
    l2 = ethernet_header(MAC_GUEST, MAC_US, False)
    frame = reset_for(guest_segment(SYN), l2=l2)
    assert frame is not None and scapy_checksums_ok(frame)
    tcp = Ether(frame)[TCP]
    assert tcp.flags == "RA" and tcp.seq == 0 and tcp.ack == 1001
    frame = reset_for(guest_segment(ACK, b"xyz"), l2=l2)
    assert frame is not None
    tcp = Ether(frame)[TCP]
    assert tcp.flags == "R" and tcp.seq == 2000
    assert reset_for(guest_segment(RST | ACK)) is None


@pytest.mark.parametrize("v6", [False, True])
def test_unreachable_for(v6: bool) -> None:
    seg = guest_segment(SYN, v6=v6)
    frame = unreachable_for(seg, 3 if v6 else 1, l2=ethernet_header(MAC_GUEST, MAC_US, v6))
    pkt = Ether(frame)
    if v6:
        icmp = pkt[ICMPv6DestUnreach]
        assert icmp.code == 3
        cksum = icmp.cksum
        del icmp.cksum
        assert Ether(bytes(pkt))[ICMPv6DestUnreach].cksum == cksum
        assert pkt[IPv6].dst == "fec0::15"
    else:
        icmp = pkt[ICMP]
        assert (icmp.type, icmp.code) == (3, 1)
        cksum = icmp.chksum
        del icmp.chksum
        assert Ether(bytes(pkt))[ICMP].chksum == cksum
        assert pkt[IP].dst == "10.0.2.15"
    quoted = icmp.payload
    assert quoted[TCPerror].sport == 40000 and quoted[TCPerror].seq == 1000


def test_rto_estimator() -> None:
    r = RtoEstimator()
    assert r.rto == 1.0
    r.sample(0.5)
    assert r.srtt == 0.5 and r.rttvar == 0.25 and r.rto == pytest.approx(1.5)
    r.sample(0.5)
    assert r.rttvar == pytest.approx(0.1875) and r.rto == pytest.approx(1.25)
    r.backoff()
    assert r.rto == pytest.approx(2.5)
    r.reset_backoff()
    assert r.rto == pytest.approx(1.25)
    for _ in range(100):
        r.sample(0.0001)
    assert r.rto == 0.2  # the floor
    for _ in range(20):
        r.backoff()
    assert r.rto == 60.0
    r.sample(-1)
    assert r.rto == 60.0
