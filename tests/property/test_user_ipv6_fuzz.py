"""Parser totality of the IPv6 machines: any bytes are handled or counted and dropped,
never an exception; fragment reassembly is order-independent."""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.user.v6 import Ipv6Config, Ipv6Router, ndp
from drivers.user.v6 import addr as a6
from drivers.user.v6 import dhcpv6_codec as d6
from drivers.user.v6.dhcpv6 import Dhcpv6Server
from drivers.user.v6.fragments import Reassembler
from netstack.proto import ipv6 as pk

SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
GMAC = bytes.fromhex("525400123456")
ROUTER = bytes.fromhex("525600000002")
GUEST = a6.parse("fec0::5054:ff:fe12:3456") or b""
GUEST_LL = a6.parse("fe80::5054:ff:fe12:3456") or b""
DSTS = [a6.parse(x) or b"" for x in (
    "fec0::2", "fec0::3", "fe80::2", "ff02::1", "ff02::2", "ff02::1:2", "ff02::1:ff00:2",
    "2001:db8::1", "fec0::99", "::1", "::",
)]  # fmt: skip
SRCS = [GUEST, GUEST_LL, a6.UNSPECIFIED, a6.parse("2001:db8::7") or b"", a6.ALL_NODES]


def router() -> Ipv6Router:
    return Ipv6Router(Ipv6Config(), rng=random.Random(0))


def check(r: Ipv6Router) -> None:
    for f in r.out:
        assert len(f) >= 60 and f[12:14] == b"\x86\xdd"
        assert len(f) - 14 <= r.cfg.link_mtu
        hdr = pk.parse_header(f[14:])
        assert hdr is not None and 40 + hdr.payload_len <= len(f) - 14


@SETTINGS
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_any_frames(frames: list[bytes]) -> None:
    r = router()
    for i, frame in enumerate(frames):
        r.accepts(frame)
        r.input(frame, float(i))
        r.tick(float(i) + 0.5)
    check(r)


@st.composite
def ipv6_frames(draw: st.DrawFn) -> bytes:
    src = draw(st.sampled_from(SRCS))
    dst = draw(st.sampled_from(DSTS))
    nh = draw(st.sampled_from([0, 6, 17, 43, 44, 50, 51, 58, 59, 60, 253]))
    hlim = draw(st.sampled_from([0, 1, 64, 255]))
    body = draw(st.binary(max_size=300))
    if nh == 58 and len(body) >= 4:
        kind = draw(st.sampled_from([1, 2, 3, 4, 128, 129, 130, 133, 134, 135, 136, 137]))
        body = pk.icmp6_message(src, dst, kind, draw(st.integers(0, 1)), body[4:])
    elif nh == 17 and draw(st.booleans()):
        port = draw(st.sampled_from([547, 53, 7, 9]))
        body = pk.udp_segment(src, dst, 546, port, body)
    packet = pk.ipv6_header(src, dst, nh, len(body), hlim) + body
    if draw(st.booleans()):
        packet = packet[: draw(st.integers(0, len(packet)))]
    mac = a6.multicast_mac(dst) if a6.is_multicast(dst) else ROUTER
    return mac + GMAC + b"\x86\xdd" + packet


@SETTINGS
@given(st.lists(ipv6_frames(), min_size=1, max_size=10), st.floats(0, 1000))
def test_structured_ipv6(frames: list[bytes], start: float) -> None:
    r = Ipv6Router(Ipv6Config(), now=start, rng=random.Random(0))
    r.ip_handlers[pk.IPPROTO_UDP] = lambda p, now: None
    for i, frame in enumerate(frames):
        r.input(frame, start + i)
    r.tick(start + 100.0)
    check(r)


@st.composite
def dhcpv6_messages(draw: st.DrawFn) -> bytes:
    code = st.sampled_from([1, 2, 3, 5, 6, 7, 8, 13, 14, 23, 24, 25, 59, 99])
    options = draw(st.lists(st.tuples(code, st.binary(max_size=40)), max_size=6))
    kind = draw(st.integers(0, 14))
    body = b"".join(d6.option(c, data) for c, data in options)
    return bytes((kind,)) + draw(st.binary(min_size=3, max_size=3)) + body


@SETTINGS
@given(st.lists(st.one_of(dhcpv6_messages(), st.binary(max_size=120)), max_size=10))
def test_dhcpv6_server(messages: list[bytes]) -> None:
    s = Dhcpv6Server(Ipv6Config(), ROUTER, max_leases=4)
    for i, m in enumerate(messages):
        for reply in s.handle(m, GUEST_LL, 546, a6.ALL_DHCP, GMAC, float(i)):
            assert d6.parse_message(reply.payload) is not None
        s.expire(float(i))
    assert len(s.leases(0.0)) <= 4


@SETTINGS
@given(st.binary(max_size=120), st.integers(0, 255), st.booleans())
def test_walk_is_total(data: bytes, nh: int, multicast: bool) -> None:
    result = pk.walk(data, nh, 0, len(data), dst_multicast=multicast)
    if isinstance(result, pk.Chain):
        assert 0 <= result.offset <= len(data)
    assert ndp.parse_options(data, 0) is None or True
    d6.parse_message(data)
    d6.parse_ia_na(data)


@SETTINGS
@given(st.binary(min_size=1, max_size=3000), st.data())
def test_reassembly_any_order(payload: bytes, data: st.DataObject) -> None:
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, len(payload) // 8)), max_size=12))))
    bounds = [0, *[c * 8 for c in cuts if c * 8 < len(payload)], len(payload)]
    pieces = [(a, payload[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    order = data.draw(st.permutations(pieces))
    # an exact duplicate of an earlier fragment, arriving before the datagram completes
    at = data.draw(st.integers(0, len(order) - 1))
    dup = data.draw(st.sampled_from(order[: at + 1]))
    sequence = [*order[:at], dup, *order[at:]] if dup in order[:at] else list(order)
    r = Reassembler()
    done = None
    for offset, chunk in sequence:
        more = offset + len(chunk) < len(payload)
        got = r.add((GUEST, DSTS[0], 1), offset, more, 17, chunk, b"first", 0.0)
        done = done or got
    assert done is not None and done.data == payload and len(r) == 0
