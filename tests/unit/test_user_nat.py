"""UDP NAT, the ICMP echo relay and IPv4 reassembly, sans-IO with a manual clock: mappings,
address translation, idle expiry, table bounds, fragment overlap and limits."""

from __future__ import annotations

import socket

from drivers.user.icmp_relay import IcmpRelay, PingClose
from drivers.user.udp_nat import UdpClose, UdpNat, UdpSend
from drivers.user.v4.fragments import Reassembler

HOST = socket.inet_aton("10.0.2.2")
G1 = socket.inet_aton("10.0.2.15")
G2 = socket.inet_aton("10.0.2.16")
REMOTE = socket.inet_aton("192.0.2.9")


def test_endpoint_independent_mapping_and_translation() -> None:
    nat = UdpNat(HOST)
    assert nat.outbound(G1, 1000, HOST, 53, b"q", 63, 0.0) == UdpSend(
        (G1, 1000), "127.0.0.1", 53, b"q", 63
    )
    assert nat.outbound(G1, 1000, REMOTE, 9, b"r", 63, 1.0) == UdpSend(
        (G1, 1000), "192.0.2.9", 9, b"r", 63
    )
    nat.outbound(G2, 1000, REMOTE, 9, b"s", 63, 1.0)
    assert len(nat.flows) == 2  # per guest source, not per destination
    assert nat.inbound((G1, 1000), "127.0.0.1", 53, 2.0) == HOST
    assert nat.inbound((G1, 1000), "192.0.2.9", 9, 2.0) == REMOTE
    assert nat.inbound((G1, 9999), "192.0.2.9", 9, 2.0) is None


def test_idle_expiry_and_dns_fast_expiry() -> None:
    nat = UdpNat(HOST)
    nat.outbound(G1, 1, REMOTE, 9, b"", 64, 0.0)
    nat.outbound(G2, 2, HOST, 53, b"", 64, 0.0)
    nat.inbound((G2, 2), "127.0.0.1", 53, 1.0)  # an answer from port 53: 10 s left
    assert nat.expire(10.9) == []
    assert nat.expire(11.0) == [UdpClose((G2, 2))]
    nat.outbound(G1, 1, REMOTE, 9, b"", 64, 100.0)  # traffic keeps a flow alive
    assert nat.expire(240.0) == []
    assert nat.expire(340.0) == [UdpClose((G1, 1))]
    assert nat.next_deadline() is None and nat.counters["udp-flows-expired"] == 2


def test_flow_table_bound() -> None:
    nat = UdpNat(HOST, max_flows=2)
    assert nat.outbound(G1, 1, REMOTE, 9, b"", 64, 0.0) is not None
    assert nat.outbound(G1, 2, REMOTE, 9, b"", 64, 0.0) is not None
    assert nat.outbound(G1, 3, REMOTE, 9, b"", 64, 0.0) is None
    assert nat.outbound(G1, 1, REMOTE, 10, b"", 64, 0.0) is not None  # existing flows still work
    assert nat.counters["udp-flow-limit"] == 1
    assert nat.close((G1, 2)) == UdpClose((G1, 2))
    assert nat.outbound(G1, 3, REMOTE, 9, b"", 64, 0.0) is not None


def test_icmp_relay_flows() -> None:
    relay = IcmpRelay(HOST, max_flows=2)
    a = relay.outbound(G1, REMOTE, 77, 1, b"x", 63, 0.0)
    b = relay.outbound(G2, HOST, 77, 1, b"x", 63, 0.0)
    assert a is not None and b is not None and a.host_id != b.host_id
    assert b.host == "127.0.0.1" and a.host == "192.0.2.9"
    assert relay.outbound(G1, REMOTE, 78, 1, b"", 63, 0.0) is None  # bound
    assert relay.key_for_host_id(a.host_id) == (G1, 77)
    assert relay.reply((G1, 77), "192.0.2.9") == REMOTE
    assert relay.reply((G2, 77), "127.0.0.1") == HOST
    assert relay.reply((G1, 77), "198.51.100.1") is None  # not where the echo went
    assert relay.expire(59.0) == []
    assert sorted(relay.expire(60.0)) == sorted([PingClose((G1, 77)), PingClose((G2, 77))])
    assert relay.key_for_host_id(a.host_id) is None


KEY = (G1, REMOTE, 17, 5)


def test_reassembly_in_any_order_with_duplicates() -> None:
    r = Reassembler()
    assert r.add(KEY, b"H1", 8, True, b"b" * 8, 0.0) is None
    assert r.add(KEY, b"H1", 8, True, b"b" * 8, 0.0) is None  # exact duplicate: ignored
    assert r.add(KEY, b"H2", 16, False, b"c" * 3, 0.0) is None
    assert r.add(KEY, b"H0", 0, True, b"a" * 8, 0.0) == (b"H0", b"a" * 8 + b"b" * 8 + b"c" * 3)
    assert len(r) == 0 and r.held_bytes == 0 and r.counters["frag-duplicate"] == 1


def test_reassembly_rejects_overlaps_and_nonsense() -> None:
    r = Reassembler()
    r.add(KEY, b"", 0, True, b"a" * 16, 0.0)
    assert r.add(KEY, b"", 8, True, b"X" * 16, 0.0) is None  # overlaps with other bytes
    assert len(r) == 0 and r.counters["frag-overlap"] == 1
    assert r.add(KEY, b"", 0, True, b"a" * 7, 0.0) is None  # not a multiple of 8
    assert r.add(KEY, b"", 65528, False, b"a" * 16, 0.0) is None  # beyond 65535
    r.add(KEY, b"", 16, False, b"z", 0.0)
    assert r.add(KEY, b"", 24, True, b"y" * 8, 0.0) is None  # after the last fragment's end
    assert r.counters["frag-malformed"] == 2 and r.counters["frag-inconsistent"] == 1


def test_reassembly_bounds() -> None:
    r = Reassembler(max_datagrams=2, max_bytes=100)
    r.add((G1, REMOTE, 17, 1), b"", 0, True, b"a" * 8, 0.0)
    r.add((G1, REMOTE, 17, 2), b"", 0, True, b"a" * 8, 0.0)
    assert r.add((G1, REMOTE, 17, 3), b"", 0, True, b"a" * 8, 0.0) is None
    assert r.add((G1, REMOTE, 17, 1), b"", 8, True, b"a" * 96, 0.0) is None  # byte bound
    assert r.counters["frag-overflow"] == 2 and len(r) == 1
    assert r.next_deadline() == 30.0
    assert r.expire(30.0) == 1 and r.held_bytes == 0
