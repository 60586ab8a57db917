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

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.vhost_user import fastring
from tests.fuzz.vring_target import build, fuzz_one, run

pytestmark = pytest.mark.skipif(
    fastring.load() is None, reason="drivers.vhost_user._vring is not built (or Python forced)"
)

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
