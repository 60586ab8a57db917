"""Properties of the reassembly core shared by IPv4 and IPv6 (``drivers.user.fragments``),
through both family front ends (hypothesis): any cut of a payload into 8-byte-aligned
fragments, delivered in any order with exact duplicates, gives the payload back once, with
the first fragment's header; a changed overlapping fragment discards the datagram; the
bytes held always return to 0; the counters carry the family's names."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.user.v4.fragments import Reassembler as Reassembler4
from drivers.user.v6.fragments import Reassembler as Reassembler6

SETTINGS = settings(max_examples=200, deadline=None)
Frag = tuple[int, bytes, bool]  # offset, data, more fragments follow


@st.composite
def cuts(draw: st.DrawFn) -> tuple[bytes, list[Frag]]:
    """A payload and its fragments in delivery order: a permutation, with exact duplicates
    of the earlier ones delivered before the last (which completes the datagram)."""
    payload = draw(st.binary(min_size=1, max_size=600))
    units = (len(payload) - 1) // 8
    bounds = sorted(set(draw(st.lists(st.integers(1, units), max_size=8)))) if units else []
    offs = [0, *(b * 8 for b in bounds)]
    pieces = []
    for i, off in enumerate(offs):
        end = offs[i + 1] if i + 1 < len(offs) else len(payload)
        pieces.append((off, payload[off:end], i + 1 < len(offs)))
    order = draw(st.permutations(pieces))
    dups = draw(st.lists(st.sampled_from(order[:-1]), max_size=3)) if len(order) > 1 else []
    return payload, [*order[:-1], *dups, order[-1]]


@SETTINGS
@given(cuts())
def test_both_families_reassemble_any_order(
    case: tuple[bytes, list[tuple[int, bytes, bool]]],
) -> None:
    payload, frags = case
    r4, r6 = Reassembler4(), Reassembler6()
    got4, got6 = [], []
    for off, data, more in frags:
        d4 = r4.add((b"a" * 4, b"b" * 4, 17, 1), b"H%d" % off, off, more, data, 0.0)
        d6 = r6.add((b"a" * 16, b"b" * 16, 1), off, more, 17, data, b"P%d" % off, 0.0)
        if d4 is not None:
            got4.append(d4)
        if d6 is not None:
            got6.append(d6)
    assert got4 == [(b"H0", payload)]
    assert len(got6) == 1 and got6[0].data == payload and got6[0].first_packet == b"P0"
    first_len = next(len(data) for off, data, _more in frags if off == 0)
    assert got6[0].next_header == 17 and got6[0].first_len == first_len
    assert r4.held_bytes == 0 and r6.held_bytes == 0 and len(r4) == 0 and len(r6) == 0
    assert r4.counters["frag-reassembled"] == 1 and r6.counters["ip6-reassembled"] == 1


@SETTINGS
@given(st.binary(min_size=16, max_size=64), st.integers(0, 7))
def test_a_changed_overlap_discards(data: bytes, flip: int) -> None:
    data = data[: len(data) // 8 * 8]
    r4, r6 = Reassembler4(), Reassembler6()
    r4.add((b"a" * 4, b"b" * 4, 17, 1), b"H", 0, True, data, 0.0)
    r6.add((b"a" * 16, b"b" * 16, 1), 0, True, 17, data, b"P", 0.0)
    other = data[:flip] + bytes([data[flip] ^ 1]) + data[flip + 1 : 8]
    assert r4.add((b"a" * 4, b"b" * 4, 17, 1), b"H", 0, True, other, 0.0) is None
    assert r6.add((b"a" * 16, b"b" * 16, 1), 0, True, 17, other, b"P", 0.0) is None
    assert r4.counters["frag-overlap"] == 1 and r6.counters["ip6-frag-overlap"] == 1
    assert r4.held_bytes == 0 and r6.held_bytes == 0
    assert r4.expire(1000.0) == 0 and r6.expire(1000.0) == []
