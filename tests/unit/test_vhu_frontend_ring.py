"""Unit tests of the Python vhost-user front end's ring machinery, guest memory and wire
codec (tools/vhost_user_frontend): u16 index wraparound, the event-idx notify rule,
used-ring validation, address translation and message packing.

A small device-side model (:class:`Device`, here and in the net tests) reads our rings
from the same guest memory, the way a back end would.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tools.vhost_user_frontend.memory import AddressError, GuestMemory
from tools.vhost_user_frontend.protocol import (
    HEADER,
    MAX_PAYLOAD,
    BackendFailure,
    MemRegion,
    Reply,
    ReplyError,
    ReplyParser,
    Request,
    check_ack,
    check_reply,
    msg_mem_reg,
    msg_mem_table,
    msg_none,
    msg_rarp,
    msg_state,
    msg_u64,
    msg_vring_addr,
    msg_vring_file,
)
from tools.vhost_user_frontend.virtqueue import (
    AVAIL_F_NO_INTERRUPT,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    USED_F_NO_NOTIFY,
    Segment,
    SplitQueue,
    UsedRingError,
    need_event,
    u16,
)

MiB = 1 << 20


class Device:
    """The device side of one split queue, reading and writing guest memory directly."""

    def __init__(self, mem: GuestMemory, vq: SplitQueue) -> None:
        self.mem = mem
        self.vq = vq
        self.last_avail = vq.base
        self.used_idx = vq.base

    def avail_idx(self) -> int:
        return int(self.vq.avail[1])

    def pop(self) -> list[int]:
        """Heads made available since the last call."""
        heads = []
        while self.last_avail != self.avail_idx():
            heads.append(int(self.vq.avail[2 + self.last_avail % self.vq.num]))
            self.last_avail = u16(self.last_avail + 1)
        return heads

    def chain(self, head: int) -> list[tuple[int, int, int]]:
        """(addr, len, flags) of a chain, indirect tables expanded, bounded by num."""
        out = []
        table = self.vq.desc
        i = head
        for _ in range(self.vq.num):
            addr, ln, flags, nxt = (int(x) for x in table[i].tolist())
            if flags & DESC_F_INDIRECT:
                from tools.vhost_user_frontend.virtqueue import DESC_DTYPE

                table = self.mem.array(addr, DESC_DTYPE, ln // 16)
                i = 0
                continue
            out.append((addr, ln, flags))
            if not flags & DESC_F_NEXT:
                break
            i = nxt
        return out

    def read_chain(self, head: int) -> bytes:
        return b"".join(self.mem.read(a, n) for a, n, f in self.chain(head) if not f & DESC_F_WRITE)

    def use(self, elems: list[tuple[int, int]]) -> None:
        for head, ln in elems:
            self.vq.used_ring[self.used_idx % self.vq.num] = (head, ln)
            self.used_idx = u16(self.used_idx + 1)
        self.vq.used_hdr[1] = self.used_idx


# -- index arithmetic ----------------------------------------------------------------------


def test_u16_wraps() -> None:
    assert u16(65535 + 1) == 0
    assert u16(3 - 5) == 65534


def _need_event_reference(event: int, new: int, old: int) -> bool:
    """Spelled out: did the index move past ``event`` going from old to new (mod 2**16)?"""
    steps = (new - old) % 65536
    return any((old + k) % 65536 == event for k in range(steps))


@given(st.integers(0, 65535), st.integers(0, 65535), st.integers(0, 300))
def test_need_event_matches_reference(event: int, old: int, delta: int) -> None:
    new = (old + delta) % 65536
    assert need_event(event, new, old) == _need_event_reference(event, new, old)


@pytest.mark.parametrize(
    ("event", "new", "old", "expected"),
    [
        (5, 6, 5, True),  # exactly the entry the device waits for
        (5, 5, 4, False),  # not reached yet
        (4, 6, 5, False),  # already passed before old
        (65535, 2, 65534, True),  # across the wrap
        (0, 2, 65534, True),
        (3, 2, 65534, False),
        (7, 7, 7, False),  # nothing new
    ],
)
def test_need_event_cases(event: int, new: int, old: int, expected: bool) -> None:
    assert need_event(event, new, old) is expected


# -- the queue -----------------------------------------------------------------------------


@pytest.fixture
def mem() -> GuestMemory:
    m = GuestMemory([(0, 4 * MiB)])
    yield m
    m.close()


def test_layout_and_alignment(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 256)
    assert vq.layout.desc % 4096 == 0
    assert vq.layout.avail % 2 == 0
    assert vq.layout.used % 4096 == 0
    desc, used, avail = vq.user_addresses()
    assert mem.gpa_of_uva(desc) == vq.layout.desc
    assert mem.gpa_of_uva(used) == vq.layout.used
    assert mem.gpa_of_uva(avail) == vq.layout.avail


@pytest.mark.parametrize("num", [0, 3, 65536])
def test_bad_queue_sizes(mem: GuestMemory, num: int) -> None:
    with pytest.raises(ValueError):
        SplitQueue(mem, num)


@pytest.mark.parametrize("base", [0, 65530, 65535])
def test_chains_round_trip_across_index_wrap(mem: GuestMemory, base: int) -> None:
    vq = SplitQueue(mem, 8, base=base)
    dev = Device(mem, vq)
    buf = mem.alloc(4096)
    for rnd in range(40):  # 40 rounds x 3 chains: indices wrap past 65535 when base is high
        payloads = [bytes([rnd, k]) * (k + 1) for k in range(3)]
        heads = []
        for k, p in enumerate(payloads):
            gpa = buf + 256 * k
            mem.write(gpa, p)
            heads.append(vq.add_chain([Segment(gpa, 1), Segment(gpa + 1, len(p) - 1)]))
        vq.publish()
        got = dev.pop()
        assert got == heads
        assert [dev.read_chain(h) for h in got] == payloads
        dev.use([(h, 0) for h in reversed(got)])  # out of order completion
        elems = vq.reap()
        assert elems["id"].tolist() == list(reversed(heads))
        assert vq.num_free == 8
    assert vq.avail_idx == u16(base + 120)
    assert vq.bad_used == 0


def test_indirect_chain(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 8, indirect_max=4)
    dev = Device(mem, vq)
    buf = mem.alloc(4096)
    mem.write(buf, b"abcdef")
    head = vq.add_chain([Segment(buf, 3), Segment(buf + 3, 3)], indirect=True)
    vq.publish()
    assert int(vq.desc[head]["flags"]) == DESC_F_INDIRECT
    assert int(vq.desc[head]["len"]) == 32
    assert dev.read_chain(dev.pop()[0]) == b"abcdef"
    assert vq.num_free == 7


def test_queue_full(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 4)
    buf = mem.alloc(64)
    vq.add_chain([Segment(buf, 1)] * 3)
    from tools.vhost_user_frontend.virtqueue import QueueFull

    with pytest.raises(QueueFull):
        vq.add_chain([Segment(buf, 1)] * 2)


def test_notify_rule_without_event_idx(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 8)
    buf = mem.alloc(64)
    vq.add_chain([Segment(buf, 1)])
    assert vq.publish() is True
    vq.used_hdr[0] = USED_F_NO_NOTIFY
    vq.add_chain([Segment(buf, 1)])
    assert vq.publish() is False
    assert vq.publish() is False  # nothing new: never a kick


def test_notify_rule_with_event_idx(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 8, event_idx=True)
    buf = mem.alloc(64)
    vq.avail_event_arr[0] = 2  # device: "kick me when you make entry 2 available"
    vq.used_hdr[0] = USED_F_NO_NOTIFY  # ignored with EVENT_IDX
    vq.add_chain([Segment(buf, 1)])
    assert vq.publish() is False  # [0, 1)
    vq.add_chain([Segment(buf, 1)])
    assert vq.publish() is False  # [1, 2)
    vq.add_chain([Segment(buf, 1)])
    vq.add_chain([Segment(buf, 1)])
    assert vq.publish() is True  # [2, 4) crosses 2


def test_interrupt_suppression(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 8)
    vq.set_interrupts(False)
    assert int(vq.avail[0]) == AVAIL_F_NO_INTERRUPT
    vq.set_interrupts(True)
    assert int(vq.avail[0]) == 0
    ev = SplitQueue(mem, 8, event_idx=True, base=100)
    ev.set_interrupts(True)
    assert int(ev.avail[2 + 8]) == 100  # used_event: the next entry
    ev.set_interrupts(False)
    assert int(ev.avail[2 + 8]) == u16(100 + 0x7FFF)


def test_reap_rejects_device_garbage(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 8)
    dev = Device(mem, vq)
    buf = mem.alloc(64)
    heads = [vq.add_chain([Segment(buf, 1)]) for _ in range(3)]
    vq.publish()
    dev.pop()
    dev.use([(heads[0], 1), (99, 1), (heads[0], 1), (5, 1), (heads[1], 1)])
    elems = vq.reap()
    assert elems["id"].tolist() == [heads[0], heads[1]]  # range, duplicate, not outstanding
    assert vq.bad_used == 3
    assert vq.in_flight == 1
    # used.idx running more than num ahead: the ring is broken, nothing more is taken
    vq.used_hdr[1] = u16(vq.last_used + 100)
    assert len(vq.reap()) == 0
    assert vq.broken and vq.bad_used == 4
    assert len(vq.reap()) == 0 and vq.bad_used == 4
    vq.reset_rings()
    vq.used_hdr[1] = 100
    with pytest.raises(UsedRingError):
        vq.reap(strict=True)


# -- guest memory ----------------------------------------------------------------------------


def test_memory_translation_multi_region() -> None:
    with GuestMemory([(0, MiB), (16 * MiB, 2 * MiB, 8192)]) as m:
        r0, r1 = m.regions
        assert m.region_of(MiB - 1) is r0
        assert m.region_of(16 * MiB) is r1
        assert m.region_of(18 * MiB - 8, 8) is r1
        for bad in [(MiB - 4, 8), (MiB, 1), (18 * MiB, 1), (15 * MiB, 2 * MiB)]:
            with pytest.raises(AddressError):
                m.view(*bad)
        m.write(16 * MiB + 10, b"hello")
        # mmap_offset: guest-physical 16 MiB is file offset 8192 of region 1's memfd
        assert os.pread(r1.fd, 5, 8192 + 10) == b"hello"
        assert m.uva(16 * MiB + 10) == r1.uva + 10
        assert m.gpa_of_uva(r1.uva + 10) == 16 * MiB + 10
        with pytest.raises(AddressError):
            m.gpa_of_uva(r1.uva + 2 * MiB - 4, 8)  # runs past the region's end
        entry = r1.table_entry()
        assert entry == MemRegion(16 * MiB, 2 * MiB, r1.uva, 8192)
        assert m.fds() == [r0.fd, r1.fd]


def test_memory_rejects_overlap_and_misalignment() -> None:
    with pytest.raises(ValueError):
        GuestMemory([(0, MiB), (MiB // 2, MiB)])
    with pytest.raises(ValueError):
        GuestMemory([(100, MiB)])


def test_memory_alloc_and_close() -> None:
    m = GuestMemory([(0, 8192), (MiB, 8192)])
    a = m.alloc(6000, 4096)
    b = m.alloc(6000, 4096)
    assert a == 0
    assert b == MiB  # did not fit in region 0
    with pytest.raises(MemoryError):
        m.alloc(8192)
    arr = m.array(0, np.uint8, 16)  # a live view: close must not raise
    m.close()
    del arr


# -- wire codec ----------------------------------------------------------------------------


def test_header_and_simple_payloads() -> None:
    assert msg_none(Request.SET_OWNER).encode() == struct.pack("=III", 3, 1, 0)
    assert msg_u64(Request.SET_FEATURES, 1 << 32).encode() == struct.pack("=IIIQ", 2, 1, 8, 1 << 32)
    assert msg_state(Request.SET_VRING_NUM, 1, 256, need_reply=True).encode() == struct.pack(
        "=IIIII", 8, 0x9, 8, 1, 256
    )
    assert msg_vring_addr(1, 0x1000, 0x3000, 0x2000).encode() == struct.pack(
        "=IIIIIQQQQ", 9, 1, 40, 1, 0, 0x1000, 0x3000, 0x2000, 0
    )


def test_vring_file_messages() -> None:
    with_fd = msg_vring_file(Request.SET_VRING_KICK, 3, 17)
    assert with_fd.payload == struct.pack("=Q", 3) and with_fd.fds == (17,)
    no_fd = msg_vring_file(Request.SET_VRING_CALL, 3, None)
    assert no_fd.payload == struct.pack("=Q", 0x103) and no_fd.fds == ()


def test_mem_table_and_mem_reg() -> None:
    regions = [
        MemRegion(0, MiB, 0x7F00_0000_0000, 0),
        MemRegion(4 * MiB, MiB, 0x7F10_0000_0000, 4096),
    ]
    msg = msg_mem_table(regions, [5, 6], need_reply=True)
    raw = msg.encode()
    assert HEADER.unpack_from(raw) == (5, 0x9, 8 + 2 * 32)  # QEMU: only used regions
    assert struct.unpack_from("=II", raw, 12) == (2, 0)
    assert struct.unpack_from("=QQQQ", raw, 20 + 32) == (4 * MiB, MiB, 0x7F10_0000_0000, 4096)
    assert msg.fds == (5, 6)
    add = msg_mem_reg(Request.ADD_MEM_REG, regions[1], 9)
    assert len(add.payload) == 40 and add.fds == (9,)
    assert struct.unpack("=QQQQQ", add.payload) == (0, 4 * MiB, MiB, 0x7F10_0000_0000, 4096)
    rem = msg_mem_reg(Request.REM_MEM_REG, regions[1], None)
    assert rem.fds == ()


def test_rarp_payload() -> None:
    assert msg_rarp(b"\x52\x54\x00\x12\x34\x56").payload == b"\x52\x54\x00\x12\x34\x56\0\0"
    with pytest.raises(ValueError):
        msg_rarp(b"\x01")


def _reply(request: int, payload: bytes, flags: int = 0x5) -> bytes:
    return HEADER.pack(request, flags, len(payload)) + payload


def test_reply_parser_chunking() -> None:
    stream = _reply(1, struct.pack("=Q", 42)) + _reply(11, struct.pack("=II", 1, 7))
    p = ReplyParser()
    out: list[Reply] = []
    for k in range(len(stream)):
        out += p.feed(stream[k : k + 1])
    assert [(r.request, r.payload) for r in out] == [
        (1, struct.pack("=Q", 42)),
        (11, struct.pack("=II", 1, 7)),
    ]
    assert out[0].u64() == 42 and out[1].state() == (1, 7)
    assert p.pending == 0


@pytest.mark.parametrize("flags", [0x1, 0x4, 0xD, 0x6])
def test_reply_flags_must_be_0x5(flags: int) -> None:
    with pytest.raises(ReplyError, match=f"Flags {flags:#x} instead of 0x5"):
        ReplyParser().feed(_reply(1, b"\0" * 8, flags))


def test_reply_size_bounded() -> None:
    with pytest.raises(ReplyError, match="exceeds the maximum"):
        ReplyParser().feed(HEADER.pack(1, 5, MAX_PAYLOAD + 1))


def test_reply_checks() -> None:
    r = Reply(1, 5, struct.pack("=Q", 0))
    with pytest.raises(ReplyError, match="Expected 15 received 1"):
        check_reply(Request.GET_PROTOCOL_FEATURES, r)
    with pytest.raises(ReplyError, match="bad msg size"):
        Reply(1, 5, b"\0" * 4).u64()
    check_ack(1, r)
    with pytest.raises(BackendFailure):
        check_ack(1, Reply(1, 5, struct.pack("=Q", 1)))
