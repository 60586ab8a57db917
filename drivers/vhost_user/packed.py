"""Packed virtqueues (virtio 1.1 §2.7, 1.2 §2.8; ``VIRTIO_F_RING_PACKED``) as a vhost-user back end
drives them, behind the interface the device uses for split rings.

Layout (little-endian; ``include/standard-headers/linux/virtio_ring.h``): one ring of
``num`` 16-byte descriptors ``{u64 addr, u32 len, u16 id, u16 flags}`` (flags NEXT 1,
WRITE 2, INDIRECT 4, AVAIL 1 << 7, USED 1 << 15) and two 4-byte event suppression
structures ``{u16 off_wrap, u16 flags}`` (flags ENABLE 0, DISABLE 1, DESC 2): the driver's
(``SET_VRING_ADDR``'s avail address; it says when the device should interrupt) and the
device's (its used address; it says when the driver should kick).

Wrap counters
    Both sides walk the ring in the same direction. A descriptor is available when its
    AVAIL bit equals the device's avail wrap counter and its USED bit does not; the device
    writes a used descriptor with both bits equal to its used wrap counter. Each counter
    starts at 1 and flips every time its index passes the end of the ring. A buffer is a
    run of descriptors whose last has NEXT clear; the buffer id is the last one's ``id``.
    The used index advances by the number of descriptors of the buffer (one for an
    indirect one); one used descriptor per buffer, written at the used index.

vhost-user
    ``SET_VRING_BASE`` carries ``last_avail | avail_wrap << 15``; the used index starts
    equal (DPDK's ``vhost_user_set_vring_base`` does the same). ``GET_VRING_BASE``
    answers with the same encoding in bits 0-15 and the used index and used wrap counter
    in bits 16-31, which QEMU's ``virtio_queue_packed_set_last_avail_idx`` reads back.

Interface
    :class:`PackedQueue` is a :class:`~.virtqueue.SplitQueue` to the device and the
    protocol layer: the configuration, fd and start/stop handling are the split ring's;
    ring access is overridden. A "head" here is the ring slot where a buffer starts; what
    :meth:`PackedQueue.avail_count` found (buffer id and descriptor count per head) is
    copied into device-private tables, so a driver rewriting the ring meanwhile cannot
    change what is completed. The common case is cheaper: when every buffer found is one
    descriptor, nothing is copied; each used entry goes into the slot its buffer came in,
    where the buffer id already is (a driver that rewrites an id it made available gets
    its own rewrite back, which harms no one else). Buffers are processed and completed
    in the order they were made available, which is also what ``VIRTIO_F_IN_ORDER`` asks
    for (one used descriptor per buffer, never the batched form the spec allows).

Compiled twin
    ``vring_packed.h`` in ``_vring.c`` runs the same scan, checks, errors and used
    descriptors in C (through :mod:`.fastring`); it takes the slots and wrap counters
    from this queue and hands them back (:meth:`PackedQueue.took`, which also forgets what
    :meth:`PackedQueue.avail_count` found), and decides calls from the same signalled
    slot (:attr:`PackedQueue.signal_mark`, :meth:`PackedQueue.call_checked`).

Driver errors (:class:`~.virtqueue.RingError`, the device breaks the queue)
    A chain of available descriptors running over the whole ring, unknown flag bits, an
    indirect descriptor without ``VIRTIO_RING_F_INDIRECT_DESC`` or with NEXT, nested, empty
    or misaligned indirect tables, an indirect table of more than ``num`` entries, a
    descriptor of the wrong direction, addresses outside the shared memory, ring areas that
    do not translate, a ``SET_VRING_BASE`` index past the ring. Buffer ids are the
    driver's: given back as they came, never used as an index (QEMU's
    ``virtqueue_packed_pop`` does not check them either). A chain whose last available
    descriptor still has NEXT is not taken until the rest is made available.

Event suppression
    Device to driver (:meth:`PackedQueue.needs_call`): DISABLE never, ENABLE always, DESC
    (only with ``EVENT_IDX``; without it DESC counts as ENABLE, as in DPDK) when the used
    index crossed ``off_wrap``; an event offset
    whose wrap bit differs from the used wrap counter lies one lap back (``off - num``), as
    in DPDK's ``vhost_vring_call_packed``. Driver to device
    (:meth:`PackedQueue.set_notification`): ``off_wrap`` = next avail slot and wrap
    counter, then flags DESC (``EVENT_IDX``) or ENABLE; DISABLE to stop kicks.

Invariants
    Used descriptors' ``id``/``len`` are written before their ``flags`` (plain stores in
    program order: x86-64 TSO, as the split ring). Descriptors are copied out before they
    are checked and used.
"""

