"""The virtio-net data path over split rings: transmit and receive batches, mergeable
buffers, offload headers, notifications, and hostile rings (each breaks only its queue and
nothing outside the shared memory is touched)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from drivers.vhost_user import fence
from drivers.vhost_user import protocol as vp
from drivers.vhost_user.device import STATUS_NEEDS_RESET, NetDevice, rarp_frame
from drivers.vhost_user.features import (
    F_CSUM,
    F_EVENT_IDX,
    F_GUEST_CSUM,
    F_GUEST_TSO4,
    F_HOST_TSO4,
    F_INDIRECT_DESC,
    F_MRG_RXBUF,
    F_PROTOCOL_FEATURES,
    F_VERSION_1,
)
from drivers.vhost_user.virtqueue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    USED_F_NO_NOTIFY,
    RingError,
)
from netstack.proto import vnet as vnet_hdr
from tests.kit.vhost_user import DEFAULT_FEATURES, RING_IMPLS, GuestSetup, use_ring_impl
from tests.support import frame


@pytest.fixture(autouse=True, params=RING_IMPLS)
def ring_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the compiled split-ring loops and with the Python ones."""
    use_ring_impl(monkeypatch, request.param)
    return str(request.param)


class Rig:
    def __init__(self, features: int = DEFAULT_FEATURES, num: int = 64, pairs: int = 1) -> None:
        self.guest = GuestSetup(pairs=pairs, num=num, features=features)
        self.broken: list[tuple[int, str]] = []
        self.dev = NetDevice(pairs, on_broken=lambda q, why: self.broken.append((q.index, why)))
        self.session = vp.Session(self.dev)
        for m in self.guest.start_messages():
            self.session.handle(m)
        assert self.session.refused == 0

    @property
    def tx(self):  # type: ignore[no-untyped-def]
        return self.dev.tx_queue(0)

    @property
    def rx(self):  # type: ignore[no-untyped-def]
        return self.dev.rx_queue(0)

    def transmit(self) -> tuple[list[bytes], bool, int]:
        try:
            return self.dev.transmit(self.tx)
        except RingError as exc:
            self.dev.break_queue(self.tx, str(exc))
            return [], False, 0

    def close(self) -> None:
        self.dev.close()
        self.guest.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def make_rig(**kw: int) -> Rig:
    return Rig(**kw)


# -- transmit ----------------------------------------------------------------------------------


def test_transmit_batch_strips_headers_and_returns_buffers(rig: Rig) -> None:
    frames = [frame(i, size=60 + i) for i in range(10)]
    rig.guest.send_frames(frames)
    got, vnet, chains = rig.transmit()
    assert (got, vnet, chains) == (frames, False, 10)
    used = rig.guest.rings[1].take_used()
    assert [n for _h, n in used] == [0] * 10  # transmit buffers: nothing written
    assert rig.transmit() == ([], False, 0)


def test_transmit_without_consumer_copies_nothing_but_returns_buffers(rig: Rig) -> None:
    rig.guest.send_frames([frame(1)] * 5)
    assert rig.dev.transmit(rig.tx, want_frames=False) == ([], False, 5)
    assert len(rig.guest.rings[1].take_used()) == 5


def test_transmit_chains_and_indirect_tables(rig: Rig) -> None:
    ram, ring = rig.guest.ram, rig.guest.rings[1]
    f = frame(7, size=200)
    data = bytes(12) + f
    # a chain of three pieces
    pieces = [(0, 5), (5, 100), (100, len(data))]
    bufs = []
    for a, b in pieces:
        addr = ram.alloc(b - a)
        ram.write(addr, data[a:b])
        bufs.append((addr, b - a, 0))
    ring.publish(ring.add_chain(bufs))
    # an indirect table of two entries
    table = ram.alloc(32)
    h_addr, f_addr = ram.alloc(12), ram.alloc(len(f))
    ram.write(h_addr, bytes(12))
    ram.write(f_addr, f)
    ram.write(table, struct.pack("<QIHH", h_addr, 12, DESC_F_NEXT, 1))
    ram.write(table + 16, struct.pack("<QIHH", f_addr, len(f), 0, 0))
    ring.publish(ring.add_chain([(table, 32, DESC_F_INDIRECT)]))
    got, vnet, chains = rig.transmit()
    assert got == [f, f] and chains == 2 and not vnet


