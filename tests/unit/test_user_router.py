"""The user netdev's gateway, sans-IO: ARP, IPv4 checks, reassembly and fragmentation,
local ICMP echo, dispatch to the services, NAT actions, restrict, ICMP errors.

Frames are built and checked with scapy (an independent codec: it verifies our checksums
and fragment layout); the clock is a plain float.
"""

from __future__ import annotations

import socket

import pytest
from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror, fragment
from scapy.layers.l2 import ARP, Ether

from drivers.user.dns import Upstream
from drivers.user.icmp_relay import PingClose, PingSend
from drivers.user.options import UserConfig
from drivers.user.udp_nat import UdpClose, UdpSend
from drivers.user.v4.router import Gateway

GUEST_MAC = "52:54:00:12:34:56"
GUEST = "10.0.2.15"
ROUTER_MAC = "52:55:0a:00:02:02"
DNS_MAC = "52:55:0a:00:02:03"
HOST = socket.inet_aton("10.0.2.2")


def gw(**cfg: object) -> Gateway:
    return Gateway(UserConfig(**cfg))  # type: ignore[arg-type]


def eth(dst: str = ROUTER_MAC, src: str = GUEST_MAC) -> Ether:
    return Ether(dst=dst, src=src)


def udp_frame(
    dst: str, dport: int, payload: bytes, sport: int = 40000, src: str = GUEST, ttl: int = 64
) -> bytes:
    return bytes(eth() / IP(src=src, dst=dst, ttl=ttl) / UDP(sport=sport, dport=dport) / payload)


def out(g: Gateway) -> list[Ether]:
    frames = g.out[:]
    g.out.clear()
    for f in frames:
        assert len(f) >= 60
    return [Ether(f) for f in frames]


def udp_data(pkt: Ether) -> bytes:
    """The UDP payload (without the Ethernet padding scapy keeps)."""
    return bytes(pkt[UDP])[8 : pkt[UDP].len]


def valid(pkt: Ether) -> bool:
    """scapy recomputes the checksums: equal to what we sent."""
    ip = pkt[IP]
    again = IP(bytes(ip))
    del again.chksum
    if UDP in again:
        del again[UDP].chksum
    if ICMP in again:
        del again[ICMP].chksum
    return bytes(IP(bytes(again))) == bytes(ip)


