"""The length-prefixed stream of filter-mirror/redirector: bytes, chunk invariance, limits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.net.filters.framing import FrameReader, OversizedFrame, frame_header
from netstack.net.queue import NET_BUFSIZE


def encode(frames: list[tuple[int, bytes]], vnet: bool) -> bytes:
    return b"".join(frame_header(len(f), h if vnet else None) + f for h, f in frames)


def test_header_bytes() -> None:
    assert frame_header(23, None) == b"\x00\x00\x00\x17"
    assert frame_header(23, 12) == b"\x00\x00\x00\x17\x00\x00\x00\x0c"


frames_st = st.lists(st.tuples(st.sampled_from([0, 12]), st.binary(max_size=300)), max_size=12)


@given(frames=frames_st, vnet=st.booleans(), cuts=st.lists(st.integers(0, 5000), max_size=20))
def test_any_chunking_gives_the_same_frames(
    frames: list[tuple[int, bytes]], vnet: bool, cuts: list[int]
) -> None:
    data = encode(frames, vnet)
    reader = FrameReader(vnet)
    got: list[tuple[int, bytes]] = []
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(points):
        got += reader.feed(data[lo:hi])
    expected = [(h if vnet else 0, f) for h, f in frames]
    assert got == expected
    assert reader.pending == 0


def test_largest_frame_passes_and_one_more_byte_is_fatal() -> None:
    reader = FrameReader()
    assert reader.feed(frame_header(NET_BUFSIZE, None) + bytes(NET_BUFSIZE)) == [
        (0, bytes(NET_BUFSIZE))
    ]
    with pytest.raises(OversizedFrame, match="oversized packet received"):
        reader.feed(frame_header(NET_BUFSIZE + 1, None))
