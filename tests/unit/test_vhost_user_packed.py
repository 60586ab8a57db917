"""The packed virtqueue of the vhost-user back end (``drivers/vhost_user/packed.py``), sans
IO: a raw packed driver (:class:`PackedDriver`) in a memfd, messages straight into a
:class:`~drivers.vhost_user.protocol.Session`, and the device's transmit/receive paths.

Covers the wrap counters over many laps, chains and the used index stepping over them,
indirect tables, mergeable receive buffers, both event suppression structures (with the
EVENT_IDX off-by-one-lap rule), the VRING_BASE encoding, the layout switch on
``SET_FEATURES`` and rings that are not a power of two. Every test runs with the compiled
ring loops (``_vring.c``) and with the pure-Python ones."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence

import pytest

from drivers.vhost_user import fence
from drivers.vhost_user import protocol as vp
from drivers.vhost_user.device import NetDevice
from drivers.vhost_user.features import (
    F_EVENT_IDX,
    F_IN_ORDER,
    F_INDIRECT_DESC,
    F_MRG_RXBUF,
    F_RING_PACKED,
    F_VERSION_1,
)
from drivers.vhost_user.packed import (
    DESC_F_AVAIL,
    DESC_F_USED,
    EVENT_F_DESC,
    EVENT_F_DISABLE,
    EVENT_F_ENABLE,
    PackedQueue,
)
from drivers.vhost_user.virtqueue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, RingError
from tests.kit.vhost_user import RING_IMPLS, GuestRam, mem_table, msg, state, u64, use_ring_impl

PDESC = struct.Struct("<QIHH")
FEATURES = 1 << F_VERSION_1 | 1 << F_RING_PACKED | 1 << F_INDIRECT_DESC | 1 << F_IN_ORDER
ETH = b"\x02\x00\x00\x00\x00\x0b\x02\x00\x00\x00\x00\x0a\x88\xb5"


@pytest.fixture(autouse=True, params=RING_IMPLS)
def ring_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    use_ring_impl(monkeypatch, request.param)
    return str(request.param)


class PackedDriver:
    """The driver side of one packed ring in :class:`GuestRam` (raw: tests write any
    descriptor they like)."""

    def __init__(self, ram: GuestRam, num: int) -> None:
        self.ram = ram
        self.num = num
        self.ring = ram.alloc(16 * num, 16)
        self.driver_evt = ram.alloc(4, 4)
        self.device_evt = ram.alloc(4, 4)
        self.next_avail, self.avail_wrap = 0, 1
        self.last_used, self.used_wrap = 0, 1
        self.slots: dict[int, int] = {}

    def addr_payload(self, index: int) -> bytes:
        uva = self.ram.uva
        return struct.pack(
            "=IIQQQQ", index, 0, uva(self.ring), uva(self.device_evt), uva(self.driver_evt), 0
        )

    def post(self, pieces: Sequence[tuple[int, int, int]], buf_id: int) -> int:
        """One buffer of ``(addr, len, flags)`` descriptors; the head's flags last."""
        first = self.next_avail
        head_flags = 0
        for k, (addr, length, flags) in enumerate(pieces):
            bits = flags | (DESC_F_NEXT if k < len(pieces) - 1 else 0)
            bits |= DESC_F_AVAIL if self.avail_wrap else DESC_F_USED
            at = self.ring + 16 * self.next_avail
            self.ram.write(at, PDESC.pack(addr, length, buf_id, 0 if k == 0 else bits))
            if k == 0:
                head_flags = bits
            self.next_avail += 1
            if self.next_avail == self.num:
                self.next_avail, self.avail_wrap = 0, self.avail_wrap ^ 1
        self.ram.write(self.ring + 16 * first + 14, struct.pack("<H", head_flags))
        self.slots[buf_id] = len(pieces)
        return first

    def take_used(self) -> list[tuple[int, int]]:
        out = []
        for _ in range(self.num):
            _a, length, buf_id, flags = PDESC.unpack(
                self.ram.read(self.ring + 16 * self.last_used, 16)
            )
            w = self.used_wrap
            if bool(flags & DESC_F_AVAIL) != bool(w) or bool(flags & DESC_F_USED) != bool(w):
                break
            out.append((buf_id, length))
            self.last_used += self.slots.pop(buf_id)
            if self.last_used >= self.num:
                self.last_used -= self.num
                self.used_wrap ^= 1
        return out

    def set_driver_event(self, flags: int, off_wrap: int = 0) -> None:
        self.ram.write(self.driver_evt, struct.pack("<HH", off_wrap, flags))

    def device_event(self) -> tuple[int, int]:
        off_wrap, flags = struct.unpack("<HH", self.ram.read(self.device_evt, 4))
        return int(off_wrap), int(flags)


