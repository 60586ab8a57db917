"""NDP codec, the neighbor table with its resolution queue, and the RA schedule (manual
clock throughout)."""

from __future__ import annotations

import itertools
import random

from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDNSSL,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
)
from scapy.packet import raw

from drivers.user.v6 import addr as a6
from drivers.user.v6 import ndp
from drivers.user.v6.advert import Advertiser
from drivers.user.v6.neighbors import Neighbors

GUEST = "fec0::5054:ff:fe12:3456"
GMAC = "52:54:00:12:34:56"
MAC = bytes.fromhex("525400123456")


def ip(text: str) -> bytes:
    value = a6.parse(text)
    assert value is not None
    return value


# -- codec ---------------------------------------------------------------------------------


def test_parse_ns() -> None:
    msg = raw(ICMPv6ND_NS(tgt="fec0::2") / ICMPv6NDOptSrcLLAddr(lladdr=GMAC))
    assert ndp.parse_ns(msg, ip(GUEST), ip("ff02::1:ff00:2"), 255) == (ip("fec0::2"), MAC)
    assert ndp.parse_ns(msg, ip(GUEST), ip("fec0::2"), 64) == "ndp-bad-hop-limit"
    assert ndp.parse_ns(msg[:20], ip(GUEST), ip("fec0::2"), 255) == "ndp-short"
    assert ndp.parse_ns(msg[:1] + b"\x01" + msg[2:], ip(GUEST), ip("fec0::2"), 255) == (
        "ndp-bad-code"
    )
    multi = raw(ICMPv6ND_NS(tgt="ff02::1"))
    assert ndp.parse_ns(multi, ip(GUEST), ip("fec0::2"), 255) == "ndp-bad-target"
    zero_len = msg[:25] + b"\x00" + msg[26:]
    assert ndp.parse_ns(zero_len, ip(GUEST), ip("fec0::2"), 255) == "ndp-bad-option"
    # DAD probes: unspecified source, to the solicited-node group, without SLLA
    dad = raw(ICMPv6ND_NS(tgt=GUEST))
    assert ndp.parse_ns(dad, a6.UNSPECIFIED, a6.solicited_node(ip(GUEST)), 255) == (ip(GUEST), None)
    assert ndp.parse_ns(dad, a6.UNSPECIFIED, ip("fec0::2"), 255) == "ndp-bad-dad"
    assert ndp.parse_ns(msg, a6.UNSPECIFIED, ip("ff02::1:ff00:2"), 255) == "ndp-bad-dad"


def test_parse_na_and_rs() -> None:
    msg = raw(ICMPv6ND_NA(tgt=GUEST, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=GMAC))
    assert ndp.parse_na(msg, ip("fec0::2"), 255) == (ip(GUEST), False, True, True, MAC)
    assert ndp.parse_na(msg, a6.ALL_NODES, 255) == "ndp-bad-flags"  # S to multicast
    plain = raw(ICMPv6ND_NA(tgt=GUEST, R=0, S=0, O=0))
    assert ndp.parse_na(plain, a6.ALL_NODES, 255) == (ip(GUEST), False, False, False, None)
    rs = raw(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GMAC))
    assert ndp.parse_rs(rs, ip("fe80::1"), 255) == MAC
    assert ndp.parse_rs(raw(ICMPv6ND_RS()), a6.UNSPECIFIED, 255) is None
    assert ndp.parse_rs(rs, a6.UNSPECIFIED, 255) == "ndp-bad-rs"
    assert ndp.parse_rs(rs, ip("fe80::1"), 1) == "ndp-bad-hop-limit"
    assert ndp.parse_rs(rs + b"\x01", ip("fe80::1"), 255) == "ndp-bad-option"


