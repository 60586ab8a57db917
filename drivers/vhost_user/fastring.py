"""The compiled ring loops (``_vring.c``) behind the device's transmit and receive calls.

What it owns
    The choice of ring implementation per call (:func:`eligible`) and the adapter around
    the extension: what the C functions get (the queue's byte views of its three rings,
    the memory table's mappings, the ring indices, the dirty log's bitmap and the used
    ring's log address), and what comes back (new indices, counters, frames, a driver
    error as its message) folded into the same state the Python path keeps. A driver
    error is raised as the same :class:`~.virtqueue.RingError` with the same text, so the
    device's error handling (queue broken, counted, logged once) is the one of the Python
    path; the memory-fault check after each burst is the device's too.

Which path
    :func:`load` asks :mod:`netstack.fastpath` (``NETSTACK_PURE_PYTHON=1`` or an unbuilt
    extension: ``None``, the pure-Python reference in :mod:`.txpath` / :mod:`.rxpath`).
    Split rings only: packed rings (:class:`~.packed.PackedQueue`) always take the Python
    path, and so does a queue whose used-ring logger is not a
    :class:`~.dirtylog.UsedLogger` (a test's recorder).

Deviations from the Python path (none in frames, rings, indices, log bits or errors)
    ``log-bits-set`` counts every bit ORed (a page written twice in one burst counts
    twice; Python counts distinct pages per marking call), and the log eventfd is
    signalled once per call rather than once per marking call.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from netstack import fastpath

from .dirtylog import UsedLogger
from .virtqueue import RingError, SplitQueue

if TYPE_CHECKING:
    from .device import NetDevice

MODULE = "drivers.vhost_user._vring"


def load() -> ModuleType | None:
    """The compiled ring loops, or None (pure Python)."""
    return fastpath.load(MODULE)


def eligible(q: SplitQueue) -> bool:
    """Whether the compiled loops can serve ``q`` (a mapped split ring)."""
    return (
        type(q) is SplitQueue
        and q.raw is not None
        and (q.log_used is None or type(q.log_used) is UsedLogger)
    )


def _log_args(dev: NetDevice, q: SplitQueue) -> tuple[object, int | None]:
    dirty = dev.dirty
    if not dirty.active:
        return None, None
    used = q.log_used
    return dirty.words, used.addr if isinstance(used, UsedLogger) else None


def transmit(
    dev: NetDevice, q: SplitQueue, vring: ModuleType, budget: int, want: bool
) -> tuple[list[bytes], bool, int]:
    """:func:`.txpath.transmit` through the compiled loops."""
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
    q.used_idx, bits, oor = vring.push_split(used, q.num, q.used_idx, heads, None, log, used_log)
    if log is not None:
        dev.dirty.account(bits, oor)
    dev.counters["tx-chains"] += n
    if q.call_if_needed():
        dev.counters["calls"] += 1
    return frames, keep, n


def receive(
    dev: NetDevice, q: SplitQueue, vring: ModuleType, frames: Sequence[bytes], vnet: bool
) -> int:
    """:func:`.rxpath.receive` through the compiled loops."""
    assert q.raw is not None
    desc, avail, used = q.raw
    log, used_log = _log_args(dev, q)
    before = q.last_avail
    err, done, q.last_avail, q.used_idx, bad, too_big, bits, oor = vring.rx_split(
        desc, avail, used, dev.mem.table, q.num, q.last_avail, q.used_idx, frames, vnet,
        dev.hdr_len, dev.mergeable, q.indirect, log, used_log,
    )  # fmt: skip
    counters = dev.counters
    if bad:
        counters["rx-bad-buffers"] += bad
    if too_big:
        counters["rx-too-big"] += too_big
    if log is not None:
        dev.dirty.account(bits, oor)
    if err is not None:
        raise RingError(err)
    dev.check_memory()
    if q.last_avail != before and q.call_if_needed():
        counters["calls"] += 1
    return int(done)
