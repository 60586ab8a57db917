"""L2TPv3 encapsulation machine: header layouts, counter rules, receive checks, drop reports."""

from __future__ import annotations

import itertools

import pytest

from netstack.proto.l2tpv3 import (
    REASON_COOKIE,
    REASON_IPV4,
    REASON_SESSION,
    REASON_SHORT,
    L2TPv3Params,
    L2TPv3Session,
    drop_summary,
)
from tests.support import frame

TX, RX = 0x11223344, 0x55667788
TXC, RXC = 0x0102030405060708, 0xA1A2A3A4A5A6A7A8


def be32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def expected_header(
    udp: bool, cookie_len: int, counter: bool, pin: bool, offset: int, seq: int
) -> bytes:
    """The header built field by field, independently of the machine."""
    out = b"\x00\x03\x00\x00" if udp else b""
    out += be32(TX)
    if cookie_len == 8:
        out += TXC.to_bytes(8, "big")
    elif cookie_len == 4:
        out += (TXC & 0xFFFFFFFF).to_bytes(4, "big")
    if counter:
        out += be32(0 if pin else seq)
    return out + bytes(offset)


COMBOS = list(
    itertools.product((False, True), (0, 4, 8), (False, True), (False, True), (0, 3, 256))
)


@pytest.mark.parametrize(("udp", "cookie_len", "counter", "pin", "offset"), COMBOS)
def test_header_layout_every_combination(
    udp: bool, cookie_len: int, counter: bool, pin: bool, offset: int
) -> None:
    p = L2TPv3Params(
        udp=udp,
        ipv6=False,
        txsession=TX,
        rxsession=RX,
        cookie_len=cookie_len,
        txcookie=TXC,
        rxcookie=RXC,
        counter=counter,
        pincounter=pin,
        offset=offset,
    )
    s = L2TPv3Session(p)
    want_len = (4 if udp else 0) + 4 + cookie_len + (4 if counter else 0) + offset
    assert s.header_len == p.header_len == want_len
    f = frame(7)
    for seq in (1, 2, 3):
        wire = s.encapsulate(f)
        assert wire == expected_header(udp, cookie_len, counter, pin, offset, seq) + f
    assert s.tx_frames == 3
    assert (s.fixed_header is None) == (counter and not pin)


def test_counter_starts_at_one_and_wraps() -> None:
    s = L2TPv3Session(L2TPv3Params(udp=True, ipv6=False, txsession=1, rxsession=1, counter=True))
    assert [h[8:12] for h in s.tx_headers(3)] == [be32(1), be32(2), be32(3)]
    s.tx_commit(1)  # only the first went out: the next header reuses 2
    assert s.tx_headers(1)[0][8:12] == be32(2)
    s.tx_counter = 0xFFFFFFFE
    heads = s.tx_headers(3)
    assert [h[8:12] for h in heads] == [be32(0xFFFFFFFF), be32(0), be32(1)]
    s.tx_commit(3)
    assert s.tx_counter == 1


def test_pincounter_alone_adds_no_field() -> None:
    s = L2TPv3Session(L2TPv3Params(udp=False, ipv6=True, txsession=9, rxsession=9, pincounter=True))
    assert s.header_len == 4
    assert s.encapsulate(b"x") == be32(9) + b"x"


def test_udp_ipv6_receive_and_checks() -> None:
    p = L2TPv3Params(
        udp=True, ipv6=True, txsession=RX, rxsession=RX, cookie_len=8, txcookie=RXC, rxcookie=RXC
    )
    peer, me = L2TPv3Session(p), L2TPv3Session(p)
    f = frame(1, 100)
    assert me.decapsulate(peer.encapsulate(f)) == f
    assert me.rx_frames == 1
    # counter and flags word are not checked
    dgram = bytearray(peer.encapsulate(f))
    dgram[0:4] = b"\xff\xff\xff\xff"
    assert me.decapsulate(bytes(dgram)) == f


