"""Differential property tests: the numpy batch classifier agrees with RxFilter.accepts.

Random filter states set through :meth:`RxFilter.program` (rx modes, MAC tables including both
overflows, VLAN bitmaps with filtering on or off, a changed MAC) and random frames (truncated,
802.1Q and 802.1ad tagged, broadcast, multicast, destinations taken from the table) must give
the same verdict per frame through every entry point of netstack.net.rxbatch.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.net import rxbatch
from netstack.net.rxbatch import RxBatchClassifier, pack_headers
from netstack.net.rxfilter import RX_MODES, RxFilter

OWN = bytes.fromhex("525400123456")
POOL = [
    OWN,
    b"\xff" * 6,
    bytes.fromhex("020000000001"),
    bytes.fromhex("020000000002"),
    bytes.fromhex("01005e000001"),
    bytes.fromhex("333300000001"),
    bytes.fromhex("feffffffffff"),  # broadcast but for the group bit
    bytes.fromhex("ffffffffff7f"),
]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

macs = st.one_of(st.sampled_from(POOL), st.binary(min_size=6, max_size=6))
unicast_macs = macs.map(lambda m: bytes([m[0] & 0xFE]) + m[1:])
multicast_macs = macs.map(lambda m: bytes([m[0] | 0x01]) + m[1:])
any_macs = st.one_of(macs, unicast_macs, multicast_macs)


def table_block(entries: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """Small lists, full distinct lists (hash path) or overflowing lists."""
    return st.one_of(
        st.lists(entries, max_size=6),
        st.lists(entries, min_size=4, max_size=64, unique=True),
        st.integers(57, 70).flatmap(lambda n: st.lists(entries, min_size=n, max_size=n)),
    )


@st.composite
def filters(draw: st.DrawFn) -> RxFilter:
    f = RxFilter(draw(unicast_macs), vlan_negotiated=draw(st.booleans()))
    # Every mode on hides the table (promiscuous hides everything), so keep them mostly off.
    modes = {
        name: draw(st.sampled_from([False, False, True] if i else [False, False, False, True]))
        for i, name in enumerate(RX_MODES)
    }
    f.program(rx_modes=modes)
    if draw(st.booleans()):
        f.program(mac=draw(unicast_macs))
    f.program(unicast=draw(table_block(unicast_macs)), multicast=draw(table_block(multicast_macs)))
    if draw(st.booleans()):
        f.program(vlan_filtering=not f.vlan_negotiated)
    if f.vlan_negotiated:
        vids = draw(st.sets(st.integers(0, 4095), max_size=8))
        if draw(st.integers(0, 9)) == 0:  # a dense bitmap
            vids |= draw(st.sets(st.integers(0, 4095), min_size=100, max_size=400))
        f.program(vlans=vids)
    return f


@st.composite
def frame_lists(draw: st.DrawFn, f: RxFilter, hdr_len: int) -> list[bytes]:
    known = [f.mac, *f.unicast_table, *f.multicast_table, *POOL]
    allowed = [v for v in range(4096) if f.vlan_allowed(v)][:50] or [0]
    dst = st.one_of(st.sampled_from(known), any_macs)
    vid = st.one_of(st.sampled_from(allowed), st.integers(0, 0xFFFF))
    out = []
    for _ in range(draw(st.integers(0, 40))):
        tag = draw(st.sampled_from([b"", b"", b"\x81\x00", b"\x88\xa8"]))
        body = draw(dst) + draw(st.binary(min_size=6, max_size=6))
        if tag:
            body += tag + struct.pack(">H", draw(vid))
        body += draw(st.binary(min_size=0, max_size=50))
        length = draw(st.one_of(st.integers(0, 20), st.just(len(body))))
        out.append(draw(st.binary(min_size=hdr_len, max_size=hdr_len)) + body[:length])
    return out


def reference(f: RxFilter, frames: list[Any], hdr_len: int) -> list[bool]:
    return [f.accepts(x, hdr_len) for x in frames]


@SETTINGS
@given(data=st.data(), f=filters(), hdr_len=st.sampled_from([0, 10, 12]))
def test_classify_matches_accepts(data: st.DataObject, f: RxFilter, hdr_len: int) -> None:
    frames = data.draw(frame_lists(f, hdr_len))
    clf = RxBatchClassifier(f, min_batch=0)
    expected = reference(f, frames, hdr_len)
    assert clf.classify(frames, hdr_len).tolist() == expected
    assert clf.accepted(frames, hdr_len) == f.filter_batch(frames, hdr_len)
    assert RxBatchClassifier(f).accepted(frames, hdr_len) == f.filter_batch(frames, hdr_len)
    hdrs, lengths = pack_headers(frames, hdr_len)
    assert clf.classify_headers(hdrs, lengths).tolist() == expected


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), f=filters(), hdr_len=st.sampled_from([0, 12]))
def test_buffer_types_and_layouts(data: st.DataObject, f: RxFilter, hdr_len: int) -> None:
    frames = data.draw(frame_lists(f, hdr_len))
    clf = RxBatchClassifier(f)
    expected = reference(f, frames, hdr_len)
    assert clf.classify([bytearray(x) for x in frames], hdr_len).tolist() == expected
    assert clf.classify([memoryview(x) for x in frames], hdr_len).tolist() == expected
    # Headers inside a wider array (rows not contiguous with each other), with lengths.
    wide = np.zeros((len(frames), hdr_len + 40), dtype=np.uint8)
    for i, x in enumerate(frames):
        wide[i, : len(x)] = np.frombuffer(x[: wide.shape[1]], dtype=np.uint8)
    lengths = np.array([len(x) - hdr_len for x in frames], dtype=np.int64)
    assert clf.classify_headers(wide[:, hdr_len:], lengths).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(data=st.data(), f=filters())
def test_plan_follows_state_changes(data: st.DataObject, f: RxFilter) -> None:
    clf = RxBatchClassifier(f)
    frames = data.draw(frame_lists(f, 0))
    assert clf.classify(frames).tolist() == reference(f, frames, 0)
    cmd = data.draw(st.integers(0, len(RX_MODES) - 1))
    name = RX_MODES[cmd]
    f.program(rx_modes={name: not f.rx_modes[name]})
    f.program(unicast=data.draw(st.lists(unicast_macs, max_size=8)), vlans=[1, 2, 3])
    assert clf.classify(frames).tolist() == reference(f, frames, 0)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), hdr_len=st.sampled_from([0, 10]))
def test_isin_fallback_without_a_perfect_hash(data: st.DataObject, hdr_len: int) -> None:
    # Forces the (practically unreachable) branch taken when no multiplier hashes the keys
    # without collisions.
    f = RxFilter(OWN, vlan_negotiated=True)
    uni = [bytes([2, 0, 0, 0, i, i]) for i in range(20)]
    multi = [bytes([1, 0, 0x5E, 0, i, 1]) for i in range(20)]
    f.program(rx_modes={"promisc": False}, unicast=uni, multicast=multi, vlans=[1, 7])
    extra = st.sampled_from([*uni, *multi])
    frames = [
        data.draw(st.binary(min_size=hdr_len, max_size=hdr_len))
        + data.draw(extra)
        + x[hdr_len + 6 :]
        for x in data.draw(frame_lists(f, hdr_len))
        if len(x) >= hdr_len + 6
    ]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(rxbatch, "_hash_multipliers", lambda: ())
        clf = RxBatchClassifier(f)
        assert clf.classify(frames, hdr_len).tolist() == reference(f, frames, hdr_len)


def test_large_batches_are_chunked_consistently() -> None:
    rng = np.random.default_rng(7)
    f = RxFilter(OWN, vlan_negotiated=True)
    uni = [bytes([2, 0, 0, 0, 1, i]) for i in range(6)]
    multi = [bytes([1, 0, 0x5E, 0, 1, i]) for i in range(6)]
    f.program(rx_modes={"promisc": False}, unicast=uni, multicast=multi, vlans=[5, 6])
    dsts = [*uni, *multi, OWN, b"\xff" * 6, bytes.fromhex("020000000099")]
    frames = []
    for i in range(40_000):
        body = dsts[i % len(dsts)] + OWN
        if i % 3 == 0:
            body += b"\x81\x00" + struct.pack(">H", 4 + i % 4)
        body += rng.bytes(30)
        frames.append(body[: 12 + i % 7] if i % 101 == 0 else body)
    clf = RxBatchClassifier(f)
    expected = reference(f, frames, 0)
    assert clf.classify(frames).tolist() == expected
    hdrs, lengths = pack_headers(frames)
    assert lengths is not None
    assert clf.classify_headers(hdrs, lengths).tolist() == expected
    assert clf.accepted(frames) == f.filter_batch(frames)


def test_empty_batch_and_validation() -> None:
    f = RxFilter(OWN)
    f.program(rx_modes={"promisc": False})
    clf = RxBatchClassifier(f)
    assert clf.classify([]).tolist() == []
    assert clf.accepted([]) == []
    assert clf.classify_headers(np.zeros((0, 16), dtype=np.uint8)).shape == (0,)
    with pytest.raises(ValueError):
        clf.classify_headers(np.zeros((4, 15), dtype=np.uint8))
    with pytest.raises(ValueError):
        clf.classify_headers(np.zeros((4, 16), dtype=np.int16))