from __future__ import annotations

import struct

import numpy as np
from numpy.typing import NDArray

from . import fence
from .dirtylog import DirtyLog
from .memory import GuestMemory, Region
from .virtqueue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    MAX_QUEUE_SIZE,
    RingError,
    Segment,
    SimpleBatch,
    SplitQueue,
)

DESC_F_AVAIL = 1 << 7
DESC_F_USED = 1 << 15
DESC_F_KNOWN = DESC_F_NEXT | DESC_F_WRITE | DESC_F_INDIRECT | DESC_F_AVAIL | DESC_F_USED
EVENT_F_ENABLE = 0
EVENT_F_DISABLE = 1
EVENT_F_DESC = 2
WRAP_BIT = 1 << 15

_DESC = struct.Struct("<QIHH")
#: Flags in a descriptor's second u64 (len | id << 32 | flags << 48), without AVAIL/USED.
_FLAGS_NO_WRAP = np.uint64(0x7F7F << 48)
_LEN_FIELD = np.uint64(0xFFFFFFFF)
_WRAP_BITS = DESC_F_AVAIL | DESC_F_USED
_NONE: NDArray[np.uint16] = np.empty(0, dtype=np.uint16)


def _run(flags: NDArray[np.uint16], want: int) -> int:
    """How many of ``flags`` from the first on are available (AVAIL/USED bits ``want``)
    without NEXT."""
    good = (flags & (_WRAP_BITS | DESC_F_NEXT)) == want
    return len(good) if bool(good.all()) else int(good.argmin())


