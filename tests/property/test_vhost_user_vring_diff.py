"""The compiled split-ring loops (``drivers/vhost_user/_vring.c``) against the pure-Python
reference (``txpath``/``rxpath``), driven with the same guest memory (hypothesis).

Each example is a byte recipe read by :mod:`tests.fuzz.vring_target` (the fuzzing stage's
entry point): two guest memory regions, a split ring of 2 to 64 entries at any start index,
a burst of chains (direct, NEXT chains, indirect tables) for transmit or receive buffers
with frames, dirty logging on or off - valid by default, hostile where the bytes say so.
Both implementations must give identical frames, vnet flags, chain counts, errors (text
included), ring indices, counters, guest memory bytes and dirty-log bits.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.vhost_user import fastring
from drivers.vhost_user.virtqueue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE
from tests.fuzz.vring_target import build, fuzz_one, run

pytestmark = pytest.mark.skipif(
    fastring.load() is None, reason="drivers.vhost_user._vring is not built (or Python forced)"
)

_DESC = struct.Struct("<QIHH")
_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(st.binary(max_size=700))
def test_any_recipe_gives_the_same_result(data: bytes) -> None:
    fuzz_one(data)


@_SETTINGS
@given(st.lists(st.integers(0, 200), max_size=400).map(bytes))
def test_mostly_valid_rings_give_the_same_result(data: bytes) -> None:
    """Bytes below 201 never trigger a hostile choice: valid rings of every shape."""
    fuzz_one(data)


@pytest.mark.parametrize("direction", [b"\x00", b"\x01"])
def test_the_default_recipe_moves_a_full_ring(direction: bytes) -> None:
    """The recipe's defaults are a valid full ring, so examples exercise the data path."""
    sc = build(direction)
    py = run(direction, None)
    assert "error" not in py
    if sc.transmit:
        frames, _vnet, n = py["tx"]
        assert n == sc.num == len(frames) == 64
    else:
        assert py["rx"] == len(sc.frames) == 12
    fuzz_one(direction)


@pytest.mark.parametrize("direction", [b"\x02", b"\x03"])
def test_the_default_packed_recipe_moves_a_full_ring(direction: bytes) -> None:
    """The same for a packed ring: 64 one-descriptor buffers from slot 0 of lap 1."""
    sc = build(direction)
    assert sc.packed
    py = run(direction, None)
    assert "error" not in py
    if sc.transmit:
        frames, _vnet, n = py["tx"]
        assert n == sc.num == len(frames) == 64
    else:
        assert py["rx"] == len(sc.frames) == 12
    fuzz_one(direction)


@_SETTINGS
@given(st.binary(max_size=700).map(lambda b: bytes([(b[0] if b else 0) | 2]) + b[1:]))
def test_any_packed_recipe_gives_the_same_result(data: bytes) -> None:
    fuzz_one(data)


@_SETTINGS
@given(
    st.lists(st.integers(0, 200), max_size=400).map(
        lambda b: bytes([(b[0] if b else 0) | 2, *b[1:]])
    )
)
def test_mostly_valid_packed_rings_give_the_same_result(data: bytes) -> None:
    """Valid packed rings of every shape (sizes that are not powers of two, any start slot
    and wrap counter, chains, indirect tables, mergeable buffers)."""
    fuzz_one(data)


@_SETTINGS
@given(
    st.lists(st.integers(0, 200), max_size=300).map(
        lambda b: bytes([(b[0] if b else 0) | 1, *b[1:]])
    ),
    st.lists(st.sampled_from([0, 0, 0, 250, 1, 2, 3, 4, 5]), max_size=36).map(bytes),
)
def test_receive_frame_objects_give_the_same_result(data: bytes, kinds: bytes) -> None:
    """Receive bursts (split and packed, any buffers) whose frames are memoryviews,
    bytearrays, views with items wider than a byte, non-contiguous views, str or too short
    for a vnet header, anywhere in the burst: the bytes-like ones delivered alike, the
    others refused before either implementation touches the ring."""
    fuzz_one(data, kinds)


def test_an_allocation_failing_mid_receive_keeps_the_published_state() -> None:
    """Receive into a chain, then into one whose indirect table outgrows the segment
    array: whichever single allocation fails, the call either raises with the ring
    untouched or returns the indices it published (the MemoryError as its error, raised
    by :func:`drivers.vhost_user.fastring.receive` once they are recorded)."""
    testcapi = pytest.importorskip("_testcapi")
    vring = fastring.load()
    assert vring is not None
    num, used_at = 4, 0x80
    outcomes = set()
    for nth in range(80):
        desc, avail, used = bytearray(16 * num), bytearray(4 + 2 * num + 2), bytearray(used_at)
        mem = bytearray(0x4000)
        _DESC.pack_into(desc, 0, 0x100, 64, DESC_F_WRITE | DESC_F_NEXT, 1)
        _DESC.pack_into(desc, 16, 0x140, 64, DESC_F_WRITE, 0)
        _DESC.pack_into(desc, 32, 0x1000, 16 * 24, DESC_F_INDIRECT, 0)
        for k in range(24):
            last = k == 23
            flags = DESC_F_WRITE | (0 if last else DESC_F_NEXT)
            _DESC.pack_into(mem, 0x1000 + 16 * k, 0x2000 + 16 * k, 8, flags, 0 if last else k + 1)
        struct.pack_into("<HHHH", avail, 0, 0, 2, 0, 2)
        args = (desc, avail, used, [(0, len(mem), mem, 0)], num, 0, 0, [bytes(60), bytes(60)])
        rest = (False, 12, False, True, None, None, False, 0, False)
        testcapi.set_nomemory(nth, nth + 1)
        try:
            result = vring.rx_split(*args, *rest)
        except MemoryError:
            result = None
        finally:
            testcapi.remove_mem_hooks()
        published = struct.unpack_from("<H", used, 2)[0]
        if result is None:
            assert published == 0
            outcomes.add("raised")
            continue
        err, _done, last_avail, used_idx = result[:4]
        assert (last_avail, used_idx) == (published, published)
        if isinstance(err, MemoryError):
            assert published in (0, 1)
            outcomes.add(f"returned after {published}")
        else:
            assert err is None and published == 2
    assert {"raised", "returned after 1"} <= outcomes
