"""The stream framing machine: wire bytes, reassembly, zero-length and oversized frames."""

from __future__ import annotations

import pytest

from netstack.net.queue import NET_BUFSIZE as CORE_NET_BUFSIZE
from netstack.proto.streamframe import (
    DEFAULT_CAPACITY,
    NET_BUFSIZE,
    FrameDecoder,
    encode_frames,
    frame_header,
)


def test_constants_agree_with_the_core() -> None:
    assert NET_BUFSIZE == CORE_NET_BUFSIZE == 69632
    assert DEFAULT_CAPACITY >= 4 + NET_BUFSIZE


def test_wire_form_is_a_big_endian_length_then_the_frame() -> None:
    frame = bytes(range(23))
    assert encode_frames([frame]) == b"\x00\x00\x00\x17" + frame
    assert encode_frames([]) == b""
    assert encode_frames([b""]) == b"\x00\x00\x00\x00"
    assert encode_frames([b"ab", b"", b"c"]) == b"\0\0\0\x02ab\0\0\0\0\0\0\0\x01c"
    assert frame_header(NET_BUFSIZE) == b"\x00\x01\x10\x00"
    assert frame_header(70000) == (70000).to_bytes(4, "big")  # past the cache: still right


def test_decode_whole_split_and_byte_by_byte() -> None:
    frames = [b"x" * 60, b"", b"y" * 1500, b"z"]
    wire = encode_frames(frames)
    assert FrameDecoder().feed(wire) == frames
    dec = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(wire)):
        got += dec.feed(wire[i : i + 1])
    assert got == frames
    assert dec.pending == 0


def test_partial_frame_is_kept_until_complete() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00") == []
    assert dec.pending == 2
    assert dec.feed(b"\x00\x03ab") == []
    assert dec.pending == 6
    assert dec.feed(b"c\x00\x00\x00\x00") == [b"abc", b""]  # zero-length delivered at once
    assert dec.pending == 0


def test_recv_into_interface() -> None:
    dec = FrameDecoder(capacity=4 + NET_BUFSIZE)
    wire = encode_frames([b"a" * 100, b"b" * NET_BUFSIZE])
    room = dec.buffer()
    assert len(room) == 4 + NET_BUFSIZE
    room[:60] = wire[:60]
    assert dec.commit(60) == []
    assert dec.pending == 60
    rest = wire[60:]
    got: list[bytes] = []
    while rest:  # the leftover always sits at the start, so the room regrows
        room = dec.buffer()
        take = min(len(room), len(rest))
        room[:take] = rest[:take]
        got += dec.commit(take)
        rest = rest[take:]
    assert got == [b"a" * 100, b"b" * NET_BUFSIZE]


def test_largest_legal_frame_passes_and_one_more_byte_is_oversized() -> None:
    big = bytes(NET_BUFSIZE)
    assert FrameDecoder().feed(encode_frames([big])) == [big]
    dec = FrameDecoder()
    wire = encode_frames([b"ok", b"fine"]) + frame_header(NET_BUFSIZE + 1) + b"junk"
    assert dec.feed(wire + encode_frames([b"after"])) == [b"ok", b"fine"]
    assert dec.oversized == NET_BUFSIZE + 1
    assert dec.pending == 0
    assert dec.feed(encode_frames([b"ignored"])) == []  # stays stopped until reset
    dec.reset()
    assert dec.oversized is None
    assert dec.feed(encode_frames([b"again"])) == [b"again"]


def test_oversized_header_split_across_reads() -> None:
    dec = FrameDecoder()
    header = (0xFFFFFFFF).to_bytes(4, "big")
    assert dec.feed(encode_frames([b"a"]) + header[:2]) == [b"a"]
    assert dec.oversized is None
    assert dec.feed(header[2:]) == []
    assert dec.oversized == 0xFFFFFFFF


def test_frames_are_independent_bytes() -> None:
    dec = FrameDecoder()
    first = dec.feed(encode_frames([b"abc"]))
    dec.feed(encode_frames([b"xyz"]))
    assert first == [b"abc"] and type(first[0]) is bytes


def test_capacity_must_hold_a_largest_frame() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(capacity=NET_BUFSIZE)
    FrameDecoder(capacity=64, max_frame=60)
