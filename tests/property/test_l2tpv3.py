"""L2TPv3 machine properties: round trips for every parameter set, totality on garbage."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.proto.l2tpv3 import L2TPv3Params, L2TPv3Session

u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, (1 << 64) - 1)


@st.composite
def params(draw: st.DrawFn) -> L2TPv3Params:
    return L2TPv3Params(
        udp=draw(st.booleans()),
        ipv6=draw(st.booleans()),
        txsession=draw(u32),
        rxsession=draw(u32),
        cookie_len=draw(st.sampled_from((0, 4, 8))),
        txcookie=draw(u64),
        rxcookie=draw(u64),
        counter=draw(st.booleans()),
        pincounter=draw(st.booleans()),
        offset=draw(st.integers(0, 256)),
    )


def mirrored(p: L2TPv3Params) -> L2TPv3Params:
    """The far end: sessions and cookies swapped."""
    return L2TPv3Params(
        udp=p.udp,
        ipv6=p.ipv6,
        txsession=p.rxsession,
        rxsession=p.txsession,
        cookie_len=p.cookie_len,
        txcookie=p.rxcookie,
        rxcookie=p.txcookie,
        counter=p.counter,
        pincounter=p.pincounter,
        offset=p.offset,
    )


def ipv4_header(ihl: int) -> bytes:
    return bytes([0x40 | ihl]) + bytes(ihl * 4 - 1)


@settings(max_examples=300, deadline=None)
@given(params(), st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=8),
       st.integers(5, 15))  # fmt: skip
def test_round_trip(p: L2TPv3Params, frames: list[bytes], ihl: int) -> None:
    a, b = L2TPv3Session(p), L2TPv3Session(mirrored(p))
    for wire in a.encapsulate_batch(frames):
        assert len(wire) >= a.header_len
        if p.raw_ipv4:
            wire = ipv4_header(ihl) + wire
        assert b.decapsulate(wire) is not None
    assert b.rx_frames == len(frames) and b.drops.total == 0
    for wire, f in zip(a.encapsulate_batch(frames), frames, strict=True):
        wire = ipv4_header(ihl) + wire if p.raw_ipv4 else wire
        assert b.decapsulate(wire) == f


@settings(max_examples=500, deadline=None)
@given(params(), st.binary(max_size=120), st.integers(0, 200))
def test_garbage_is_counted_never_raises(p: L2TPv3Params, data: bytes, length: int) -> None:
    s = L2TPv3Session(p)
    start = s.rx_payload_start(data, length)
    n = min(length, len(data))
    if start >= 0:
        assert s.rx_frames == 1 and s.drops.total == 0
        assert s.header_len < start + 1 <= n
    else:
        assert s.rx_frames == 0 and s.drops.total == 1 and s.last_drop is not None


@settings(max_examples=200, deadline=None)
@given(params(), st.binary(min_size=1, max_size=64), u32, u64)
def test_foreign_session_or_cookie_is_dropped(
    p: L2TPv3Params, f: bytes, other_session: int, other_cookie: int
) -> None:
    far = mirrored(p)
    mask = 0xFFFFFFFF if p.cookie_len == 4 else (1 << 64) - 1
    wrong_session = other_session != p.rxsession
    wrong_cookie = p.cookie_len > 0 and (other_cookie & mask) != (p.rxcookie & mask)
    sender = L2TPv3Session(
        L2TPv3Params(
            udp=far.udp,
            ipv6=far.ipv6,
            txsession=other_session,
            rxsession=far.rxsession,
            cookie_len=far.cookie_len,
            txcookie=other_cookie,
            rxcookie=far.rxcookie,
            counter=far.counter,
            pincounter=far.pincounter,
            offset=far.offset,
        )
    )
    me = L2TPv3Session(p)
    wire = sender.encapsulate(f)
    wire = ipv4_header(5) + wire if p.raw_ipv4 else wire
    got = me.decapsulate(wire)
    if wrong_cookie:
        assert got is None and me.drops.bad_cookie == 1
    elif wrong_session:
        assert got is None and me.drops.bad_session == 1
    else:
        assert got == f
