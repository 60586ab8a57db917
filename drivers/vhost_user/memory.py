"""Guest memory a vhost-user front end shares with the back end: regions, mappings, and
bounds-checked translation of the front end's addresses.

Follows ``docs/interop/vhost-user.rst`` ("Memory access", ``SET_MEM_TABLE``,
``ADD_MEM_REG``/``REM_MEM_REG``) and ``libvhost-user``'s mapping rule: each region arrives
with one file descriptor; the back end maps ``size + mmap_offset`` bytes of it (shared,
read-write) and the region's first byte is at ``mmap_offset`` in that mapping. The fd is
closed once mapped (Python's ``mmap`` keeps its own duplicate until the mapping is closed).
A region has two base addresses: the guest-physical one (descriptor
addresses, without ``VIRTIO_F_ACCESS_PLATFORM``) and the front end's user (virtual) one
(the ring addresses of ``SET_VRING_ADDR``).

What it owns
    :class:`Region` (one mapping, with a numpy byte view over it) and :class:`GuestMemory`
    (the table: add, remove, replace, translate). Translation is scalar
    (:meth:`GuestMemory.gpa`, :meth:`GuestMemory.uva`) or vectorised over numpy arrays of
    descriptor addresses and lengths (:meth:`GuestMemory.gpa_batch`).

Memory the front end can break
    The front end keeps its file and may truncate it, replace it or let its pages fail
    (hugetlbfs) after ``SET_MEM_TABLE``; a plain mapping would then kill the whole daemon
    with SIGBUS. :mod:`.memguard` decides what is taken and contains the rest: a regular
    file shorter than ``mmap_offset + size`` is refused; a memfd sealed with
    ``F_SEAL_SHRINK`` (QEMU's default ``memory-backend-memfd``) is *pinned* and can never
    fault that way; anything else (``seal=off`` memfds, ``memory-backend-file`` on tmpfs,
    hugetlbfs or any file system) is *guarded*. Every mapping - pinned or guarded - is
    registered with the SIGBUS guard for its whole life, so an access past the file's end
    reads zeros instead of faulting, and :meth:`GuestMemory.poll_faults` (one C call per
    batch) tells the device, which stops all its queues; nothing else in the daemon is
    touched. Both kinds use the same data path (views of the mapping, no system call per
    access), so accepting unsealed memory costs nothing in speed. A file replaced by
    rename behind our back changes nothing (the mapping keeps the old file); one shrunk
    and grown again before we touched it reads as zeros (the front end only hurt itself).

Invariants
    * Every mapping is guarded from before its first view until it is unmapped: an access
      to guest memory never ends the process.
    * Regions never overlap in guest-physical space, nor in user space; sizes are non-zero
      and ``address + size`` does not wrap.
    * A translation succeeds only if ``[addr, addr + length)`` lies inside one region, so
      every offset handed out indexes bytes inside that region's mapping: nothing outside
      what the front end shared is read or written.
    * Identical ``ADD_MEM_REG`` requests are counted, not mapped twice (QEMU 7.2 sends them
      once per queue pair); a region is unmapped when as many ``REM_MEM_REG`` arrived.
    * Mappings whose buffers are still exported (numpy views held by a ring) are dropped
      rather than closed; the kernel unmaps them when the last view goes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from . import memguard
from .memguard import Backing, MemoryTableError

__all__ = ["GuestMemory", "MemoryTableError", "Region", "RegionSpec", "Translated", "map_region"]

log = logging.getLogger("netstack.vhost_user")

#: ``GET_MAX_MEM_SLOTS``: regions one device may map (libvhost-user offers 509, DPDK 8).
MAX_MEM_SLOTS = 32
_U64 = (1 << 64) - 1
_FAST_LIMIT = (1 << 64) - (1 << 33)


@dataclass(frozen=True)
class RegionSpec:
    """One region as a message describes it (``VhostUserMemoryRegion``)."""

    gpa: int
    size: int
    uaddr: int
    mmap_offset: int

    def same_area(self, other: RegionSpec) -> bool:
        """``REM_MEM_REG`` identity: guest address, user address and size (not the offset)."""
        return (self.gpa, self.uaddr, self.size) == (other.gpa, other.uaddr, other.size)


class Region:
    """One mapped region. ``u8`` views the region's bytes (index 0 = ``gpa``)."""

    __slots__ = ("backing", "mapping", "mm", "refs", "spec", "u8", "whole")

    def __init__(self, spec: RegionSpec, mapping: memguard.Mapping) -> None:
        self.spec = spec
        self.mapping = mapping
        self.backing: Backing = mapping.backing
        self.mm = mapping.mm
        self.refs = 1
        #: The whole mapping (indexed like :attr:`mm`) and the region's bytes within it.
        self.whole: NDArray[np.uint8] = np.frombuffer(self.mm, dtype=np.uint8)
        self.u8 = self.whole[spec.mmap_offset : spec.mmap_offset + spec.size]

    @property
    def base(self) -> int:
        """Offset of the region's first byte within :attr:`mm`."""
        return self.spec.mmap_offset

    def faulted(self) -> bool:
        """Whether an access to it faulted (the front end truncated or broke its file)."""
        return self.mapping.faulted() > 0

    def close(self) -> None:
        self.u8 = self.whole = np.empty(0, dtype=np.uint8)
        if not self.mapping.close():
            # A view of it is still alive somewhere; the mapping goes with the last one.
            log.debug("vhost-user: region at gpa %#x still exported; unmapped later", self.spec.gpa)


