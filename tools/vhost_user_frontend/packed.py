"""Packed virtqueues, driver side (virtio 1.1+ §2.8), with the interface of
:class:`~.virtqueue.SplitQueue` that :mod:`.net` and :mod:`.frontend` use.

Layout in :class:`~.memory.GuestMemory`: a ring of ``num`` descriptors ``{u64 addr, u32
len, u16 id, u16 flags}`` (flags NEXT 1, WRITE 2, INDIRECT 4, AVAIL 1 << 7, USED 1 << 15),
the driver event suppression area we write and the device's we read (``{u16 off_wrap,
u16 flags}``, flags ENABLE 0, DISABLE 1, DESC 2). ``SET_VRING_ADDR`` carries the ring, the
device area (as "used") and the driver area (as "avail").

How the split-ring interface maps: ``desc`` is a *shadow* table indexed by buffer id
(what :meth:`write_desc` and :mod:`.net` fill: addr, len, flags, next). :meth:`push`
copies each buffer's chain (following ``next`` while NEXT is set) into the next ring
slots, every descriptor carrying the head's id as buffer id; the head descriptors' flags
are written only by :meth:`publish`, the first buffer's last, so the device sees a batch
at once. :meth:`reap` reads used descriptors (AVAIL and USED both equal to our used wrap
counter) and steps over as many slots as the buffer took. ``base`` is what
``SET_VRING_BASE`` carries: ``slot | wrap << 15``; both wrap counters start at 1.

Kicks: the device's area DISABLE never, ENABLE always, DESC (EVENT_IDX) when the new avail
slots cross ``off_wrap`` (Linux's ``virtqueue_kick_prepare_packed``).

The queue trusts nothing the device writes: a used id out of range or not outstanding is
counted (``bad_used``) and marks the queue ``broken`` (the slot step of an unknown buffer
is unknowable, as Linux's "BAD_RING"); lengths are the caller's to clip. x86-64 only, as
the split queue (ordering by program order under TSO).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Any

import numpy as np
import numpy.typing as npt

from .memory import PAGE, GuestMemory
from .virtqueue import (
    DESC_DTYPE,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DESC_SIZE,
    MAX_QUEUE_SIZE,
    USED_DTYPE,
    QueueFull,
    RingLayout,
    Segment,
    UsedRingError,
    need_event,
    u16,
)

DESC_F_AVAIL = 1 << 7
DESC_F_USED = 1 << 15
EVENT_F_ENABLE = 0
EVENT_F_DISABLE = 1
EVENT_F_DESC = 2
PACKED_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("id", "<u2"), ("flags", "<u2")])


def avail_bits(wrap: int) -> int:
    """AVAIL/USED bits of a descriptor the driver makes available in lap ``wrap``."""
    return DESC_F_AVAIL if wrap else DESC_F_USED


class PackedQueue:
    """One packed virtqueue in guest memory, driven from the driver side."""

    packed = True

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
        if not 0 < num <= MAX_QUEUE_SIZE:
            raise ValueError(f"queue size {num} is not in 1..{MAX_QUEUE_SIZE}")
        self.mem = mem
        self.num = num
        self.index = index
        self.event_idx = event_idx
        ring = mem.alloc(DESC_SIZE * num, PAGE)
        driver = mem.alloc(4, 4)
        device = mem.alloc(4, 4)
        self.layout = RingLayout(ring, driver, device, num)
        self.ring = mem.array(ring, PACKED_DTYPE, num)
        self.driver_evt = mem.array(driver, "<u2", 2)  # off_wrap, flags (we write)
        self.device_evt = mem.array(device, "<u2", 2)  # off_wrap, flags (device writes)
        self.desc = np.zeros(num, dtype=DESC_DTYPE)  # shadow, by buffer id
        self.indirect_max = indirect_max
        self.indirect_base = mem.alloc(num * indirect_max * DESC_SIZE, 16) if indirect_max else 0
        #: VIRTIO_F_IN_ORDER acked: a used entry may stand for every buffer made available
        #: before it too (the device skips their slots), as DPDK's vhost library does.
        self.in_order = False
        self._order: deque[int] = deque()  # outstanding ids in the order made available
        self.kicks = 0
        self.bad_used = 0
        self.broken = False
        self.outstanding = np.zeros(num, dtype=bool)
        self._slots = np.zeros(num, dtype=np.int64)  # ring slots each outstanding id took
        self._free: list[int] = []
        self._chain: list[list[int] | None] = [None] * num
        self._claimed = False
        self._pending: list[tuple[int, int]] = []  # (slot, flags) of unpublished heads
        self.base = 0
        self.reset_rings(base)

    # -- addresses -----------------------------------------------------------------------

    def user_addresses(self) -> tuple[int, int, int]:
        """(ring, device area, driver area) as user addresses: SET_VRING_ADDR's
        (desc, used, avail)."""
        lay = self.layout
        return self.mem.uva(lay.desc), self.mem.uva(lay.used), self.mem.uva(lay.avail)

    def reset_rings(self, base: int = 0) -> None:
        """Zero the ring; both indices start at slot ``base % num`` in lap 1. The slots
        before it read as used in lap 1 (AVAIL and USED set): they are passed in this lap,
        and zero flags would read as used in lap 2 (wrap counter 0) once our used index
        wraps there before we made them available again."""
        self.ring[:] = 0
        self.driver_evt[:] = 0
        self.device_evt[:] = 0
        slot = base % self.num
        self.ring["flags"][:slot] = DESC_F_AVAIL | DESC_F_USED
        self.base = slot | 1 << 15
        self.next_avail, self.avail_wrap = slot, 1
        self.last_used, self.used_wrap = slot, 1
        self.kick_slot, self.kick_wrap = slot, 1
        self.added = 0
        self.outstanding[:] = False
        self._order.clear()
        self._pending = []
        self.broken = False
        if not self._claimed:
            self._free = list(range(self.num - 1, -1, -1))
            self._chain = [None] * self.num

    @property
    def avail_idx(self) -> int:
        """The next slot we make available (and the lap's wrap bit above)."""
        return self.next_avail | self.avail_wrap << 15

    # -- descriptors ---------------------------------------------------------------------

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.desc[i] = (addr, length, flags, nxt)

    def claim(self) -> range:
        self._claimed = True
        self._free = []
        return range(self.num)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def add_chain(self, segments: Sequence[Segment], *, indirect: bool = False) -> int:
        if not segments:
            raise ValueError("a chain needs at least one segment")
        if indirect:
            if len(segments) > self.indirect_max:
                raise ValueError(f"indirect table holds {self.indirect_max} entries")
            if not self._free:
                raise QueueFull
            head = self._free.pop()
            table = self.indirect_base + head * self.indirect_max * DESC_SIZE
            entries = self.mem.array(table, PACKED_DTYPE, len(segments))
            for k, seg in enumerate(segments):
                entries[k] = (seg.gpa, seg.length, 0, DESC_F_WRITE if seg.write else 0)
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

    def _advance(self, n: int) -> tuple[int, int]:
        slot, wrap = self.next_avail, self.avail_wrap
        nxt = slot + n
        if nxt >= self.num:
            nxt -= self.num
            self.avail_wrap ^= 1
        self.next_avail = nxt
        self.added += n
        return slot, wrap

    def push(self, heads: Sequence[int] | npt.NDArray[np.integer]) -> None:
        """Copy the chains of ``heads`` into the ring (their head flags wait for
        :meth:`publish`)."""
        arr = np.asarray(heads, dtype=np.intp)
        n = len(arr)
        if not n:
            return
        num = self.num
        shadow = self.desc[arr]
        if not (shadow["flags"] & DESC_F_NEXT).any() and n <= num:
            slot, wrap = self._advance(n)
            pos = (slot + np.arange(n)) % num
            ring = self.ring
            ring["addr"][pos] = shadow["addr"]
            ring["len"][pos] = shadow["len"]
            ring["id"][pos] = arr
            lap = np.where(pos >= slot, avail_bits(wrap), avail_bits(wrap ^ 1))
            flags = (shadow["flags"] | lap).astype(np.uint16)
            self._pending.extend(zip(pos.tolist(), flags.tolist(), strict=True))
            self._slots[arr] = 1
            self.outstanding[arr] = True
            if self.in_order:
                self._order.extend(arr.tolist())
            return
        for head in arr.tolist():
            chain = [head]
            while int(self.desc[chain[-1]]["flags"]) & DESC_F_NEXT and len(chain) < num:
                chain.append(int(self.desc[chain[-1]]["next"]) % num)
            first = True
            for i in chain:
                slot, wrap = self._advance(1)
                d = self.desc[i]
                bits = int(d["flags"]) | avail_bits(wrap)
                self.ring[slot] = (int(d["addr"]), int(d["len"]), head, 0)
                if first:
                    self._pending.append((slot, bits))
                    first = False
                else:
                    self.ring["flags"][slot] = bits
            self._slots[head] = len(chain)
            self.outstanding[head] = True
            if self.in_order:
                self._order.append(head)

    def post_raw(self, entries: Sequence[tuple[int, int, int, int]], *, avail: bool = True) -> int:
        """Hostile mode: write ``(addr, len, id, flags)`` descriptors into the next slots
        as they are (the AVAIL/USED bits of the lap added when ``avail``); returns the first
        slot. Publish with :meth:`publish`."""
        first = self.next_avail
        for addr, length, buf_id, flags in entries:
            slot, wrap = self._advance(1)
            self.ring[slot] = (addr, length, buf_id, 0)
            bits = flags | (avail_bits(wrap) if avail else 0)
            self._pending.append((slot, bits & 0xFFFF))
            if 0 <= buf_id < self.num and not self.outstanding[buf_id]:
                self.outstanding[buf_id] = True
                self._slots[buf_id] = len(entries)
                if self.in_order:
                    self._order.append(buf_id)
        return first

    def publish(self) -> bool:
        """Make what was pushed visible; True when the device wants a kick for it."""
        pending = self._pending
        if pending:
            ring_flags = self.ring["flags"]
            for slot, flags in reversed(pending):  # the first buffer's head last
                ring_flags[slot] = flags
            self._pending = []
        added = self.added
        self.added = 0
        if not added:
            return False
        flags = int(self.device_evt[1])
        if flags != EVENT_F_DESC or not self.event_idx:
            return flags != EVENT_F_DISABLE
        off_wrap = int(self.device_evt[0])
        event = off_wrap & 0x7FFF
        if off_wrap >> 15 != self.avail_wrap:
            event -= self.num
        new = self.next_avail
        return need_event(u16(event), new, u16(new - added))

    def set_interrupts(self, enabled: bool) -> None:
        """Ask for used-buffer notifications (calls) or not (polling)."""
        if not enabled:
            self.driver_evt[1] = EVENT_F_DISABLE
        elif self.event_idx:
            self.driver_evt[0] = self.last_used | self.used_wrap << 15
            self.driver_evt[1] = EVENT_F_DESC
        else:
            self.driver_evt[1] = EVENT_F_ENABLE

    # -- used side -----------------------------------------------------------------------

    def _is_used(self, slot: int, wrap: int) -> bool:
        f = int(self.ring["flags"][slot])
        return bool(f >> 7 & 1) == bool(wrap) and bool(f >> 15 & 1) == bool(wrap)

    def used_idx(self) -> int:
        return self.last_used | self.used_wrap << 15

    def pending(self) -> int:
        """Used descriptors ready at the next slot (0 or more; a lower bound)."""
        return int(self._is_used(self.last_used, self.used_wrap))

    def _step(self, n: int) -> None:
        nxt = self.last_used + n
        if nxt >= self.num:
            nxt -= self.num
            self.used_wrap ^= 1
        self.last_used = nxt

    def reap(self, limit: int | None = None, *, strict: bool = False) -> npt.NDArray[Any]:
        """New used elements (``id``, ``len``), oldest first; frees their chains."""
        out = np.zeros(0, dtype=USED_DTYPE)
        if self.broken:
            return out
        num = self.num
        budget = num if limit is None else min(limit, num)
        start, wrap = self.last_used, self.used_wrap
        pos = (start + np.arange(budget)) % num
        lap = np.where(pos >= start, wrap, wrap ^ 1)
        flags = self.ring["flags"][pos]
        used = ((flags >> 7) & 1 == lap) & ((flags >> 15) & 1 == lap)
        m = budget if bool(used.all()) else int(np.argmin(used))
        if not m:
            return out
        ids = self.ring["id"][pos[:m]].astype(np.intp)
        fast = (
            bool((ids < num).all())
            and bool(self.outstanding[ids].all())
            and bool((self._slots[ids] == 1).all())
            and len(np.unique(ids)) == m
        )
        if fast and self.in_order:  # one used entry per buffer, in the order posted
            order = self._order
            fast = list(islice(order, m)) == ids.tolist()
            if fast:
                for _ in range(m):
                    order.popleft()
        if not fast and self.in_order:
            return self._reap_in_order(budget, strict)
        if fast:
            out = np.zeros(m, dtype=USED_DTYPE)
            out["id"] = ids
            out["len"] = self.ring["len"][pos[:m]]
            self.outstanding[ids] = False
            self._step(m)
            self._free_chains(ids.tolist())
            return out
        got: list[tuple[int, int]] = []
        while len(got) < budget and self._is_used(self.last_used, self.used_wrap):
            d = self.ring[self.last_used]
            buf = int(d["id"])
            if buf >= num or not self.outstanding[buf]:
                self.bad_used += 1
                self.broken = True
                if strict:
                    raise UsedRingError(f"used id {buf} is not outstanding")
                break
            self.outstanding[buf] = False
            got.append((buf, int(d["len"])))
            self._step(int(self._slots[buf]))
        out = np.array(got, dtype=USED_DTYPE)
        self._free_chains([b for b, _ in got])
        return out

    def _reap_in_order(self, budget: int, strict: bool) -> npt.NDArray[Any]:
        """Used entries under IN_ORDER: each completes every buffer up to its id."""
        got: list[tuple[int, int]] = []
        order = self._order
        while len(got) < budget and self._is_used(self.last_used, self.used_wrap):
            d = self.ring[self.last_used]
            last, length = int(d["id"]), int(d["len"])
            if last >= self.num or not self.outstanding[last]:
                self.bad_used += 1
                self.broken = True
                if strict:
                    raise UsedRingError(f"used id {last} is not outstanding")
                break
            step = 0
            while order:
                buf = order.popleft()
                if not self.outstanding[buf]:
                    continue
                self.outstanding[buf] = False
                step += int(self._slots[buf])
                got.append((buf, length if buf == last else 0))
                if buf == last:
                    break
            self._step(step)
        out = np.array(got, dtype=USED_DTYPE)
        self._free_chains([b for b, _ in got])
        return out

    def _free_chains(self, ids: list[int]) -> None:
        if self._claimed:
            return
        for head in ids:
            chain = self._chain[head]
            self._chain[head] = None
            if chain is not None:
                self._free.extend(chain)

    @property
    def in_flight(self) -> int:
        return int(np.count_nonzero(self.outstanding))
