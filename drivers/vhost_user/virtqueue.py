"""Split virtqueues (virtio 1.x §2.7) as a vhost-user back end drives them.

Layout (little-endian; ``include/standard-headers/linux/virtio_ring.h``): descriptor table
of ``num`` 16-byte ``{u64 addr, u32 len, u16 flags, u16 next}`` (flags NEXT 1, WRITE 2,
INDIRECT 4); avail ring ``{u16 flags, u16 idx, u16 ring[num], u16 used_event}``; used ring
``{u16 flags, u16 idx, {u32 id, u32 len}[num], u16 avail_event}``. Ring addresses are the
front end's user addresses (``SET_VRING_ADDR``); descriptor addresses are guest-physical.

What it owns
    One queue's configuration (size, addresses, base index, kick/call/err eventfds,
    enabled/started state), numpy views of its three rings inside the guest's memory, and
    the ring mechanics: how many buffers are available, batched reads of heads and
    descriptors, chain walking (direct and indirect), batched writes of used elements,
    notification suppression both ways (``VRING_USED_F_NO_NOTIFY`` / ``avail_event``, and
    ``VRING_AVAIL_F_NO_INTERRUPT`` / ``used_event`` with ``VIRTIO_RING_F_EVENT_IDX``).

Driver errors
    Anything that breaks the ring's rules raises :class:`RingError`: an avail index more
    than ``num`` ahead, a head or ``next`` index past its table, a chain longer than the
    ring (a loop), an indirect table that is empty, misaligned, nested or combined with
    NEXT, INDIRECT without the feature, unknown flag bits, a device-writable descriptor in
    a transmit chain (or a readable one in a receive buffer), any address range outside
    the shared memory, ring addresses that do not translate. The device layer marks the
    queue broken; nothing is read or written past a failed check.

Invariants
    * Every read of guest memory goes through views created from translated, bounds-checked
      ranges; descriptors are copied out of the table before they are checked and used, so
      a guest changing them meanwhile cannot get past a check.
    * ``used_idx`` is what this queue last published in ``used.idx``; used elements are
      written before ``used.idx`` (plain stores in program order: the ordering virtio
      needs holds on x86-64's TSO memory model; weakly ordered CPUs would need a fence).
    * Views are dropped (:meth:`SplitQueue.unmap`) before the memory they view is unmapped.
    * With :attr:`SplitQueue.log_used` set (dirty logging), every used-ring store is reported
      after it is made: the used elements before ``used.idx`` is stored, ``used.idx`` right
      after.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from netstack.errors import RemoteInputError

from . import fence
from .memory import GuestMemory, Region, Translated

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
DESC_F_KNOWN = DESC_F_NEXT | DESC_F_WRITE | DESC_F_INDIRECT
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1
#: The largest split queue (virtio: Queue Size <= 32768).
MAX_QUEUE_SIZE = 32768

_DESC = struct.Struct("<QIHH")
_FLAGS_FIELD = np.uint64(0xFFFF << 32)
_LEN_FIELD = np.uint64(0xFFFFFFFF)

#: A piece of a buffer: the region it lies in, the offset within the region, the length.
Segment = tuple[Region, int, int]


class RingError(RemoteInputError):
    """The driver broke the ring's rules; the queue must stop until it is reset."""


class SimpleBatch:
    """Heads whose buffers are each one direct descriptor, read and translated together:
    ``length`` per buffer and where it is (``place``: offsets in the mappings)."""

    __slots__ = ("heads", "length", "place")

    def __init__(
        self, heads: NDArray[np.uint16], length: NDArray[np.uint64], place: Translated
    ) -> None:
        self.heads = heads
        self.length = length
        self.place = place