def test_runts_and_oversized_frames_are_dropped_and_counted(rig: Rig) -> None:
    rig.guest.send_frames([b"\x01" * 10, frame(1), bytes(70000)])
    got, _vnet, chains = rig.transmit()
    assert got == [frame(1)] and chains == 3
    assert rig.dev.counters["tx-malformed"] == 2 and not rig.broken


def test_offload_headers_travel_with_the_batch() -> None:
    rig = make_rig(features=DEFAULT_FEATURES | 1 << F_CSUM | 1 << F_HOST_TSO4)
    try:
        hdr = vnet_hdr.pack(vnet_hdr.NEEDS_CSUM, vnet_hdr.GSO_NONE, 0, 0, 34, 16)
        rig.guest.send_frames([frame(1)], hdr=bytes(12))
        rig.guest.send_frames([frame(2)], hdr=hdr)
        got, vnet, _ = rig.transmit()
        assert vnet and got == [bytes(12) + frame(1), hdr + frame(2)]
        rig.guest.send_frames([frame(3)])  # no offload asked: plain batch
        assert rig.transmit()[:2] == ([frame(3)], False)
    finally:
        rig.close()


def test_disabled_transmit_ring_waits_for_enable(rig: Rig) -> None:
    rig.session.handle(vp.Message(vp.SET_VRING_ENABLE, 1, struct.pack("=II", 1, 0)))
    rig.guest.send_frames([frame(1)])
    assert rig.transmit() == ([], False, 0)
    rig.session.handle(vp.Message(vp.SET_VRING_ENABLE, 1, struct.pack("=II", 1, 1)))
    assert rig.transmit() == ([frame(1)], False, 1)


# -- receive -----------------------------------------------------------------------------------


def test_receive_writes_header_with_num_buffers_and_frame(rig: Rig) -> None:
    rig.guest.post_rx_buffers(8)
    frames = [frame(i, size=64 + i) for i in range(5)]
    assert rig.dev.receive(rig.rx, frames, False) == 5
    got = rig.guest.received()
    assert [f for _h, f in got] == frames
    assert all(h == bytes(10) + b"\x01\x00" for h, _f in got)


def test_receive_stops_when_buffers_run_out(rig: Rig) -> None:
    rig.guest.post_rx_buffers(3)
    assert rig.dev.receive(rig.rx, [frame(i) for i in range(5)], False) == 3
    assert rig.dev.receive(rig.rx, [frame(9)], False) == 0
    rig.guest.post_rx_buffers(2)
    assert rig.dev.receive(rig.rx, [frame(3), frame(4)], False) == 2


def test_mergeable_buffers_carry_big_frames(rig: Rig) -> None:
    rig.guest.post_rx_buffers(8, size=512)
    big = frame(1, size=1400)
    assert rig.dev.receive(rig.rx, [frame(0), big], False) == 2
    ring, ram = rig.guest.rings[0], rig.guest.ram
    used = ring.take_used()
    assert [n for _h, n in used] == [76, 512, 512, 1412 - 1024]
    data = b""
    for head, n in used[1:]:
        addr = struct.unpack("<Q", ram.read(ring.desc + 16 * head, 8))[0]
        data += ram.read(addr, n)
    assert struct.unpack_from("<H", data, 10)[0] == 3 and data[12:] == big


def test_without_mergeable_too_big_frames_are_dropped() -> None:
    rig = make_rig(features=1 << F_VERSION_1 | 1 << F_PROTOCOL_FEATURES)
    try:
        rig.guest.post_rx_buffers(4, size=256)
        assert rig.dev.receive(rig.rx, [frame(1, size=600), frame(2)], False) == 2
        assert [f for _h, f in rig.guest.received()] == [frame(2)]
        assert rig.dev.counters["rx-too-big"] == 1
    finally:
        rig.close()


