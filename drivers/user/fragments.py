"""The fragment reassembly core shared by IPv4 and IPv6: holes, overlaps, limits, age.

Owns the per-datagram bookkeeping both families need, sans-IO: :meth:`Reassembly.take`
files one fragment's data at its byte offset under a key the family chooses (RFC 791
§3.2: source, destination, protocol, identification; RFC 8200 §4.5: source, destination,
identification) and returns the whole payload once every byte from 0 to the end the last
fragment named has arrived and the first fragment has been seen; :meth:`Reassembly.
take_expired` drops the datagrams older than ``timeout`` and returns what their first
fragments left. The family modules (:mod:`.v4.fragments` for IPv4, :mod:`.v6.fragments`)
only read and check their header fields, choose the counter names and shape the result.

Policy (RFC 5722, written for IPv6 and applied to both): a fragment that overlaps another
with different bytes discards the whole datagram; an exact duplicate is ignored. A last
fragment that ends before data already held, a second last fragment with another end, or
a fragment beyond the known end makes the datagram inconsistent and discards it.

Invariants (bounds): at most ``max_datagrams`` datagrams in progress and ``max_bytes``
fragment bytes held (a new datagram past either bound is refused, an existing one that
would pass the byte bound is dropped); with ``max_fragments``, a datagram that already
holds that many fragments is dropped (overlap checks stay cheap); every refusal is counted
under the family's name for it.
"""

from __future__ import annotations

from collections import Counter
from typing import Generic, Literal, NamedTuple, TypeVar

K = TypeVar("K")
F = TypeVar("F")


#: What the reassemblers of both families count (:data:`.v4.fragments.NAMES`,
#: :data:`.v6.fragments.NAMES`, and the IPv4 length check's ``frag-malformed``).
FragmentCounter = Literal[
    "frag-overflow", "frag-inconsistent", "frag-duplicate", "frag-overlap", "frag-reassembled",
    "frag-timeout", "frag-malformed", "ip6-frag-overflow", "ip6-frag-inconsistent",
    "ip6-frag-duplicate", "ip6-frag-overlap", "ip6-reassembled", "ip6-frag-timeout",
]  # fmt: skip


class CounterNames(NamedTuple):
    """What a family calls each outcome in its counters."""

    overflow: FragmentCounter
    inconsistent: FragmentCounter
    duplicate: FragmentCounter
    overlap: FragmentCounter
    reassembled: FragmentCounter
    timeout: FragmentCounter


class _Datagram(Generic[F]):
    __slots__ = ("deadline", "first", "held", "pieces", "total")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.pieces: dict[int, bytes] = {}
        self.total = -1  # payload size, known once the last fragment arrived
        self.held = 0
        self.first: F | None = None


class Reassembly(Generic[K, F]):
    """Datagrams in reassembly, bounded in number, bytes, fragments and age. ``F`` is
    what the family keeps of a datagram's first fragment (offset 0)."""

    def __init__(
        self, names: CounterNames, *, max_datagrams: int, max_bytes: int, timeout: float,
        max_fragments: int | None = None,
    ) -> None:  # fmt: skip
        self.names = names
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.max_fragments = max_fragments
        self.timeout = timeout
        self.counters: Counter[FragmentCounter] = Counter()
        self._pending: dict[K, _Datagram[F]] = {}
        self._held = 0
        self._wake: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def held_bytes(self) -> int:
        return self._held

    def take(
        self, key: K, offset: int, more: bool, data: bytes, first: F, now: float
    ) -> tuple[F, bytes] | None:
        """File one fragment (``offset`` in bytes; ``first`` is kept when ``offset`` is
        0); (the first fragment's ``first``, the whole payload) once complete, else None.
        Length checks against the family's limits are the caller's, done before."""
        names = self.names
        size = len(data)
        end = offset + size
        dg = self._pending.get(key)
        if dg is None:
            if len(self._pending) >= self.max_datagrams or self._held + size > self.max_bytes:
                self.counters[names.overflow] += 1
                return None
            dg = _Datagram(now + self.timeout)
            self._pending[key] = dg
            if self._wake is None or dg.deadline < self._wake:
                self._wake = dg.deadline
        elif self._held + size > self.max_bytes or (
            self.max_fragments is not None and len(dg.pieces) >= self.max_fragments
        ):
            self._refuse(key, names.overflow)
            return None
        if not more:
            if (dg.total >= 0 and dg.total != end) or any(
                o + len(p) > end for o, p in dg.pieces.items()
            ):
                self._refuse(key, names.inconsistent)
                return None
            dg.total = end
        elif dg.total >= 0 and end > dg.total:
            self._refuse(key, names.inconsistent)
            return None
        for o, piece in dg.pieces.items():
            if o < end and offset < o + len(piece):  # overlap
                if o == offset and piece == data:
                    self.counters[names.duplicate] += 1
                    return None
                self._refuse(key, names.overlap)
                return None
        dg.pieces[offset] = data
        dg.held += size
        self._held += size
        if offset == 0:
            dg.first = first
        if dg.total < 0 or dg.first is None or dg.held != dg.total:
            return None
        whole = b"".join(dg.pieces[o] for o in sorted(dg.pieces))
        self.discard(key)
        self.counters[names.reassembled] += 1
        return dg.first, whole

    def _refuse(self, key: K, counter: FragmentCounter) -> None:
        self.counters[counter] += 1
        self.discard(key)

    def discard(self, key: K) -> None:
        """Forget datagram ``key`` and the bytes it held (nothing if there is none)."""
        dg = self._pending.pop(key, None)
        if dg is not None:
            self._held -= dg.held

    def take_expired(self, now: float) -> list[F | None]:
        """Drop the datagrams past their deadline (each counted); what each one's first
        fragment left (None where it never arrived)."""
        if self._wake is None or now < self._wake:
            return []
        gone = [k for k, dg in self._pending.items() if dg.deadline <= now]
        firsts: list[F | None] = []
        for key in gone:
            firsts.append(self._pending[key].first)
            self.discard(key)
        if gone:
            self.counters[self.names.timeout] += len(gone)
        self._wake = min((dg.deadline for dg in self._pending.values()), default=None)
        return firsts

    def next_deadline(self) -> float | None:
        return self._wake
