"""The IPv6 router machine end to end on frames (scapy crafts and decodes), manual clock."""

from __future__ import annotations

import itertools
import random

import pytest
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_InfoRequest,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    ICMPv6ParamProblem,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw, raw

from drivers.user.v6 import Ipv6Config, Ipv6Router, Packet6, PingClose, PingSend
from drivers.user.v6 import addr as a6
from netstack.proto import ipv6 as pk

GMAC = "52:54:00:12:34:56"
GMAC_B = bytes.fromhex("525400123456")
GUEST = "fec0::5054:ff:fe12:3456"
GUEST_LL = "fe80::5054:ff:fe12:3456"
RMAC = "52:56:00:00:00:02"
DNSMAC = "52:56:00:00:00:03"


def ip(text: str) -> bytes:
    value = a6.parse(text)
    assert value is not None
    return value


def make(cfg: Ipv6Config | None = None, now: float = 0.0) -> Ipv6Router:
    r = Ipv6Router(cfg or Ipv6Config(), now=now, rng=random.Random(7))
    r.tick(now)  # the first unsolicited RA
    r.out.clear()
    return r


def eth(ip6: Packet, dst: str = RMAC) -> bytes:
    return raw(Ether(src=GMAC, dst=dst) / ip6)


def out(r: Ipv6Router) -> list[Packet]:
    frames = [Ether(f) for f in r.out]
    r.out.clear()
    return frames


def echo(dst: str, hlim: int = 64, data: bytes = b"ping", src: str = GUEST) -> bytes:
    mac = DNSMAC if dst.endswith("::3") else RMAC
    return eth(IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6EchoRequest(id=9, seq=3, data=data), mac)


def test_router_solicitation_gets_an_ra_and_teaches_the_guest() -> None:
    r = make(Ipv6Config(mtu=9000, dnssearch=("x.example",)))
    rs = IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(
        lladdr=GMAC)  # fmt: skip
    r.input(eth(rs, "33:33:00:00:00:02"), 5.0)
    (f,) = out(r)
    assert f.dst == "33:33:00:00:00:01" and f.src == RMAC
    assert f[IPv6].src == "fe80::2" and f[IPv6].dst == "ff02::1" and f[IPv6].hlim == 255
    ra = f[ICMPv6ND_RA]
    assert ra.routerlifetime == 1800 and ra.M == 0 and ra.O == 1
    assert r.neighbors.lookup(ip(GUEST_LL)) == GMAC_B
    # checksum verified by re-building with scapy
    assert raw(IPv6(raw(f[IPv6]))) == raw(f[IPv6])
    del f[ICMPv6ND_RA].cksum
    assert raw(Ether(raw(f))) == raw(f)


def test_solicitation_inside_the_multicast_gap() -> None:
    r = make()  # an RA went out at 0
    rs = IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(
        lladdr=GMAC)  # fmt: skip
    r.input(eth(rs, "33:33:00:00:00:02"), 1.0)
    (f,) = out(r)  # answered at once, by unicast
    assert f.dst == GMAC and f[IPv6].dst == GUEST_LL and ICMPv6ND_RA in f
    assert r.counters()["ndp-ra-unicast"] == 1 and r.next_deadline() == 16.0
    anonymous = IPv6(src="::", dst="ff02::2", hlim=255) / ICMPv6ND_RS()
    r.input(eth(anonymous, "33:33:00:00:00:02"), 1.5)  # no address to answer: deferred
    assert out(r) == [] and r.counters()["ndp-rs-deferred"] == 1
    assert r.next_deadline() == 3.0
    r.tick(3.0)
    (f,) = out(r)
    assert f[IPv6].dst == "ff02::1"


def test_ra_timer_and_final_advertisement() -> None:
    r = Ipv6Router(Ipv6Config(), now=100.0, rng=random.Random(1))
    assert r.next_deadline() == 100.0
    times = []
    for _ in range(5):
        now = r.next_deadline()
        assert now is not None
        r.tick(now)
        assert len(out(r)) == 1
        times.append(now)
    assert times[:3] == [100.0, 116.0, 132.0]
    assert all(200 <= b - a <= 600 for a, b in itertools.pairwise(times[2:]))
    (final,) = [Ether(x) for x in r.final_advertisement()]
    assert final[ICMPv6ND_RA].routerlifetime == 0 and r.out == []