def test_build_ns_na() -> None:
    ns = ICMPv6ND_NS(ndp.build_ns(ip(GUEST), bytes.fromhex("525600000002")))
    assert ns.tgt == GUEST and ns[ICMPv6NDOptSrcLLAddr].lladdr == "52:56:00:00:00:02"
    assert ndp.build_ns(ip(GUEST), None)[24:] == b""
    na = ICMPv6ND_NA(ndp.build_na(ip("fec0::2"), bytes.fromhex("525600000002"),
                                  router=True, solicited=True))  # fmt: skip
    assert (na.R, na.S, na.O, na.tgt) == (1, 1, 1, "fec0::2")
    assert na[ICMPv6NDOptDstLLAddr].lladdr == "52:56:00:00:00:02"


def test_build_ra_options() -> None:
    params = ndp.RouterAdvertParams(
        source_mac=bytes.fromhex("525600000002"), prefix=ip("fec0::1"), prefixlen=64,
        mtu=1400, rdnss=(ip("fec0::3"),), dnssl=("a.example", "bad..name", "b.example."),
    )  # fmt: skip
    ra = ICMPv6ND_RA(ndp.build_ra(params))
    assert (ra.chlim, ra.M, ra.O, ra.routerlifetime) == (64, 0, 1, 1800)
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == "52:56:00:00:00:02"
    assert ra[ICMPv6NDOptMTU].mtu == 1400
    pi = ra[ICMPv6NDOptPrefixInfo]
    assert (pi.prefix, pi.prefixlen, pi.L, pi.A) == ("fec0::", 64, 1, 1)
    assert (pi.validlifetime, pi.preferredlifetime) == (86400, 14400)
    assert ra[ICMPv6NDOptRDNSS].dns == ["fec0::3"] and ra[ICMPv6NDOptRDNSS].lifetime == 1800
    assert ra[ICMPv6NDOptDNSSL].searchlist == ["a.example.", "b.example."]
    assert len(ndp.build_ra(params)) % 8 == 0
    final = ICMPv6ND_RA(ndp.build_ra(params, router_lifetime=0))
    assert final.routerlifetime == 0
    bare = ndp.RouterAdvertParams(source_mac=b"\0" * 6, prefix=ip("fec0::"), prefixlen=64)
    assert ICMPv6NDOptRDNSS not in ICMPv6ND_RA(ndp.build_ra(bare))
    many = ndp.RouterAdvertParams(
        source_mac=b"\0" * 6,
        prefix=ip("fec0::"),
        prefixlen=64,
        dnssl=tuple(f"{'x' * 60}{i}.example" for i in range(40)),
    )
    assert len(ndp.build_ra(many)) <= ndp.RA_MAX


def test_parse_options_bounds() -> None:
    assert ndp.parse_options(b"\x01\x01" + b"\0" * 6, 0) == {1: [b"\0" * 6]}
    assert ndp.parse_options(b"\x01\x02" + b"\0" * 6, 0) is None
    assert ndp.parse_options(b"\x01", 0) is None
    assert ndp.parse_options(b"", 0) == {}


# -- neighbors -----------------------------------------------------------------------------


def test_learn_lookup_override_and_bounds() -> None:
    n = Neighbors(max_entries=2)
    assert n.learn(ip("fec0::10"), MAC, 0.0) == []
    assert n.lookup(ip("fec0::10")) == MAC
    other = bytes.fromhex("020000000001")
    n.learn(ip("fec0::10"), other, 1.0, override=False)
    assert n.lookup(ip("fec0::10")) == MAC
    n.learn(ip("fec0::10"), other, 1.0)
    assert n.lookup(ip("fec0::10")) == other and n.counters["ndp-mac-changed"] == 1
    n.learn(ip("fec0::11"), MAC, 2.0)
    n.learn(ip("fec0::12"), MAC, 3.0)  # evicts the least recently learnt
    assert ip("fec0::10") not in n and len(n) == 2
    n.learn(ip("ff02::1"), MAC, 0.0)  # multicast addresses and MACs are never learnt
    n.learn(ip("fec0::13"), bytes.fromhex("333300000001"), 0.0)
    assert len(n) == 2 and n.addresses_for(MAC) == [ip("fec0::11"), ip("fec0::12")]
    assert [e["ip-address"] for e in n.entries(3.0)] == ["fec0::11", "fec0::12"]