def map_region(spec: RegionSpec, fd: int) -> Region:
    """Map ``fd`` for ``spec`` (closes ``fd`` in every case); see :mod:`.memguard` for
    what is refused and how a fault in the mapping is contained."""
    try:
        _check_spec(spec)
        length = spec.size + spec.mmap_offset
        try:
            backing = memguard.inspect(fd, length)
        except MemoryTableError as exc:
            raise MemoryTableError(f"region at gpa {spec.gpa:#x}: {exc}") from None
        try:
            mapping = memguard.Mapping(fd, length, backing)
        except (OSError, ValueError, OverflowError) as exc:
            raise MemoryTableError(f"cannot map region at gpa {spec.gpa:#x}: {exc}") from None
        return Region(spec, mapping)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _check_spec(spec: RegionSpec) -> None:
    if spec.size <= 0:
        raise MemoryTableError(f"region at gpa {spec.gpa:#x} has size 0")
    for name, start in (("guest", spec.gpa), ("user", spec.uaddr)):
        if start < 0 or start + spec.size - 1 > _U64:
            raise MemoryTableError(f"region {name} address {start:#x}+{spec.size:#x} wraps")
    if spec.mmap_offset < 0 or spec.mmap_offset + spec.size > (1 << 63):
        raise MemoryTableError("region mmap offset out of range")


