"""Properties of the packed virtqueue of the vhost-user back end (hypothesis), the packed
counterparts of ``test_vhost_user_props.py``'s ring properties:

* Hostile rings: random packed descriptors (addresses in, at the edge of and outside the
  region, random flags including the AVAIL/USED bits, lengths and ids, any ring base) make
  ``transmit``/``receive`` either work or raise :class:`RingError`; the guards around the
  region are never written and transmitted frames never contain canary bytes.
* Receive round trip: whatever fits is delivered intact and in order.
* Transmit round trip: random chains over many laps come out intact, in order, with
  their ids, and both sides agree on the indices and wrap counters afterwards.
"""

from __future__ import annotations

import contextlib
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.vhost_user import protocol as vp
from drivers.vhost_user.device import NetDevice
from drivers.vhost_user.features import (
    F_INDIRECT_DESC,
    F_MRG_RXBUF,
    F_RING_PACKED,
    F_VERSION_1,
)
from drivers.vhost_user.packed import PackedQueue
from drivers.vhost_user.virtqueue import DESC_F_WRITE, RingError
from tests.kit.vhost_user import mem_table, msg, state, u64
from tests.property.test_vhost_user_props import CANARY, DESC_ADDR, GUARD, RSIZE, GuardedRam
from tests.unit.test_vhost_user_packed import ETH, PDESC, PackedDriver

NUM = 8
FEATURES = 1 << F_VERSION_1 | 1 << F_MRG_RXBUF | 1 << F_INDIRECT_DESC | 1 << F_RING_PACKED
PDESC_ST = st.tuples(
    DESC_ADDR, st.integers(0, 5000), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)
)


def started(ram: GuardedRam, base: int = 0x8000) -> tuple[NetDevice, list[PackedDriver]]:
    rings = [PackedDriver(ram, NUM) for _ in range(2)]  # type: ignore[arg-type]
    dev = NetDevice(1)
    session = vp.Session(dev)
    msgs = [
        msg(vp.SET_FEATURES, u64(FEATURES)),
        msg(vp.SET_MEM_TABLE, mem_table([ram.spec()]), [os.dup(ram.fd)]),
    ]
    for i, ring in enumerate(rings):
        ring.next_avail = ring.last_used = base & 0x7FFF
        ring.avail_wrap = ring.used_wrap = base >> 15
        msgs += [
            msg(vp.SET_VRING_NUM, state(i, NUM)),
            msg(vp.SET_VRING_BASE, state(i, base)),
            msg(vp.SET_VRING_ADDR, ring.addr_payload(i)),
            msg(vp.SET_VRING_KICK, u64(i | vp.VRING_NOFD)),
        ]
    for m in msgs:
        session.handle(m)
    assert session.refused == 0 and all(q.ready for q in dev.queues)
    assert all(isinstance(q, PackedQueue) for q in dev.queues)
    return dev, rings


def plant(ring: PackedDriver, descs: list[tuple[int, int, int, int]]) -> None:
    for slot, (addr, length, buf_id, flags) in enumerate(descs[:NUM]):
        ring.ram.write(ring.ring + 16 * slot, PDESC.pack(addr, length, buf_id, flags))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(PDESC_ST, min_size=1, max_size=NUM),
    st.integers(0, NUM - 1),
    st.integers(0, 1),
    st.lists(st.integers(14, 3000), min_size=1, max_size=4),
)
def test_hostile_packed_rings_never_escape_the_region(
    descs: list[tuple[int, int, int, int]], slot: int, wrap: int, sizes: list[int]
) -> None:
    ram = GuardedRam()
    dev, rings = started(ram, slot | wrap << 15)
    try:
        plant(rings[1], descs)
        plant(rings[0], [(a, n, i, f | DESC_F_WRITE) for a, n, i, f in descs])
        region = ram.mm[GUARD : GUARD + RSIZE]
        canary_free = bytes([CANARY]) not in region
        try:
            frames, _vnet, _n = dev.transmit(dev.tx_queue(0))
        except RingError:
            frames = []
        if canary_free:
            assert all(bytes([CANARY]) not in f for f in frames)
        with contextlib.suppress(RingError):
            dev.receive(dev.rx_queue(0), [bytes([0x11]) * n for n in sizes], False)
        assert ram.guards_intact()
    finally:
        dev.close()
        ram.close()


@settings(max_examples=50, deadline=None)
@given(st.integers(1, NUM), st.lists(st.integers(14, 1500), min_size=1, max_size=12))
def test_packed_receive_round_trip(posted: int, sizes: list[int]) -> None:
    ram = GuardedRam()
    dev, rings = started(ram)
    try:
        rx = rings[0]
        bufs = {}
        for i in range(posted):
            addr = ram.alloc(2048, 64)
            rx.post([(addr, 2048, DESC_F_WRITE)], buf_id=i)
            bufs[i] = addr
        frames = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
        done = dev.receive(dev.rx_queue(0), frames, False)
        assert done == min(posted, len(frames))
        used = rx.take_used()
        assert [i for i, _ in used] == list(range(done))
        for (buf, n), f in zip(used, frames, strict=False):
            assert ram.read(bufs[buf] + 12, n - 12) == f
        assert ram.guards_intact()
    finally:
        dev.close()
        ram.close()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 3), st.integers(0, 600)), min_size=1, max_size=30),
    st.integers(1, NUM),
)
def test_packed_transmit_round_trip_over_laps(chains: list[tuple[int, int]], batch: int) -> None:
    ram = GuardedRam()
    dev, rings = started(ram)
    try:
        tx = rings[1]
        q = dev.tx_queue(0)
        assert isinstance(q, PackedQueue)
        out: list[bytes] = []
        want: list[bytes] = []
        ids: list[int] = []
        pending = 0
        room = NUM
        for k, (parts, size) in enumerate(chains):
            if parts > room:
                frames, _v, _n = dev.transmit(q)
                out.extend(frames)
                ids.extend(i for i, _ in tx.take_used())
                room, pending = NUM, 0
            payload = bytes([k % 251]) * size
            data = bytes(12) + ETH + payload
            addr = ram.alloc(len(data), 16)
            ram.write(addr, data)
            step = -(-len(data) // parts)
            pieces = [(addr + o, min(step, len(data) - o), 0) for o in range(0, step * parts, step)]
            pieces = [p for p in pieces if p[1] > 0] or [(addr, len(data), 0)]
            tx.post(pieces, buf_id=k % NUM)
            want.append(ETH + payload)
            room -= len(pieces)
            pending += 1
            if pending >= batch:
                frames, _v, _n = dev.transmit(q)
                out.extend(frames)
                ids.extend(i for i, _ in tx.take_used())
                room, pending = NUM, 0
        frames, _v, _n = dev.transmit(q)
        out.extend(frames)
        ids.extend(i for i, _ in tx.take_used())
        assert out == want
        assert ids == [k % NUM for k in range(len(chains))]
        assert (q.avail_slot, q.avail_wrap) == (tx.next_avail, tx.avail_wrap)
        assert (q.used_slot, q.used_wrap) == (tx.last_used, tx.used_wrap)
        assert ram.guards_intact()
    finally:
        dev.close()
        ram.close()
