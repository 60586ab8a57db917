"""Split virtqueues, driver side: the descriptor table, the available ring we fill and the
used ring we drain, laid out in :class:`~.memory.GuestMemory`.

Spec: virtio 1.x §2.7 (split virtqueues). Little-endian:

* descriptor (16 B, table aligned to 16): ``u64 addr, u32 len, u16 flags, u16 next``;
  flags NEXT 1, WRITE 2, INDIRECT 4;
* avail ring: ``u16 flags`` (NO_INTERRUPT 1), ``u16 idx``, ``u16 ring[num]``,
  ``u16 used_event`` (EVENT_IDX);
* used ring (aligned here to a page, which also satisfies the legacy layout):
  ``u16 flags`` (NO_NOTIFY 1), ``u16 idx``, ``{u32 id, u32 len}[num]``, ``u16 avail_event``.

Indices are free-running u16 (:func:`u16`). With EVENT_IDX the driver notifies iff
``(u16)(new - event - 1) < (u16)(new - old)`` (:func:`need_event`), else unless the device
set NO_NOTIFY.

Memory ordering: ring entries are written before ``avail.idx`` and ``used.idx`` is read
before the entries it covers, in program order. That is enough on x86-64 (TSO: stores are
not reordered with stores, loads not with loads); Python has no fences, so this module is
for x86-64 hosts only (asserted nowhere, documented here).

The queue trusts nothing the device writes: used ids out of range and ids not
outstanding are counted (``bad_used``) and skipped; used.idx running more than ``num``
ahead is counted and marks the queue ``broken`` (nothing more is reaped until reset);
the chains we free are our own shadow copies, never re-read from shared memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .memory import PAGE, GuestMemory

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1

DESC_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")])
USED_DTYPE = np.dtype([("id", "<u4"), ("len", "<u4")])
DESC_SIZE = 16
MAX_QUEUE_SIZE = 32768


def u16(value: int) -> int:
    return value & 0xFFFF


def need_event(event: int, new: int, old: int) -> bool:
    """virtio's ``vring_need_event``: did ``[old, new)`` cross ``event``?"""
    return u16(new - event - 1) < u16(new - old)


class QueueFull(Exception):
    """Not enough free descriptors for the chain."""


class UsedRingError(Exception):
    """The device broke the used ring (raised only by :meth:`SplitQueue.reap` with
    ``strict=True``; counted otherwise)."""


@dataclass(frozen=True)
class Segment:
    """One buffer of a descriptor chain: guest-physical address, length, device-writable."""

    gpa: int
    length: int
    write: bool = False


@dataclass(frozen=True)
class RingLayout:
    desc: int
    avail: int
    used: int
    num: int

    @staticmethod
    def sizes(num: int) -> tuple[int, int, int]:
        return DESC_SIZE * num, 6 + 2 * num, 6 + 8 * num