def test_restrict_advertises_no_default_route_and_no_dns() -> None:
    r = make(Ipv6Config(restrict=True, dns_relay=False))
    r.link_up(50.0)
    r.tick(50.0)
    (f,) = out(r)
    assert f[ICMPv6ND_RA].routerlifetime == 0 and f[ICMPv6ND_RA].O == 0
    assert "RDNSS" not in f.summary()


@pytest.mark.parametrize(
    ("target", "mac"),
    [("fec0::2", RMAC), ("fec0::3", DNSMAC), ("fe80::2", RMAC), ("fe80::3", DNSMAC)],
)
def test_neighbor_solicitations_for_our_addresses(target: str, mac: str) -> None:
    r = make()
    group = a6.text(a6.solicited_node(ip(target)))
    ns = IPv6(src=GUEST, dst=group, hlim=255) / ICMPv6ND_NS(tgt=target) / ICMPv6NDOptSrcLLAddr(
        lladdr=GMAC)  # fmt: skip
    r.input(eth(ns, a6.multicast_mac(ip(group)).hex(":")), 1.0)
    (f,) = out(r)
    na = f[ICMPv6ND_NA]
    assert f.dst == GMAC and f.src == mac and f[IPv6].src == target and f[IPv6].dst == GUEST
    assert (na.R, na.S, na.O, na.tgt) == (1, 1, 1, target)
    assert f[ICMPv6NDOptDstLLAddr].lladdr == mac
    assert r.neighbors.lookup(ip(GUEST)) == GMAC_B


def test_dad_probe_for_our_address_is_defended_and_guest_dad_is_not_answered() -> None:
    r = make()
    probe = IPv6(src="::", dst="ff02::1:ff00:3", hlim=255) / ICMPv6ND_NS(tgt="fec0::3")
    r.input(eth(probe, "33:33:ff:00:00:03"), 1.0)
    (f,) = out(r)
    assert f[IPv6].dst == "ff02::1" and f.dst == "33:33:00:00:00:01"
    assert f[ICMPv6ND_NA].S == 0 and f[ICMPv6ND_NA].tgt == "fec0::3"
    own = IPv6(src="::", dst=a6.text(a6.solicited_node(ip(GUEST))), hlim=255) / ICMPv6ND_NS(
        tgt=GUEST)  # fmt: skip
    r.input(eth(own, "33:33:ff:12:34:56"), 2.0)  # not one of our groups: not even looked at
    assert out(r) == [] and r.counters()["ip6-multicast-ignored"] == 1
    # a DAD probe that does reach us (to a group of ours) is not answered either
    odd = IPv6(src="::", dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt="fec0::1:0:0:2")
    r.input(eth(odd, "33:33:ff:00:00:02"), 2.0)
    assert out(r) == [] and r.counters()["ndp-dad-probe"] == 1
    assert ip(GUEST) not in r.neighbors  # nothing learnt from a tentative address


def test_na_claiming_our_address_is_a_conflict() -> None:
    r = make()
    na = IPv6(src=GUEST, dst="ff02::1", hlim=255) / ICMPv6ND_NA(tgt="fec0::2", S=0)
    r.input(eth(na, "33:33:00:00:00:01"), 1.0)
    assert r.counters()["ndp-conflict"] == 1 and ip("fec0::2") not in r.neighbors


def test_local_echo_from_the_address_pinged() -> None:
    r = make()
    r.input(echo("fec0::3", data=b"x" * 100), 1.0)
    (f,) = out(r)
    assert f.src == DNSMAC and f.dst == GMAC and f[IPv6].src == "fec0::3"
    rep = f[ICMPv6EchoReply]
    assert (rep.id, rep.seq, rep.data) == (9, 3, b"x" * 100)


