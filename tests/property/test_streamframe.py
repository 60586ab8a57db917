"""Property tests of the stream framing: round trip, chunk invariance, totality, oversize."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.proto.streamframe import NET_BUFSIZE, FrameDecoder, encode_frames, frame_header

frame_st = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=0, max_value=NET_BUFSIZE).map(lambda n: bytes([n & 0xFF]) * n),
)
frames_st = st.lists(frame_st, max_size=12)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def decode_chunks(
    chunks: list[bytes], capacity: int | None = None
) -> tuple[list[bytes], FrameDecoder]:
    dec = FrameDecoder() if capacity is None else FrameDecoder(capacity=capacity)
    got: list[bytes] = []
    for chunk in chunks:
        got += dec.feed(chunk)
    return got, dec


@settings(max_examples=150, deadline=None)
@given(frames_st)
def test_round_trip(frames: list[bytes]) -> None:
    got, dec = decode_chunks([encode_frames(frames)])
    assert got == frames
    assert dec.pending == 0 and dec.oversized is None


@settings(max_examples=200, deadline=None)
@given(frames_st, st.lists(st.integers(min_value=0), max_size=30), st.booleans())
def test_chunk_invariance(frames: list[bytes], cuts: list[int], small: bool) -> None:
    wire = encode_frames(frames)
    capacity = 4 + NET_BUFSIZE if small else None
    got, dec = decode_chunks(split(wire, cuts), capacity)
    assert got == frames
    assert dec.pending == 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=10))
def test_any_bytes_decode_to_frames_or_a_defined_stop(data: bytes, cuts: list[int]) -> None:
    whole, dec_whole = decode_chunks([data])
    pieces, dec_pieces = decode_chunks(split(data, cuts))
    assert whole == pieces  # totality and chunk invariance on garbage too
    assert dec_whole.oversized == dec_pieces.oversized
    if dec_whole.oversized is None:
        assert encode_frames(whole) == data[: len(data) - dec_whole.pending]
    else:
        assert dec_whole.oversized > NET_BUFSIZE


@settings(max_examples=150, deadline=None)
@given(
    frames_st,
    st.integers(min_value=NET_BUFSIZE + 1, max_value=0xFFFFFFFF),
    st.binary(max_size=100),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_oversized_frame_stops_after_the_frames_before_it(
    frames: list[bytes], size: int, tail: bytes, cuts: list[int]
) -> None:
    wire = encode_frames(frames) + frame_header(size) + tail
    got, dec = decode_chunks(split(wire, cuts))
    assert got == frames
    assert dec.oversized == size
