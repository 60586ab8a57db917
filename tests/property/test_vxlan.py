"""VXLAN parsers and the learning switch are total: any bytes give a value or one counted
drop, never an exception; a learning hub delivers every well-formed frame to at most its
one learned port or floods it, and never back to its source."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.net.hub import Hub
from netstack.proto.vxlan import HDR_LEN, VxlanDecoder, flow_hash, header, too_big_reply
from tests.support import Recorder


@given(st.binary(max_size=200), st.integers(0, (1 << 24) - 1))
def test_decoder_total(data: bytes, vni: int) -> None:
    dec = VxlanDecoder(vni)
    for n in (len(data), min(len(data), 22)):
        before = dec.drops.total
        start = dec.inner_start(data, n)
        assert (start == HDR_LEN) != (dec.drops.total == before + 1)


@given(st.binary(min_size=14, max_size=1600), st.integers(68, 9000))
def test_hash_and_reply_total(frame: bytes, mtu: int) -> None:
    assert 0 <= flow_hash(frame) < 1 << 32
    reply = too_big_reply(frame, mtu)
    if reply is not None:
        assert reply[:6] == frame[6:12] and reply[6:12] == frame[:6]
        assert len(reply) <= 14 + 1280


@given(st.binary(min_size=14, max_size=1600), st.integers(0, 100))
def test_roundtrip(frame: bytes, vni: int) -> None:
    wire = header(vni) + frame
    assert VxlanDecoder(vni).inner_start(wire, len(wire)) == HDR_LEN


macs = st.sampled_from([bytes([2, 0, 0, 0, 0, i]) for i in range(4)] + [b"\xff" * 6])


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 3), macs, macs), max_size=40))
def test_switch_never_reflects_and_delivers_at_most_flood(
    traffic: list[tuple[int, bytes, bytes]],
) -> None:
    hub = Hub(0)
    hub.set_learning(True)
    clients = [Recorder(f"c{i}") for i in range(4)]
    for c in clients:
        hub.add_port().connect(c)
    for n, (src, dst, smac) in enumerate(traffic):
        frame = dst + smac + b"\x88\xb5" + n.to_bytes(4, "big") + bytes(40)
        before = [len(c.got) for c in clients]
        clients[src].send([frame])
        got = [len(c.got) - b for c, b in zip(clients, before, strict=True)]
        assert got[src] == 0
        assert sum(got) in (0, 1, 3)
        if dst[0] & 1:
            assert sum(got) == 3
