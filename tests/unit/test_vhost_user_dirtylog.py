"""Dirty-page logging, sans-IO: what SET_LOG_BASE accepts and refuses (hostile logs), which
pages the data path marks (receive buffers with their headers, used entries and index, never
transmit buffers), remapping, and that the atomic OR loses no bit against another writer."""

from __future__ import annotations

import fcntl
import mmap
import multiprocessing
import os
import struct
import tempfile

import numpy as np
import pytest

from drivers.vhost_user import protocol as vp
from drivers.vhost_user.device import NetDevice
from drivers.vhost_user.dirtylog import LOG_PAGE, DirtyLog, _AtomicOr
from drivers.vhost_user.features import (
    DEVICE_FEATURES,
    F_GUEST_ANNOUNCE,
    F_LOG_ALL,
)
from tests.kit.polling import open_fds
from tests.kit.vhost_user import RING_IMPLS, GuestSetup, msg, use_ring_impl

SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


@pytest.fixture(autouse=True, params=RING_IMPLS)
def ring_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the compiled split-ring loops and with the Python ones."""
    use_ring_impl(monkeypatch, request.param)
    return str(request.param)


def log_memfd(size: int, seals: int = SEALS) -> int:
    """A log as QEMU's ``vhost_log_alloc`` makes it: a sealed memfd."""
    fd = os.memfd_create("vhost-log", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def log_base(size: int, offset: int = 0) -> bytes:
    return struct.pack("=QQ", size, offset)


def reply_value(data: bytes | None) -> int:
    assert data is not None
    _req, flags, size = vp.HEADER.unpack_from(data)
    assert flags == vp.REPLY_FLAGS and size == 8
    return int(struct.unpack_from("=Q", data, 12)[0])


def bits(fd: int, size: int) -> set[int]:
    """The pages marked in the log ``fd``."""
    data = os.pread(fd, size, 0)
    arr = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    return {int(p) for p in np.flatnonzero(arr)}


def pages(gpa: int, length: int) -> set[int]:
    return set(range(gpa // LOG_PAGE, (gpa + length - 1) // LOG_PAGE + 1))


#: Sessions :func:`started` opened in the running test, closed by the ``guest`` fixture (a
#: device left to the garbage collector would close its descriptors' numbers later, by then
#: reused by another test).
_opened: list[tuple[vp.Session, NetDevice]] = []


@pytest.fixture
def guest():  # type: ignore[no-untyped-def]
    g = GuestSetup(num=64, features=GuestSetup().features | 1 << F_LOG_ALL)
    yield g
    while _opened:
        _session, dev = _opened.pop()
        dev.close()
    g.close()


def started(guest: GuestSetup) -> tuple[vp.Session, NetDevice]:
    dev = NetDevice(1)
    session = vp.Session(dev)
    _opened.append((session, dev))
    for m in guest.start_messages():
        session.handle(m)
    return session, dev


def test_offered() -> None:
    assert DEVICE_FEATURES >> F_LOG_ALL & 1
    assert DEVICE_FEATURES >> F_GUEST_ANNOUNCE & 1
    assert vp.PROTOCOL_FEATURES >> vp.PF_LOG_SHMFD & 1
    assert vp.PROTOCOL_FEATURES >> vp.PF_RARP & 1


def test_receive_marks_buffers_and_used_ring_not_transmit(guest: GuestSetup) -> None:
    session, dev = started(guest)
    size = guest.ram.size // LOG_PAGE // 8
    fd = log_memfd(size)
    try:
        assert reply_value(session.handle(msg(vp.SET_LOG_BASE, log_base(size), [os.dup(fd)]))) == 0
        rx, tx = guest.rings
        for index, ring in enumerate(guest.rings):  # QEMU: VHOST_VRING_F_LOG + log_guest_addr
            payload = bytearray(ring.addr_payload(index))
            struct.pack_into("=I", payload, 4, vp.VRING_F_LOG)
            struct.pack_into("=Q", payload, 32, ring.used)
            session.handle(msg(vp.SET_VRING_ADDR, bytes(payload)))
        assert dev.dirty.active
        # Buffers straddling page boundaries: 3000 bytes each.
        addrs = guest.post_rx_buffers(6, size=3000)
        frames = [bytes([i]) * (100 + 900 * i) for i in range(4)]
        assert dev.receive(dev.rx_queue(0), frames, False) == 4
        want = set()
        for addr, f in zip(addrs, frames, strict=False):
            want |= pages(addr, len(f) + 12)
        want |= pages(rx.used + 4, 8 * 4) | pages(rx.used + 2, 2)
        got = bits(fd, size)
        assert want <= got
        assert not got & pages(addrs[5], 3000) - want  # a buffer not written: not marked
        before = got
        guest.send_frames([b"\x02" * 60] * 3)
        _sent, _vnet, n = dev.transmit(dev.tx_queue(0))
        assert n == 3
        got = bits(fd, size)
        assert got - before <= pages(tx.used, 4 + 8 * 64)  # only tx's used ring is new
        assert pages(tx.used + 2, 2) <= got
        assert dev.dirty.counters["log-bits-set"] >= len(got)  # atomic ORs made
    finally:
        os.close(fd)


def test_set_bits_are_set_again_and_cleared_bits_come_back(guest: GuestSetup) -> None:
    session, dev = started(guest)
    size = guest.ram.size // LOG_PAGE // 8
    fd = log_memfd(size)
    try:
        session.handle(msg(vp.SET_LOG_BASE, log_base(size), [os.dup(fd)]))
        addrs = guest.post_rx_buffers(4, size=2048)
        dev.receive(dev.rx_queue(0), [b"\x01" * 500], False)
        set_before = dev.dirty.counters["log-bits-set"]
        dev.receive(dev.rx_queue(0), [b"\x01" * 500], False)  # same page: ORed again
        assert dev.dirty.counters["log-bits-set"] == set_before + 1
        os.pwrite(fd, bytes(size), 0)  # the front end collects (clears) the log
        dev.receive(dev.rx_queue(0), [b"\x01" * 500], False)
        assert pages(addrs[2], 512) <= bits(fd, size)
    finally:
        os.close(fd)


def test_no_logging_without_log_all(guest: GuestSetup) -> None:
    guest.features &= ~(1 << F_LOG_ALL)
    session, dev = started(guest)
    size = guest.ram.size // LOG_PAGE // 8
    fd = log_memfd(size)
    try:
        assert reply_value(session.handle(msg(vp.SET_LOG_BASE, log_base(size), [os.dup(fd)]))) == 0
        guest.post_rx_buffers(2)
        dev.receive(dev.rx_queue(0), [b"\x01" * 100], False)
        assert bits(fd, size) == set()
    finally:
        os.close(fd)


def test_new_log_base_remaps(guest: GuestSetup) -> None:
    session, dev = started(guest)
    size = guest.ram.size // LOG_PAGE // 8
    first, second = log_memfd(size), log_memfd(2 * size)
    try:
        session.handle(msg(vp.SET_LOG_BASE, log_base(size), [os.dup(first)]))
        assert (
            reply_value(session.handle(msg(vp.SET_LOG_BASE, log_base(size, 8), [os.dup(second)])))
            == 0
        )
        addrs = guest.post_rx_buffers(1)
        dev.receive(dev.rx_queue(0), [b"\x01" * 100], False)
        assert bits(first, size) == set()
        marked = bits(second, 2 * size)
        assert {p - 64 for p in marked if p >= 64} >= pages(addrs[0], 112)  # 8 bytes in
    finally:
        os.close(first)
        os.close(second)


@pytest.mark.parametrize(
    "case",
    [
        "before-table",
        "too-small",
        "regular-file",
        "pipe",
        "unsealed",
        "short",
        "misaligned",
        "no-fd",
    ],
)
def test_hostile_log_base_is_refused_and_closed(guest: GuestSetup, case: str) -> None:
    dev = NetDevice(1)
    session = vp.Session(dev)
    messages = guest.start_messages()
    if case != "before-table":
        for m in messages:
            session.handle(m)
    size = guest.ram.size // LOG_PAGE // 8
    fds: list[int] = []
    payload = log_base(size)
    if case == "too-small":
        fds = [log_memfd(size // 2)]
        payload = log_base(size // 2)
    elif case == "regular-file":
        with tempfile.TemporaryFile() as f:
            f.truncate(size)
            fds = [os.dup(f.fileno())]
    elif case == "pipe":
        r, w = os.pipe()
        os.close(w)
        fds = [r]
    elif case == "unsealed":
        fds = [log_memfd(size, seals=0)]
    elif case == "short":
        fds = [log_memfd(size)]
        payload = log_base(size, 4096)
    elif case == "misaligned":
        fds = [log_memfd(size + 8)]
        payload = log_base(size, 3)
    elif case != "no-fd":
        fds = [log_memfd(size)]
    baseline = open_fds()
    assert reply_value(session.handle(msg(vp.SET_LOG_BASE, payload, fds))) == 1
    assert open_fds() == baseline - len(fds)
    assert not dev.dirty.mapped
    assert session.refused >= 1
    for m in messages if case == "before-table" else ():
        session.handle(m)
    guest.post_rx_buffers(1)
    assert dev.receive(dev.rx_queue(0), [b"\x01" * 100], False) == 1  # still serving


def test_set_log_fd_is_signalled(guest: GuestSetup) -> None:
    session, dev = started(guest)
    size = guest.ram.size // LOG_PAGE // 8
    fd = log_memfd(size)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        session.handle(msg(vp.SET_LOG_BASE, log_base(size), [os.dup(fd)]))
        session.handle(msg(vp.SET_LOG_FD, b"", [os.dup(efd)]))
        guest.post_rx_buffers(1)
        dev.receive(dev.rx_queue(0), [b"\x01" * 100], False)
        assert os.eventfd_read(efd) >= 1
        dev.close()
        assert dev.dirty.log_fd == -1
    finally:
        os.close(fd)
        os.close(efd)


def _other_writer(fd: int, words: int) -> None:
    mm = mmap.mmap(fd, 4 * words)
    arr = np.frombuffer(mm, dtype=np.uint32)
    atomic_or = _AtomicOr()
    for word in range(words):
        for bit in range(1, 32, 2):
            atomic_or(arr.ctypes.data + 4 * word, bit)
    del arr
    mm.close()


def test_atomic_or_loses_nothing_against_another_writer() -> None:
    """Two processes set interleaved bits of the same words at once: every bit ends up set
    (a Python byte read-modify-write would lose some of the other process's bits)."""
    words = 256
    fd = log_memfd(4 * words, seals=0)
    try:
        log = DirtyLog()
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        log.set_base(os.dup(fd), 4 * words, 0, words * 32 * LOG_PAGE)
        log.enabled = True
        proc = multiprocessing.get_context("fork").Process(target=_other_writer, args=(fd, words))
        proc.start()
        for word in range(words):
            log.mark(
                np.array([(32 * word + b) * LOG_PAGE for b in range(0, 32, 2)], dtype=np.uint64),
                np.full(16, 1, dtype=np.uint64),
            )
        proc.join(60)
        assert proc.exitcode == 0
        assert os.pread(fd, 4 * words, 0) == b"\xff" * (4 * words)
        log.close()
    finally:
        os.close(fd)