def test_arp_answers_host_and_dns_with_slirp_macs() -> None:
    g = gw()
    for target, mac in (("10.0.2.2", ROUTER_MAC), ("10.0.2.3", DNS_MAC)):
        req = eth("ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst=target)
        g.input(bytes(req), 0.0)
        (rep,) = out(g)
        assert rep.dst == GUEST_MAC and rep.src == mac
        assert rep[ARP].op == 2 and rep[ARP].hwsrc == mac and rep[ARP].psrc == target
        assert rep[ARP].hwdst == GUEST_MAC and rep[ARP].pdst == GUEST
    g.input(
        bytes(eth("ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=GUEST_MAC, psrc=GUEST, pdst="10.0.2.4")),
        0.0,
    )
    assert out(g) == []  # not ours (no guestfwd rule names it)
    assert g.arp[socket.inet_aton(GUEST)] == bytes.fromhex(GUEST_MAC.replace(":", ""))


def test_local_echo_and_short_frame_padding() -> None:
    g = gw()
    for dst in ("10.0.2.2", "10.0.2.3"):
        req = eth() / IP(src=GUEST, dst=dst) / ICMP(type=8, id=7, seq=3) / b"abc"
        g.input(bytes(req), 0.0)
        (rep,) = out(g)
        assert len(bytes(rep)) == 60  # 14 + 20 + 8 + 3 padded to ETH_ZLEN
        assert rep[IP].src == dst and rep[IP].dst == GUEST and valid(rep)
        assert (rep[ICMP].type, rep[ICMP].id, rep[ICMP].seq) == (0, 7, 3)
        assert bytes(rep[ICMP].payload)[:3] == b"abc"


def test_bad_input_is_counted_and_dropped() -> None:
    g = gw()
    good = bytearray(udp_frame("10.0.2.2", 9, b"x"))
    bad_ip_csum = bytearray(good)
    bad_ip_csum[24] ^= 0xFF
    bad_udp_csum = bytearray(good)
    bad_udp_csum[40] ^= 0xFF
    truncated = bytes(good[:30])
    for f in (b"", b"\x00" * 13, truncated, bytes(bad_ip_csum), bytes(bad_udp_csum)):
        g.input(f, 0.0)
    bad_icmp = eth() / IP(src=GUEST, dst="10.0.2.2") / ICMP(type=8, chksum=1)
    g.input(bytes(bad_icmp), 0.0)
    c = g.counters()
    assert c["eth-short"] == 2 and c["ip-malformed"] == 1 and c["ip-bad-checksum"] == 1
    assert c["udp-bad-checksum"] == 1 and c["icmp-malformed"] == 1
    assert g.out == [] and g.actions == []
    # frames for other MACs (guest to guest on the hub) are ignored
    g.input(bytes(Ether(dst="52:54:00:00:00:99", src=GUEST_MAC) / IP(dst="10.0.2.16")), 0.0)
    assert g.counters()["eth-not-for-us"] == 1


def test_unsupported_protocols_get_protocol_unreachable() -> None:
    g = gw()
    g.input(bytes(eth() / IP(src=GUEST, dst="10.0.2.2", proto=6) / (b"\0" * 20)), 0.0)
    (err,) = out(g)
    assert err[ICMP].type == 3 and err[ICMP].code == 2 and valid(err)
    g.input(bytes(eth() / IP(src=GUEST, dst="10.0.2.2", proto=132) / b"sctp"), 0.0)
    assert out(g)[0][ICMP].code == 2
    # a Gateway without the IPv6 side registered: counted
    g.input(bytes(Ether(dst="33:33:00:00:00:01", src=GUEST_MAC, type=0x86DD) / bytes(40)), 0.0)
    g.input(bytes(Ether(dst=ROUTER_MAC, src=GUEST_MAC, type=0x86DD) / bytes(40)), 0.0)
    assert (
        g.counters()["ipv6-unsupported"] == 2
    )  # multicast frames reach the dispatch too (NDP will need them)


def test_udp_nat_actions_and_loopback_translation() -> None:
    g = gw()
    g.input(udp_frame("10.0.2.2", 5353, b"to-host", sport=1111), 0.0)
    g.input(udp_frame("192.0.2.9", 7, b"to-remote", sport=1111, ttl=9), 0.0)
    a, b = g.actions
    assert a == UdpSend((socket.inet_aton(GUEST), 1111), "127.0.0.1", 5353, b"to-host", 63)
    assert b == UdpSend((socket.inet_aton(GUEST), 1111), "192.0.2.9", 7, b"to-remote", 8)
    assert len(g.udp.flows) == 1  # one mapping per guest source
    g.actions.clear()
    g.udp_from_host((socket.inet_aton(GUEST), 1111), "127.0.0.1", 5353, b"answer", 1.0)
    (rep,) = out(g)
    assert rep.dst == GUEST_MAC and rep[IP].src == "10.0.2.2" and rep[UDP].sport == 5353
    assert rep[UDP].dport == 1111 and udp_data(rep) == b"answer" and valid(rep)
    # to other addresses of the virtual net, broadcast, multicast: not routed
    for dst in ("10.0.2.77", "10.0.2.255", "255.255.255.255", "224.0.0.251"):
        g.input(udp_frame(dst, 9, b"x"), 0.0)
    assert g.actions == [] and g.counters()["udp-not-routed"] == 4


def test_ttl_exceeded_and_host_errors() -> None:
    g = gw()
    g.input(udp_frame("192.0.2.9", 33434, b"probe", ttl=1), 0.0)
    (err,) = out(g)
    assert err[ICMP].type == 11 and err[IP].src == "10.0.2.2" and valid(err)
    assert err[UDPerror].dport == 33434  # the quoted datagram
    g.input(udp_frame("10.0.2.2", 4444, b"knock", sport=2222), 0.0)
    g.actions.clear()
    # the host refused: ICMP port unreachable for the guest, quoting its datagram
    g.udp_host_error(
        (socket.inet_aton(GUEST), 2222), "127.0.0.1", 4444, 3, 3, "127.0.0.1", b"knock"
    )
    (err,) = out(g)
    assert (err[ICMP].type, err[ICMP].code) == (3, 3) and err[IP].src == "10.0.2.2" and valid(err)
    assert err[IPerror].src == GUEST and err[IPerror].dst == "10.0.2.2"
    assert (err[UDPerror].sport, err[UDPerror].dport) == (2222, 4444)


def test_icmp_relay_actions_and_replies() -> None:
    g = gw()
    g.input(bytes(eth() / IP(src=GUEST, dst="192.0.2.1") / ICMP(type=8, id=77, seq=1) / b"p"), 0.0)
    (send,) = g.actions
    assert isinstance(send, PingSend) and send.host == "192.0.2.1" and send.seq == 1
    g.actions.clear()
    g.ping_reply(send.key, "192.0.2.1", 1, b"p", 0.5)
    (rep,) = out(g)
    assert rep[IP].src == "192.0.2.1" and rep[ICMP].type == 0 and rep[ICMP].id == 77 and valid(rep)
    g.ping_reply(send.key, "198.51.100.1", 1, b"p", 0.5)  # not where the echo went
    assert out(g) == []
    g.tick(1000.0)
    assert PingClose(send.key) in g.actions


def test_restrict_keeps_dhcp_tftp_and_local_echo_only() -> None:
    g = gw(restrict=True)
    g.input(udp_frame("10.0.2.2", 5353, b"x"), 0.0)
    g.input(udp_frame("10.0.2.3", 53, b"x" * 12), 0.0)
    g.input(bytes(eth() / IP(src=GUEST, dst="192.0.2.1") / ICMP(type=8)), 0.0)
    assert g.actions == [] and g.counters()["restrict-dropped"] == 3
    g.input(bytes(eth() / IP(src=GUEST, dst="10.0.2.2") / ICMP(type=8)), 0.0)
    assert out(g)[0][ICMP].type == 0
    g.input(udp_frame("10.0.2.2", 69, b"\x00\x01f\x00octet\x00"), 0.0)
    assert out(g)[0][UDP].sport == 69  # an error packet: TFTP still answers


def test_dns_queries_go_upstream() -> None:
    import dpkt

    g = Gateway(UserConfig(dns_upstreams=((socket.AF_INET, "127.0.0.1", 5300),)))
    query = bytes(dpkt.dns.DNS(id=9, qd=[dpkt.dns.DNS.Q(name="a.test", type=1, cls=1)]))
    g.input(udp_frame("10.0.2.3", 53, query, sport=3333), 0.0)
    (up,) = g.actions
    assert isinstance(up, Upstream) and (up.host, up.port) == ("127.0.0.1", 5300)
    g.actions.clear()
    answer = dpkt.dns.DNS(up.payload)
    answer.qr = dpkt.dns.DNS_R
    g.dns_from_upstream(("127.0.0.1", 5300), bytes(answer), 0.1)
    (rep,) = out(g)
    assert rep[IP].src == "10.0.2.3" and rep[UDP].sport == 53 and rep[UDP].dport == 3333
    assert dpkt.dns.DNS(udp_data(rep)).id == 9
    g.input(udp_frame("10.0.2.3", 5353, b"x"), 0.0)  # other ports of the DNS address: dropped
    assert g.actions == []


def test_reassembly_of_guest_fragments() -> None:
    g = gw()
    big = IP(src=GUEST, dst="192.0.2.9", id=4242) / UDP(sport=5000, dport=6000) / (b"z" * 3000)
    frags = fragment(big, fragsize=1000)
    assert len(frags) == 4
    for f in reversed(frags):  # out of order
        g.input(bytes(eth() / f), 0.0)
    (send,) = g.actions
    assert isinstance(send, UdpSend) and send.payload == b"z" * 3000
    assert len(g.reassembly) == 0
    # an incomplete datagram expires after 30 s
    g.input(bytes(eth() / frags[0]), 0.0)
    assert len(g.reassembly) == 1 and g.next_deadline() == 30.0
    g.tick(30.0)
    assert len(g.reassembly) == 0 and g.counters()["frag-timeout"] == 1


@pytest.mark.parametrize("mtu", [1500, 576, 9000])
def test_guest_bound_fragmentation(mtu: int) -> None:
    g = gw(mtu=mtu)
    g.input(udp_frame("10.0.2.2", 5353, b"q", sport=1234), 0.0)
    g.actions.clear()
    payload = bytes(range(256)) * 256  # 65536 bytes: too big for one datagram
    payload = payload[:65507]
    g.udp_from_host((socket.inet_aton(GUEST), 1234), "127.0.0.1", 5353, payload, 0.0)
    frames = out(g)
    assert all(len(bytes(f)) - 14 <= mtu for f in frames)
    assert len(frames) == -(-(65507 + 8) // ((mtu - 20) & ~7))
    offsets = [f[IP].frag * 8 for f in frames]
    assert offsets == sorted(offsets) and offsets[0] == 0
    assert all(f[IP].flags.MF for f in frames[:-1]) and not frames[-1][IP].flags.MF
    whole = b"".join(bytes(f[IP].payload)[: f[IP].len - 20] for f in frames)
    assert whole[8:] == payload  # after the UDP header
    from scapy.layers.inet import defragment

    (dgram,) = defragment([f[IP] for f in frames])
    assert bytes(IP(bytes(dgram))[UDP].payload) == payload


def test_arp_resolution_holds_packets() -> None:
    g = gw()
    # a DNS answer for a guest the gateway never heard from: ARP first
    g.udp.outbound(socket.inet_aton("10.0.2.16"), 99, HOST, 53, b"", 64, 0.0)
    g.udp_from_host((socket.inet_aton("10.0.2.16"), 99), "127.0.0.1", 53, b"late", 0.0)
    (req,) = out(g)
    assert req[ARP].op == 1 and req[ARP].pdst == "10.0.2.16" and req.dst == "ff:ff:ff:ff:ff:ff"
    reply = Ether(dst=ROUTER_MAC, src="52:54:00:00:00:16") / ARP(
        op=2, hwsrc="52:54:00:00:00:16", psrc="10.0.2.16", hwdst=ROUTER_MAC, pdst="10.0.2.2"
    )
    g.input(bytes(reply), 0.1)
    (held,) = out(g)
    assert held.dst == "52:54:00:00:00:16" and udp_data(held) == b"late"
    # unanswered ARP: the held packets are dropped after 3 s
    g.udp.outbound(socket.inet_aton("10.0.2.17"), 99, HOST, 53, b"", 64, 0.0)
    g.udp_from_host((socket.inet_aton("10.0.2.17"), 99), "127.0.0.1", 53, b"lost", 1.0)
    out(g)
    deadline = g.next_deadline()
    assert deadline is not None and deadline <= 4.0  # may wake early (lazy timer), never late
    g.tick(3.5)
    assert g.counters().get("arp-unresolved-dropped", 0) == 0
    g.tick(4.0)
    assert g.counters()["arp-unresolved-dropped"] == 1


def test_flow_expiry_closes_sockets() -> None:
    g = gw()
    g.input(udp_frame("192.0.2.9", 7, b"x", sport=1), 0.0)
    g.actions.clear()
    assert g.next_deadline() == 240.0
    g.tick(239.0)
    assert g.actions == []
    g.tick(240.0)
    assert g.actions == [UdpClose((socket.inet_aton(GUEST), 1))]


def test_dispatch_tables_are_open_to_the_adapter() -> None:
    g = gw()
    seen = []
    g.ip_handlers[6] = lambda pkt, now: seen.append((pkt.proto, pkt.dst))
    g.input(bytes(eth() / IP(src=GUEST, dst="192.0.2.9", proto=6) / (b"\0" * 20)), 0.0)
    assert seen == [(6, socket.inet_aton("192.0.2.9"))]
    g.add_local(socket.inet_aton("10.0.2.4"))
    g.input(bytes(eth("ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc=GUEST, pdst="10.0.2.4")), 0.0)
    assert out(g)[0][ARP].hwsrc == "52:55:0a:00:02:04"
