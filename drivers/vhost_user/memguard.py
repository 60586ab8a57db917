"""What backs a region of guest memory, and the guard that keeps a fault in it from
killing the daemon.

A region arrives as a file descriptor the front end keeps (``SET_MEM_TABLE``,
``ADD_MEM_REG``; ``docs/interop/vhost-user.rst`` "Memory access"). The back end maps it
``MAP_SHARED``; if the front end later makes the file shorter than the mapping, the next
access past the new end raises SIGBUS in the daemon, and CPython cannot survive that: its
signal handler only sets a flag, the faulting instruction runs again and faults again, and
the default action ends the process (exit 135) with every other port and QMP. The same
happens on hugetlbfs when a page cannot be allocated (the front end punched a hole and the
pool is empty) and on a hardware memory error.

What it owns
    * :func:`inspect`: classifies a region's file before it is mapped. A memfd on shmem
      sealed with ``F_SEAL_SHRINK`` (what QEMU's ``memory-backend-memfd`` does by default:
      ``seal=on`` applies ``F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL``, see
      ``backends/hostmem-memfd.c``) can never become shorter, so it is *pinned*: the seals
      are read first and the size after, and seals are never removed, so the size seen is a
      lower bound for as long as the fd lives (no race). Every other file - an unsealed
      memfd (``seal=off`` creates it without ``MFD_ALLOW_SEALING``, so it cannot be sealed
      later either), a tmpfs file (``memory-backend-file`` on ``/dev/shm``), hugetlbfs (also
      a sealed hugetlb memfd: its pages can fail to fault in) - is *guarded*. A regular
      file already shorter than ``mmap_offset + size`` is refused outright.
    * :class:`Mapping`: one ``MAP_SHARED`` mapping registered with the SIGBUS guard
      (``_memguard.c``) for its whole life, pinned or guarded alike. The guard's handler
      runs only for a fault at an address inside a registered mapping: it replaces the
      faulting page (at the mapping's page size: 4 KiB, or the huge page size) with
      private anonymous memory, counts the fault and returns, so the interrupted copy
      completes (reads see zeros, writes are lost) and the daemon goes on. Any other SIGBUS
      goes to the handler installed before, or the default action, as if the guard were
      not there. The data path is untouched (numpy views and slices of the mapping, no
      system call per access); callers compare :func:`fault_count` with what they saw after
      each batch and stop the device whose mapping faulted (:meth:`Mapping.faulted`).

Soundness: the handler is installed before the first mapping is registered and checked
again at every registration (something that replaced it, e.g. ``faulthandler.enable()``
later, is chained behind it); a mapping is registered before any view of it exists and
unregistered only when it is unmapped (``mmap.close`` succeeded, or the last exported view
went: ``weakref.finalize``). So every access to guest memory either succeeds or is turned
into zeros by the handler; none can end the process. (Code of the same process that
installs its own SIGBUS handler later takes precedence until the next mapping is made;
nothing in netstackd does.) Without the compiled guard, only pinned memory is accepted
(:class:`MemoryTableError` names the fix).

Deviations: QEMU's own back ends (libvhost-user, DPDK's vhost library) map without any
of this and die with the front end's file; we refuse nothing they accept except files
already too short for the region.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import stat
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from netstack.errors import RemoteInputError

TMPFS_MAGIC = 0x01021994
HUGETLBFS_MAGIC = 0x958458F6


class MemoryTableError(RemoteInputError):
    """A memory table the back end refuses (overlap, bad fd, too many regions)."""


def _load_guard() -> ModuleType | None:
    try:
        from . import _memguard  # type: ignore[attr-defined]
    except ImportError:
        return None
    guard: ModuleType = _memguard
    return guard


_guard = _load_guard()


def available() -> bool:
    """Whether the compiled SIGBUS guard is there (else only pinned memory is taken)."""
    return _guard is not None


def _no_faults() -> int:
    return 0


#: Faults the guard turned into zero pages so far, over every mapping of the process (the
#: C function itself: this is the per-batch check).
fault_count: Callable[[], int] = _guard.total if _guard is not None else _no_faults


@dataclass(frozen=True)
class Backing:
    """What a region's file is: ``kind`` (``sealed-memfd``, ``memfd``, ``tmpfs``,
    ``hugetlbfs``, ``file``, ``other``), whether it is ``pinned`` (can never shrink), its
    ``page`` size and the ``size`` seen when it was inspected."""

    kind: str
    pinned: bool
    page: int
    size: int


def inspect(fd: int, needed: int) -> Backing:
    """Classify ``fd`` for a mapping of ``needed`` bytes; raises :class:`MemoryTableError`
    for a regular file shorter than that, or for unpinned memory without the guard."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = -1  # not a shmem file (no seals at all)
    try:
        st = os.fstat(fd)  # after the seals: with F_SEAL_SHRINK this size can only grow
        if _guard is not None:
            fs_type, fs_block = _guard.fs_type(fd)
        else:
            fs_type, fs_block = 0, os.fstatvfs(fd).f_bsize
    except OSError as exc:
        raise MemoryTableError(f"cannot inspect memory fd: {exc.strerror or exc}") from None
    page = fs_block if fs_type == HUGETLBFS_MAGIC else mmap.PAGESIZE
    memfd = _is_memfd(fd)
    shrink_sealed = seals >= 0 and bool(seals & fcntl.F_SEAL_SHRINK)
    # Only shmem and hugetlbfs files take seals; hugetlbfs reports its huge page size.
    pinned = shrink_sealed and fs_type in (TMPFS_MAGIC, 0) and fs_block == mmap.PAGESIZE
    if fs_type == HUGETLBFS_MAGIC:
        kind = "hugetlbfs"
    elif pinned:
        kind = "sealed-memfd"
    elif memfd:
        kind = "memfd"
    elif fs_type == TMPFS_MAGIC:
        kind = "tmpfs"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    if stat.S_ISREG(st.st_mode) and st.st_size < needed:
        raise MemoryTableError(
            f"{kind} of {st.st_size} bytes is shorter than the {needed} bytes to map"
        )
    if not pinned and _guard is None:
        raise MemoryTableError(
            f"{kind} memory can be truncated by the front end and the SIGBUS guard is not"
            " built; use memory-backend-memfd with seal=on"
        )
    return Backing(kind, pinned, page, st.st_size)


