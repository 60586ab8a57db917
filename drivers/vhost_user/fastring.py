"""The compiled ring loops (``_vring.c``) behind the device's transmit and receive calls.

What it owns
    The choice of ring implementation per call (:func:`eligible`) and the adapter around
    the extension: what the C functions get (the queue's byte views of its rings - the
    descriptor table, avail and used rings of a split ring; the descriptor ring and the
    driver and device event areas of a packed one -, the memory table's mappings, the ring
    indices or slots and wrap counters, the call-suppression state, the dirty log's bitmap
    and the guest addresses it marks), and what comes back (new indices, counters,
    frames, the call decision, a driver error as its message, an exception raised once
    buffers were used) folded into the same state the Python path keeps (a receive call
    checks every frame before it touches the ring, as :func:`.rxpath.check_frames`). A
    driver error is raised as the same :class:`~.virtqueue.RingError` with the same
    text, so the device's error handling (queue broken, counted, logged once) is the one
    of the Python path; the memory-fault check after each burst is the device's too.

Which path
    :func:`load` asks :mod:`netstack.fastpath` (``NETSTACK_PURE_PYTHON=1`` or an unbuilt
    extension: ``None``, the pure-Python reference in :mod:`.txpath` / :mod:`.rxpath`).
    Split rings (:class:`~.virtqueue.SplitQueue`) and packed rings
    (:class:`~.packed.PackedQueue`) both run compiled; a split queue whose used-ring
    logger is not a :class:`~.dirtylog.UsedLogger` (a test's recorder) takes the Python
    path.

Event suppression
    The call decision (``needs_call`` of either layout: ``VRING_AVAIL_F_NO_INTERRUPT`` /
    ``used_event`` with ``EVENT_IDX`` on split rings, the driver event structure on packed
    ones) is made in C at the end of the burst, and for transmit the eventfd is written
    there too; a receive call returns it and the eventfd is written here after the memory
    check, as in Python. ``quiet`` transmit bursts also tell the driver not to kick
    (``set_notification(False)``) in the same call.

Deviations from the Python path (none in frames, rings, indices, log bits or errors)
    ``log-bits-set`` counts every bit ORed (a page written twice in one burst counts
    twice; Python counts distinct pages per marking call), and the log eventfd is
    signalled once per call rather than once per marking call. Both mark a packed ring's
    pages after its used descriptors are stored: a bitmap sync between the two then
    leaves the page marked for the next round instead of losing the write. The call
    decision is made after a full fence (the used index or flags were just published).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from netstack import fastpath

from .dirtylog import UsedLogger
from .packed import PackedQueue
from .virtqueue import RingError, SplitQueue

if TYPE_CHECKING:
    from .device import NetDevice

MODULE = "drivers.vhost_user._vring"


def load() -> ModuleType | None:
    """The compiled ring loops, or None (pure Python)."""
    return fastpath.load(MODULE)


def eligible(q: SplitQueue) -> bool:
    """Whether the compiled loops can serve ``q`` (a mapped split or packed ring)."""
    if q.raw is None:
        return False
    kind = type(q)
    if kind is PackedQueue:
        return True
    return kind is SplitQueue and (q.log_used is None or type(q.log_used) is UsedLogger)


def _log_args(dev: NetDevice, q: SplitQueue) -> tuple[object, int | None]:
    dirty = dev.dirty
    if not dirty.active:
        return None, None
    used = q.log_used
    return dirty.words, used.addr if isinstance(used, UsedLogger) else None


def transmit(
    dev: NetDevice, q: SplitQueue, vring: ModuleType, budget: int, want: bool, quiet: bool = False
) -> tuple[list[bytes], bool, int]:
    """:func:`.txpath.transmit` through the compiled loops."""
    if isinstance(q, PackedQueue):
        return _transmit_packed(dev, q, vring, budget, want, quiet)
    assert q.raw is not None
    desc, avail, used = q.raw
    err, frames, keep, n, malformed, heads = vring.tx_split(
        desc, avail, dev.mem.table, q.num, q.last_avail, budget, dev.hdr_len,
        dev.host_offloads, want, q.indirect,
    )  # fmt: skip
    if malformed:
        dev.counters["tx-malformed"] += malformed
    if err is not None:
        raise RingError(err)
    dev.check_memory()  # nothing read from a faulted batch goes out
    if not n:
        return [], False, 0
    q.consume(n)
    log, used_log = _log_args(dev, q)
    mark, valid = q.signal_mark
    q.used_idx, bits, oor, called = vring.push_split(
        used, avail, q.num, q.used_idx, heads, None, log, used_log, q.event_idx, mark, valid,
        q.call_fd, quiet,
    )  # fmt: skip
    if log is not None:
        dev.dirty.account(bits, oor)
    dev.counters["tx-chains"] += n
    q.call_checked()
    if called:
        dev.counters["calls"] += 1
    return frames, keep, n


def _transmit_packed(
    dev: NetDevice, q: PackedQueue, vring: ModuleType, budget: int, want: bool, quiet: bool
) -> tuple[list[bytes], bool, int]:
    assert q.raw is not None
    ring, driver_evt, device_evt = q.raw
    err, frames, keep, n, malformed, bufs, slot, wrap = vring.tx_packed(
        ring, dev.mem.table, q.num, q.avail_slot, q.avail_wrap, budget, dev.hdr_len,
        dev.host_offloads, want, q.indirect,
    )  # fmt: skip
    if malformed:
        dev.counters["tx-malformed"] += malformed
    if err is not None:
        raise RingError(err)
    dev.check_memory()  # nothing read from a faulted batch goes out
    if not n:
        q.took(slot, wrap)
        return [], False, 0
    q.took(slot, wrap)
    log, _ = _log_args(dev, q)
    mark, valid = q.signal_mark
    q.used_slot, q.used_wrap, called, bits, oor = vring.push_packed(
        ring, driver_evt, device_evt, q.num, q.used_slot, q.used_wrap, bufs, None, log,
        q.ring_gpa, q.event_gpa, q.event_idx, mark, valid, q.call_fd, quiet,
    )  # fmt: skip
    if log is not None:
        dev.dirty.account(bits, oor)
    dev.counters["tx-chains"] += n
    q.call_checked()
    if called:
        dev.counters["calls"] += 1
    return frames, keep, n


def receive(
    dev: NetDevice, q: SplitQueue, vring: ModuleType, frames: Sequence[bytes], vnet: bool
) -> int:
    """:func:`.rxpath.receive` through the compiled loops."""
    assert q.raw is not None
    log, used_log = _log_args(dev, q)
    mark, valid = q.signal_mark
    if isinstance(q, PackedQueue):
        ring, driver_evt, _ = q.raw
        err, done, slot, wrap, q.used_slot, q.used_wrap, bad, too_big, bits, oor, call = (
            vring.rx_packed(
                ring, driver_evt, dev.mem.table, q.num, q.avail_slot, q.avail_wrap, q.used_slot,
                q.used_wrap, frames, vnet, dev.hdr_len, dev.mergeable, q.indirect, log,
                q.ring_gpa, q.event_idx, mark, valid,
            )
        )  # fmt: skip
        q.took(slot, wrap)
    else:
        desc, avail, used = q.raw
        err, done, q.last_avail, q.used_idx, bad, too_big, bits, oor, call = vring.rx_split(
            desc, avail, used, dev.mem.table, q.num, q.last_avail, q.used_idx, frames, vnet,
            dev.hdr_len, dev.mergeable, q.indirect, log, used_log, q.event_idx, mark, valid,
        )  # fmt: skip
    counters = dev.counters
    if bad:
        counters["rx-bad-buffers"] += bad
    if too_big:
        counters["rx-too-big"] += too_big
    if log is not None:
        dev.dirty.account(bits, oor)
    if err is not None:
        # An exception after buffers were used (MemoryError) comes back with the state
        # reached, recorded above, and is raised here.
        raise err if isinstance(err, BaseException) else RingError(err)
    dev.check_memory()
    if call >= 0:
        q.call_checked()
        if call:
            q.call()
            counters["calls"] += 1
    return int(done)