def test_hold_resolve_and_give_up() -> None:
    n = Neighbors(retrans=1.0, max_solicits=3, max_held=2)
    target = ip("fec0::20")
    assert n.hold(target, b"p1", 10.0) is True  # first packet: solicit now
    assert n.hold(target, b"p2", 10.1) is False
    assert n.hold(target, b"p3", 10.2) is False  # past max_held: dropped
    assert n.counters["ndp-hold-dropped"] == 1 and n.pending == 1
    assert n.next_deadline() == 11.0
    assert n.tick(10.9) == [] and n.tick(11.0) == [target] and n.tick(12.0) == [target]
    assert n.learn(target, MAC, 12.5) == [b"p1", b"p2"]
    assert n.pending == 0 and n.held_bytes == 0
    other = ip("fec0::21")
    n.hold(other, b"q", 20.0)
    assert n.tick(21.0) == [other] and n.tick(22.0) == [other]
    assert n.tick(23.0) == []  # the third solicitation went unanswered: give up
    assert n.counters["ndp-unresolved-dropped"] == 1 and n.pending == 0 and n.held_bytes == 0


def test_hold_bounds() -> None:
    n = Neighbors(max_pending=1, max_held_bytes=10)
    assert n.hold(ip("fec0::1"), b"x" * 8, 0.0)
    assert not n.hold(ip("fec0::2"), b"y", 0.0)  # too many addresses being resolved
    assert n.hold(ip("fec0::1"), b"z" * 8, 0.0) is False  # past the byte bound
    assert n.held_bytes == 8 and n.counters["ndp-hold-dropped"] == 2


def test_idle_entries_are_forgotten() -> None:
    n = Neighbors(idle=100.0)
    n.learn(ip("fec0::1"), MAC, 0.0)
    n.learn(ip("fec0::2"), MAC, 50.0)
    assert n.next_deadline() == 100.0
    n.tick(100.0)
    assert ip("fec0::1") not in n and ip("fec0::2") in n
    assert n.next_deadline() == 150.0
    n.learn(ip("fec0::2"), MAC, 120.0)  # refreshed
    n.tick(150.0)
    assert ip("fec0::2") in n and n.next_deadline() == 220.0


# -- RA schedule ---------------------------------------------------------------------------


def test_initial_burst_then_slirp_interval() -> None:
    adv = Advertiser(100.0, random.Random(3))
    sent = []
    now = 100.0
    for _ in range(8):
        now = adv.next_deadline()
        assert adv.due(now)
        sent.append(now)
    assert sent[:3] == [100.0, 116.0, 132.0]
    gaps = [b - a for a, b in itertools.pairwise(sent[2:])]
    assert all(200.0 <= g <= 600.0 for g in gaps), gaps
    assert not adv.due(now + 1.0)


def test_solicited_rate_limit() -> None:
    adv = Advertiser(0.0, random.Random(1))
    assert adv.due(0.0)  # the first unsolicited RA
    assert not adv.solicited(1.0)  # inside the 3 s gap: answered at its end
    assert not adv.solicited(2.0)
    assert adv.next_deadline() == 3.0
    assert adv.due(3.0) and not adv.due(3.5)
    assert adv.solicited(7.0)  # outside the gap: at once
    assert adv.sent == 3
    assert not adv.solicited(8.0)
    adv.answered()  # answered by unicast: nothing pending
    assert adv.next_deadline() > 8.0
    adv.restart(8.0)
    assert adv.next_deadline() == 8.0 and adv.due(8.0)


def test_solicited_ra_stands_for_an_overdue_unsolicited_one() -> None:
    adv = Advertiser(0.0, random.Random(2))  # the first RA is due at 0; nobody ran the timer
    assert adv.solicited(50.0)  # an RS at 50 s: answered at once by multicast
    assert adv.next_deadline() > 50.0  # and no second RA right behind it
    assert not adv.due(50.0) and adv.sent == 1