class SplitQueue:
    """One split virtqueue of a vhost-user device."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._init_state()

    def _init_state(self) -> None:
        self.num = 0
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.addr_set = False
        self.last_avail = 0
        self.used_idx = 0
        self.kick_fd = -1
        self.call_fd = -1
        self.err_fd = -1
        self.poll = False  # SET_VRING_KICK without an fd: poll instead of waiting
        self.enabled = False
        self.started = False
        self.broken: str | None = None
        self.event_idx = False
        self.indirect = False
        self._signalled_used = 0
        self._signalled_valid = False
        self._generation = -1
        self._desc: NDArray[np.uint64] | None = None  # (num, 2): addr, len|flags|next
        self._desc_region: Region | None = None
        self._desc_off = 0
        self._avail_ring: NDArray[np.uint16] = np.empty(0, dtype=np.uint16)
        self._avail_h: memoryview | None = None
        self._used_h: memoryview | None = None
        self._used_pairs: NDArray[np.uint32] = np.empty((0, 2), dtype=np.uint32)
        self._avail_event: memoryview | None = None
        #: The descriptor table, avail ring and used ring as byte views (mapped queues):
        #: what the compiled ring loops (``_vring``) work on.
        self.raw: tuple[NDArray[np.uint8], NDArray[np.uint8], NDArray[np.uint8]] | None = None
        #: ``VHOST_VRING_F_LOG``: told ``(offset, length)`` of every used-ring write.
        self.log_used: Callable[[int, int], None] | None = None
        #: Ring entries the last :meth:`chain` went over (descriptors of the table, an
        #: indirect one counting 1; a packed ring's slots): all ``num`` outstanding means
        #: the driver cannot post another buffer.
        self.walked = 0

    def __repr__(self) -> str:
        state = "broken" if self.broken else "started" if self.started else "stopped"
        return f"<SplitQueue {self.index} num={self.num} {state} enabled={self.enabled}>"

    # -- configuration -------------------------------------------------------------------

    def set_num(self, num: int) -> None:
        if not 0 < num <= MAX_QUEUE_SIZE or num & (num - 1):
            raise RingError(f"queue size {num} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.num = num
        self.unmap()

    def set_addr(self, desc: int, used: int, avail: int) -> None:
        self.desc_addr, self.used_addr, self.avail_addr = desc, used, avail
        self.addr_set = True
        self.unmap()

    def set_base(self, base: int) -> None:
        self.last_avail = base & 0xFFFF

    @property
    def mapped(self) -> bool:
        return self._avail_h is not None

    @property
    def ready(self) -> bool:
        """Started, mapped and not broken: buffers may be processed."""
        return self.started and self.broken is None and self._avail_h is not None

    def map(self, mem: GuestMemory) -> None:
        """Translate the ring addresses through ``mem`` and make the views; called when the
        queue starts and whenever the memory table changed. Raises :class:`RingError`."""
        if self._avail_h is not None and self._generation == mem.generation:
            return
        self.unmap()
        if not self.num or not self.addr_set:
            raise RingError("queue started before its size and addresses were set")
        num = self.num
        extra = 2 if self.event_idx else 0
        desc = self._translate(mem, self.desc_addr, 16 * num, 16, "descriptor table")
        avail = self._translate(mem, self.avail_addr, 4 + 2 * num + extra, 2, "avail ring")
        used = self._translate(mem, self.used_addr, 4 + 8 * num + extra, 4, "used ring")
        d_region, d_off = desc
        a_region, a_off = avail
        u_region, u_off = used
        self._desc = d_region.u8[d_off : d_off + 16 * num].view(np.uint64).reshape(num, 2)
        self._desc_region, self._desc_off = d_region, d_off
        avail16 = a_region.u8[a_off : a_off + 4 + 2 * num + extra].view(np.uint16)
        self._avail_ring = avail16[2 : 2 + num]
        self._avail_h = memoryview(avail16)  # type: ignore[arg-type]
        self._used_h = memoryview(u_region.u8[u_off : u_off + 4]).cast("H")  # type: ignore[arg-type]
        pairs = u_region.u8[u_off + 4 : u_off + 4 + 8 * num].view(np.uint32)
        self._used_pairs = pairs.reshape(num, 2)
        if extra:
            at = u_off + 4 + 8 * num
            self._avail_event = memoryview(u_region.u8[at : at + 2]).cast("H")  # type: ignore[arg-type]
        self.raw = (
            d_region.u8[d_off : d_off + 16 * num],
            a_region.u8[a_off : a_off + 4 + 2 * num + extra],
            u_region.u8[u_off : u_off + 4 + 8 * num + extra],
        )
        self._generation = mem.generation
        # The used index the driver sees is the truth (libvhost-user does the same).
        self.used_idx = self._used_h[1]

    def _translate(
        self, mem: GuestMemory, addr: int, size: int, align: int, what: str
    ) -> tuple[Region, int]:
        if addr % align:
            raise RingError(f"{what} at {addr:#x} is not {align}-byte aligned")
        found = mem.uva(addr, size)
        if found is None:
            raise RingError(f"{what} at {addr:#x} (+{size}) is outside the shared memory")
        return found

    def unmap(self) -> None:
        """Drop every view of guest memory (before that memory is unmapped)."""
        self._desc = None
        self._desc_region = None
        self._avail_ring = np.empty(0, dtype=np.uint16)
        for mv in (self._avail_h, self._used_h, self._avail_event):
            if mv is not None:
                mv.release()
        self._avail_h = self._used_h = self._avail_event = None
        self._used_pairs = np.empty((0, 2), dtype=np.uint32)
        self.raw = None
        self._generation = -1

    def set_fd(self, which: str, fd: int) -> None:
        """Install ``kick``, ``call`` or ``err`` eventfd ``fd`` (-1: none), closing the old one."""
        attr = f"{which}_fd"
        old = getattr(self, attr)
        if old >= 0 and old != fd:
            with contextlib.suppress(OSError):
                os.close(old)
        setattr(self, attr, fd)

    def stop(self) -> None:
        """``GET_VRING_BASE``: no more processing; the kick fd is given up."""
        self.started = False
        self.poll = False
        self.set_fd("kick", -1)

    def reset(self) -> None:
        """Back to the initial state: stopped, disabled, unconfigured, no fds."""
        self.unmap()
        for which in ("kick", "call", "err"):
            self.set_fd(which, -1)
        self._init_state()

    # -- driver -> device ------------------------------------------------------------------

    def avail_count(self) -> int:
        """Buffers the driver made available that were not processed yet."""
        assert self._avail_h is not None
        n = (self._avail_h[1] - self.last_avail) & 0xFFFF
        if n > self.num:
            raise RingError(
                f"avail index {self._avail_h[1]} is {n} entries past {self.last_avail}"
                f" in a ring of {self.num}"
            )
        return n

    def has_avail(self) -> bool:
        """Whether the driver made a buffer available that was not processed yet (the
        cheap test before a delivery, QEMU's ``virtio_queue_empty``). Raises
        :class:`RingError` as :meth:`avail_count` does."""
        return self.avail_count() > 0

    def heads(self, n: int) -> NDArray[np.uint16]:
        """Copies of the next ``n`` avail entries (not consumed yet). Not range-checked
        here: :meth:`simple_batch` (through the table lookup) and :meth:`chain` reject a
        head past the table."""
        num = self.num
        start = self.last_avail & (num - 1)
        ring = self._avail_ring
        if start + n <= num:
            return ring[start : start + n].copy()
        return np.concatenate((ring[start:], ring[: start + n - num]))

    def consume(self, n: int) -> None:
        self.last_avail = (self.last_avail + n) & 0xFFFF

    def simple_batch(
        self, mem: GuestMemory, heads: NDArray[np.uint16], flags: int
    ) -> SimpleBatch | None:
        """The buffers of ``heads`` if each is one direct descriptor whose flags are exactly
        ``flags`` (0 for transmit, WRITE for receive), translated; None if any is not (the
        caller walks those chains one by one). Raises :class:`RingError` when such a
        descriptor points outside the shared memory."""
        assert self._desc is not None
        try:
            descs = self._desc[heads]  # a copy: the driver may rewrite the table meanwhile
        except IndexError:
            raise RingError(f"an avail ring entry is past the table of {self.num}") from None
        meta = descs[:, 1]  # len | flags << 32 | next << 48
        if np.any((meta & _FLAGS_FIELD) != np.uint64(flags << 32)):
            return None
        lens = meta & _LEN_FIELD
        place = mem.gpa_batch(descs[:, 0], lens)
        if place is None:
            raise RingError("a descriptor points outside the shared memory")
        return SimpleBatch(heads, lens, place)

    def chain(self, mem: GuestMemory, head: int, writable: bool) -> tuple[list[Segment], int]:
        """Walk the chain starting at ``head``: its segments and their total length.

        Receive buffers (``writable``) must be all device-writable, transmit chains all
        device-readable. A chain may end in one indirect descriptor."""
        region = self._desc_region
        assert region is not None
        if not 0 <= head < self.num:
            raise RingError(f"avail ring entry {head} is past the table of {self.num}")
        mm, base = region.mm, region.base + self._desc_off
        size = self.num
        budget = size
        index = head
        nested = False
        segments: list[Segment] = []
        total = 0
        unpack = _DESC.unpack_from
        self.walked = 0
        while True:
            budget -= 1
            if budget < 0:
                raise RingError(f"descriptor chain from head {head} is longer than its table")
            if not nested:
                self.walked += 1
            addr, length, flags, nxt = unpack(mm, base + 16 * index)
            if flags & ~DESC_F_KNOWN:
                raise RingError(f"descriptor {index} has unknown flags {flags:#x}")
            if flags & DESC_F_INDIRECT:
                if not self.indirect:
                    raise RingError("indirect descriptor but VIRTIO_RING_F_INDIRECT_DESC is off")
                if nested:
                    raise RingError("indirect descriptor inside an indirect table")
                if flags & DESC_F_NEXT:
                    raise RingError("indirect descriptor with NEXT set")
                if length == 0 or length % 16:
                    raise RingError(f"indirect table of {length} bytes")
                found = mem.gpa(addr, length)
                if found is None:
                    raise RingError(f"indirect table at {addr:#x} is outside the shared memory")
                table, offset = found
                mm, base = table.mm, table.base + offset
                size = budget = length // 16
                index = 0
                nested = True
                continue
            if bool(flags & DESC_F_WRITE) != writable:
                kind = "read-only" if writable else "writable"
                where = "receive buffer" if writable else "transmit chain"
                raise RingError(f"{kind} descriptor in a {where} (head {head})")
            found = mem.gpa(addr, length)
            if found is None:
                raise RingError(f"descriptor at {addr:#x} (+{length}) is outside the shared memory")
            if length:
                segments.append((found[0], found[1], length))
                total += length
            if not flags & DESC_F_NEXT:
                return segments, total
            index = nxt
            if index >= size:
                raise RingError(f"descriptor next index {index} is past its table of {size}")

    # -- device -> driver ------------------------------------------------------------------

    def push_used(self, ids: NDArray[np.uint16], lens: NDArray[np.uint32] | int) -> None:
        """Publish used elements for ``ids`` (in order) with ``lens`` bytes written each."""
        n = len(ids)
        if not n:
            return
        assert self._used_h is not None
        num = self.num
        pairs = self._used_pairs
        start = self.used_idx & (num - 1)
        first = min(n, num - start)
        pairs[start : start + first, 0] = ids[:first]
        if isinstance(lens, int):
            pairs[start : start + first, 1] = lens
        else:
            pairs[start : start + first, 1] = lens[:first]
        if first < n:
            rest = n - first
            pairs[:rest, 0] = ids[first:]
            pairs[:rest, 1] = lens if isinstance(lens, int) else lens[first:]
        log = self.log_used
        if log is not None:
            log(4 + 8 * start, 8 * first)
            if first < n:
                log(4, 8 * (n - first))
        self.used_idx = (self.used_idx + n) & 0xFFFF
        self._used_h[1] = self.used_idx
        if log is not None:
            log(2, 2)

    def push_one(self, head: int, length: int) -> None:
        assert self._used_h is not None
        slot = self.used_idx & (self.num - 1)
        self._used_pairs[slot, 0] = head
        self._used_pairs[slot, 1] = length
        log = self.log_used
        if log is not None:
            log(4 + 8 * slot, 8)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self._used_h[1] = self.used_idx
        if log is not None:
            log(2, 2)

    def needs_call(self) -> bool:
        """Whether the driver wants an interrupt for what was published since last asked."""
        assert self._avail_h is not None
        if not self.event_idx:
            return not self._avail_h[0] & AVAIL_F_NO_INTERRUPT
        new = self.used_idx
        old = self._signalled_used
        valid = self._signalled_valid
        self._signalled_used = new
        self._signalled_valid = True
        if not valid:
            return True
        event = self._avail_h[2 + self.num]
        return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)

    def call(self) -> None:
        """Signal the call eventfd (interrupt the driver)."""
        if self.call_fd >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self.call_fd, 1)

    def call_if_needed(self) -> bool:
        if self.needs_call():
            self.call()
            return True
        return False

    def signal_error(self) -> None:
        """Signal the err eventfd (QEMU logs a vring error)."""
        if self.err_fd >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self.err_fd, 1)

    def set_notification(self, enable: bool) -> None:
        """Ask the driver to kick (``enable``) or not to bother. Callers re-check
        :meth:`avail_count` after enabling: buffers may have come just before (a full
        fence after enabling orders the two: :mod:`.fence`)."""
        if self._used_h is None:
            return
        if self.event_idx:
            if enable and self._avail_event is not None:
                self._avail_event[0] = self.last_avail
                if self.log_used is not None:
                    self.log_used(4 + 8 * self.num, 2)
        else:
            self._used_h[0] = 0 if enable else USED_F_NO_NOTIFY
            if self.log_used is not None:
                self.log_used(0, 2)
        if enable:
            fence.store_load()  # the caller's re-check must not pass the store above

    @property
    def signal_mark(self) -> tuple[int, bool]:
        """The index the last call check saw and whether there was one since the start
        (the compiled loops decide the next call from it)."""
        return self._signalled_used, self._signalled_valid

    def call_checked(self) -> None:
        """The compiled loops made a call decision at the current used index (recorded as
        :meth:`needs_call` records it: only with ``EVENT_IDX``)."""
        if self.event_idx:
            self._signalled_used = self.used_idx
            self._signalled_valid = True

    def forget_signalled(self) -> None:
        """After a (re)start the next call check must signal (``signalled_used_valid``)."""
        self._signalled_valid = False