class Rig:
    def __init__(self, num: int = 8, features: int = FEATURES, base: int = 0x8000) -> None:
        self.ram = GuestRam(1 << 20)
        self.rings = [PackedDriver(self.ram, num) for _ in range(2)]
        self.dev = NetDevice(1)
        self.session = vp.Session(self.dev)
        msgs = [
            msg(vp.SET_FEATURES, u64(features)),
            msg(vp.SET_MEM_TABLE, mem_table([self.ram.spec()]), [os.dup(self.ram.fd)]),
        ]
        for i, ring in enumerate(self.rings):
            msgs += [
                msg(vp.SET_VRING_NUM, state(i, num)),
                msg(vp.SET_VRING_BASE, state(i, base)),
                msg(vp.SET_VRING_ADDR, ring.addr_payload(i)),
                msg(vp.SET_VRING_KICK, u64(i | vp.VRING_NOFD)),
            ]
        for m in msgs:
            self.session.handle(m)
        assert self.session.refused == 0

    @property
    def rx(self) -> PackedDriver:
        return self.rings[0]

    @property
    def tx(self) -> PackedDriver:
        return self.rings[1]

    def frame(self, payload: bytes) -> tuple[int, int]:
        data = bytes(12) + ETH + payload
        addr = self.ram.alloc(len(data), 16)
        self.ram.write(addr, data)
        return addr, len(data)

    def close(self) -> None:
        self.dev.close()
        self.ram.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_features_select_packed_queues(rig: Rig) -> None:
    assert all(isinstance(q, PackedQueue) for q in rig.dev.queues)
    assert all(q.ready for q in rig.dev.queues)
    assert vp.OFFERED_FEATURES >> F_RING_PACKED & 1


def test_layout_switch_keeps_fds_and_config() -> None:
    dev = NetDevice(1)
    session = vp.Session(dev)
    call = os.eventfd(0, os.EFD_NONBLOCK)
    session.handle(msg(vp.SET_VRING_CALL, u64(0), [call]))
    session.handle(msg(vp.SET_FEATURES, u64(FEATURES)))
    q = dev.queues[0]
    assert isinstance(q, PackedQueue) and q.call_fd == call
    session.handle(msg(vp.SET_FEATURES, u64(1 << F_VERSION_1)))
    assert not isinstance(dev.queues[0], PackedQueue) and dev.queues[0].call_fd == call
    session.handle(msg(vp.SET_FEATURES, u64(FEATURES)))
    session.handle(msg(vp.RESET_DEVICE))
    assert not any(isinstance(q, PackedQueue) for q in dev.queues)  # features forgotten
    session.handle(msg(vp.SET_FEATURES, u64(FEATURES)))
    dev.close()
    assert not any(isinstance(q, PackedQueue) for q in dev.queues)


