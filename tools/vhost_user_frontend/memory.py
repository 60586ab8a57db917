"""Guest memory for a Python "VM": memfd-backed regions, mapped here, shared by fd.

Each :class:`Region` is one file of ``mmap_offset + size`` bytes, mapped whole: by default
an unsealed memfd (``MFD_CLOEXEC``, like QEMU's ``memory-backend-memfd,seal=off``);
``backing="sealed-memfd"`` seals it against growing and shrinking as QEMU's default
``seal=on`` does (``F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL``); ``backing="file:DIR"``
makes it a file in DIR (``memory-backend-file,mem-path=DIR,share=on``), its path in
:attr:`Region.path`; the guest-physical range ``[gpa, gpa + size)`` lives at file offset
``mmap_offset``. Its *user address* (what SET_MEM_TABLE and SET_VRING_ADDR carry) is our
own virtual address of that byte, as in QEMU. A back end maps ``size + mmap_offset`` bytes
of the fd and uses ``base + mmap_offset`` (vhost-user.rst, "Memory access").

:class:`GuestMemory` owns the regions, translates guest-physical and user addresses to
views, and hands out buffers with a bump allocator (``alloc``); nothing is ever freed
before :meth:`GuestMemory.close`. Translation is bounds-checked: a range that is not
wholly inside one region raises :class:`AddressError` (ranges never straddle regions).

Invariants: regions never overlap in guest-physical space; ``gpa`` and ``size`` are
page-aligned; views and numpy arrays over a region keep its mmap alive, so
:meth:`GuestMemory.close` only closes the fds when something still holds a view and lets
the garbage collector unmap later (never a BufferError).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .protocol import MemRegion

PAGE = 4096


class AddressError(ValueError):
    """An address range outside guest memory."""


def _align(value: int, align: int) -> int:
    return (value + align - 1) // align * align


@dataclass
class Region:
    """One memfd-backed range of guest-physical memory."""

    gpa: int
    size: int
    fd: int
    mm: mmap.mmap
    mmap_offset: int = 0
    #: Our virtual address of guest-physical ``gpa``.
    uva: int = 0
    name: str = ""
    #: The file's path (``file:`` backing), else "".
    path: str = ""
    _next_free: int = field(default=0, repr=False)

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.gpa <= gpa and gpa + length <= self.end and length >= 0

    def table_entry(self) -> MemRegion:
        return MemRegion(self.gpa, self.size, self.uva, self.mmap_offset)

    def view(self, gpa: int, length: int) -> memoryview:
        off = self.mmap_offset + gpa - self.gpa
        return memoryview(self.mm)[off : off + length]


class GuestMemory:
    """A guest's RAM: one or more :class:`Region` s, each its own memfd.

    ``GuestMemory([(0, 64 << 20)])`` maps 64 MiB at guest-physical 0. Regions are
    ``(gpa, size)`` or ``(gpa, size, mmap_offset)``.
    """

    def __init__(
        self, layout: Sequence[tuple[int, ...]] = ((0, 64 << 20),), backing: str = "memfd"
    ) -> None:
        if backing not in ("memfd", "sealed-memfd") and not backing.startswith("file:"):
            raise ValueError(f"unknown memory backing {backing!r}")
        self.backing = backing
        self.regions: list[Region] = []
        try:
            for i, spec in enumerate(layout):
                gpa, size = spec[0], spec[1]
                offset = spec[2] if len(spec) > 2 else 0
                self._add(gpa, size, offset, f"vhu-guest-{i}")
        except BaseException:
            self.close()
            raise

    def _add(self, gpa: int, size: int, mmap_offset: int, name: str) -> Region:
        if gpa % PAGE or size % PAGE or size <= 0 or mmap_offset % PAGE or mmap_offset < 0:
            raise ValueError("regions must be page-aligned, non-empty, at aligned offsets")
        for r in self.regions:
            if gpa < r.end and r.gpa < gpa + size:
                raise ValueError(f"region {gpa:#x}+{size:#x} overlaps {r.gpa:#x}+{r.size:#x}")
        fd, path = self._create(name)
        try:
            os.ftruncate(fd, mmap_offset + size)
            if self.backing == "sealed-memfd":
                seals = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            mm = mmap.mmap(fd, mmap_offset + size, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        base = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data
        region = Region(gpa, size, fd, mm, mmap_offset, base + mmap_offset, name, path)
        self.regions.append(region)
        return region

    def _create(self, name: str) -> tuple[int, str]:
        if self.backing == "memfd":
            return os.memfd_create(name, os.MFD_CLOEXEC), ""
        if self.backing == "sealed-memfd":
            return os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING), ""
        fd, path = tempfile.mkstemp(prefix=name + "-", dir=self.backing.removeprefix("file:"))
        return fd, path

    def add_region(self, gpa: int, size: int, mmap_offset: int = 0) -> Region:
        """Hot-add a region (announce it with ADD_MEM_REG or a new SET_MEM_TABLE)."""
        return self._add(gpa, size, mmap_offset, f"vhu-guest-{len(self.regions)}")

    def remove_region(self, region: Region) -> None:
        """Forget a region (after REM_MEM_REG); its memory stays mapped until collected."""
        self.regions.remove(region)
        _release(region)

    # -- translation -------------------------------------------------------------------

    def region_of(self, gpa: int, length: int = 1) -> Region:
        for r in self.regions:
            if r.contains(gpa, length):
                return r
        raise AddressError(f"guest range {gpa:#x}+{length:#x} is outside guest memory")

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of ``length`` bytes at guest-physical ``gpa``."""
        return self.region_of(gpa, length).view(gpa, length)

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def uva(self, gpa: int) -> int:
        """Our virtual (vhost "user") address of guest-physical ``gpa``."""
        r = self.region_of(gpa)
        return r.uva + gpa - r.gpa

    def gpa_of_uva(self, uva: int, length: int = 1) -> int:
        for r in self.regions:
            if r.uva <= uva and uva + length <= r.uva + r.size:
                return r.gpa + uva - r.uva
        raise AddressError(f"user range {uva:#x}+{length:#x} is outside guest memory")

    def array(self, gpa: int, dtype: npt.DTypeLike, count: int) -> npt.NDArray[Any]:
        """A numpy array over guest memory (writes go straight to the shared pages)."""
        dt = np.dtype(dtype)
        r = self.region_of(gpa, dt.itemsize * count)
        return np.frombuffer(r.mm, dtype=dt, count=count, offset=r.mmap_offset + gpa - r.gpa)

    # -- allocation --------------------------------------------------------------------

    def alloc(self, size: int, align: int = 64) -> int:
        """Guest-physical address of ``size`` fresh bytes (first region with room)."""
        for r in self.regions:
            start = _align(r.gpa + r._next_free, align)
            if start + size <= r.end:
                r._next_free = start + size - r.gpa
                return start
        raise MemoryError(f"guest memory exhausted ({size} bytes requested)")

    def free_bytes(self) -> int:
        return sum(r.size - r._next_free for r in self.regions)

    # -- sharing -----------------------------------------------------------------------

    def table(self) -> list[MemRegion]:
        return [r.table_entry() for r in self.regions]

    def fds(self) -> list[int]:
        return [r.fd for r in self.regions]

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def close(self) -> None:
        for r in self.regions:
            _release(r)
            with contextlib.suppress(BufferError):
                r.mm.close()
        self.regions = []

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _release(region: Region) -> None:
    """Close the region's fd and remove its file (the mapping stays)."""
    with contextlib.suppress(OSError):
        if region.fd >= 0:
            os.close(region.fd)
    region.fd = -1
    if region.path:
        with contextlib.suppress(OSError):
            os.unlink(region.path)
        region.path = ""
