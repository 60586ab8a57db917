"""The two byte queues of a guest TCP endpoint, in unwrapped sequence space.

:class:`ToHost` holds guest data in sequence order that the host socket has not taken yet,
plus a bounded out-of-order store; :class:`FromHost` holds host data from the oldest
unacknowledged byte on (unacked and unsent), plus the SACK scoreboard the guest reports.

Sequence numbers here are unbounded Python ints ("64-bit" space): the machine converts
each 32-bit wire number to the unwrapped value nearest its reference point, so every
comparison is plain integer arithmetic and wrap-around cannot confuse ordering.

Bounds (invariants): ``ToHost.size`` never exceeds what the machine advertised (its
receive buffer); out-of-order data is kept only up to ``ooo_max`` bytes in at most
``ooo_segs`` pieces (more is dropped and re-sent by the guest); payloads under
``COALESCE`` bytes are copied into a shared tail chunk so a stream of tiny segments
costs its bytes, not one object per segment. ``FromHost`` never holds more than the
machine lets the adapter read (its send buffer).
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Final

#: Payloads shorter than this are copied into the tail chunk instead of kept as views.
COALESCE: Final = 2048
#: A tail chunk grows to at most this before a new one starts.
TAIL_MAX: Final = 65536

Chunk = memoryview | bytearray


class ToHost:
    """Guest -> host bytes: in-order chunks for the socket and out-of-order pieces."""

    __slots__ = (
        "_last_ooo",
        "chunks",
        "ooo",
        "ooo_bytes",
        "ooo_fin",
        "ooo_max",
        "ooo_segs",
        "size",
    )

    def __init__(self, ooo_max: int, ooo_segs: int) -> None:
        self.chunks: deque[Chunk] = deque()
        self.size = 0
        #: Out-of-order pieces: sorted (start, data) with start > rcv_nxt.
        self.ooo: list[tuple[int, memoryview]] = []
        self.ooo_bytes = 0
        self.ooo_max = ooo_max
        self.ooo_segs = ooo_segs
        #: The unwrapped sequence number of an out-of-order FIN (None: not seen).
        self.ooo_fin: int | None = None
        self._last_ooo: tuple[int, int] | None = None

    def append(self, data: memoryview) -> None:
        n = len(data)
        if not n:
            return
        self.size += n
        chunks = self.chunks
        if n < COALESCE:
            if chunks:
                tail = chunks[-1]
                if isinstance(tail, bytearray) and len(tail) + n <= TAIL_MAX:
                    tail += data
                    return
            chunks.append(bytearray(data))
            return
        chunks.append(data)

    def head(self, max_chunks: int) -> list[Chunk]:
        """Up to ``max_chunks`` chunks from the front (for one ``sendmsg``)."""
        chunks = self.chunks
        if len(chunks) <= max_chunks:
            return list(chunks)
        return [chunks[i] for i in range(max_chunks)]

    def consume(self, n: int) -> None:
        """Drop ``n`` bytes from the front (the host socket took them)."""
        n = min(n, self.size)
        self.size -= n
        chunks = self.chunks
        while n:
            head = chunks[0]
            size = len(head)
            if size <= n:
                chunks.popleft()
                n -= size
            elif isinstance(head, bytearray):
                del head[:n]
                n = 0
            else:
                chunks[0] = head[n:]
                n = 0

    def clear(self) -> None:
        self.chunks.clear()
        self.size = 0
        self.ooo.clear()
        self.ooo_bytes = 0
        self.ooo_fin = None

    # -- out of order ------------------------------------------------------------------

    def add_ooo(self, start: int, data: memoryview, fin: bool) -> bool:
        """Keep a piece that starts beyond ``rcv_nxt``; False if it was dropped."""
        n = len(data)
        if fin:
            self.ooo_fin = start + n
        if not n:
            return fin
        ooo = self.ooo
        i = bisect.bisect_left(ooo, start, key=lambda item: item[0])
        if i < len(ooo) and ooo[i][0] == start and len(ooo[i][1]) >= n:
            self._last_ooo = (start, start + n)
            return True  # a duplicate of what we hold
        if self.ooo_bytes + n > self.ooo_max or len(ooo) >= self.ooo_segs:
            return False
        ooo.insert(i, (start, data))
        self.ooo_bytes += n
        self._last_ooo = (start, start + n)
        return True

    def pull(self, rcv_nxt: int) -> int:
        """Move pieces that now continue the stream at ``rcv_nxt`` into the chunks;
        returns the new ``rcv_nxt``."""
        ooo = self.ooo
        while ooo and ooo[0][0] <= rcv_nxt:
            start, data = ooo.pop(0)
            self.ooo_bytes -= len(data)
            end = start + len(data)
            if end > rcv_nxt:
                self.append(data[rcv_nxt - start :])
                rcv_nxt = end
        return rcv_nxt

    def sack_blocks(self, limit: int = 4) -> list[tuple[int, int]]:
        """RFC 2018 blocks for the held pieces: the one holding the latest arrival
        first, then the others in ascending order (unwrapped edges)."""
        blocks: list[list[int]] = []
        for start, data in self.ooo:
            end = start + len(data)
            if blocks and start <= blocks[-1][1]:
                blocks[-1][1] = max(blocks[-1][1], end)
            else:
                blocks.append([start, end])
        out = [(b[0], b[1]) for b in blocks]
        last = self._last_ooo
        if last is not None:
            for i, (left, right) in enumerate(out):
                if left <= last[0] < right:
                    out.insert(0, out.pop(i))
                    break
        return out[:limit]


class FromHost:
    """Host -> guest bytes from ``base`` (the oldest unacknowledged byte) on, and the
    blocks above it the guest has selectively acknowledged."""

    __slots__ = ("base", "buf", "sacked")

    def __init__(self, base: int) -> None:
        self.buf = bytearray()
        self.base = base
        #: Disjoint, sorted [start, end) ranges above ``base`` the guest SACKed.
        self.sacked: list[list[int]] = []

    @property
    def end(self) -> int:
        """The unwrapped sequence number after the last buffered byte."""
        return self.base + len(self.buf)

    def ack_to(self, seq: int) -> None:
        """The guest acknowledged everything before ``seq``."""
        n = seq - self.base
        if n <= 0:
            return
        n = min(n, len(self.buf))
        del self.buf[:n]
        self.base += n
        sacked = self.sacked
        while sacked and sacked[0][1] <= self.base:
            sacked.pop(0)
        if sacked and sacked[0][0] < self.base:
            sacked[0][0] = self.base

    def add_sack(self, start: int, end: int, limit: int) -> None:
        """Record a SACK block, clipped to ``[base, limit)`` and merged."""
        start = max(start, self.base)
        end = min(end, limit)
        if start >= end:
            return
        merged: list[list[int]] = []
        placed = False
        for blk in self.sacked:
            if blk[1] < start:
                merged.append(blk)
            elif end < blk[0]:
                if not placed:
                    merged.append([start, end])
                    placed = True
                merged.append(blk)
            else:
                start, end = min(start, blk[0]), max(end, blk[1])
        if not placed:
            merged.append([start, end])
        self.sacked = merged if len(merged) <= 64 else merged[-64:]

    def sacked_bytes(self) -> int:
        return sum(e - s for s, e in self.sacked)

    def next_hole(self, after: int) -> tuple[int, int] | None:
        """The first range at or after ``after`` that is below the highest SACKed byte
        and not SACKed itself (a segment presumed lost), or None."""
        pos = max(after, self.base)
        for start, end in self.sacked:
            if pos < start:
                return pos, start
            pos = max(pos, end)
        return None