class SplitQueue:
    """One split virtqueue in guest memory, driven from the driver side.

    Low level: :meth:`write_desc`, :meth:`push` (heads into the avail ring, unpublished),
    :meth:`publish` (store ``avail.idx``; says whether to kick), :meth:`reap` (new used
    elements). Descriptor allocation with chains: :meth:`add_chain` / freed by
    :meth:`reap`. Users with permanently assigned descriptors (fixed buffers) call
    :meth:`claim` once and then :meth:`push` heads directly.
    """

    def __init__(
        self,
        mem: GuestMemory,
        num: int,
        index: int = 0,
        *,
        event_idx: bool = False,
        indirect_max: int = 0,
        base: int = 0,
    ) -> None:
        if num <= 0 or num > MAX_QUEUE_SIZE or num & (num - 1):
            raise ValueError(f"queue size {num} is not a power of two in 1..{MAX_QUEUE_SIZE}")
        self.mem = mem
        self.num = num
        self.index = index
        self.event_idx = event_idx
        dsz, asz, usz = RingLayout.sizes(num)
        desc = mem.alloc(dsz, PAGE)
        avail = mem.alloc(asz, 2)
        used = mem.alloc(usz, PAGE)
        self.layout = RingLayout(desc, avail, used, num)
        self.desc = mem.array(desc, DESC_DTYPE, num)
        self.avail = mem.array(avail, "<u2", 3 + num)  # flags, idx, ring[num], used_event
        self.used_hdr = mem.array(used, "<u2", 2)
        self.used_ring = mem.array(used + 4, USED_DTYPE, num)
        self.avail_event_arr = mem.array(used + 4 + 8 * num, "<u2", 1)
        # Indirect tables: one per descriptor, indirect_max entries each.
        self.indirect_max = indirect_max
        self.indirect_base = mem.alloc(num * indirect_max * DESC_SIZE, 16) if indirect_max else 0
        self.avail_idx = 0  # shadow of avail.idx (next slot to fill)
        self.published = 0  # last value stored in avail.idx
        self.kick_base = 0  # avail.idx at the last kick decision
        self.last_used = 0
        self.bad_used = 0
        #: Set when the device moved used.idx more than num ahead; reap() then stops.
        self.broken = False
        self.kicks = 0
        self.outstanding = np.zeros(num, dtype=bool)
        self._n_outstanding = 0
        self._free: list[int] = list(range(num - 1, -1, -1))
        self._chain: list[list[int] | None] = [None] * num
        self._claimed = False
        self.base = 0
        self.reset_rings(base)

    # -- addresses -----------------------------------------------------------------------

    def user_addresses(self) -> tuple[int, int, int]:
        """(desc, used, avail) as user addresses, the order of SET_VRING_ADDR."""
        lay = self.layout
        return self.mem.uva(lay.desc), self.mem.uva(lay.used), self.mem.uva(lay.avail)

    def reset_rings(self, base: int = 0) -> None:
        """Zero the rings and the shadow state; indices start at ``base`` (what
        SET_VRING_BASE tells the device: its first avail index to read)."""
        self.desc[:] = 0
        self.avail[:] = 0
        self.used_hdr[:] = 0
        self.used_ring[:] = 0
        self.avail_event_arr[:] = 0
        base = u16(base)
        self.base = base
        self.avail[1] = base
        self.used_hdr[1] = base
        self.avail_idx = self.published = self.kick_base = self.last_used = base
        self.outstanding[:] = False
        self._n_outstanding = 0
        self.broken = False
        if not self._claimed:
            self._free = list(range(self.num - 1, -1, -1))
            self._chain = [None] * self.num

    # -- descriptors ---------------------------------------------------------------------

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.desc[i] = (addr, length, flags, nxt)

    def claim(self) -> range:
        """Take every descriptor out of the allocator (fixed-buffer users)."""
        self._claimed = True
        self._free = []
        return range(self.num)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def add_chain(self, segments: Sequence[Segment], *, indirect: bool = False) -> int:
        """Write a chain (or one INDIRECT descriptor pointing to a table) and push its head.

        Returns the head id. Raises :class:`QueueFull` if descriptors run out.
        """
        if not segments:
            raise ValueError("a chain needs at least one segment")
        if indirect:
            if len(segments) > self.indirect_max:
                raise ValueError(f"indirect table holds {self.indirect_max} entries")
            if not self._free:
                raise QueueFull
            head = self._free.pop()
            table = self.indirect_base + head * self.indirect_max * DESC_SIZE
            entries = self.mem.array(table, DESC_DTYPE, len(segments))
            for k, seg in enumerate(segments):
                last = k == len(segments) - 1
                flags = (DESC_F_WRITE if seg.write else 0) | (0 if last else DESC_F_NEXT)
                entries[k] = (seg.gpa, seg.length, flags, 0 if last else k + 1)
            self.desc[head] = (table, DESC_SIZE * len(segments), DESC_F_INDIRECT, 0)
            self._chain[head] = [head]
            self.push([head])
            return head
        if len(segments) > len(self._free):
            raise QueueFull
        ids = [self._free.pop() for _ in segments]
        for k, seg in enumerate(segments):
            last = k == len(segments) - 1
            flags = (DESC_F_WRITE if seg.write else 0) | (0 if last else DESC_F_NEXT)
            self.desc[ids[k]] = (seg.gpa, seg.length, flags, 0 if last else ids[k + 1])
        self._chain[ids[0]] = ids
        self.push([ids[0]])
        return ids[0]

    # -- avail side ----------------------------------------------------------------------

    def push(self, heads: Sequence[int] | npt.NDArray[np.integer]) -> None:
        """Put heads into the avail ring after the shadow index (not yet visible)."""
        n = len(heads)
        if n == 0:
            return
        num = self.num
        start = self.avail_idx % num
        first = min(n, num - start)
        arr = np.asarray(heads, dtype=np.uint16)
        self.avail[2 + start : 2 + start + first] = arr[:first]
        if first < n:
            self.avail[2 : 2 + n - first] = arr[first:]
        self.outstanding[arr] = True
        self._n_outstanding = int(np.count_nonzero(self.outstanding))
        self.avail_idx = u16(self.avail_idx + n)

    def push_raw(self, values: Sequence[int]) -> None:
        """Put arbitrary u16 values into the avail ring (hostile mode: heads may be out of
        range or repeated). In-range values are tracked as outstanding."""
        num = self.num
        for v in values:
            self.avail[2 + self.avail_idx % num] = u16(v)
            self.avail_idx = u16(self.avail_idx + 1)
            if 0 <= v < num:
                self.outstanding[v] = True
        self._n_outstanding = int(np.count_nonzero(self.outstanding))

    def publish_raw(self, idx: int) -> None:
        """Store any value in avail.idx without touching the shadow state (hostile mode)."""
        self.avail[1] = u16(idx)

    def publish(self) -> bool:
        """Store avail.idx; True when the device wants a kick for what was published."""
        new = self.avail_idx
        self.avail[1] = new
        self.published = new
        old = self.kick_base
        self.kick_base = new
        if new == old:
            return False
        if self.event_idx:
            return need_event(int(self.avail_event_arr[0]), new, old)
        return not int(self.used_hdr[0]) & USED_F_NO_NOTIFY

    def set_interrupts(self, enabled: bool) -> None:
        """Ask the device for used-buffer notifications (calls) or not (polling)."""
        if self.event_idx:
            # used_event: interrupt when the device uses entry last_used (or far away).
            self.avail[2 + self.num] = u16(self.last_used if enabled else self.last_used + 0x7FFF)
        self.avail[0] = 0 if enabled else AVAIL_F_NO_INTERRUPT

    # -- used side -----------------------------------------------------------------------

    def used_idx(self) -> int:
        return int(self.used_hdr[1])

    def pending(self) -> int:
        return u16(self.used_idx() - self.last_used)

    def reap(self, limit: int | None = None, *, strict: bool = False) -> npt.NDArray[Any]:
        """New used elements (a copy: ``id``, ``len``), oldest first; frees their chains."""
        if self.broken:
            return self.used_ring[:0].copy()
        used = self.used_idx()
        n = u16(used - self.last_used)
        if n == 0:
            return self.used_ring[:0].copy()
        if n > self.num:
            # The device claims more completions than the ring holds: the ring is broken
            # (Linux's virtio driver says "BAD_RING"). Nothing more is taken from it.
            self.bad_used += 1
            self.broken = True
            if strict:
                raise UsedRingError(f"used.idx {used} is {n} ahead of {self.last_used}")
            return self.used_ring[:0].copy()
        if limit is not None:
            n = min(n, limit)
        num = self.num
        start = self.last_used % num
        first = min(n, num - start)
        if first == n:
            elems = self.used_ring[start : start + n].copy()
        else:
            elems = np.concatenate((self.used_ring[start:], self.used_ring[: n - first]))
        self.last_used = u16(self.last_used + n)
        ids = elems["id"]
        valid = ids < num
        if not valid.all():
            self.bad_used += int(np.count_nonzero(~valid))
            if strict:
                raise UsedRingError("used id out of range")
            elems = elems[valid]
            ids = elems["id"]
        before = self._n_outstanding
        ok = self.outstanding[ids]
        self.outstanding[ids] = False
        self._n_outstanding = int(np.count_nonzero(self.outstanding))
        if before - self._n_outstanding != len(ids) or not ok.all():
            self.bad_used += len(ids) - (before - self._n_outstanding)
            if strict:
                raise UsedRingError("used id not outstanding (or returned twice)")
            keep = np.zeros(len(ids), dtype=bool)
            seen: set[int] = set()
            for k, (i, good) in enumerate(zip(ids.tolist(), ok.tolist(), strict=True)):
                if good and i not in seen:
                    keep[k] = True
                    seen.add(i)
            elems = elems[keep]
            ids = elems["id"]
        if not self._claimed:
            for head in ids.tolist():
                chain = self._chain[head]
                self._chain[head] = None
                if chain is not None:
                    self._free.extend(chain)
        return elems

    @property
    def in_flight(self) -> int:
        return self._n_outstanding