class GuestMemory:
    """The memory table of one device."""

    def __init__(self) -> None:
        self.regions: list[Region] = []  # sorted by gpa
        self._starts: NDArray[np.uint64] = np.empty(0, dtype=np.uint64)
        self._ends: NDArray[np.uint64] = np.empty(0, dtype=np.uint64)
        #: ``(gpa, size, mapping, offset of the region in it)`` per region, sorted by gpa:
        #: what the compiled ring loops (``_vring``) translate through.
        self.table: tuple[tuple[int, int, mmap.mmap, int], ...] = ()
        #: Increases on every change; rings re-translate their addresses when it moves.
        self.generation = 0
        #: :func:`.memguard.fault_count` when the regions were last looked at.
        self.fault_mark = memguard.fault_count()

    def __len__(self) -> int:
        return len(self.regions)

    # -- changes -------------------------------------------------------------------------

    def replace(self, specs: Sequence[RegionSpec], fds: Sequence[int]) -> None:
        """``SET_MEM_TABLE``: map every region, then drop the old table (all or nothing).
        Takes ownership of ``fds`` (closed in every case)."""
        new: list[Region] = []
        consumed = 0
        try:
            if len(specs) != len(fds):
                raise MemoryTableError(f"{len(specs)} regions but {len(fds)} file descriptors")
            if len(specs) > MAX_MEM_SLOTS:
                raise MemoryTableError(f"{len(specs)} regions, at most {MAX_MEM_SLOTS}")
            for spec, fd in zip(specs, fds, strict=True):
                consumed += 1
                new.append(map_region(spec, fd))
            _check_disjoint([r.spec for r in new])
        except BaseException:
            for fd in fds[consumed:]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            for region in new:
                region.close()
            raise
        old, self.regions = self.regions, sorted(new, key=lambda r: r.spec.gpa)
        self._reindex()
        for region in old:
            region.close()

    def add(self, spec: RegionSpec, fd: int) -> None:
        """``ADD_MEM_REG`` (takes ownership of ``fd``)."""
        for region in self.regions:
            if region.spec == spec:
                region.refs += 1
                with contextlib.suppress(OSError):
                    os.close(fd)
                return
        if len(self.regions) >= MAX_MEM_SLOTS:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise MemoryTableError(f"no free memory slot (at most {MAX_MEM_SLOTS})")
        region = map_region(spec, fd)
        try:
            _check_disjoint([r.spec for r in self.regions] + [spec])
        except MemoryTableError:
            region.close()
            raise
        self.regions = sorted([*self.regions, region], key=lambda r: r.spec.gpa)
        self._reindex()

    def remove(self, spec: RegionSpec) -> None:
        """``REM_MEM_REG``: the region with this guest address, user address and size."""
        for region in self.regions:
            if region.spec.same_area(spec):
                region.refs -= 1
                if region.refs <= 0:
                    self.regions = [r for r in self.regions if r is not region]
                    self._reindex()
                    region.close()
                return
        raise MemoryTableError(f"no region at gpa {spec.gpa:#x} size {spec.size:#x} to remove")

    def clear(self) -> None:
        old, self.regions = self.regions, []
        self._reindex()
        for region in old:
            region.close()

    def faulted(self) -> Region | None:
        """The first region an access faulted in, if any (after :meth:`poll_faults` or a
        table change)."""
        self.fault_mark = memguard.fault_count()
        for region in self.regions:
            if region.faulted():
                return region
        return None

    def poll_faults(self) -> Region | None:
        """Like :meth:`faulted`, but only looks at the regions when the process-wide fault
        count moved since the last look (one C call otherwise: the per-batch check)."""
        if memguard.fault_count() == self.fault_mark:
            return None
        return self.faulted()

    def _reindex(self) -> None:
        self._starts = np.array([r.spec.gpa for r in self.regions], dtype=np.uint64)
        self._ends = np.array([r.spec.gpa + r.spec.size for r in self.regions], dtype=np.uint64)
        self.table = tuple((r.spec.gpa, r.spec.size, r.mm, r.base) for r in self.regions)
        self.generation += 1

    # -- translation ---------------------------------------------------------------------

    def gpa(self, addr: int, length: int) -> tuple[Region, int] | None:
        """The region holding guest-physical ``[addr, addr + length)`` and the offset of
        ``addr`` within it, or None."""
        if length < 0:
            return None
        for region in self.regions:
            spec = region.spec
            end = spec.gpa + spec.size
            if spec.gpa <= addr and addr + length <= end and addr < end:
                return region, addr - spec.gpa
        return None

    def uva(self, addr: int, length: int) -> tuple[Region, int] | None:
        """The same for a front-end user (virtual) address."""
        if length < 0:
            return None
        for region in self.regions:
            spec = region.spec
            end = spec.uaddr + spec.size
            if spec.uaddr <= addr and addr + length <= end and addr < end:
                return region, addr - spec.uaddr
        return None

    def gpa_batch(self, addrs: NDArray[np.uint64], lens: NDArray[np.uint64]) -> Translated | None:
        """Vectorised :meth:`gpa` for descriptor addresses and lengths (lengths < 2**32):
        where each range lies in the mappings, or None if any range is not inside one
        region. The common case - every range in one region - costs a few numpy calls."""
        count = len(addrs)
        if not count:
            return Translated(np.empty(0, dtype=np.uint64), None, [])
        amin = int(addrs.min())
        amax = int(addrs.max())
        for region in self.regions:
            spec = region.spec
            end = spec.gpa + spec.size
            if spec.gpa <= amin and amax < end and end <= _FAST_LIMIT:
                # No wrap: every address is below end <= 2**64 - 2**33, lengths < 2**32.
                if int((addrs + lens).max()) > end:
                    return None
                at = addrs - np.uint64(spec.gpa) + np.uint64(region.base)
                return Translated(at, region, None)
        starts, ends = self._starts, self._ends
        if not len(starts):
            return None
        idx = np.searchsorted(starts, addrs, side="right") - 1
        if int(idx.min()) < 0:
            return None
        region_end = ends[idx]
        if not (np.all(addrs < region_end) and np.all(lens <= region_end - addrs)):
            return None
        bases = np.array([r.base for r in self.regions], dtype=np.uint64)
        at = addrs - starts[idx] + bases[idx]
        regions = self.regions
        return Translated(at, None, [regions[i] for i in idx.tolist()])


class Translated:
    """Where a batch of guest ranges is: ``at`` (offset of each within its region's
    mapping ``mm``), and either the one ``region`` they all lie in or ``per_entry``."""

    __slots__ = ("at", "per_entry", "region")

    def __init__(
        self, at: NDArray[np.uint64], region: Region | None, per_entry: list[Region] | None
    ) -> None:
        self.at = at
        self.region = region
        self.per_entry = per_entry

    def mms(self) -> list[mmap.mmap]:
        """The mapping of each entry."""
        if self.region is not None:
            return [self.region.mm] * len(self.at)
        assert self.per_entry is not None
        return [r.mm for r in self.per_entry]


def _check_disjoint(specs: Iterable[RegionSpec]) -> None:
    items = list(specs)
    for key in ("gpa", "uaddr"):
        spans = sorted((getattr(s, key), getattr(s, key) + s.size) for s in items)
        for (_s0, e0), (s1, _e1) in itertools.pairwise(spans):
            if s1 < e0:
                raise MemoryTableError(f"memory regions overlap ({key} {s1:#x})")
