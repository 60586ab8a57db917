"""Unit tests of the Python front end's packed rings (tools/vhost_user_frontend/packed.py),
driver side: publication order, chains and indirect tables in the ring, used entries over
many laps, IN_ORDER batched completions, untrusted used entries, and both event
suppression areas. :class:`Device` is a small device-side model reading and writing the
same guest memory."""

from __future__ import annotations

import pytest

from tools.vhost_user_frontend.memory import GuestMemory
from tools.vhost_user_frontend.packed import (
    DESC_F_AVAIL,
    DESC_F_USED,
    EVENT_F_DESC,
    EVENT_F_DISABLE,
    EVENT_F_ENABLE,
    PACKED_DTYPE,
    PackedQueue,
)
from tools.vhost_user_frontend.virtqueue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    Segment,
    UsedRingError,
)

WRAP = DESC_F_AVAIL | DESC_F_USED


class Device:
    """The device side of one packed queue."""

    def __init__(self, vq: PackedQueue) -> None:
        self.vq = vq
        self.avail, self.avail_wrap = 0, 1
        self.used, self.used_wrap = 0, 1

    def take(self) -> list[tuple[int, list[tuple[int, int, int]]]]:
        """Available buffers: (id, [(addr, len, flags)]) each."""
        ring, num = self.vq.ring, self.vq.num
        out = []
        while True:
            pieces = []
            slot, wrap = self.avail, self.avail_wrap
            while True:
                f = int(ring["flags"][slot])
                want = DESC_F_AVAIL if wrap else DESC_F_USED
                if f & WRAP != want:
                    return out
                pieces.append((int(ring["addr"][slot]), int(ring["len"][slot]), f & ~WRAP))
                buf = int(ring["id"][slot])
                slot += 1
                if slot == num:
                    slot, wrap = 0, wrap ^ 1
                if not f & DESC_F_NEXT:
                    break
            self.avail, self.avail_wrap = slot, wrap
            out.append((buf, pieces))

    def use(self, buf: int, length: int, slots: int) -> None:
        ring = self.vq.ring
        ring["id"][self.used] = buf
        ring["len"][self.used] = length
        ring["flags"][self.used] = WRAP if self.used_wrap else 0
        self.used += slots
        if self.used >= self.vq.num:
            self.used -= self.vq.num
            self.used_wrap ^= 1


@pytest.fixture
def mem() -> GuestMemory:
    return GuestMemory(((0, 1 << 20),))


def test_heads_become_visible_only_on_publish(mem: GuestMemory) -> None:
    vq = PackedQueue(mem, 8)
    dev = Device(vq)
    vq.claim()
    for i in range(3):
        vq.write_desc(i, 0x1000 * (i + 1), 100 + i)
    vq.push([0, 1, 2])
    assert dev.take() == []
    vq.publish()
    assert dev.take() == [(i, [(0x1000 * (i + 1), 100 + i, 0)]) for i in range(3)]
    assert vq.base == 1 << 15 and vq.avail_idx == 3 | 1 << 15


def test_chains_and_indirect_tables_in_the_ring(mem: GuestMemory) -> None:
    vq = PackedQueue(mem, 8, indirect_max=4)
    dev = Device(vq)
    head = vq.add_chain([Segment(0x1000, 10), Segment(0x2000, 20), Segment(0x3000, 30, True)])
    vq.publish()
    ((buf, pieces),) = dev.take()
    assert buf == head
    assert pieces == [(0x1000, 10, DESC_F_NEXT), (0x2000, 20, DESC_F_NEXT), (0x3000, 30, 2)]
    head = vq.add_chain([Segment(0x4000, 40), Segment(0x5000, 50, True)], indirect=True)
    vq.publish()
    ((buf, ((table, length, flags),)),) = dev.take()
    assert buf == head and flags == DESC_F_INDIRECT and length == 32
    entries = mem.array(table, PACKED_DTYPE, 2)
    assert [(int(e["addr"]), int(e["len"]), int(e["flags"])) for e in entries] == [
        (0x4000, 40, 0),
        (0x5000, 50, DESC_F_WRITE),
    ]


