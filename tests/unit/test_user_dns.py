"""The DNS relay, sans-IO with a manual clock: ID rewriting, answer checks, failover between
upstreams, SERVFAIL/NOTIMP, bounds, malformed input, and resolv.conf re-reading."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import dpkt
import pytest

from drivers.user.dns import DnsRelay, ResolvConf, ToGuest, Upstream, parse_resolv_conf

GUEST = b"\x0a\x00\x02\x0f"
UP1 = (socket.AF_INET, "127.0.0.1", 5301)
UP2 = (socket.AF_INET6, "::1", 5302)


def query(name: str = "a.test", qid: int = 0x4242, opcode: int = 0) -> bytes:
    msg = dpkt.dns.DNS(id=qid, qd=[dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_A, cls=1)])
    msg.opcode = opcode
    return bytes(msg)


def answer_to(payload: bytes, name: str | None = None, rdata: bytes = b"\xc0\x00\x02\x07") -> bytes:
    q = dpkt.dns.DNS(payload)
    r = dpkt.dns.DNS(
        id=q.id,
        qd=q.qd if name is None else [dpkt.dns.DNS.Q(name=name, type=1, cls=1)],
        an=[dpkt.dns.DNS.RR(name=q.qd[0].name, type=1, cls=1, ttl=5, rdata=rdata)],
    )
    r.qr = dpkt.dns.DNS_R
    return bytes(r)


def test_relay_rewrites_and_restores_the_id() -> None:
    relay = DnsRelay([UP1])
    (up,) = relay.query(GUEST, 3333, query(qid=0x4242), 0.0)
    assert isinstance(up, Upstream) and (up.family, up.host, up.port) == UP1
    assert up.payload[2:] == query(qid=0x4242)[2:]  # everything but the ID is relayed as is
    got = relay.answer(("127.0.0.1", 5301), answer_to(up.payload), 0.1)
    assert isinstance(got, ToGuest) and (got.client_ip, got.client_port) == (GUEST, 3333)
    reply = dpkt.dns.DNS(got.payload)
    assert reply.id == 0x4242 and reply.an[0].rdata == b"\xc0\x00\x02\x07"
    assert len(relay) == 0 and relay.counters["dns-answers"] == 1


def test_answers_are_checked() -> None:
    relay = DnsRelay([UP1])
    (up,) = relay.query(GUEST, 3333, query(), 0.0)
    good = answer_to(up.payload)
    assert relay.answer(("127.0.0.2", 5301), good, 0.1) is None  # wrong source address
    assert relay.answer(("127.0.0.1", 9999), good, 0.1) is None  # wrong source port
    assert relay.answer(("127.0.0.1", 5301), answer_to(up.payload, name="evil.test"), 0.1) is None
    assert relay.answer(("127.0.0.1", 5301), up.payload, 0.1) is None  # QR not set
    assert relay.answer(("127.0.0.1", 5301), b"\x00" * 5, 0.1) is None
    wrong_id = bytearray(good)
    wrong_id[0] ^= 0xFF
    assert relay.answer(("127.0.0.1", 5301), bytes(wrong_id), 0.1) is None
    assert relay.answer(("127.0.0.1", 5301), good, 0.2) is not None  # still pending until then
    c = relay.counters
    assert c["dns-upstream-unexpected"] == 3 and c["dns-upstream-mismatch"] == 2
    assert c["dns-upstream-malformed"] == 1


def test_failover_and_timeout() -> None:
    relay = DnsRelay([UP1, UP2])
    (first,) = relay.query(GUEST, 1, query(), 0.0)
    assert relay.next_deadline() == 2.0 and relay.tick(1.9) == []
    (second,) = relay.tick(2.0)
    assert isinstance(second, Upstream) and (second.host, second.port) == ("::1", 5302)
    assert second.payload == first.payload
    # now only the second upstream's answer counts
    assert relay.answer(("127.0.0.1", 5301), answer_to(first.payload), 2.1) is None
    assert relay.answer(("::1", 5302), answer_to(first.payload), 2.2) is not None
    relay.query(GUEST, 2, query(), 10.0)
    relay.tick(12.0)
    assert relay.tick(14.0) == [] and len(relay) == 0 and relay.counters["dns-timeout"] == 1


def test_local_answers() -> None:
    (servfail,) = DnsRelay([]).query(GUEST, 7, query(qid=9), 0.0)
    assert isinstance(servfail, ToGuest)
    msg = dpkt.dns.DNS(servfail.payload)
    assert (msg.id, msg.qr, msg.rcode, msg.qd[0].name) == (9, 1, 2, "a.test")
    (notimp,) = DnsRelay([UP1]).query(GUEST, 7, query(opcode=2), 0.0)
    assert isinstance(notimp, ToGuest) and dpkt.dns.DNS(notimp.payload).rcode == 4


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x00" * 11, os.urandom(3), answer_to(query()), bytes(dpkt.dns.DNS(id=1, qd=[]))],
)
def test_malformed_queries_are_dropped(payload: bytes) -> None:
    relay = DnsRelay([UP1])
    assert relay.query(GUEST, 1, payload, 0.0) == []
    assert relay.counters["dns-malformed"] == 1


def test_pending_bound() -> None:
    relay = DnsRelay([UP1], max_pending=3)
    for i in range(5):
        relay.query(GUEST, 100 + i, query(qid=i), 0.0)
    assert len(relay) == 3 and relay.counters["dns-pending-full"] == 2


def test_resolv_conf_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text(
        "# comment\nsearch x\nnameserver 10.1.1.1\nnameserver fe80::1%eth0\n"
        "nameserver bogus\noptions ndots:1\n"
    )
    rc = ResolvConf(str(path))
    assert rc.refresh(0.0) is True
    assert rc.servers == [(socket.AF_INET, "10.1.1.1", 53), (socket.AF_INET6, "fe80::1%eth0", 53)]
    path.write_text("nameserver 127.0.0.53\n")
    assert rc.refresh(0.5) is False  # checked at most once a second
    assert rc.refresh(1.0) is True and rc.servers == [(socket.AF_INET, "127.0.0.53", 53)]
    assert rc.refresh(2.0) is False
    path.unlink()
    assert rc.refresh(3.0) is True and rc.servers == []
    assert parse_resolv_conf("nameserver\n nameserver 1.2.3.4\n") == []