def test_receive_into_chained_buffers() -> None:
    rig = make_rig(features=1 << F_VERSION_1 | 1 << F_PROTOCOL_FEATURES)  # no MRG: big chains
    try:
        ram, ring = rig.guest.ram, rig.guest.rings[0]
        addrs = [ram.alloc(100) for _ in range(4)]
        ring.publish(ring.add_chain([(a, 100, DESC_F_WRITE) for a in addrs]))
        f = frame(5, size=300)
        assert rig.dev.receive(rig.rx, [f], False) == 1
        ((_head, n),) = ring.take_used()
        data = b"".join(ram.read(a, 100) for a in addrs)[:n]
        assert n == 312 and data[12:] == f
    finally:
        rig.close()


def _post_chains(rig: Rig, count: int, pieces: int = 2, size: int = 16) -> None:
    ram, ring = rig.guest.ram, rig.guest.rings[0]
    for _ in range(count):
        ring.publish(ring.add_chain([(ram.alloc(size), size, DESC_F_WRITE) for _ in range(pieces)]))


def test_frame_bigger_than_a_table_full_of_chains_is_dropped() -> None:
    """Two chains of two descriptors hold all 4 of the table: the driver cannot post more,
    so a mergeable frame they cannot hold together is dropped (it used to wait forever),
    and the next frame goes into the same buffers."""
    rig = make_rig(num=4)
    try:
        _post_chains(rig, 2)
        assert rig.dev.receive(rig.rx, [frame(1, size=200)], False) == 1
        assert rig.dev.counters["rx-too-big"] == 1
        assert rig.guest.rings[0].take_used() == []
        small = frame(2, size=40)  # 52 bytes with the header: both chains
        assert rig.dev.receive(rig.rx, [small], False) == 1
        assert [n for _h, n in rig.guest.rings[0].take_used()] == [32, 20]
    finally:
        rig.close()


def test_frame_bigger_than_posted_chains_waits_while_the_table_has_room() -> None:
    rig = make_rig(num=4)
    try:
        _post_chains(rig, 1)
        assert rig.dev.receive(rig.rx, [frame(1, size=200)], False) == 0
        assert rig.dev.counters["rx-too-big"] == 0
        assert rig.guest.rings[0].take_used() == []
    finally:
        rig.close()


def test_any_contiguous_bytes_like_frame_is_received(rig: Rig) -> None:
    rig.guest.post_rx_buffers(4)
    frames = [frame(i, size=64) for i in range(4)]
    given = [
        frames[0],
        memoryview(frames[1]),
        bytearray(frames[2]),
        memoryview(frames[3]).cast("H"),
    ]
    assert rig.dev.receive(rig.rx, given, False) == 4  # type: ignore[arg-type]
    assert [f for _h, f in rig.guest.received()] == frames


@pytest.mark.parametrize(
    ("bad", "vnet", "error"),
    [
        ("a str", False, TypeError),
        (memoryview(bytes(200))[::2], False, TypeError),
        (bytes(vnet_hdr.HDR_LEN - 1), True, ValueError),
    ],
)
def test_a_bad_frame_is_refused_before_the_ring_is_touched(
    rig: Rig, bad: object, vnet: bool, error: type[Exception]
) -> None:
    """The frames before it are not written either: the ring's state stays whole (the
    compiled loops used to publish them and then lose the indices). Chained buffers: the
    loop that completes one frame at a time."""
    _post_chains(rig, 4, size=128)
    good = bytes(vnet_hdr.HDR_LEN) + frame(0) if vnet else frame(0)
    with pytest.raises(error):
        rig.dev.receive(rig.rx, [good, bad], vnet)  # type: ignore[list-item]
    assert rig.guest.rings[0].take_used() == []
    assert rig.dev.receive(rig.rx, [frame(1), frame(2)], False) == 2
    assert [f for _h, f in rig.guest.received()] == [frame(1), frame(2)]