def test_fragmented_echo_is_reassembled_and_the_reply_fragmented() -> None:
    r = make()
    big = IPv6(src=GUEST, dst="fec0::2") / IPv6ExtHdrFragment(id=5) / ICMPv6EchoRequest(
        id=1, seq=2, data=b"y" * 3000)  # fmt: skip
    for frag in fragment6(big, 1280):
        r.input(eth(frag), 1.0)
    frames = out(r)
    assert len(frames) == 3 and all(len(raw(f[IPv6])) <= 1500 for f in frames)
    from scapy.layers.inet6 import defragment6

    whole = IPv6(raw(defragment6([f[IPv6] for f in frames])))
    assert whole[ICMPv6EchoReply].data == b"y" * 3000


def test_echo_relay_actions_and_replies() -> None:
    r = make()
    r.input(echo("2001:db8::1", hlim=10), 1.0)
    (send,) = r.actions
    assert isinstance(send, PingSend)
    assert send.host == "2001:db8::1" and send.hop_limit == 9 and send.payload == b"ping"
    r.ping_reply(send.key, "2001:db8::1", 3, b"ping", 1.1)
    (f,) = out(r)
    assert f[IPv6].src == "2001:db8::1" and f[ICMPv6EchoReply].id == 9 and f.src == RMAC
    r.ping_reply(send.key, "2001:db8::2", 3, b"ping", 1.2)  # from elsewhere: ignored
    assert out(r) == []
    r.actions.clear()
    r.tick(1.0 + 60.0)
    assert r.actions == [PingClose(send.key)]


def test_echo_relay_restrict_and_hop_limit() -> None:
    r = make(Ipv6Config(restrict=True))
    r.input(echo("2001:db8::1"), 1.0)
    assert r.actions == [] and r.counters()["restrict-dropped"] == 1
    r.input(echo("fec0::2"), 1.0)  # our own addresses still answer
    assert len(out(r)) == 1
    r = make()
    r.input(echo("2001:db8::1", hlim=1), 1.0)
    (f,) = out(r)
    assert f[ICMPv6TimeExceeded].code == 0 and f[IPv6].src == "fec0::2" and r.actions == []


def test_packet_too_big() -> None:
    r = make(Ipv6Config(mtu=1280))
    big = eth(IPv6(src=GUEST, dst="2001:db8::1") / UDP(sport=1, dport=2) / Raw(b"z" * 1300))
    r.input(big, 1.0)
    (f,) = out(r)
    assert f[ICMPv6PacketTooBig].mtu == 1280 and len(raw(f[IPv6])) <= 1280


def test_udp_handler_hook_and_udp_to_guest() -> None:
    r = make()
    seen: list[Packet6] = []
    r.ip_handlers[pk.IPPROTO_UDP] = lambda p, now: seen.append(p)
    dgram = IPv6(src=GUEST, dst="2001:db8::53", hlim=5) / UDP(sport=4000, dport=53) / Raw(b"q")
    r.input(eth(dgram) + b"\0" * 30, 1.0)  # Ethernet padding is trimmed
    (p,) = seen
    assert p.proto == 17 and p.payload == raw(dgram[UDP]) and p.hop_limit == 5
    assert p.src == ip(GUEST) and p.src_mac == GMAC_B and not p.link_multicast
    r.udp_to_guest(ip("2001:db8::53"), 53, ip(GUEST), 4000, b"answer", 1.1)
    (f,) = out(r)
    assert f[UDP].sport == 53 and bytes(f[UDP].payload) == b"answer" and f.dst == GMAC
    assert raw(IPv6(raw(f[IPv6]))) == raw(f[IPv6])
    bad = bytearray(eth(dgram))
    bad[-1] ^= 0xFF  # corrupt: checksum fails
    r.input(bytes(bad), 1.2)
    assert len(seen) == 1 and r.counters()["udp6-bad-checksum"] == 1
    zero = IPv6(src=GUEST, dst="2001:db8::53") / UDP(sport=1, dport=2, chksum=0) / Raw(b"q")
    r.input(eth(zero), 1.3)
    assert len(seen) == 1 and r.counters()["udp6-bad-checksum"] == 2