class PackedQueue(SplitQueue):
    """One packed virtqueue of a vhost-user device."""

    #: The device's dirty log (live migration); its device sets it.
    dirty: DirtyLog | None = None

    def _init_state(self) -> None:
        super()._init_state()
        self.avail_slot = 0
        self.avail_wrap = 1
        self.used_slot = 0
        self.used_wrap = 1
        self._signalled_slot = 0
        self._ring: NDArray[np.uint64] | None = None  # (num, 2): addr, len|id|flags
        self._ring16: NDArray[np.uint16] = np.empty(0, dtype=np.uint16)
        self._ring32: NDArray[np.uint32] = np.empty(0, dtype=np.uint32)
        self._driver_evt: memoryview | None = None
        self._ring_h: memoryview | None = None  # the ring as u16s, for scalar reads
        self._device_evt: memoryview | None = None
        self._ring_region: Region | None = None
        self._ring_off = 0
        # Guest-physical addresses of what the device writes (used descriptors, the device
        # event area), for dirty logging: :attr:`dirty` is the device's log, set by it.
        self._desc_gpa = 0
        self._devevt_gpa = 0
        # What avail_count() found, indexed by the slot a buffer starts at.
        self._slot_id = np.zeros(0, dtype=np.uint16)
        self._slot_n = np.zeros(0, dtype=np.uint16)
        self._found: NDArray[np.uint16] = np.empty(0, dtype=np.uint16)
        # Every buffer found by the last scan is one descriptor (its slot_n/slot_id are
        # then implied: 1, and the id still in its slot, where its used entry goes).
        self._single = False
        self._r16: NDArray[np.uint16] = np.empty((0, 8), dtype=np.uint16)
        self._r32: NDArray[np.uint32] = np.empty((0, 4), dtype=np.uint32)
        self._iota: NDArray[np.uint16] = np.empty(0, dtype=np.uint16)

    def __repr__(self) -> str:
        state = "broken" if self.broken else "started" if self.started else "stopped"
        return f"<PackedQueue {self.index} num={self.num} {state} enabled={self.enabled}>"

    # -- configuration -------------------------------------------------------------------

    def set_num(self, num: int) -> None:
        # Packed rings need not be a power of two (virtio §2.8.10.1).
        if not 0 < num <= MAX_QUEUE_SIZE:
            raise RingError(f"queue size {num} is not in 1..{MAX_QUEUE_SIZE}")
        self.num = num
        self.unmap()

    def set_base(self, base: int) -> None:
        self.avail_slot = base & 0x7FFF
        self.avail_wrap = base >> 15 & 1
        self.used_slot, self.used_wrap = self.avail_slot, self.avail_wrap
        self._found = np.empty(0, dtype=np.uint16)

    @property
    def last_avail(self) -> int:
        """``GET_VRING_BASE``'s value: avail slot and wrap, used slot and wrap above."""
        low = self.avail_slot | self.avail_wrap << 15
        return low | (self.used_slot | self.used_wrap << 15) << 16

    @last_avail.setter
    def last_avail(self, value: int) -> None:
        self.set_base(value)

    @property
    def mapped(self) -> bool:
        return self._ring is not None

    @property
    def ready(self) -> bool:
        return self.started and self.broken is None and self._ring is not None

    def map(self, mem: GuestMemory) -> None:
        if self._ring is not None and self._generation == mem.generation:
            return
        self.unmap()
        if not self.num or not self.addr_set:
            raise RingError("queue started before its size and addresses were set")
        num = self.num
        if self.avail_slot >= num:
            raise RingError(f"ring base {self.avail_slot} is past the ring of {num}")
        d_region, d_off = self._translate(mem, self.desc_addr, 16 * num, 16, "descriptor ring")
        a_region, a_off = self._translate(mem, self.avail_addr, 4, 4, "driver event area")
        u_region, u_off = self._translate(mem, self.used_addr, 4, 4, "device event area")
        raw = d_region.u8[d_off : d_off + 16 * num]
        self._ring = raw.view(np.uint64).reshape(num, 2)
        self._ring16 = raw.view(np.uint16)
        self._ring32 = raw.view(np.uint32)
        self._r16 = self._ring16.reshape(num, 8)
        self._r32 = self._ring32.reshape(num, 4)
        self._ring_h = memoryview(raw).cast("H")  # type: ignore[arg-type]
        self._iota = (np.arange(2 * num) % num).astype(np.uint16)
        self._ring_region, self._ring_off = d_region, d_off
        self._desc_gpa = d_region.spec.gpa + d_off
        self._devevt_gpa = u_region.spec.gpa + u_off
        self._driver_evt = memoryview(a_region.u8[a_off : a_off + 4]).cast("H")  # type: ignore[arg-type]
        self._device_evt = memoryview(u_region.u8[u_off : u_off + 4]).cast("H")  # type: ignore[arg-type]
        self.raw = (raw, a_region.u8[a_off : a_off + 4], u_region.u8[u_off : u_off + 4])
        if len(self._slot_id) != num:
            self._slot_id = np.zeros(num, dtype=np.uint16)
            self._slot_n = np.zeros(num, dtype=np.uint16)
        self._found = np.empty(0, dtype=np.uint16)
        self._generation = mem.generation

    def unmap(self) -> None:
        super().unmap()
        self._ring = None
        self._ring_region = None
        self._ring16 = np.empty(0, dtype=np.uint16)
        self._ring32 = np.empty(0, dtype=np.uint32)
        self._r16 = np.empty((0, 8), dtype=np.uint16)
        self._r32 = np.empty((0, 4), dtype=np.uint32)
        for mv in (self._driver_evt, self._device_evt, self._ring_h):
            if mv is not None:
                mv.release()
        self._driver_evt = self._device_evt = self._ring_h = None

    @property
    def ring_gpa(self) -> int:
        """Guest-physical address of the descriptor ring (where used entries are written)."""
        return self._desc_gpa

    @property
    def event_gpa(self) -> int:
        """Guest-physical address of the device event area."""
        return self._devevt_gpa

    # -- driver -> device ------------------------------------------------------------------

    def took(self, slot: int, wrap: int) -> None:
        """The compiled loops consumed buffers up to avail ``slot`` and ``wrap`` counter:
        what :meth:`avail_count` found before is forgotten."""
        self.avail_slot = slot
        self.avail_wrap = wrap
        self._found = _NONE
        self._single = False

    def has_avail(self) -> bool:
        """Whether the descriptor at the avail slot is available: one flags read, as QEMU's
        ``virtio_queue_packed_empty_rcu`` (a buffer whose chain is not complete yet
        counts; the burst that follows takes nothing from it)."""
        ring_h = self._ring_h
        assert ring_h is not None
        want = DESC_F_AVAIL if self.avail_wrap else DESC_F_USED
        return bool(ring_h[8 * self.avail_slot + 7] & _WRAP_BITS == want)

    def avail_count(self) -> int:
        """Complete buffers the driver made available from the next avail slot on."""
        ring_h = self._ring_h
        assert ring_h is not None
        num = self.num
        start = self.avail_slot
        want = DESC_F_AVAIL if self.avail_wrap else DESC_F_USED
        known = len(self._found)
        if self._single and known:
            # Found before and not consumed yet: look only past them (they stay available
            # until the device uses them), usually one descriptor's flags.
            if known == num:
                return known
            after = start + known
            lap = want if after < num else want ^ _WRAP_BITS
            if ring_h[8 * (after % num) + 7] & _WRAP_BITS != lap:
                return known
        self._single = False
        if ring_h[8 * start + 7] & _WRAP_BITS != want:
            self._found = _NONE
            return 0
        ring_flags = self._ring16[7::8]
        # Common case first: a run of available descriptors without NEXT.
        m = _run(ring_flags[start:], want)
        if m == num - start and start:  # the slots before the start are in the next lap
            m += _run(ring_flags[:start], want ^ _WRAP_BITS)
        after = start + m
        lap = want if after < num else want ^ _WRAP_BITS
        if m == num or ring_h[8 * (after % num) + 7] & _WRAP_BITS != lap:
            self._single = True
            self._found = self._iota[start:after]
            return m
        flags = np.concatenate((ring_flags[start:], ring_flags[:start]))
        return self._scan_chains(flags, want)

    def _scan_chains(self, flags: NDArray[np.uint16], want: int) -> int:
        num = self.num
        start = self.avail_slot
        bits = flags & _WRAP_BITS
        avail = bits == want
        if start:
            avail[num - start :] = bits[num - start :] == want ^ _WRAP_BITS
        m = num if bool(avail.all()) else int(avail.argmin())
        ends = np.flatnonzero((flags[:m] & DESC_F_NEXT) == 0)
        if m == num and (not len(ends) or ends[-1] != num - 1):
            raise RingError(f"a descriptor chain runs over the whole ring of {num}")
        count = len(ends)
        if not count:
            self._found = _NONE
            return 0
        firsts = np.empty(count, dtype=np.intp)
        firsts[0] = 0
        firsts[1:] = ends[:-1] + 1
        slots = firsts + start
        slots[slots >= num] -= num
        last = ends + start
        last[last >= num] -= num
        self._slot_n[slots] = ends - firsts + 1
        self._slot_id[slots] = self._ring16[6::8][last]
        self._found = slots.astype(np.uint16)
        return count

    def heads(self, n: int) -> NDArray[np.uint16]:
        """Slots of the next ``n`` buffers found by :meth:`avail_count`."""
        return self._found[:n].copy()

    def consume(self, n: int) -> None:
        if not n:
            return
        step = n if self._single else int(self._slot_n[self._found[:n]].sum(dtype=np.int64))
        self._found = self._found[n:]
        slot = self.avail_slot + step
        if slot >= self.num:
            slot -= self.num
            self.avail_wrap ^= 1
        self.avail_slot = slot

    def simple_batch(
        self, mem: GuestMemory, heads: NDArray[np.uint16], flags: int
    ) -> SimpleBatch | None:
        ring = self._ring
        assert ring is not None
        n = len(heads)
        if self._single and n:  # heads are consecutive slots: slices, not a gather
            start = int(heads[0])
            end = start + n
            if end <= self.num:
                descs = ring[start:end].copy()
            else:
                descs = np.concatenate((ring[start:], ring[: end - self.num]))
        elif np.any(self._slot_n[heads] != 1):
            return None
        else:
            descs = ring[heads]  # a copy
        meta = descs[:, 1]
        if np.any((meta & _FLAGS_NO_WRAP) != np.uint64(flags << 48)):
            return None
        lens = meta & _LEN_FIELD
        place = mem.gpa_batch(descs[:, 0], lens)
        if place is None:
            raise RingError("a descriptor points outside the shared memory")
        return SimpleBatch(heads, lens, place)

    def chain(self, mem: GuestMemory, head: int, writable: bool) -> tuple[list[Segment], int]:
        """The segments of the buffer starting at slot ``head`` and their total length."""
        region = self._ring_region
        assert region is not None
        num = self.num
        count = 1 if self._single else int(self._slot_n[head])
        self.walked = count
        base = region.base + self._ring_off
        unpack = _DESC.unpack_from
        segments: list[Segment] = []
        total = 0
        for k in range(count):
            slot = (head + k) % num
            addr, length, _id, flags = unpack(region.mm, base + 16 * slot)
            if flags & ~DESC_F_KNOWN:
                raise RingError(f"descriptor {slot} has unknown flags {flags:#x}")
            if flags & DESC_F_INDIRECT:
                if k != count - 1 or flags & DESC_F_NEXT:
                    raise RingError("indirect descriptor with NEXT set")
                total += self._indirect(mem, addr, length, writable, head, segments)
                continue
            total += self._segment(mem, addr, length, flags, writable, head, segments)
        return segments, total

    def _indirect(
        self,
        mem: GuestMemory,
        addr: int,
        length: int,
        writable: bool,
        head: int,
        segments: list[Segment],
    ) -> int:
        if not self.indirect:
            raise RingError("indirect descriptor but VIRTIO_RING_F_INDIRECT_DESC is off")
        if length == 0 or length % 16:
            raise RingError(f"indirect table of {length} bytes")
        if length // 16 > self.num:
            raise RingError(f"indirect table of {length // 16} entries in a ring of {self.num}")
        found = mem.gpa(addr, length)
        if found is None:
            raise RingError(f"indirect table at {addr:#x} is outside the shared memory")
        table, offset = found
        raw = table.mm[table.base + offset : table.base + offset + length]  # a copy
        total = 0
        for k in range(length // 16):
            a, n, _id, flags = _DESC.unpack_from(raw, 16 * k)
            if flags & DESC_F_INDIRECT:
                raise RingError("indirect descriptor inside an indirect table")
            if flags & ~(DESC_F_NEXT | DESC_F_WRITE):
                raise RingError(f"indirect table entry {k} has unknown flags {flags:#x}")
            total += self._segment(mem, a, n, flags, writable, head, segments)
        return total

    @staticmethod
    def _segment(
        mem: GuestMemory,
        addr: int,
        length: int,
        flags: int,
        writable: bool,
        head: int,
        segments: list[Segment],
    ) -> int:
        if bool(flags & DESC_F_WRITE) != writable:
            kind = "read-only" if writable else "writable"
            where = "receive buffer" if writable else "transmit chain"
            raise RingError(f"{kind} descriptor in a {where} (slot {head})")
        found = mem.gpa(addr, length)
        if found is None:
            raise RingError(f"descriptor at {addr:#x} (+{length}) is outside the shared memory")
        if length:
            segments.append((found[0], found[1], length))
        return length

    # -- device -> driver ------------------------------------------------------------------

    def push_used(self, ids: NDArray[np.uint16], lens: NDArray[np.uint32] | int) -> None:
        """One used descriptor per buffer starting at slots ``ids`` (in order)."""
        n = len(ids)
        if not n:
            return
        if self._single and int(ids[0]) == self.used_slot:
            self._push_run(n, lens)
            return
        num = self.num
        slots = ids.astype(np.intp)
        if self._single:
            counts = np.ones(n, dtype=np.intp)
            buf_ids = self._r16[slots, 6]
        else:
            counts = self._slot_n[slots].astype(np.intp)
            buf_ids = self._slot_id[slots]
        pos = np.cumsum(counts) - counts + self.used_slot
        wraps = pos >= num
        pos[wraps] -= num
        lens_arr = np.broadcast_to(np.asarray(lens, dtype=np.uint32), (n,))
        on = np.uint16(_WRAP_BITS) if self.used_wrap else np.uint16(0)
        flags = np.where(wraps, on ^ np.uint16(_WRAP_BITS), on).astype(np.uint16)
        flags[lens_arr > 0] |= np.uint16(DESC_F_WRITE)
        self._r16[pos, 6] = buf_ids
        self._r32[pos, 2] = lens_arr
        # flags last, the first buffer's last of all: the driver sees the batch at once
        self._r16[pos[1:], 7] = flags[1:]
        self._r16[pos[0], 7] = flags[0]
        self._advance_used(int(counts.sum()))

    def _push_run(self, n: int, lens: NDArray[np.uint32] | int) -> None:
        """Used entries for ``n`` one-descriptor buffers from the used slot on: each in the
        slot its buffer came in, whose ``id`` is already the buffer's."""
        num = self.num
        start = self.used_slot
        first = min(n, num - start)
        r16, r32 = self._r16, self._r32
        on = _WRAP_BITS if self.used_wrap else 0
        if isinstance(lens, int):
            r32[start : start + first, 2] = lens
            if first < n:
                r32[: n - first, 2] = lens
            extra = DESC_F_WRITE if lens else 0
            if first < n:
                r16[: n - first, 7] = (on ^ _WRAP_BITS) | extra
            r16[start + 1 : start + first, 7] = on | extra
            r16[start, 7] = on | extra
        else:
            write = np.where(lens > 0, DESC_F_WRITE, 0).astype(np.uint16)
            r32[start : start + first, 2] = lens[:first]
            if first < n:
                r32[: n - first, 2] = lens[first:]
                r16[: n - first, 7] = write[first:] | (on ^ _WRAP_BITS)
            r16[start + 1 : start + first, 7] = write[1:first] | on
            r16[start, 7] = int(write[0]) | on
        self._advance_used(n)

    def _advance_used(self, step: int) -> None:
        end = self.used_slot + step
        if end >= self.num:
            end -= self.num
            self.used_wrap ^= 1
        self.used_slot = end
        dirty = self.dirty
        if dirty is not None and dirty.active:
            # Used entries are written into the descriptor ring itself (not at the ring's
            # log_guest_addr, which names the device event area): its pages are marked
            # whole, a few KiB at most, after every batch of used entries.
            dirty.mark_range(self._desc_gpa, 16 * self.num)

    def push_one(self, head: int, length: int) -> None:
        self.push_used(np.array([head], dtype=np.uint16), length)

    def needs_call(self) -> bool:
        evt = self._driver_evt
        assert evt is not None
        new = self.used_slot
        old = self._signalled_slot
        valid = self._signalled_valid
        self._signalled_slot = new
        self._signalled_valid = True
        flags = evt[1]
        if flags != EVENT_F_DESC or not self.event_idx:
            return flags != EVENT_F_DISABLE
        if not valid:
            return True
        off_wrap = evt[0]
        event = off_wrap & 0x7FFF
        if new <= old:
            old -= self.num
        if off_wrap >> 15 != self.used_wrap:
            event -= self.num
        return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    @property
    def signal_mark(self) -> tuple[int, bool]:
        return self._signalled_slot, self._signalled_valid

    def call_checked(self) -> None:
        self._signalled_slot = self.used_slot
        self._signalled_valid = True

    def set_notification(self, enable: bool) -> None:
        evt = self._device_evt
        if evt is None:
            return
        if not enable:
            evt[1] = EVENT_F_DISABLE
        elif self.event_idx:
            evt[0] = self.avail_slot | self.avail_wrap << 15
            evt[1] = EVENT_F_DESC
        else:
            evt[1] = EVENT_F_ENABLE
        dirty = self.dirty
        if dirty is not None and dirty.active:
            dirty.mark_range(self._devevt_gpa, 4)
        if enable:
            fence.store_load()  # the caller's re-check must not pass the store above


def relayout(q: SplitQueue, packed: bool) -> SplitQueue:
    """``q`` as a queue of the other layout, keeping its configuration and fds (the ring
    layout is known only once features are set, after the front end may have sent
    ``SET_VRING_CALL``/``ERR``)."""
    if isinstance(q, PackedQueue) == packed:
        return q
    new: SplitQueue = PackedQueue(q.index) if packed else SplitQueue(q.index)
    q.unmap()
    for name in (
        "num", "desc_addr", "avail_addr", "used_addr", "addr_set", "kick_fd", "call_fd",
        "err_fd", "poll", "enabled", "started", "broken", "event_idx", "indirect",
    ):  # fmt: skip
        setattr(new, name, getattr(q, name))
    new.set_base(0x8000 if packed else 0)
    return new