def test_drop_reasons_and_order() -> None:
    p = L2TPv3Params(
        udp=True, ipv6=False, txsession=1, rxsession=2, cookie_len=4, txcookie=5, rxcookie=6
    )
    me = L2TPv3Session(p)
    good = b"\x00\x03\x00\x00" + be32(2) + be32(6) + b"payload"
    assert me.decapsulate(good) == b"payload"
    bad_session = b"\x00\x03\x00\x00" + be32(3) + be32(6) + b"payload"
    bad_cookie = b"\x00\x03\x00\x00" + be32(2) + be32(7) + b"payload"
    both = b"\x00\x03\x00\x00" + be32(3) + be32(7) + b"payload"
    assert me.decapsulate(bad_session) is None and me.last_drop == REASON_SESSION
    assert me.decapsulate(bad_cookie) is None and me.last_drop == REASON_COOKIE
    assert me.decapsulate(both) is None and me.last_drop == REASON_COOKIE  # cookie first
    assert me.decapsulate(good[:12]) is None and me.last_drop == REASON_SHORT  # no payload
    assert me.decapsulate(b"") is None
    d = me.drops
    assert (d.bad_session, d.bad_cookie, d.short, d.bad_ipv4) == (1, 2, 2, 0)
    assert d.total == 5 and me.rx_frames == 1


def test_ipv4_raw_skips_header_by_ihl() -> None:
    p = L2TPv3Params(udp=False, ipv6=False, txsession=4, rxsession=4)
    me = L2TPv3Session(p)
    payload = be32(4) + b"frame"
    ip20 = bytes([0x45]) + bytes(19)
    ip24 = bytes([0x46]) + bytes(23)  # with 4 bytes of options (QEMU would misparse)
    assert me.decapsulate(ip20 + payload) == b"frame"
    assert me.decapsulate(ip24 + payload) == b"frame"
    assert me.decapsulate(bytes([0x65]) + bytes(19) + payload) is None  # version 6
    assert me.last_drop == REASON_IPV4
    assert me.decapsulate(bytes([0x44]) + bytes(19) + payload) is None  # IHL < 5
    assert me.decapsulate(b"\x45\x00") is None
    assert me.decapsulate(bytes([0x4F]) + bytes(30)) is None  # IHL 60 > length: short
    assert me.drops.bad_ipv4 == 3 and me.drops.short == 1


def test_rx_payload_start_respects_length() -> None:
    me = L2TPv3Session(L2TPv3Params(udp=True, ipv6=False, txsession=1, rxsession=1))
    buf = bytearray(100)
    buf[0:8] = b"\x00\x03\x00\x00" + be32(1)
    assert me.rx_payload_start(buf, 9) == 8
    assert me.rx_payload_start(buf, 8) == -1  # header only
    assert me.rx_payload_start(buf, 1000) == 8  # clamped to the buffer


def test_32bit_cookie_uses_low_bits_both_ways() -> None:
    p = L2TPv3Params(
        udp=False,
        ipv6=True,
        txsession=1,
        rxsession=1,
        cookie_len=4,
        txcookie=0x1_DEADBEEF,
        rxcookie=0x2_DEADBEEF,
    )
    s = L2TPv3Session(p)
    wire = s.encapsulate(b"f")
    assert wire == be32(1) + be32(0xDEADBEEF) + b"f"
    assert s.decapsulate(wire) == b"f"


def test_params_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        L2TPv3Params(udp=True, ipv6=False, txsession=1, rxsession=1, cookie_len=2)
    with pytest.raises(ValueError):
        L2TPv3Params(udp=True, ipv6=False, txsession=1, rxsession=1, offset=257)
    with pytest.raises(ValueError):
        L2TPv3Params(udp=True, ipv6=False, txsession=1 << 32, rxsession=1)


def test_encapsulate_batch() -> None:
    s = L2TPv3Session(L2TPv3Params(udp=True, ipv6=False, txsession=1, rxsession=1, counter=True))
    out = s.encapsulate_batch([b"a", b"b"])
    assert out == [b"\x00\x03\x00\x00" + be32(1) + be32(1) + b"a", out[0][:8] + be32(2) + b"b"]
    assert s.tx_counter == 2 and s.tx_frames == 2


def test_drop_summary() -> None:
    me = L2TPv3Session(L2TPv3Params(udp=True, ipv6=False, txsession=1, rxsession=1))
    bad = b"\x00\x03\x00\x00" + be32(2) + b"x"
    me.decapsulate(bad)
    assert drop_summary(me, 0) == REASON_SESSION  # QEMU's text for the first one
    me.decapsulate(bad)
    me.decapsulate(b"")
    line = drop_summary(me, 1)
    assert line.startswith("dropped 2 datagrams")
    assert "session mismatch: 2" in line and "short datagram: 1" in line