def test_without_handlers() -> None:
    r = make()
    r.input(eth(IPv6(src=GUEST, dst="fec0::2") / UDP(sport=1, dport=9)), 1.0)
    (f,) = out(r)
    assert f[ICMPv6DestUnreach].code == 4 and f[IPv6].src == "fec0::2"
    r.input(eth(IPv6(src=GUEST, dst="2001:db8::9") / UDP(sport=1, dport=9)), 1.0)
    (f,) = out(r)
    assert f[ICMPv6DestUnreach].code == 1
    r.input(eth(IPv6(src=GUEST, dst="fec0::2", nh=253) / Raw(b"x" * 8)), 1.0)
    (f,) = out(r)
    assert f[ICMPv6ParamProblem].code == 1 and f[ICMPv6ParamProblem].ptr == 6


def test_neighbor_resolution_for_outbound_packets() -> None:
    r = make()
    target = ip("fec0::99")
    r.udp_to_guest(ip("fec0::2"), 7, target, 7, b"a", 10.0)
    r.udp_to_guest(ip("fec0::2"), 7, target, 7, b"b", 10.0)
    (ns,) = out(r)
    assert ns[IPv6].dst == "ff02::1:ff00:99" and ns[ICMPv6ND_NS].tgt == "fec0::99"
    assert ns[ICMPv6NDOptSrcLLAddr].lladdr == RMAC and ns[IPv6].hlim == 255
    assert r.next_deadline() == 11.0
    r.tick(11.0)
    assert len(out(r)) == 1  # a second solicitation
    na = IPv6(src="fec0::99", dst="fec0::2", hlim=255) / ICMPv6ND_NA(tgt="fec0::99", S=1) / (
        ICMPv6NDOptDstLLAddr(lladdr="02:00:00:00:00:99"))  # fmt: skip
    r.input(raw(Ether(src="02:00:00:00:00:99", dst=RMAC) / na), 11.5)
    frames = out(r)
    assert [bytes(f[UDP].payload) for f in frames] == [b"a", b"b"]
    assert all(f.dst == "02:00:00:00:00:99" for f in frames)
    # unanswered: three solicitations, then the packet is dropped
    r.udp_to_guest(ip("fec0::2"), 7, ip("fec0::98"), 7, b"c", 20.0)
    for t in (21.0, 22.0, 23.0):
        r.tick(t)
    counters = r.counters()
    assert counters["ndp-unresolved-dropped"] == 1 and counters["ndp-ns-sent"] == 5


def test_dhcpv6_through_the_router() -> None:
    r = make()
    msg = IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / DHCP6_InfoRequest(
        trid=1) / DHCP6OptClientId(duid=DUID_LL(lladdr=GMAC))  # fmt: skip
    r.input(eth(msg, "33:33:00:01:00:02"), 1.0)
    (f,) = out(r)
    assert f[IPv6].src == "fe80::2" and f[IPv6].dst == GUEST_LL and f[UDP].dport == 546
    assert f[DHCP6OptDNSServers].dnsservers == ["fec0::3"]


def test_guest_traffic_filters() -> None:
    r = make()
    r.input(eth(IPv6(src=GUEST, dst="ff02::fb") / UDP(sport=5353, dport=5353)), 1.0)
    r.input(eth(IPv6(src=GUEST, dst="fec0::77") / UDP(sport=1, dport=2)), 1.0)  # another guest
    r.input(eth(IPv6(src="fec0::2", dst="fec0::3") / UDP(sport=1, dport=2)), 1.0)  # spoofed
    r.input(eth(IPv6(src=GUEST, dst="fec0::2") / UDP(), dst="02:00:00:00:00:01"), 1.0)
    r.input(eth(IPv6(src="::", dst="fec0::2") / UDP()), 1.0)
    r.input(raw(Ether(src=RMAC, dst=RMAC) / IPv6(src=GUEST, dst="fec0::2") / UDP()), 1.0)
    c = r.counters()
    assert c["ip6-multicast-ignored"] == 1 and c["ip6-not-routed"] == 1
    assert c["ip6-bad-source"] == 2 and c["eth-not-for-us"] == 1 and c["eth-own-source"] == 1
    assert out(r) == [] and not r.accepts(bytes.fromhex("020000000001") + b"\0" * 8)
    assert r.accepts(bytes.fromhex("333300000001"))
    assert r.accepts(bytes.fromhex(RMAC.replace(":", "")))


