"""The store-load fence between asking a driver for notifications and looking at its ring
again.

What it owns
    :func:`store_load`, called by :meth:`.virtqueue.SplitQueue.set_notification` and
    :meth:`.packed.PackedQueue.set_notification` after they enable notifications. Their
    callers then re-check the avail ring (``set_notification(True)``, then
    ``avail_count()`` / ``has_avail()``): a store (the flags or ``avail_event``) followed by
    a load (the avail index or a descriptor's flags). A CPU may let that load pass the
    store (x86-64 does, through its store buffer); the driver does the mirror image (it
    publishes the avail index, fences, reads our flags), so without a fence both may miss
    the other's write: the driver does not kick and we do not see its buffer, and the queue
    sleeps with work pending. QEMU fences at the same point
    (``hw/virtio/virtio.c`` ``virtio_queue_split_set_notification``: ``smp_mb()`` after
    writing ``avail_event``), and the compiled ring loops before their call decisions.

    Nothing between the two Python statements fences for us: CPython's reference counts
    are plain increments and the GIL is only handed over on request. Compiled, the fence
    is ``_vring.fence`` (``__atomic_thread_fence(__ATOMIC_SEQ_CST)``: ``mfence`` or a
    locked instruction). Pure Python, it is taking and releasing a :class:`threading.Lock`
    (a locked compare-and-exchange and add in the C library, each a full barrier on
    x86-64, the architecture the daemon is built and tested on; weaker architectures
    only give such a lock acquire and release order, so they need the compiled fence).
    Either costs well under a microsecond and runs only when a queue goes idle, never
    per burst.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from netstack import fastpath

MODULE = "drivers.vhost_user._vring"

_chosen: list[Callable[[], None]] = []


def _pick() -> Callable[[], None]:
    vring = fastpath.load(MODULE)
    if vring is not None:
        fence: Callable[[], None] = vring.fence
        return fence
    lock = threading.Lock()

    def locked() -> None:
        with lock:
            pass

    return locked


def store_load() -> None:
    """A full memory fence: stores before it are visible before loads after it run."""
    if not _chosen:
        _chosen.append(_pick())
    _chosen[0]()
