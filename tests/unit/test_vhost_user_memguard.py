"""What backs a region of guest memory (seals, file system, size) and the SIGBUS guard:
a truncated file read or written through the mapping gives zero pages and a count, the
device stops every queue, and a SIGBUS anywhere else still ends the process."""

from __future__ import annotations

import contextlib
import fcntl
import gc
import mmap
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.vhost_user import memguard
from drivers.vhost_user import protocol as vp
from drivers.vhost_user.device import STATUS_NEEDS_RESET
from drivers.vhost_user.memory import GuestMemory, MemoryTableError, RegionSpec
from drivers.vhost_user.virtqueue import RingError
from tests.kit.vhost_user import RING_IMPLS, mem_table, msg, use_ring_impl
from tests.support import frame
from tests.unit.test_vhost_user_device import Rig

pytestmark = pytest.mark.skipif(not memguard.available(), reason="_memguard not built")

MIB = 1 << 20
SEALS = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL


@pytest.fixture(autouse=True, params=RING_IMPLS)
def ring_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the compiled split-ring loops and with the Python ones."""
    use_ring_impl(monkeypatch, request.param)
    return str(request.param)


def memfd(size: int = MIB, seals: int | None = None) -> int:
    flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if seals is not None else 0)
    fd = os.memfd_create("memguard-test", flags)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


@pytest.fixture
def fds() -> Iterator[list[int]]:
    out: list[int] = []
    yield out
    for fd in out:
        with contextlib.suppress(OSError):
            os.close(fd)


def test_backing_kinds(fds: list[int], tmp_path: Path) -> None:
    fds += [memfd(), memfd(seals=0), memfd(seals=SEALS), memfd(seals=fcntl.F_SEAL_SHRINK)]
    kinds = [memguard.inspect(fd, MIB) for fd in fds]
    assert [(k.kind, k.pinned) for k in kinds] == [
        ("memfd", False),  # no MFD_ALLOW_SEALING (QEMU's seal=off): F_SEAL_SEAL only
        ("memfd", False),  # sealing allowed but nothing sealed: it can still shrink
        ("sealed-memfd", True),  # QEMU's default seal=on
        ("sealed-memfd", True),  # F_SEAL_SHRINK is what matters
    ]
    assert all(k.page == mmap.PAGESIZE and k.size == MIB for k in kinds)
    plain = tmp_path / "ram"
    plain.write_bytes(bytes(8192))
    fd = os.open(plain, os.O_RDWR)
    fds.append(fd)
    assert memguard.inspect(fd, 8192).kind == "file"
    if os.access("/dev/shm", os.W_OK):
        fd = os.open("/dev/shm", os.O_RDWR | os.O_TMPFILE)
        fds.append(fd)
        os.ftruncate(fd, 8192)
        assert memguard.inspect(fd, 8192) == memguard.Backing("tmpfs", False, mmap.PAGESIZE, 8192)
    r, w = os.pipe()
    fds += [r, w]
    assert memguard.inspect(r, 4096).kind == "other"


def test_hugetlb_memfd_is_guarded_at_its_page_size(fds: list[int]) -> None:
    huge = 2 * MIB
    try:
        fd = os.memfd_create("memguard-huge", os.MFD_CLOEXEC | os.MFD_HUGETLB)
    except OSError as exc:
        pytest.skip(f"no hugetlb memfd here: {exc}")
    fds.append(fd)
    os.ftruncate(fd, 2 * huge)
    backing = memguard.inspect(fd, 2 * huge)
    assert (backing.kind, backing.pinned) == ("hugetlbfs", False)
    assert backing.page >= huge
    mem = GuestMemory()
    spec = RegionSpec(gpa=0, size=2 * huge, uaddr=1 << 40, mmap_offset=0)
    try:
        mem.replace([spec], [os.dup(fd)])
    except MemoryTableError as exc:  # no free huge pages: refused cleanly
        assert "cannot map region" in str(exc)
        return
    region = mem.regions[0]
    region.mm[huge : huge + 4] = b"abcd"
    os.ftruncate(fd, 0)
    assert region.mm[huge : huge + 4] == bytes(4)  # a whole huge page replaced
    assert mem.poll_faults() is region
    mem.clear()


def test_files_shorter_than_the_region_are_refused(fds: list[int]) -> None:
    mem = GuestMemory()
    spec = RegionSpec(gpa=0, size=2 * MIB, uaddr=1 << 40, mmap_offset=0)
    for seals in (None, SEALS):
        with pytest.raises(MemoryTableError, match="shorter than the 2097152 bytes"):
            mem.replace([spec], [memfd(MIB, seals)])
    with pytest.raises(MemoryTableError, match="shorter"):
        mem.add(RegionSpec(gpa=0, size=MIB, uaddr=1 << 40, mmap_offset=4096), memfd(MIB))
    assert not mem.regions


def test_without_the_guard_only_sealed_memory_is_taken(
    fds: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memguard, "_guard", None)
    fds += [memfd(), memfd(seals=SEALS)]
    with pytest.raises(MemoryTableError, match="seal=on"):
        memguard.inspect(fds[0], MIB)
    assert memguard.inspect(fds[1], MIB).pinned


def test_truncated_region_reads_zeros_and_is_reported(fds: list[int]) -> None:
    fd = memfd(4 * MIB)
    fds.append(fd)
    mem, other = GuestMemory(), GuestMemory()
    spec = RegionSpec(gpa=0, size=4 * MIB, uaddr=1 << 40, mmap_offset=0)
    mem.replace([spec], [os.dup(fd)])
    other.replace([spec], [memfd(4 * MIB)])
    region = mem.regions[0]
    region.mm[MIB : MIB + 4] = b"abcd"
    assert mem.poll_faults() is None and not region.faulted()
    assert region.backing.kind == "memfd"
    os.ftruncate(fd, 4096)
    assert region.mm[MIB : MIB + 4] == bytes(4)  # a zero page, not SIGBUS
    region.mm[2 * MIB : 2 * MIB + 3] = b"xyz"  # written to a private page: lost, not SIGBUS
    region.u8[3 * MIB :].fill(7)  # numpy over several faulting pages
    assert region.faulted()
    assert mem.poll_faults() is region
    assert mem.poll_faults() is None  # nothing new since
    assert other.faulted() is None  # the other device's mapping is intact
    assert os.fstat(fd).st_size == 4096  # the front end's file is untouched
    mem.clear()
    other.clear()


def test_mapping_stays_guarded_while_a_view_is_exported(fds: list[int]) -> None:
    fd = memfd()
    fds.append(fd)
    mapping = memguard.Mapping(fd, MIB, memguard.inspect(fd, MIB))
    view = memoryview(mapping.mm)
    assert not mapping.close()  # exported: not unmapped yet
    os.ftruncate(fd, 0)
    before = memguard.fault_count()
    assert view[MIB // 2] == 0  # still guarded: a zero page, not SIGBUS
    assert memguard.fault_count() == before + 1
    view.release()
    del view, mapping
    gc.collect()


def test_device_stops_every_queue_when_memory_faults() -> None:
    rig = Rig(pairs=2)
    try:
        os.ftruncate(rig.guest.ram.fd, 4096)  # the test's own mapping is not touched again
        with pytest.raises(RingError, match="faulted: the front end truncated"):
            rig.dev.transmit(rig.tx)
        dev = rig.dev
        assert dev.counters["memory-faults"] == 1
        assert all(q.broken is not None for q in dev.queues)
        assert dev.status & STATUS_NEEDS_RESET
        assert not rig.broken  # one report (on_memory_fault), not one per ring
        rx = dev.rx_queue(1)
        rx.broken = None  # the front end reconfigures a ring: still refused
        assert not dev.ensure_mapped(rx) and rx.broken == dev.memory_fault
        # a new memory table with intact memory lifts the stop
        spec = dev.mem.regions[0].spec
        session = vp.Session(dev)
        session.handle(msg(vp.SET_MEM_TABLE, mem_table([spec]), [memfd(spec.size)]))
        assert dev.memory_fault is None
        assert dev.counters["memory-faults"] == 1
    finally:
        rig.close()


def test_a_ring_error_from_zero_pages_is_reported_as_the_fault() -> None:
    rig = Rig()
    try:
        rig.guest.send_frames([frame(1)] * 3)
        assert rig.transmit()[2] == 3
        os.ftruncate(rig.guest.ram.fd, 4096)
        # the avail index now reads 0: "3 entries back" would be a ring error
        with pytest.raises(RingError) as err:
            rig.dev.transmit(rig.tx)
        rig.dev.break_queue(rig.tx, str(err.value))
        assert "faulted" in str(rig.tx.broken)
        assert rig.dev.counters["memory-faults"] == 1
    finally:
        rig.close()


def run_python(code: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_sigbus_elsewhere_still_ends_the_process() -> None:
    done = run_python(
        """
        import mmap, os
        from drivers.vhost_user import memguard
        fd = os.memfd_create("guarded")
        os.ftruncate(fd, 1 << 20)
        guarded = memguard.Mapping(fd, 1 << 20, memguard.inspect(fd, 1 << 20))
        other = os.memfd_create("unguarded")
        os.ftruncate(other, 1 << 20)
        mm = mmap.mmap(other, 1 << 20)
        os.ftruncate(other, 0)
        print("touching", flush=True)
        mm[65536]
        print("survived", flush=True)
        """
    )
    assert done.returncode == -signal.SIGBUS, done
    assert b"touching" in done.stdout and b"survived" not in done.stdout


def test_guard_is_reinstalled_over_a_later_handler() -> None:
    done = run_python(
        """
        import faulthandler, os
        from drivers.vhost_user import memguard, _memguard
        def mapping():
            fd = os.memfd_create("guarded")
            os.ftruncate(fd, 1 << 20)
            return fd, memguard.Mapping(fd, 1 << 20, memguard.inspect(fd, 1 << 20))
        fd, first = mapping()
        faulthandler.enable()  # takes SIGBUS over
        assert not _memguard.installed()
        _, second = mapping()  # every new mapping puts the guard back in front
        assert _memguard.installed()
        os.ftruncate(fd, 0)
        assert first.mm[4096] == 0 and first.faulted() == 1
        print("survived", flush=True)
        import mmap
        other = os.memfd_create("unguarded")
        os.ftruncate(other, 1 << 20)
        mm = mmap.mmap(other, 1 << 20)
        os.ftruncate(other, 0)
        mm[8192]  # faulthandler reports it, then the default action: no loop between us
        print("BAD", flush=True)
        """
    )
    assert done.returncode == -signal.SIGBUS, done
    assert b"survived" in done.stdout and b"BAD" not in done.stdout, done
    assert done.stderr.count(b"Fatal Python error: Bus error") == 1, done
