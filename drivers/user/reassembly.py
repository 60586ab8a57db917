"""IPv4 fragment reassembly for datagrams the guest sends to (or through) the gateway.

Follows RFC 791 §3.2 (reassembly keyed by source, destination, protocol and
identification) with the defensive choices of RFC 5722 (written for IPv6, applied here):
a fragment that overlaps an earlier one with different bytes discards the whole datagram;
an exact duplicate is ignored. Sans-IO: :meth:`Reassembler.add` takes one fragment and
``now`` and returns the whole payload once complete; :meth:`Reassembler.expire` drops
datagrams older than ``timeout`` (30 s, Linux's ``ipfrag_time``).

Invariants (bounds): at most ``max_datagrams`` datagrams in progress and ``max_bytes``
fragment bytes held (a new datagram past either bound is refused and counted); no datagram
grows beyond 65515 payload bytes (the IPv4 limit less a minimal header); every fragment but
the last carries a multiple of 8 bytes.
"""

from __future__ import annotations

from collections import Counter
from typing import Final, Literal

MAX_PAYLOAD: Final = 65535 - 20
DEFAULT_TIMEOUT: Final = 30.0

Key = tuple[bytes, bytes, int, int]  # src, dst, protocol, identification


#: The names this module counts under (``query-netdev`` counters).
ReassemblyCounter = Literal[
    "frag-duplicate",
    "frag-inconsistent",
    "frag-malformed",
    "frag-overflow",
    "frag-overlap",
    "frag-reassembled",
    "frag-timeout",
]


class _Datagram:
    __slots__ = ("deadline", "first_header", "held", "pieces", "total")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.pieces: dict[int, bytes] = {}
        self.total = -1  # payload size, known once the last fragment arrived
        self.held = 0
        self.first_header: bytes | None = None


class Reassembler:
    """Datagrams in reassembly, bounded in number, bytes and age."""

    def __init__(
        self,
        *,
        max_datagrams: int = 64,
        max_bytes: int = 4 << 20,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.counters: Counter[ReassemblyCounter] = Counter()
        self._pending: dict[Key, _Datagram] = {}
        self._held = 0
        self._wake: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def held_bytes(self) -> int:
        return self._held

    def add(
        self, key: Key, header: bytes, offset: int, more: bool, data: bytes, now: float
    ) -> tuple[bytes, bytes] | None:
        """Take one fragment (``offset`` in bytes); returns (header of the first fragment,
        whole payload) when the datagram is complete, else None."""
        size = len(data)
        end = offset + size
        if (more and size % 8) or end > MAX_PAYLOAD or (more and size == 0):
            self.counters["frag-malformed"] += 1
            self._drop(key)
            return None
        dg = self._pending.get(key)
        if dg is None:
            if len(self._pending) >= self.max_datagrams or self._held + size > self.max_bytes:
                self.counters["frag-overflow"] += 1
                return None
            dg = _Datagram(now + self.timeout)
            self._pending[key] = dg
            if self._wake is None or dg.deadline < self._wake:
                self._wake = dg.deadline
        elif self._held + size > self.max_bytes:
            self.counters["frag-overflow"] += 1
            self._drop(key)
            return None
        if not more:
            if (dg.total >= 0 and dg.total != end) or any(
                o + len(p) > end for o, p in dg.pieces.items()
            ):
                self.counters["frag-inconsistent"] += 1
                self._drop(key)
                return None
            dg.total = end
        elif dg.total >= 0 and end > dg.total:
            self.counters["frag-inconsistent"] += 1
            self._drop(key)
            return None
        for o, p in dg.pieces.items():
            if o < end and offset < o + len(p):  # overlap
                if o == offset and p == data:
                    self.counters["frag-duplicate"] += 1
                    return None
                self.counters["frag-overlap"] += 1
                self._drop(key)
                return None
        dg.pieces[offset] = data
        dg.held += size
        self._held += size
        if offset == 0:
            dg.first_header = header
        if dg.total < 0 or dg.held != dg.total or dg.first_header is None:
            return None
        del self._pending[key]
        self._held -= dg.held
        payload = b"".join(dg.pieces[o] for o in sorted(dg.pieces))
        self.counters["frag-reassembled"] += 1
        return dg.first_header, payload

    def _drop(self, key: Key) -> None:
        dg = self._pending.pop(key, None)
        if dg is not None:
            self._held -= dg.held

    def expire(self, now: float) -> int:
        """Drop datagrams past their deadline; returns how many."""
        if self._wake is None or now < self._wake:
            return 0
        gone = [k for k, dg in self._pending.items() if dg.deadline <= now]
        for key in gone:
            self._drop(key)
        self.counters["frag-timeout"] += len(gone)
        self._wake = min((dg.deadline for dg in self._pending.values()), default=None)
        return len(gone)

    def next_deadline(self) -> float | None:
        return self._wake
