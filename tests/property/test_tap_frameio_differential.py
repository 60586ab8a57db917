"""The tap's compiled read/write loops against the Python reference (drivers/tap/frameio.py).

Both run in this process on identical unix datagram socketpairs (a datagram socket keeps
frame boundaries as a tap fd does and pushes back with EAGAIN): hypothesis writes the
frames waiting to be read, the batch size, the read size (short reads truncate, as on a
tap) and the padding bound, and for writes the frames (bytes and other buffers, shorter
than a header too), the start index, the mode, the prefix and the header length. The two
must return the same thing and leave the same bytes on the far side. Failing system
calls (EISDIR, ENOSPC from /dev/full, EBADF, EAGAIN) must come back as the same errno.
"""

from __future__ import annotations

import errno
import importlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.tap import frameio
from drivers.tap.client import READ_SIZE

pytestmark = pytest.mark.compiled

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _compiled() -> ModuleType:
    try:
        return importlib.import_module(frameio.EXTENSION)
    except ImportError:
        pytest.skip("drivers.tap._fasttap is not built")


@contextmanager
def dgram_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def drain(s: socket.socket) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(10_000):
        try:
            out.append(s.recv(READ_SIZE))
        except BlockingIOError:
            break
    return out


frames_st = st.lists(
    st.one_of(st.binary(min_size=0, max_size=120), st.binary(min_size=1400, max_size=1600)),
    max_size=60,
)


@SETTINGS
@given(
    frames_st,
    st.integers(0, 70),
    st.sampled_from([READ_SIZE, 100, 16, 0]),
    st.sampled_from([0, 60, 72]),
)
def test_read_batch_matches(frames: list[bytes], count: int, size: int, min_len: int) -> None:
    fast = _compiled()
    got = []
    for mod in (fast, frameio):
        with dgram_pair() as (a, b):
            for f in frames:
                b.send(f)
            r = mod.read_batch(a.fileno(), count, size, min_len)
            got.append((r, drain(a)))
    assert got[0] == got[1]


buffers = st.binary(min_size=0, max_size=80).flatmap(
    lambda b: st.sampled_from([b, bytearray(b), memoryview(b)])
)


@SETTINGS
@given(
    st.lists(buffers, max_size=30),
    st.integers(0, 31),
    st.sampled_from([frameio.AS_IS, frameio.PREFIXED, frameio.NARROWED]),
    st.sampled_from([b"", bytes(10), bytes(12), b"\x01" * 12]),
    st.sampled_from([10, 12]),
    st.booleans(),
)
def test_write_frames_match(
    frames: list[bytes], start: int, mode: int, prefix: bytes, hdr: int, as_tuple: bool
) -> None:
    fast = _compiled()
    batch = tuple(frames) if as_tuple else frames
    got = []
    for mod in (fast, frameio):
        with dgram_pair() as (a, b):
            r = mod.write_frames(a.fileno(), batch, start, mode, prefix, hdr)
            got.append((r, drain(b)))
    assert got[0] == got[1]
    assert got[0][0] == (max(start, len(frames)), 0)


def test_errors_come_back_as_the_same_errno() -> None:
    fast = _compiled()
    root = os.open("/", os.O_RDONLY)
    full = os.open("/dev/full", os.O_WRONLY)
    null_ro = os.open("/dev/null", os.O_RDONLY)
    try:
        for mod in (fast, frameio):
            assert mod.read_batch(root, 5, READ_SIZE, 60) == ([], errno.EISDIR)
            assert mod.write_frames(full, [b"a", b"b"], 1, frameio.AS_IS, b"", 12) == (
                1,
                errno.ENOSPC,
            )
            assert mod.write_frames(full, [b"a"], 0, frameio.PREFIXED, bytes(10), 10) == (
                0,
                errno.ENOSPC,
            )
            assert mod.write_frames(null_ro, [b"a"], 0, frameio.NARROWED, b"", 10) == (
                0,
                errno.EBADF,
            )
    finally:
        for fd in (root, full, null_ro):
            os.close(fd)


def test_eagain_stops_both_at_the_same_frame() -> None:
    fast = _compiled()
    frames = [bytes([i % 256]) * 1000 for i in range(3000)]
    got = []
    for mod in (fast, frameio):
        with dgram_pair() as (a, b):
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            r = mod.write_frames(a.fileno(), frames, 0, frameio.AS_IS, b"", 12)
            got.append((r, len(drain(b))))
    assert got[0] == got[1]
    index, err = got[0][0]
    assert err == errno.EAGAIN and 0 < index < len(frames)


def test_the_client_uses_the_chosen_loops() -> None:
    from netstack import fastpath

    chosen = frameio.impl()
    if fastpath.pure_python_forced():
        assert chosen is frameio
    else:
        assert chosen is _compiled()