def test_routing_header_gets_a_parameter_problem() -> None:
    from scapy.layers.inet6 import IPv6ExtHdrRouting

    r = make()
    p = IPv6(src=GUEST, dst="fec0::2") / IPv6ExtHdrRouting(addresses=["2001:db8::1"]) / UDP()
    r.input(eth(p), 1.0)
    (f,) = out(r)
    assert f[ICMPv6ParamProblem].code == 0 and f[ICMPv6ParamProblem].ptr == 42


def test_fragment_errors_and_timeout() -> None:
    r = make()
    odd = IPv6(src=GUEST, dst="fec0::2") / IPv6ExtHdrFragment(m=1, id=1, nh=17) / Raw(b"x" * 13)
    r.input(eth(odd), 1.0)
    (f,) = out(r)
    assert f[ICMPv6ParamProblem].code == 0 and f[ICMPv6ParamProblem].ptr == 4
    first = IPv6(src=GUEST, dst="fec0::2") / IPv6ExtHdrFragment(m=1, id=2, nh=17) / Raw(b"x" * 16)
    r.input(eth(first), 2.0)
    assert out(r) == [] and r.reassembly.next_deadline() == 62.0
    r.tick(62.0)
    (f,) = [x for x in out(r) if ICMPv6TimeExceeded in x]
    assert f[ICMPv6TimeExceeded].code == 1 and f[ICMPv6TimeExceeded].payload.src == GUEST
    atomic = IPv6(src=GUEST, dst="fec0::2") / IPv6ExtHdrFragment(id=3) / ICMPv6EchoRequest()
    r.input(eth(atomic), 63.0)
    (f,) = out(r)
    assert ICMPv6EchoReply in f and r.counters()["ip6-atomic-fragment"] == 1


def test_errors_are_rate_limited_and_never_about_errors() -> None:
    r = make()
    for _ in range(200):
        r.input(eth(IPv6(src=GUEST, dst="fec0::2") / UDP(sport=1, dport=9)), 1.0)
    assert len(out(r)) == 50 and r.counters()["icmp6-error-rate-limited"] == 150
    r = make(Ipv6Config(mtu=1280))  # an oversized ICMPv6 error: no Packet Too Big about it
    err = IPv6(src=GUEST, dst="2001:db8::1") / ICMPv6DestUnreach() / IPv6() / Raw(b"e" * 1300)
    r.input(eth(err), 1.0)
    assert out(r) == [] and r.counters()["icmp6-error-suppressed"] == 1


def test_icmp_error_to_for_the_nat() -> None:
    r = make()
    r.neighbors.learn(ip(GUEST), GMAC_B, 0.0)
    quote = pk.quote_udp(ip(GUEST), ip("2001:db8::1"), 5000, 53, b"head")
    r.icmp_error_to(ip(GUEST), 1, 4, 0, quote, src=ip("2001:db8::1"), now=1.0)
    (f,) = out(r)
    assert f[IPv6].src == "2001:db8::1" and f[ICMPv6DestUnreach].code == 4
    assert raw(f[ICMPv6DestUnreach].payload) == quote


def test_addresses_for_a_mac() -> None:
    r = make()
    r.input(echo("fec0::2"), 1.0)
    r.input(echo("fe80::2", src=GUEST_LL), 1.0)
    assert r.addresses_for(GMAC_B) == [(GUEST_LL, 64), (GUEST, 64)]
    assert r.leases(1.0) == [] and r.leases_for(GMAC_B) == []


@pytest.mark.parametrize("cut", [14, 20, 53, 54, 60, 61, 69])
def test_truncated_frames_are_counted(cut: int) -> None:
    r = make()
    frame = eth(IPv6(src=GUEST, dst="fec0::2") / ICMPv6EchoRequest(data=b"abcdefgh"))
    r.input(frame[:cut], 1.0)
    assert out(r) == [] and sum(r.counters().values()) >= 1