def _is_memfd(fd: int) -> bool:
    with contextlib.suppress(OSError):
        return os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    return False


def _release(slot: int) -> None:
    if _guard is not None:
        _guard.remove(slot)


class Mapping:
    """``length`` bytes of ``fd`` mapped shared, read-write, and guarded until unmapped.
    ``mm`` is the mapping; ``backing`` what :func:`inspect` found."""

    __slots__ = ("__weakref__", "backing", "length", "mm", "slot")

    def __init__(self, fd: int, length: int, backing: Backing) -> None:
        self.backing = backing
        self.length = length
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        self.mm = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=prot)
        self.slot = -1
        if _guard is None:
            return
        try:
            _guard.install()
            probe = np.frombuffer(self.mm, dtype=np.uint8, count=1)
            start = probe.ctypes.data
            del probe
            page = backing.page
            span = (length + page - 1) // page * page
            self.slot = int(_guard.add(start, span, page))
        except (OSError, ValueError, OverflowError) as exc:
            self.mm.close()
            raise MemoryTableError(f"cannot guard the mapping: {exc}") from None

    def faulted(self) -> int:
        """Faults the guard fixed up in this mapping (0: intact)."""
        if _guard is None or self.slot < 0:
            return 0
        return int(_guard.faults(self.slot))

    def close(self) -> bool:
        """Unmap; False when a view is still exported (the mapping then stays guarded
        until the last view goes and the kernel unmaps it)."""
        try:
            self.mm.close()
        except BufferError:
            if self.slot >= 0:
                weakref.finalize(self.mm, _release, self.slot)
                self.slot = -1
            return False
        if self.slot >= 0:
            _release(self.slot)
            self.slot = -1
        return True