def test_transmit_many_laps_and_chains(rig: Rig) -> None:
    """Buffers of 1..3 descriptors over five laps: every frame out in order, used ids as
    given, the used index stepping over whole chains, wrap counters flipping."""
    q = rig.dev.tx_queue(0)
    sent: list[bytes] = []
    for n in range(40):
        payload = bytes([n]) * (50 + n)
        addr, ln = rig.frame(payload)
        parts = 1 + n % 3
        cut = [addr + k * (ln // parts) for k in range(parts)] + [addr + ln]
        pieces = [(cut[k], cut[k + 1] - cut[k], 0) for k in range(parts)]
        rig.tx.post(pieces, buf_id=100 + n)
        frames, vnet, chains = rig.dev.transmit(q)
        assert chains == 1 and not vnet
        assert frames == [ETH + payload]
        sent.append(payload)
        assert rig.tx.take_used() == [(100 + n, 0)]
    assert isinstance(q, PackedQueue)
    assert (q.avail_slot, q.avail_wrap) == (q.used_slot, q.used_wrap)
    assert (q.avail_slot, q.avail_wrap) == (rig.tx.next_avail, rig.tx.avail_wrap)


def test_transmit_batch_of_single_descriptors(rig: Rig) -> None:
    for n in range(6):
        rig.tx.post([(*rig.frame(bytes([n]) * 46), 0)], buf_id=n)
    frames, _vnet, chains = rig.dev.transmit(rig.dev.tx_queue(0))
    assert chains == 6 and [f[-1] for f in frames] == list(range(6))
    assert rig.tx.take_used() == [(n, 0) for n in range(6)]


def test_indirect_transmit(rig: Rig) -> None:
    addr, ln = rig.frame(b"x" * 100)
    table = rig.ram.alloc(32, 16)
    half = ln // 2
    rig.ram.write(table, PDESC.pack(addr, half, 0, 0) + PDESC.pack(addr + half, ln - half, 0, 0))
    rig.tx.post([(table, 32, DESC_F_INDIRECT)], buf_id=5)
    frames, _, _ = rig.dev.transmit(rig.dev.tx_queue(0))
    assert frames == [ETH + b"x" * 100]
    assert rig.tx.take_used() == [(5, 0)]


@pytest.mark.parametrize(
    "entries",
    [
        [(0, 16, DESC_F_INDIRECT)],  # nested
        [(0, 16, DESC_F_AVAIL)],  # ring bits in a table entry
    ],
)
def test_bad_indirect_tables_break_the_queue(rig: Rig, entries: list[tuple[int, int, int]]) -> None:
    addr, ln = rig.frame(b"y" * 20)
    table = rig.ram.alloc(16, 16)
    a, _n, f = entries[0]
    rig.ram.write(table, PDESC.pack(a or addr, ln, 0, f))
    rig.tx.post([(table, 16, DESC_F_INDIRECT)], buf_id=1)
    with pytest.raises(RingError):
        rig.dev.transmit(rig.dev.tx_queue(0))


def test_chain_over_the_whole_ring_is_refused(rig: Rig) -> None:
    addr, ln = rig.frame(b"z")
    q = rig.dev.tx_queue(0)
    rig.tx.post([(addr, ln, DESC_F_NEXT)] * q.num, buf_id=0)  # the last keeps NEXT
    with pytest.raises(RingError, match="whole ring"):
        q.avail_count()
    with pytest.raises(RingError, match=f"runs over the whole ring of {q.num}"):
        rig.dev.transmit(q)


def test_incomplete_chain_waits(rig: Rig) -> None:
    addr, ln = rig.frame(b"w" * 10)
    rig.tx.post([(addr, ln, DESC_F_NEXT)], buf_id=3)
    assert rig.dev.tx_queue(0).avail_count() == 0
    assert rig.dev.transmit(rig.dev.tx_queue(0)) == ([], False, 0)


def test_wrong_lap_is_not_available(rig: Rig) -> None:
    addr, ln = rig.frame(b"v" * 10)
    rig.ram.write(rig.tx.ring, PDESC.pack(addr, ln, 1, DESC_F_USED))  # lap 0 bits in lap 1
    assert rig.dev.tx_queue(0).avail_count() == 0


def test_scans_and_bursts_interleave(rig: Rig) -> None:
    """What ``avail_count`` found (the client asks between bursts) never outlives a burst:
    a burst that takes part of it, then new buffers, are counted afresh."""
    q = rig.dev.tx_queue(0)
    assert isinstance(q, PackedQueue)
    for n in range(3):
        rig.tx.post([(*rig.frame(bytes([n]) * 40), 0)], buf_id=n)
    assert q.avail_count() == 3
    frames, _, chains = rig.dev.transmit(q, budget=2)
    assert chains == 2 and [f[-1] for f in frames] == [0, 1]
    rig.tx.post([(*rig.frame(b"\x03" * 40), 0)], buf_id=3)
    assert q.avail_count() == 2
    frames, _, chains = rig.dev.transmit(q)
    assert chains == 2 and [f[-1] for f in frames] == [2, 3]
    assert rig.tx.take_used() == [(n, 0) for n in range(4)]


def test_quiet_burst_asks_for_no_kicks() -> None:
    """``quiet``: a burst that took buffers also writes DISABLE in the device event
    structure (both layouts' ``set_notification(False)``, done in the same call)."""
    r = Rig(num=8, features=FEATURES | 1 << F_EVENT_IDX)
    try:
        q = r.dev.tx_queue(0)
        q.set_notification(True)
        assert r.tx.device_event()[1] == EVENT_F_DESC
        assert r.dev.transmit(q, quiet=True)[2] == 0
        assert r.tx.device_event()[1] == EVENT_F_DESC  # nothing taken: left as it was
        r.tx.post([(*r.frame(b"k" * 40), 0)], buf_id=0)
        assert r.dev.transmit(q, quiet=True)[2] == 1
        assert r.tx.device_event()[1] == EVENT_F_DISABLE
    finally:
        r.close()


def test_receive_mergeable_spans_buffers() -> None:
    r = Rig(num=8, features=FEATURES | 1 << F_MRG_RXBUF)
    try:
        bufs = []
        for i in range(6):
            addr = r.ram.alloc(512, 64)
            bufs.append(addr)
            r.rx.post([(addr, 512, DESC_F_WRITE)], buf_id=i)
        frames = [ETH + bytes([7]) * 1200, ETH + bytes([8]) * 100]
        assert r.dev.receive(r.dev.rx_queue(0), frames, False) == 2
        used = r.rx.take_used()
        assert [i for i, _ in used] == [0, 1, 2, 3]
        total = 12 + len(frames[0])
        assert [n for _, n in used[:3]] == [512, 512, total - 1024]
        assert struct.unpack("<H", r.ram.read(bufs[0] + 10, 2))[0] == 3  # num_buffers
        data = b"".join(r.ram.read(bufs[k], n) for k, (_, n) in enumerate(used[:3]))
        assert data[12:] == frames[0]
        assert r.ram.read(bufs[3] + 12, used[3][1] - 12) == frames[1]
        flags = struct.unpack("<H", r.ram.read(r.rx.ring + 14, 2))[0]
        assert flags & DESC_F_WRITE and flags & DESC_F_AVAIL and flags & DESC_F_USED
    finally:
        r.close()


def test_receive_chained_buffer(rig: Rig) -> None:
    a, b = rig.ram.alloc(40, 16), rig.ram.alloc(200, 16)
    rig.rx.post([(a, 40, DESC_F_WRITE), (b, 200, DESC_F_WRITE)], buf_id=9)
    frame = ETH + b"q" * 100
    assert rig.dev.receive(rig.dev.rx_queue(0), [frame], False) == 1
    assert rig.rx.take_used() == [(9, 12 + len(frame))]
    assert (rig.ram.read(a, 40) + rig.ram.read(b, 200))[12 : 12 + len(frame)] == frame


def test_frame_bigger_than_a_ring_full_of_chains_is_dropped() -> None:
    """Two buffers of two descriptors fill all 4 slots: the driver cannot post more, so a
    mergeable frame they cannot hold together is dropped (it used to wait forever); with
    one of them posted it waits."""
    r = Rig(num=4, features=FEATURES | 1 << F_MRG_RXBUF)
    try:
        q = r.dev.rx_queue(0)
        r.rx.post([(r.ram.alloc(16, 16), 16, DESC_F_WRITE) for _ in range(2)], buf_id=1)
        assert r.dev.receive(q, [ETH + bytes(200)], False) == 0
        assert r.dev.counters["rx-too-big"] == 0
        r.rx.post([(r.ram.alloc(16, 16), 16, DESC_F_WRITE) for _ in range(2)], buf_id=2)
        assert r.dev.receive(q, [ETH + bytes(200)], False) == 1
        assert r.dev.counters["rx-too-big"] == 1
        assert r.rx.take_used() == []
        assert r.dev.receive(q, [ETH + bytes(6)], False) == 1  # 32 bytes: the first buffer
        assert r.rx.take_used() == [(1, 32)]
    finally:
        r.close()


def test_frames_are_checked_before_the_ring_is_touched(rig: Rig) -> None:
    """A memoryview is a frame like bytes; a str after a good frame is refused before the
    good one is written, and the ring goes on from where it was."""
    for i in range(4):
        rig.rx.post([(rig.ram.alloc(64, 16), 64, DESC_F_WRITE) for _ in range(2)], buf_id=i)
    q = rig.dev.rx_queue(0)
    with pytest.raises(TypeError):
        rig.dev.receive(q, [ETH + bytes(40), "not bytes"], False)  # type: ignore[list-item]
    assert rig.rx.take_used() == []
    frames = [ETH + bytes(40), memoryview(ETH + bytes(46))]
    assert rig.dev.receive(q, frames, False) == 2  # type: ignore[arg-type]
    assert rig.rx.take_used() == [(0, 66), (1, 72)]


def test_enabling_notifications_fences_before_the_recheck(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(fence, "store_load", lambda: calls.append(1))
    q = rig.dev.rx_queue(0)
    q.set_notification(False)
    assert calls == []
    q.set_notification(True)
    assert calls == [1]


def test_vring_base_encoding(rig: Rig) -> None:
    q = rig.dev.tx_queue(0)
    for n in range(11):  # 11 buffers in a ring of 8: one lap and 3
        rig.tx.post([(*rig.frame(b"a" * 40), 0)], buf_id=n)
        rig.dev.transmit(q)
    reply = rig.session.handle(msg(vp.GET_VRING_BASE, state(1, 0)))
    assert reply is not None
    _index, num = struct.unpack_from("=II", reply, 12)
    assert num == (3 | 0 << 15) | (3 | 0 << 15) << 16  # slot 3, lap 0, both indices
    rig.session.handle(msg(vp.SET_VRING_BASE, state(1, 5 | 1 << 15)))
    assert isinstance(q, PackedQueue)
    assert (q.avail_slot, q.avail_wrap, q.used_slot, q.used_wrap) == (5, 1, 5, 1)


def test_base_past_the_ring_is_refused() -> None:
    q = PackedQueue(0)
    q.set_num(8)
    q.set_base(9 | 1 << 15)
    q.set_addr(0, 0, 0)
    with pytest.raises(RingError):
        q.map(NetDevice(1).mem)


def test_ring_size_need_not_be_a_power_of_two() -> None:
    r = Rig(num=6)
    try:
        q = r.dev.tx_queue(0)
        for n in range(20):
            r.tx.post([(*r.frame(bytes([n]) * 30), 0)], buf_id=n % 6)
            frames, _, _ = r.dev.transmit(q)
            assert frames[0][-1] == n and r.tx.take_used() == [(n % 6, 0)]
    finally:
        r.close()


def send(r: Rig, count: int) -> int:
    """Transmit ``count`` buffers one by one; how many calls the device decided on."""
    before = r.dev.counters["calls"]
    for _ in range(count):
        r.tx.post([(*r.frame(b"c" * 40), 0)], buf_id=0)
        r.dev.transmit(r.dev.tx_queue(0))
        r.tx.take_used()
    return r.dev.counters["calls"] - before


def test_call_suppression_without_event_idx(rig: Rig) -> None:
    for flags, calls in ((EVENT_F_ENABLE, 1), (EVENT_F_DISABLE, 0), (EVENT_F_DESC, 1)):
        rig.tx.set_driver_event(flags)
        assert send(rig, 1) == calls, flags


def test_call_suppression_event_idx_off_by_one_lap() -> None:
    """With EVENT_IDX the driver's ``off_wrap`` names a slot and a lap; a slot named in the
    other lap is compared once the used index is in that lap too (DPDK's
    ``vhost_vring_call_packed``: ``off - num`` while the wrap counters differ)."""
    r = Rig(num=8, features=FEATURES | 1 << F_EVENT_IDX)
    try:
        assert send(r, 1) == 1  # the first check after a start always signals
        r.tx.set_driver_event(EVENT_F_DESC, 3 | 1 << 15)  # after slot 3 of lap 1
        assert send(r, 2) == 0  # used 1 -> 3
        assert send(r, 1) == 1  # 3 -> 4: slot 3 was used
        r.tx.set_driver_event(EVENT_F_DESC, 1 | 0 << 15)  # after slot 1 of the next lap
        assert send(r, 4) == 0  # 4 -> 8 (slot 0 of lap 0)
        assert send(r, 1) == 0  # 0 -> 1
        assert send(r, 1) == 1  # 1 -> 2: slot 1 of lap 0 was used
        r.tx.set_driver_event(EVENT_F_DISABLE)
        assert send(r, 3) == 0
    finally:
        r.close()


def test_kick_suppression_written_for_the_driver() -> None:
    r = Rig(num=8, features=FEATURES | 1 << F_EVENT_IDX)
    try:
        q = r.dev.tx_queue(0)
        q.set_notification(False)
        assert r.tx.device_event()[1] == EVENT_F_DISABLE
        r.tx.post([(*r.frame(b"k" * 40), 0)], buf_id=0)
        r.dev.transmit(q)
        q.set_notification(True)
        assert r.tx.device_event() == (1 | 1 << 15, EVENT_F_DESC)
    finally:
        r.close()
    r = Rig(num=8)
    try:
        q = r.dev.tx_queue(0)
        q.set_notification(False)
        q.set_notification(True)
        assert r.tx.device_event()[1] == EVENT_F_ENABLE
    finally:
        r.close()


def test_dirty_log_marks_used_descriptors_in_the_ring() -> None:
    """With LOG_ALL, a packed ring's used entries (written into the descriptor ring, not at
    ``log_guest_addr``) and the device event area are marked in the dirty log."""
    import fcntl

    from drivers.vhost_user.features import F_LOG_ALL

    rig = Rig(features=FEATURES | 1 << F_LOG_ALL)
    size = rig.ram.size // 4096 // 8
    fd = os.memfd_create("vhost-log", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        rig.session.handle(msg(vp.SET_LOG_BASE, struct.pack("=QQ", size, 0), [os.dup(fd)]))
        assert rig.dev.dirty.active
        addr, ln = rig.frame(b"x" * 100)
        rig.tx.post([(addr, ln, 0)], buf_id=7)
        q = rig.dev.tx_queue(0)
        assert rig.dev.transmit(q)[2] == 1
        q.set_notification(True)
        data = os.pread(fd, size, 0)
        marked = {i * 8 + b for i, byte in enumerate(data) for b in range(8) if byte >> b & 1}
        ring_pages = set(
            range(rig.tx.ring // 4096, (rig.tx.ring + 16 * rig.tx.num - 1) // 4096 + 1)
        )
        assert ring_pages <= marked
        assert rig.tx.device_evt // 4096 in marked
        assert rig.tx.take_used() == [(7, 0)]
    finally:
        os.close(fd)
        rig.close()
