"""Dirty-page logging for live migration: the shared bitmap in which the back end marks the
guest pages it wrote.

Follows ``docs/interop/vhost-user.rst`` ("Migration", ``SET_LOG_BASE``, ``SET_LOG_FD``,
``VHOST_F_LOG_ALL``, ``VHOST_VRING_F_LOG``) and QEMU's ``hw/virtio/vhost.c``
(``vhost_log_alloc``, ``vhost_dev_sync_region``). While ``VHOST_F_LOG_ALL`` is negotiated, the
front end collects the pages the back end dirtied behind the vCPUs' back and sends them again.

What it owns
    :class:`DirtyLog`: the log mapping of one device (``SET_LOG_BASE``: a memfd of
    ``mmap_size`` bytes at ``mmap_offset``, remapped on every new request), the optional
    log eventfd (``SET_LOG_FD``, signalled after a burst set bits), the marking of
    guest-physical ranges (:meth:`DirtyLog.mark`, :meth:`DirtyLog.mark_range`) and its
    counters. :func:`used_logger` binds the log to one ring's ``log_guest_addr``.

Layout
    One bit per 4 KiB page of guest-physical address space from GPA 0: page ``p`` is bit
    ``p % 8`` of byte ``p // 8``. QEMU sizes the log in 64-bit chunks and covers the highest
    guest address, so a 256 MiB guest gets 8 KiB.

Why a bit is never lost
    QEMU collects the log with ``qatomic_xchg(word, 0)`` on each 64-bit word while the back
    end keeps running, and other vhost back ends of the same VM (QEMU shares one log memfd
    between all its vhost-user devices) set bits in the same words from their own processes.
    A read-modify-write in Python (read a byte, OR, store it back) would be safe against
    QEMU's exchange alone (it can only re-set bits QEMU already took: spurious pages) but not
    against another writer: a bit that process sets between our read and our store would be
    overwritten. So every bit is set with one atomic read-modify-write performed by the
    kernel: ``futex(FUTEX_WAKE_OP)`` with ``FUTEX_OP_OR | FUTEX_OP_OPARG_SHIFT`` ORs
    ``1 << n`` into an aligned 32-bit word atomically (``arch_futex_atomic_op_inuser``: a
    locked instruction on the word, the same guarantee as libvhost-user's ``qatomic_or``
    and DPDK's ``__atomic_fetch_or``) and wakes nobody (count 0). No other process can
    interleave with it, and a bit is only ever ORed in, never stored as part of a stale
    value. Every page of a burst gets its OR, even when its bit already reads as set
    (skipping those would need a fence between the data stores and the read, and would
    trust a read that QEMU's exchange may be overtaking); the locked operation itself
    orders the data stores before the bit. The cost is one system call per page and
    burst, only while logging. Ordering: the
    guest data is stored before its bit is set (program order; x86-64 keeps stores in
    order, and the system call is a full barrier anyway), so when QEMU sees the bit the data
    is there. The ring logs its used entries before it stores ``used->idx``, and the index
    itself right after storing it; everything is logged before ``GET_VRING_BASE`` is
    answered (the data path is synchronous: nothing is half-done when a message is handled).

Refused (``SET_LOG_BASE`` answered 1, counted, the fd closed): no memory table yet, a log too
small for the highest guest address of the table, an fd that is not a memfd sealed against
shrinking (QEMU seals its ``vhost-log``; an unsealed or ordinary file could be truncated
under the mapping and fault the daemon), a file shorter than ``offset + size``, an offset
not 8-byte aligned. A write to a page past the log (memory added after the log was sized)
is counted in ``log-out-of-range`` and skipped, as DPDK does.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import platform
import sys
from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

from netstack.errors import RemoteInputError

#: ``VHOST_LOG_PAGE``.
LOG_PAGE = 4096
_PAGE_SHIFT = 12
#: The largest log accepted: enough for 16 TiB of guest-physical space.
MAX_LOG_SIZE = 1 << 29

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "ppc64le": 221, "s390x": 238, "riscv64": 98}
_FUTEX_WAKE_OP = 5
_FUTEX_PRIVATE_FLAG = 128
_FUTEX_OP_OR = 2
_FUTEX_OP_OPARG_SHIFT = 8
_F_SEAL_SHRINK = 0x0002

#: The dirty log's counters (``query-netdev``), in their order.
LogCounter = Literal["log-bases", "log-refused", "log-bits-set", "log-out-of-range"]
COUNTER_NAMES: tuple[LogCounter, ...] = get_args(LogCounter)


class LogError(RemoteInputError):
    """A ``SET_LOG_BASE`` the back end refuses."""


class _AtomicOr:
    """``*word |= 1 << bit`` done atomically by the kernel (``futex(FUTEX_WAKE_OP)``)."""

    def __init__(self) -> None:
        number = _SYS_FUTEX.get(platform.machine())
        if number is None:
            raise LogError(f"no futex system call number known for {platform.machine()}")
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.syscall
        call.restype = ctypes.c_long
        call.argtypes = [
            ctypes.c_long,  # SYS_futex
            ctypes.c_void_p,  # uaddr (woken: nobody)
            ctypes.c_int,  # FUTEX_WAKE_OP | FUTEX_PRIVATE_FLAG
            ctypes.c_int,  # waiters to wake on uaddr: 0
            ctypes.c_ulong,  # waiters to wake on uaddr2: 0
            ctypes.c_void_p,  # uaddr2: the word operated on
            ctypes.c_uint,  # the encoded operation
        ]
        self._call = call
        self._number = number
        self._op = _FUTEX_WAKE_OP | _FUTEX_PRIVATE_FLAG
        self._or_shift = (_FUTEX_OP_OR | _FUTEX_OP_OPARG_SHIFT) << 28

    def __call__(self, address: int, bit: int) -> None:
        """OR ``1 << bit`` (0..31) into the native 32-bit word at ``address`` (4-aligned)."""
        encoded = self._or_shift | (bit << 12)
        if self._call(self._number, address, self._op, 0, 0, address, encoded) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"futex(FUTEX_WAKE_OP) failed: {os.strerror(err)}")


def _word_bit(pages: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    """The 32-bit word (index) and the bit within the native word holding each page's bit
    (byte ``p // 8``, bit ``p % 8`` of the byte-wise layout)."""
    words = pages >> np.uint64(5)
    inword = pages & np.uint64(31)
    if sys.byteorder == "little":
        return words, inword
    byte = inword >> np.uint64(3)
    return words, (np.uint64(3) - byte) * np.uint64(8) + (inword & np.uint64(7))


class DirtyLog:
    """The dirty log of one device (unmapped until ``SET_LOG_BASE``)."""

    def __init__(self) -> None:
        self._mm: mmap.mmap | None = None
        self._words: NDArray[np.uint32] = np.empty(0, dtype=np.uint32)
        self._base = 0  # address of the log's first byte in this process
        self.pages = 0  # pages the log covers
        self.log_fd = -1
        self.enabled = False  # VHOST_F_LOG_ALL negotiated
        self.counters: dict[LogCounter, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._or: _AtomicOr | None = None

    @property
    def active(self) -> bool:
        """Writes to guest memory must be logged now."""
        return self.enabled and self._mm is not None

    @property
    def mapped(self) -> bool:
        return self._mm is not None

    # -- configuration -------------------------------------------------------------------

    def set_base(self, fd: int, size: int, offset: int, memory_end: int | None) -> None:
        """``SET_LOG_BASE``: map ``size`` bytes of ``fd`` at ``offset`` (takes ownership of
        ``fd``). ``memory_end`` is the highest guest-physical end of the memory table (None:
        there is no table). Raises :class:`LogError`; the previous log stays then."""
        try:
            self._check(fd, size, offset, memory_end)
            if self._or is None:
                self._or = _AtomicOr()
            try:
                mm = mmap.mmap(
                    fd, offset + size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
                )
            except (OSError, ValueError, OverflowError) as exc:
                raise LogError(f"cannot map the log: {exc}") from None
        except LogError:
            self.counters["log-refused"] += 1
            raise
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.unmap()
        self._mm = mm
        self._words = np.frombuffer(mm, dtype=np.uint32, count=size // 4, offset=offset)
        self._base = self._words.ctypes.data
        self.pages = size * 8
        self.counters["log-bases"] += 1

    @staticmethod
    def _check(fd: int, size: int, offset: int, memory_end: int | None) -> None:
        if memory_end is None:
            raise LogError("SET_LOG_BASE before any memory table")
        if not 0 < size <= MAX_LOG_SIZE or size % 4:
            raise LogError(f"log size {size} (a multiple of 4 up to {MAX_LOG_SIZE})")
        if offset % 8 or not 0 <= offset < 1 << 62:
            raise LogError(f"log offset {offset:#x} is not 8-byte aligned")
        needed = (memory_end + LOG_PAGE * 8 - 1) // (LOG_PAGE * 8)
        if size < needed:
            raise LogError(
                f"log of {size} bytes covers {size * 8 * LOG_PAGE:#x} bytes of guest memory,"
                f" the memory table reaches {memory_end:#x}"
            )
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            length = os.fstat(fd).st_size
        except OSError:
            raise LogError("log fd is not a memfd") from None
        if not seals & _F_SEAL_SHRINK:
            raise LogError("log memfd is not sealed against shrinking (F_SEAL_SHRINK)")
        if length < offset + size:
            raise LogError(f"log memfd of {length} bytes is shorter than {offset + size}")

    def set_fd(self, fd: int) -> None:
        """``SET_LOG_FD``: the eventfd signalled after bits were set (-1: none)."""
        if self.log_fd >= 0 and self.log_fd != fd:
            with contextlib.suppress(OSError):
                os.close(self.log_fd)
        self.log_fd = fd

    def unmap(self) -> None:
        mm, self._mm = self._mm, None
        self._words = np.empty(0, dtype=np.uint32)
        self._base = 0
        self.pages = 0
        if mm is not None:
            with contextlib.suppress(BufferError):
                mm.close()

    def close(self) -> None:
        """The connection ended or the device was reset."""
        self.unmap()
        self.set_fd(-1)
        self.enabled = False

    # -- marking -------------------------------------------------------------------------

    def mark(self, gpas: NDArray[np.uint64], lens: NDArray[np.uint64]) -> None:
        """Mark every page touched by the ranges ``[gpas[i], gpas[i] + lens[i])``."""
        if self._mm is None or not len(gpas):
            return
        nz = lens > 0
        if not np.all(nz):
            gpas, lens = gpas[nz], lens[nz]
            if not len(gpas):
                return
        first = gpas >> np.uint64(_PAGE_SHIFT)
        last = (gpas + lens - np.uint64(1)) >> np.uint64(_PAGE_SHIFT)
        counts = (last - first + np.uint64(1)).astype(np.int64)
        if int(counts.max()) == 1:
            pages = first
        else:
            starts = np.cumsum(counts) - counts
            step = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
            pages = np.repeat(first, counts) + step.astype(np.uint64)
        self._set(np.unique(pages))

    def mark_range(self, gpa: int, length: int) -> None:
        """Mark the pages of one range."""
        if self._mm is None or length <= 0:
            return
        first = gpa >> _PAGE_SHIFT
        last = (gpa + length - 1) >> _PAGE_SHIFT
        self._set(np.arange(first, last + 1, dtype=np.uint64))

    @property
    def words(self) -> NDArray[np.uint32]:
        """The bitmap itself (writable; bit ``p % 8`` of byte ``p // 8`` is page ``p``), for
        the compiled ring loops, which OR bits in with the same atomic guarantee."""
        return self._words

    def account(self, bits: int, out_of_range: int) -> None:
        """Count what the compiled ring loops marked and signal the log eventfd."""
        self.counters["log-out-of-range"] += out_of_range
        if bits:
            self.counters["log-bits-set"] += bits
            if self.log_fd >= 0:
                with contextlib.suppress(OSError):
                    os.eventfd_write(self.log_fd, 1)

    def _set(self, pages: NDArray[np.uint64]) -> None:
        outside = pages >= np.uint64(self.pages)
        if np.any(outside):
            self.counters["log-out-of-range"] += int(np.count_nonzero(outside))
            pages = pages[~outside]
            if not len(pages):
                return
        atomic_or = self._or
        assert atomic_or is not None
        base = self._base
        words, bits = _word_bit(pages)
        # Every page's bit is ORed in, even one that reads as set: QEMU may be collecting
        # that word right now, and only a store made after our data stores proves the
        # page is marked after it was written.
        for word, bit in zip(words.tolist(), bits.tolist(), strict=True):
            atomic_or(base + 4 * word, bit)
        self.counters["log-bits-set"] += len(pages)
        if self.log_fd >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self.log_fd, 1)


class UsedLogger:
    """What a ring calls after writing ``length`` bytes at ``offset`` in its used ring
    (``VHOST_VRING_F_LOG``): the range is logged at ``addr + offset``, an address the front
    end gives in guest-physical terms (not translated through the table). The compiled
    ring loops read ``log`` and ``addr`` and mark the same pages themselves."""

    __slots__ = ("addr", "log")

    def __init__(self, log: DirtyLog, addr: int) -> None:
        self.log = log
        self.addr = addr

    def __call__(self, offset: int, length: int) -> None:
        if self.log.active:
            self.log.mark_range(self.addr + offset, length)


def used_logger(log: DirtyLog, log_guest_addr: int) -> Callable[[int, int], None]:
    """The :class:`UsedLogger` of a ring whose used ring the front end logs at
    ``log_guest_addr``."""
    return UsedLogger(log, log_guest_addr)
