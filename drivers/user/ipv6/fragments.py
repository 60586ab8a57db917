"""IPv6 fragment reassembly for packets the guest sends to (or through) the router.

Follows RFC 8200 §4.5: fragments are matched by source, destination and Identification;
the fragmentable part's Next Header comes from the first fragment (offset 0); a fragment
whose data is not a multiple of 8 bytes while more follow, or that would end beyond 65535
bytes, is refused with a Parameter Problem (code 0, pointing at the Payload Length or the
Fragment Offset field; the router sends it); a datagram not complete within
:data:`DEFAULT_TIMEOUT` (60 s) is dropped, and if its first fragment had arrived an ICMPv6
Time Exceeded (code 1) goes back about it. RFC 5722: a fragment that overlaps another
with different bytes discards the whole datagram (silently); an exact duplicate is
ignored. RFC 6946 (atomic fragments, offset 0 without M) is the router's: they never get
here.

Sans-IO: :meth:`Reassembler.add` takes one fragment and ``now`` and returns the whole
fragmentable part once complete; :meth:`Reassembler.expire` returns the first fragments
(whole packets) of the datagrams that timed out. Invariants (bounds): at most
``max_datagrams`` datagrams and ``max_bytes`` fragment bytes held (a new datagram past either
bound is refused and counted) and at most ``max_fragments`` fragments per datagram (past
that the datagram is dropped: overlap checks stay cheap).
"""

from __future__ import annotations

from collections import Counter
from typing import Final, Literal, NamedTuple

MAX_FRAGMENTABLE: Final = 65535
DEFAULT_TIMEOUT: Final = 60.0

Key = tuple[bytes, bytes, int]  # src, dst, identification


#: The names this module counts under (``query-netdev`` counters).
FragmentsCounter = Literal[
    "ip6-frag-duplicate",
    "ip6-frag-inconsistent",
    "ip6-frag-overflow",
    "ip6-frag-overlap",
    "ip6-frag-timeout",
    "ip6-reassembled",
]


class Reassembled(NamedTuple):
    """A complete datagram: the fragmentable part, its first header type, the first
    fragment as received (for ICMPv6 errors that quote the datagram) and how many bytes of
    the fragmentable part that first fragment carried."""

    next_header: int
    data: bytes
    first_packet: bytes
    first_len: int


class _Datagram:
    __slots__ = ("deadline", "first", "first_len", "held", "next_header", "pieces", "total")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.pieces: dict[int, bytes] = {}
        self.total = -1  # known once the last fragment arrived
        self.held = 0
        self.next_header = -1
        self.first: bytes | None = None
        self.first_len = 0


class Reassembler:
    """IPv6 datagrams in reassembly, bounded in number, bytes and age."""

    def __init__(
        self, *, max_datagrams: int = 64, max_bytes: int = 4 << 20,
        max_fragments: int = 128, timeout: float = DEFAULT_TIMEOUT,
    ) -> None:  # fmt: skip
        self.max_datagrams = max_datagrams
        self.max_fragments = max_fragments
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.counters: Counter[FragmentsCounter] = Counter()
        self._pending: dict[Key, _Datagram] = {}
        self._held = 0
        self._wake: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def held_bytes(self) -> int:
        return self._held

    def add(
        self, key: Key, offset: int, more: bool, next_header: int, data: bytes,
        packet: bytes, now: float,
    ) -> Reassembled | None:  # fmt: skip
        """Take one fragment (``offset`` in bytes, ``packet`` the whole fragment as
        received); the datagram once complete, else None. Length checks (multiple of 8,
        the 65535 limit) are the caller's, done before (they need a Parameter Problem)."""
        size = len(data)
        end = offset + size
        dg = self._pending.get(key)
        if dg is None:
            if len(self._pending) >= self.max_datagrams or self._held + size > self.max_bytes:
                self.counters["ip6-frag-overflow"] += 1
                return None
            dg = _Datagram(now + self.timeout)
            self._pending[key] = dg
            if self._wake is None or dg.deadline < self._wake:
                self._wake = dg.deadline
        elif self._held + size > self.max_bytes or len(dg.pieces) >= self.max_fragments:
            self.counters["ip6-frag-overflow"] += 1
            self._drop(key)
            return None
        if not more:
            if (dg.total >= 0 and dg.total != end) or any(o + len(p) > end for o, p in
                                                          dg.pieces.items()):  # fmt: skip
                self.counters["ip6-frag-inconsistent"] += 1
                self._drop(key)
                return None
            dg.total = end
        elif dg.total >= 0 and end > dg.total:
            self.counters["ip6-frag-inconsistent"] += 1
            self._drop(key)
            return None
        for o, piece in dg.pieces.items():
            if o < end and offset < o + len(piece):  # overlap
                if o == offset and piece == data:
                    self.counters["ip6-frag-duplicate"] += 1
                    return None
                self.counters["ip6-frag-overlap"] += 1
                self._drop(key)
                return None
        dg.pieces[offset] = data
        dg.held += size
        self._held += size
        if offset == 0:
            dg.next_header = next_header
            dg.first = packet
            dg.first_len = size
        if dg.total < 0 or dg.first is None or dg.held != dg.total:
            return None
        whole = b"".join(dg.pieces[o] for o in sorted(dg.pieces))
        first = dg.first
        self._drop(key)
        self.counters["ip6-reassembled"] += 1
        return Reassembled(dg.next_header, whole, first, dg.first_len)

    def _drop(self, key: Key) -> None:
        dg = self._pending.pop(key, None)
        if dg is not None:
            self._held -= dg.held

    def expire(self, now: float) -> list[bytes]:
        """Drop datagrams past their deadline; the first fragments of those that had one."""
        if self._wake is None or now < self._wake:
            return []
        firsts: list[bytes] = []
        for key in [k for k, d in self._pending.items() if d.deadline <= now]:
            dg = self._pending[key]
            if dg.first is not None:
                firsts.append(dg.first)
            self._drop(key)
            self.counters["ip6-frag-timeout"] += 1
        self._wake = min((d.deadline for d in self._pending.values()), default=None)
        return firsts

    def next_deadline(self) -> float | None:
        return self._wake
