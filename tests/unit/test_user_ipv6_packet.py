"""IPv6 packet codec: header, extension-header walk, checksums, fragments, reassembly.

scapy is the independent codec: it builds what we parse and parses what we build."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import UDP as SUDP
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    RouterAlert,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.packet import Raw, raw

from drivers.user.v6 import addr as a6
from drivers.user.v6.fragments import Reassembler
from netstack.proto import ipv6 as pk

SRC = "fec0::5054:ff:fe12:3456"
DST = "fec0::2"


def ip(text: str) -> bytes:
    value = a6.parse(text)
    assert value is not None
    return value


def walk(p: bytes, multicast: bool = False) -> pk.Chain | pk.Problem:
    return pk.walk(p, p[6], 40, len(p), dst_multicast=multicast)


def test_header_round_trip() -> None:
    h = pk.ipv6_header(ip(SRC), ip(DST), 17, 8, hop_limit=7, tclass=0xB8, flow=0x12345)
    parsed = pk.parse_header(h)
    assert parsed == pk.Header(0xB8, 0x12345, 8, 17, 7, ip(SRC), ip(DST))
    s = IPv6(h)
    assert (s.tc, s.fl, s.plen, s.nh, s.hlim, s.src, s.dst) == (0xB8, 0x12345, 8, 17, 7, SRC, DST)
    assert pk.parse_header(h[:39]) is None
    assert pk.parse_header(b"\x45" + h[1:]) is None


def test_walk_skips_extension_headers_to_the_upper_layer() -> None:
    p = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrHopByHop(options=[RouterAlert()])
            / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0\0")]) / IPv6ExtHdrRouting(segleft=0)
            / AH(nh=17, payloadlen=4, icv=b"\0" * 12) / SUDP(sport=1, dport=2))  # fmt: skip
    chain = walk(p)
    assert isinstance(chain, pk.Chain) and chain.proto == 17 and chain.fragment is None
    assert p[chain.offset : chain.offset + 4] == b"\x00\x01\x00\x02"


@pytest.mark.parametrize(
    ("otype", "outcome"),
    [(0x3E, "skip"), (0x7E, "silent"), (0xBE, "param"), (0xFE, "param")],
)
def test_unknown_option_actions(otype: int, outcome: str) -> None:
    p = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=otype,
            optdata=b"ab")]) / SUDP())  # fmt: skip
    chain = walk(p)
    if outcome == "skip":
        assert isinstance(chain, pk.Chain) and chain.proto == 17
    elif outcome == "silent":
        assert chain == pk.Problem("ip6-option-unknown")
    else:
        assert chain == pk.Problem("ip6-option-unknown", pk.PARAM_OPTION, 42)
    # to a multicast destination, action 11 drops silently
    multicast = walk(p, multicast=True)
    if otype == 0xFE:
        assert multicast == pk.Problem("ip6-option-unknown")


def test_routing_header_with_segments_left_is_refused() -> None:
    p = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrRouting(addresses=["2001:db8::1"], segleft=1)
            / SUDP())  # fmt: skip
    assert walk(p) == pk.Problem("ip6-routing-header", pk.PARAM_HEADER_FIELD, 42)


def test_hop_by_hop_not_first_is_a_next_header_problem() -> None:
    p = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop() / SUDP())
    assert walk(p) == pk.Problem("ip6-hbh-not-first", pk.PARAM_NEXT_HEADER, 40)


def test_truncated_and_endless_chains() -> None:
    p = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 20)]))
    assert walk(p[:-8]) == pk.Problem("ip6-ext-truncated")
    chain = IPv6(src=SRC, dst=DST)
    for _ in range(pk.MAX_EXTENSION_HEADERS + 1):
        chain = chain / IPv6ExtHdrDestOpt()
    assert walk(raw(chain / SUDP())) == pk.Problem("ip6-ext-too-many")
    bad = bytearray(raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrDestOpt() / SUDP()))
    bad[42:44] = b"\x01\x09"  # PadN claiming 9 bytes inside a 6-byte area
    assert walk(bytes(bad)) == pk.Problem("ip6-option-malformed", pk.PARAM_HEADER_FIELD, 42)


def test_fragment_header_is_reported() -> None:
    p = raw(IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(nh=58, offset=3, m=1, id=0xABCDEF)
            / Raw(b"x" * 16))  # fmt: skip
    chain = walk(p)
    assert isinstance(chain, pk.Chain)
    assert chain.fragment == pk.Fragment(24, True, 0xABCDEF, 58, 40)
    assert chain.offset == 48 and chain.proto == 58
    assert pk.walk(p, 44, 40, len(p), fragmented=True) == pk.Problem("ip6-frag-nested")


def test_checksums_match_scapy() -> None:
    seg = pk.udp_segment(ip(SRC), ip(DST), 546, 547, b"hello")
    ref = raw(IPv6(src=SRC, dst=DST) / SUDP(sport=546, dport=547) / Raw(b"hello"))[40:]
    assert seg == ref
    assert pk.checksum_ok(ip(SRC), ip(DST), 17, seg)
    assert not pk.checksum_ok(ip(SRC), ip(DST), 17, seg[:6] + b"\0\0" + seg[8:])
    msg = pk.icmp6_message(ip(SRC), ip(DST), 128, 0, b"\x00\x07\x00\x01data")
    ref = raw(IPv6(src=SRC, dst=DST) / ICMPv6EchoRequest(id=7, seq=1, data=b"data"))[40:]
    assert msg == ref


def test_udp_checksum_zero_is_sent_as_ffff() -> None:
    # choose the 2-byte payload that makes the ones'-complement sum 0xffff (checksum 0)
    base = pk.udp_segment(ip(SRC), ip(DST), 1, 2, b"\0\0")
    total = ~int.from_bytes(base[6:8], "big") & 0xFFFF
    word = (0xFFFF - total) & 0xFFFF
    seg = pk.udp_segment(ip(SRC), ip(DST), 1, 2, word.to_bytes(2, "big"))
    assert seg[6:8] == b"\xff\xff"
    assert pk.checksum_ok(ip(SRC), ip(DST), 17, seg)


def test_frames_are_padded_and_typed() -> None:
    p = pk.ipv6_header(ip(SRC), ip(DST), 59, 0)
    f = pk.frame(b"\x11" * 6, b"\x22" * 6, p)
    assert len(f) == 60 and f[12:14] == b"\x86\xdd" and f[14:54] == p


@pytest.mark.parametrize("size", [0, 1, 1232, 1240, 1241, 3000, 65000])
def test_packets_fragment_to_the_mtu_and_reassemble(size: int) -> None:
    l4 = random.Random(size).randbytes(size)
    pkts = pk.packets(ip(SRC), ip(DST), 17, l4, 1280, 0x1234)
    assert all(len(x) <= 1280 for x in pkts)
    if 40 + size <= 1280:
        assert pkts == [pk.ipv6_header(ip(SRC), ip(DST), 17, size) + l4]
        return
    r = Reassembler()
    random.Random(1).shuffle(pkts)
    done = None
    for x in pkts:
        s = IPv6(x)
        assert IPv6ExtHdrFragment in s and s[IPv6ExtHdrFragment].id == 0x1234
        chain = walk(x)
        assert isinstance(chain, pk.Chain) and chain.fragment is not None
        f = chain.fragment
        if f.more:
            assert (len(x) - 48) % 8 == 0
        done = r.add((ip(SRC), ip(DST), f.ident), f.offset, f.more, f.next_header,
                     x[48:], x, 0.0) or done  # fmt: skip
    assert done is not None and done.data == l4 and done.next_header == 17
    assert len(r) == 0 and r.held_bytes == 0
    with pytest.raises(ValueError):
        pk.packets(ip(SRC), ip(DST), 17, bytes(65535), 1280, 1)


def test_reassembly_of_scapy_fragments() -> None:
    big = IPv6(src=SRC, dst=DST) / IPv6ExtHdrFragment(id=77) / ICMPv6EchoRequest(data=b"z" * 3000)
    frags = fragment6(big, 1280)
    r = Reassembler()
    done = None
    for x in map(raw, reversed(frags)):
        chain = walk(x)
        assert isinstance(chain, pk.Chain) and chain.fragment is not None
        f = chain.fragment
        done = r.add((ip(SRC), ip(DST), f.ident), f.offset, f.more, f.next_header,
                     x[chain.offset :], x, 1.0) or done  # fmt: skip
    assert done is not None and done.next_header == 58
    assert done.data == raw(big[ICMPv6EchoRequest])
    assert done.first_packet == raw(frags[0]) and done.first_len == len(raw(frags[0])) - 48


KEY = (ip(SRC), ip(DST), 9)


def test_reassembly_duplicates_overlaps_and_inconsistency() -> None:
    r = Reassembler()
    assert r.add(KEY, 0, True, 17, b"a" * 16, b"first", 0.0) is None
    assert r.add(KEY, 0, True, 17, b"a" * 16, b"first", 0.0) is None  # exact duplicate
    assert r.counters["ip6-frag-duplicate"] == 1
    assert r.add(KEY, 8, True, 17, b"b" * 16, b"", 0.0) is None  # overlap: all dropped
    assert r.counters["ip6-frag-overlap"] == 1 and len(r) == 0 and r.held_bytes == 0
    assert r.add(KEY, 16, False, 17, b"c" * 4, b"", 0.0) is None
    assert r.add(KEY, 24, True, 17, b"d" * 8, b"", 0.0) is None  # beyond the end
    assert r.counters["ip6-frag-inconsistent"] == 1 and len(r) == 0
    assert r.add(KEY, 16, False, 17, b"c" * 4, b"", 0.0) is None
    assert r.add(KEY, 0, True, 17, b"a" * 16, b"first", 0.0) == (17, b"a" * 16 + b"c" * 4,
                                                                 b"first", 16)  # fmt: skip


def test_reassembly_timeout_reports_first_fragments() -> None:
    r = Reassembler(timeout=60.0)
    r.add(KEY, 0, True, 17, b"a" * 8, b"first-of-9", 10.0)
    r.add((ip(SRC), ip(DST), 10), 8, False, 17, b"b", b"not-first", 20.0)
    assert r.next_deadline() == 70.0
    assert r.expire(69.9) == []
    assert r.expire(70.0) == [b"first-of-9"]
    assert r.next_deadline() == 80.0
    assert r.expire(80.0) == []  # no first fragment: nothing to report
    assert r.counters["ip6-frag-timeout"] == 2 and len(r) == 0 and r.next_deadline() is None


def test_reassembly_bounds() -> None:
    r = Reassembler(max_datagrams=2, max_bytes=100, max_fragments=3)
    assert r.add((b"a" * 16, b"b" * 16, 1), 0, True, 17, b"x" * 8, b"", 0.0) is None
    assert r.add((b"a" * 16, b"b" * 16, 2), 0, True, 17, b"x" * 8, b"", 0.0) is None
    assert r.add((b"a" * 16, b"b" * 16, 3), 0, True, 17, b"x" * 8, b"", 0.0) is None
    assert r.counters["ip6-frag-overflow"] == 1 and len(r) == 2
    r.add((b"a" * 16, b"b" * 16, 1), 8, True, 17, b"x" * 8, b"", 0.0)
    r.add((b"a" * 16, b"b" * 16, 1), 16, True, 17, b"x" * 8, b"", 0.0)
    r.add((b"a" * 16, b"b" * 16, 1), 24, True, 17, b"x" * 8, b"", 0.0)  # the 4th: dropped
    assert r.counters["ip6-frag-overflow"] == 2 and len(r) == 1
    r.add((b"a" * 16, b"b" * 16, 2), 8, True, 17, b"x" * 96, b"", 0.0)  # past max_bytes
    assert len(r) == 0 and r.held_bytes == 0


def test_quote_udp_is_a_valid_header() -> None:
    q = pk.quote_udp(ip(SRC), ip("2001:db8::1"), 5000, 53, b"head")
    s = IPv6(q)
    assert s.src == SRC and s.dst == "2001:db8::1" and s.plen == 12
    assert s[SUDP].sport == 5000 and s[SUDP].dport == 53 and bytes(s[SUDP].payload) == b"head"


def test_address_helpers() -> None:
    assert a6.solicited_node(ip("fec0::1234:5678")) == ip("ff02::1:ff34:5678")
    assert a6.is_solicited_node(ip("ff02::1:ff34:5678"))
    assert a6.multicast_mac(ip("ff02::1:ff34:5678")) == bytes.fromhex("3333ff345678")
    assert a6.virtual_mac(ip("fec0::2")) == bytes.fromhex("525600000002")
    assert a6.in_prefix(ip("fec0::1"), ip("fec0::"), 64)
    assert not a6.in_prefix(ip("fec0:0:0:1::1"), ip("fec0::"), 64)
    assert a6.in_prefix(ip("2001:db8::1"), ip("fec0::"), 0)
    assert a6.mask(ip("fec0::1:2"), 112) == ip("fec0::1:0")
    assert a6.mask(ip("fec0::1:2"), 0) == a6.UNSPECIFIED
    assert a6.with_host_bits(ip("fec0::"), 64, 5) == ip("fec0::5")
    assert a6.link_local(ip("fec0::3")) == ip("fe80::3")
    assert a6.is_link_local(ip("febf::1")) and not a6.is_link_local(ip("fec0::1"))
    assert not a6.is_unicast(ip("::1")) and not a6.is_unicast(ip("::"))
    assert a6.is_v4_mapped(ip("::ffff:10.0.2.2"))
    assert a6.parse("nonsense") is None and a6.text(ip("fec0::2")) == "fec0::2"