def test_enabling_notifications_fences_before_the_recheck(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """set_notification(True) is a store its caller follows with a load of the avail
    index: a full fence between them (compiled or not), none when disabling."""
    fence.store_load()  # the real one runs
    calls: list[int] = []
    monkeypatch.setattr(fence, "store_load", lambda: calls.append(1))
    for q in (rig.rx, rig.tx):
        q.set_notification(False)
        assert calls == []
        q.set_notification(True)
        assert calls == [1]
        calls.clear()


def test_vnet_frames_keep_offloads_the_guest_negotiated() -> None:
    features = DEFAULT_FEATURES | 1 << F_GUEST_CSUM | 1 << F_GUEST_TSO4
    rig = make_rig(features=features)
    try:
        assert rig.dev.guest_offloads
        rig.guest.post_rx_buffers(4, size=4096)
        hdr = vnet_hdr.pack(vnet_hdr.NEEDS_CSUM, vnet_hdr.GSO_NONE, 0, 0, 34, 16)
        frames, vnet = rig.dev.prepare_rx([hdr + frame(1)], True)
        assert vnet and rig.dev.receive(rig.rx, frames, vnet) == 1
        ((h, f),) = rig.guest.received()
        assert h == hdr[:10] + b"\x01\x00" and f == frame(1)
    finally:
        rig.close()


def test_rarp_frame_layout() -> None:
    mac = bytes.fromhex("525400abcdef")
    f = rarp_frame(mac)
    assert len(f) == 60 and f[:6] == b"\xff" * 6 and f[6:12] == mac and f[12:14] == b"\x80\x35"
    assert f[20:22] == b"\x00\x03" and f[22:28] == mac and f[32:38] == mac


# -- notifications -----------------------------------------------------------------------------


def test_calls_follow_no_interrupt_flag(rig: Rig) -> None:
    rig.guest.send_frames([frame(1)])
    rig.transmit()
    assert rig.guest.calls_pending(1) == 1
    rig.guest.rings[1].set_avail_flags(1)  # VRING_AVAIL_F_NO_INTERRUPT
    rig.guest.send_frames([frame(2)])
    rig.transmit()
    assert rig.guest.calls_pending(1) == 0


def test_event_idx_calls_only_when_used_event_is_crossed() -> None:
    rig = make_rig(features=DEFAULT_FEATURES | 1 << F_EVENT_IDX)
    try:
        ring = rig.guest.rings[1]
        rig.guest.send_frames([frame(1)])
        rig.transmit()
        assert rig.guest.calls_pending(1) == 1  # first one always
        ring.set_used_event(5)  # the driver wants a call when used passes 5
        for i in range(3):
            rig.guest.send_frames([frame(i)])
            rig.transmit()
        assert rig.guest.calls_pending(1) == 0
        rig.guest.send_frames([frame(9)] * 3)
        rig.transmit()  # used goes 4 -> 7, crossing 5
        assert rig.guest.calls_pending(1) == 1
        # kick suppression: avail_event tells the driver where we want the next kick
        rig.tx.set_notification(True)
        assert ring.avail_event == rig.tx.last_avail
    finally:
        rig.close()


def test_kick_suppression_flag_without_event_idx(rig: Rig) -> None:
    rig.tx.set_notification(False)
    assert rig.guest.rings[1].used_flags == USED_F_NO_NOTIFY
    rig.tx.set_notification(True)
    assert rig.guest.rings[1].used_flags == 0


def test_used_ring_wraps(rig: Rig) -> None:
    for round_ in range(5):
        rig.guest.post_rx_buffers(40, size=128)
        assert rig.dev.receive(rig.rx, [frame(i) for i in range(40)], False) == 40
        got = rig.guest.received()
        assert [f for _h, f in got] == [frame(i) for i in range(40)], round_
        rig.guest.rings[0]._free = list(range(64))
    assert rig.rx.used_idx == 200


# -- hostile rings -----------------------------------------------------------------------------


def hostile(rig: Rig, build: str) -> None:
    ram, ring = rig.guest.ram, rig.guest.rings[1]
    good = ram.alloc(100)
    ram.write(good, bytes(12) + frame(1))
    if build == "outside":
        ring.publish(ring.add_chain([(ram.size + 4096, 76, 0)]))
    elif build == "straddle":
        ring.publish(ring.add_chain([(ram.size - 10, 76, 0)]))
    elif build == "wrap":
        ring.publish(ring.add_chain([(2**64 - 16, 76, 0)]))
    elif build == "loop":
        ring.set_desc(0, good, 10, DESC_F_NEXT, 1)
        ring.set_desc(1, good, 10, DESC_F_NEXT, 0)
        ring.publish(0)
    elif build == "next-past-table":
        ring.set_desc(0, good, 10, DESC_F_NEXT, 500)
        ring.publish(0)
    elif build == "head-past-table":
        ring.publish(1000)
    elif build == "avail-idx-jump":
        ring.set_avail_idx(ring.num + 5)
    elif build == "writable-in-tx":
        ring.publish(ring.add_chain([(good, 76, DESC_F_WRITE)]))
    elif build == "unknown-flag":
        ring.publish(ring.add_chain([(good, 76, 0x10)]))
    elif build == "zero-length":
        ring.publish(ring.add_chain([(good, 0, 0)]))
    elif build == "huge-chain":  # longer than the ring (every descriptor chained)
        for i in range(ring.num):
            ring.set_desc(i, good, 1, DESC_F_NEXT, (i + 1) % ring.num)
        ring.publish(0)
    elif build == "nested-indirect":
        table = ram.alloc(16)
        ram.write(table, struct.pack("<QIHH", table, 16, DESC_F_INDIRECT, 0))
        ring.publish(ring.add_chain([(table, 16, DESC_F_INDIRECT)]))
    elif build == "indirect-bad-size":
        ring.publish(ring.add_chain([(good, 15, DESC_F_INDIRECT)]))
    elif build == "indirect-outside":
        ring.publish(ring.add_chain([(ram.size * 2, 32, DESC_F_INDIRECT)]))
    elif build == "indirect-with-next":
        ring.set_desc(0, good, 32, DESC_F_INDIRECT | DESC_F_NEXT, 1)
        ring.publish(0)
    elif build == "indirect-loop":
        table = ram.alloc(32)
        ram.write(table, struct.pack("<QIHH", good, 5, DESC_F_NEXT, 1))
        ram.write(table + 16, struct.pack("<QIHH", good, 5, DESC_F_NEXT, 0))
        ring.publish(ring.add_chain([(table, 32, DESC_F_INDIRECT)]))
    else:
        raise AssertionError(build)


HOSTILE = [
    "outside",
    "straddle",
    "wrap",
    "loop",
    "next-past-table",
    "head-past-table",
    "avail-idx-jump",
    "writable-in-tx",
    "unknown-flag",
    "zero-length",
    "huge-chain",
    "nested-indirect",
    "indirect-bad-size",
    "indirect-outside",
    "indirect-with-next",
    "indirect-loop",
]


@pytest.mark.parametrize("build", HOSTILE)
def test_hostile_transmit_ring_breaks_only_that_queue(rig: Rig, build: str) -> None:
    assert rig.dev.has(F_INDIRECT_DESC)
    rig.guest.post_rx_buffers(4)
    hostile(rig, build)
    got, _vnet, _chains = rig.transmit()
    assert got == []
    assert rig.broken and rig.broken[0][0] == 1, rig.broken
    assert rig.tx.broken is not None and not rig.tx.ready
    assert rig.dev.status & STATUS_NEEDS_RESET
    assert rig.dev.counters["rings-broken"] == 1
    # the other queue of the device still works
    assert rig.dev.receive(rig.rx, [frame(3)], False) == 1
    # the front end recovers the queue by configuring it again
    rig.session.handle(vp.Message(vp.GET_VRING_BASE, 1, struct.pack("=II", 1, 0)))
    rig.session.handle(vp.Message(vp.SET_VRING_BASE, 1, struct.pack("=II", 1, 0)))
    assert rig.tx.broken is None


def test_hostile_receive_buffers_break_the_receive_queue(rig: Rig) -> None:
    ring = rig.guest.rings[0]
    ring.publish(ring.add_chain([(rig.guest.ram.size + 64, 2048, DESC_F_WRITE)]))
    with pytest.raises(RingError):
        rig.dev.receive(rig.rx, [frame(1)], False)
    # a read-only buffer in the receive ring
    rig2 = make_rig()
    try:
        ring2 = rig2.guest.rings[0]
        addr = rig2.guest.ram.alloc(64)
        ring2.publish(ring2.add_chain([(addr, 32, 0), (addr + 32, 32, DESC_F_WRITE)]))
        with pytest.raises(RingError, match="read-only"):
            rig2.dev.receive(rig2.rx, [frame(1)], False)
    finally:
        rig2.close()


def test_ring_addresses_outside_memory_break_at_start() -> None:
    g = GuestSetup(num=64)
    dev = NetDevice(1)
    session = vp.Session(dev)
    try:
        msgs = g.start_messages()
        for m in msgs:
            if m.request == vp.SET_VRING_ADDR and m.payload[:4] == b"\0\0\0\0":
                m.payload = struct.pack("=IIQQQQ", 0, 0, 1 << 50, 1 << 50, 1 << 50, 0)
            session.handle(m)
        assert dev.rx_queue(0).broken is not None and dev.tx_queue(0).ready
    finally:
        dev.close()
        g.close()


def test_unaligned_ring_is_refused() -> None:
    g = GuestSetup(num=64)
    dev = NetDevice(1)
    session = vp.Session(dev)
    try:
        for m in g.start_messages():
            if m.request == vp.SET_VRING_ADDR and m.payload[:4] == b"\1\0\0\0":
                idx, fl, d, u, a, lg = struct.unpack("=IIQQQQ", m.payload)
                m.payload = struct.pack("=IIQQQQ", idx, fl, d, u + 2, a, lg)
            session.handle(m)
        assert "aligned" in (dev.tx_queue(0).broken or "")
    finally:
        dev.close()
        g.close()


@pytest.mark.parametrize("mrg", [True, False])
def test_legacy_and_modern_header_sizes(mrg: bool) -> None:
    features = (1 << F_MRG_RXBUF if mrg else 0) | 1 << F_PROTOCOL_FEATURES
    rig = make_rig(features=features)
    try:
        hl = rig.dev.hdr_len
        assert hl == (12 if mrg else 10)
        rig.guest.send_frames([frame(4)], hdr=bytes(hl))
        assert rig.transmit()[0] == [frame(4)]
        rig.guest.post_rx_buffers(2)
        rig.dev.receive(rig.rx, [frame(5)], False)
        ((h, f),) = rig.guest.received(hdr_len=hl)
        assert f == frame(5) and len(h) == hl
    finally:
        rig.close()


@pytest.mark.parametrize("mrg", [True, False])
def test_receive_buffer_smaller_than_the_header_is_given_back_empty(mrg: bool) -> None:
    features = (1 << F_MRG_RXBUF if mrg else 0) | 1 << F_VERSION_1 | 1 << F_PROTOCOL_FEATURES
    rig = make_rig(features=features)
    try:
        ram, ring = rig.guest.ram, rig.guest.rings[0]
        ring.publish(ring.add_chain([(ram.alloc(16), 4, DESC_F_WRITE)]))
        rig.guest.post_rx_buffers(1)
        assert rig.dev.receive(rig.rx, [frame(1)], False) == 1
        used = ring.take_used()
        assert used[0][1] == 0 and used[1][1] == 76 and len(used) == 2
        assert rig.dev.counters["rx-bad-buffers"] == 1 and not rig.broken
        # the same through the chain walker (a two-descriptor buffer of 4 + 4 bytes)
        ring.publish(
            ring.add_chain([(ram.alloc(8), 4, DESC_F_WRITE), (ram.alloc(8), 4, DESC_F_WRITE)])
        )
        rig.guest.post_rx_buffers(1)
        assert rig.dev.receive(rig.rx, [frame(2)], False) == 1
        assert [n for _h, n in ring.take_used()] == [0, 76]
    finally:
        rig.close()