def test_used_entries_over_many_laps(mem: GuestMemory) -> None:
    vq = PackedQueue(mem, 8)
    dev = Device(vq)
    for n in range(60):
        parts = 1 + n % 3
        head = vq.add_chain([Segment(0x1000 * (k + 1), 64) for k in range(parts)])
        vq.publish()
        ((buf, pieces),) = dev.take()
        assert buf == head and len(pieces) == parts
        dev.use(buf, 7, parts)
        elems = vq.reap()
        assert [(int(e["id"]), int(e["len"])) for e in elems] == [(head, 7)]
        assert vq.num_free == 8 and vq.in_flight == 0
    assert (vq.last_used, vq.used_wrap) == (dev.used, dev.used_wrap)
    assert (vq.next_avail, vq.avail_wrap) == (dev.avail, dev.avail_wrap)


def test_mid_ring_start_never_reads_untouched_slots_as_used(mem: GuestMemory) -> None:
    """Starting at slot 6 of 8: once our used index wraps into lap 2 ahead of what we
    made available there, the slots we never wrote must not read as used (zero flags
    would: AVAIL and USED both equal to wrap counter 0)."""
    vq = PackedQueue(mem, 8, base=6)
    dev = Device(vq)
    dev.avail = dev.used = 6
    heads = [vq.add_chain([Segment(0x1000 * (k + 1), 64)]) for k in range(3)]
    vq.publish()
    assert [buf for buf, _ in dev.take()] == heads
    for buf in heads:
        dev.use(buf, 0, 1)
    assert [int(e["id"]) for e in vq.reap()] == heads
    assert (vq.last_used, vq.used_wrap) == (1, 0)
    assert len(vq.reap()) == 0 and not vq.broken and vq.bad_used == 0
    assert dev.take() == []  # nor as available to the device


def test_in_order_batched_completion(mem: GuestMemory) -> None:
    vq = PackedQueue(mem, 8)
    vq.in_order = True
    dev = Device(vq)
    heads = [vq.add_chain([Segment(0x1000, 64)] * (1 + k % 2)) for k in range(4)]
    vq.publish()
    assert len(dev.take()) == 4
    dev.use(heads[2], 0, 1 + 2 + 1)  # one entry for the first three buffers
    elems = vq.reap()
    assert [int(e["id"]) for e in elems] == heads[:3]
    assert vq.in_flight == 1 and vq.last_used == 4
    dev.use(heads[3], 0, 2)
    assert [int(e["id"]) for e in vq.reap()] == heads[3:]
    assert vq.num_free == 8


def test_untrusted_used_entries(mem: GuestMemory) -> None:
    vq = PackedQueue(mem, 8)
    dev = Device(vq)
    vq.add_chain([Segment(0x1000, 64)])
    vq.publish()
    dev.take()
    dev.use(5, 0, 1)  # not outstanding
    assert len(vq.reap()) == 0 and vq.broken and vq.bad_used == 1
    assert len(vq.reap()) == 0  # nothing more once broken
    vq.reset_rings()
    vq.add_chain([Segment(0x1000, 64)])
    vq.publish()
    dev = Device(vq)
    dev.take()
    dev.use(200, 0, 1)  # out of range
    with pytest.raises(UsedRingError):
        vq.reap(strict=True)


def test_kick_decisions(mem: GuestMemory) -> None:
    vq = PackedQueue(mem, 8, event_idx=True)
    vq.claim()

    def post(n: int) -> bool:
        ids = list(range(n))
        vq.outstanding[:] = False
        vq.push(ids)
        return vq.publish()

    assert post(1)  # ENABLE (zeroed area)
    vq.device_evt[1] = EVENT_F_DISABLE
    assert not post(1)
    vq.device_evt[0] = 4 | 1 << 15  # kick once slot 4 of lap 1 is made available
    vq.device_evt[1] = EVENT_F_DESC
    assert not post(2)  # slots 2, 3
    assert post(1)  # slot 4
    vq.device_evt[0] = 1 | 0 << 15  # slot 1 of the next lap
    assert not post(3)  # slots 5..7
    assert not post(1)  # slot 0, lap 0
    assert post(1)  # slot 1, lap 0
    assert not post(0)


def test_interrupt_requests(mem: GuestMemory) -> None:
    vq = PackedQueue(mem, 8, event_idx=True)
    vq.set_interrupts(False)
    assert int(vq.driver_evt[1]) == EVENT_F_DISABLE
    vq.set_interrupts(True)
    assert (int(vq.driver_evt[0]), int(vq.driver_evt[1])) == (1 << 15, EVENT_F_DESC)
    plain = PackedQueue(mem, 8)
    plain.set_interrupts(True)
    assert int(plain.driver_evt[1]) == EVENT_F_ENABLE
