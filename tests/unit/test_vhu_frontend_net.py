"""Unit tests of the front end's virtio-net queues and hostile ring cases, with a device
model reading the same guest memory, and of the whole front end over a socketpair with a
scripted back end in a thread (fds really travel by SCM_RIGHTS)."""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.unit.test_vhu_frontend_ring import Device
from tools.vhost_user_frontend.channel import Channel, ChannelClosed, ReplyTimeout
from tools.vhost_user_frontend.frontend import FrontendConfig, VhostUserFrontend
from tools.vhost_user_frontend.hostile_msgs import BUILDERS, MSG_CASES, CaseContext, build
from tools.vhost_user_frontend.hostile_rings import RING_CASES, RingCrafter
from tools.vhost_user_frontend.memory import GuestMemory
from tools.vhost_user_frontend.net import (
    GSO_TCPV4,
    NEEDS_CSUM,
    RxQueue,
    TxQueue,
    VnetHeader,
    header_len,
    separate_header,
)
from tools.vhost_user_frontend.protocol import (
    HEADER,
    Feature,
    ProtocolFeature,
    Request,
    bit,
)
from tools.vhost_user_frontend.virtqueue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    SplitQueue,
    u16,
)

MiB = 1 << 20


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = GuestMemory([(0, 16 * MiB)])
    yield m
    m.close()


def test_header_len_rules() -> None:
    assert header_len(bit(Feature.VERSION_1)) == 12
    assert header_len(bit(Feature.MRG_RXBUF)) == 12
    assert header_len(0) == 10
    assert separate_header(0)
    assert not separate_header(bit(Feature.ANY_LAYOUT))
    h = VnetHeader(NEEDS_CSUM, GSO_TCPV4, 54, 1448, 34, 16, 3)
    assert VnetHeader.unpack(h.pack()) == h
    assert len(h.pack(10)) == 10


@pytest.mark.parametrize(("hl", "sep"), [(12, False), (10, True), (12, True)])
def test_tx_frames_byte_exact(mem: GuestMemory, hl: int, sep: bool) -> None:
    vq = SplitQueue(mem, 16)
    dev = Device(mem, vq)
    tx = TxQueue(vq, hdr_len=hl, slot_size=256, separate_header=sep)
    frames = [bytes([k]) * size for k, size in enumerate([60, 244, 245, 1000, 0, 14])]
    hdrs = [VnetHeader(NEEDS_CSUM, 0, 0, 0, 34, 6), None, None, None, None, None]
    assert tx.send(frames, hdrs) == len(frames)
    heads = dev.pop()
    assert len(heads) == len(frames)
    for head, frame, hdr in zip(heads, frames, hdrs, strict=True):
        chain = dev.chain(head)
        if sep:
            assert chain[0][1] == hl  # the header alone in the first descriptor
        data = dev.read_chain(head)
        assert data[hl:] == frame
        assert data[:hl] == (hdr or VnetHeader()).pack(hl)
    dev.use([(h, 0) for h in heads])
    assert tx.reclaim() == len(frames)
    assert tx.free_slots == 16


def test_tx_backpressure(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 8)
    dev = Device(mem, vq)
    tx = TxQueue(vq, slot_size=128)
    assert tx.send([b"x" * 60] * 20) == 8
    assert tx.send([b"x" * 60]) == 0
    dev.use([(h, 0) for h in dev.pop()[:3]])
    assert tx.send([b"y" * 500] * 2) == 0  # a 512-byte frame needs 4 slots, 3 are free
    assert tx.send([b"y" * 300]) == 1  # 3 slots


def test_tx_blast_recycles(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 8, base=65533)
    dev = Device(mem, vq)
    tx = TxQueue(vq, slot_size=128)
    frame = bytes(range(64))
    tx.blast_prepare(frame)
    tx.blast_step()
    total = 0
    for _ in range(5):
        heads = dev.pop()
        assert all(dev.read_chain(h)[12:] == frame for h in heads)
        dev.use([(h, 0) for h in heads])
        total += tx.blast_step()
    assert total == 40 and tx.frames == 40
    assert vq.avail_idx == u16(65533 + 48)


def _deliver(dev: Device, rx: RxQueue, frames: list[bytes], mergeable: bool) -> None:
    """The device side of RX: header + frame into posted buffers, merging as needed."""
    heads = dev.pop()
    hl = rx.hdr_len
    for frame in frames:
        data = frame
        used: list[tuple[int, int]] = []
        first_addr = 0
        while True:
            head = heads.pop(0)
            addr, cap, flags = dev.chain(head)[0]
            assert flags & DESC_F_WRITE
            room = cap - (hl if not used else 0)
            piece, data = data[:room], data[room:]
            if not used:
                first_addr = addr
                dev.mem.write(addr + hl, piece)
                used.append((head, hl + len(piece)))
            else:
                dev.mem.write(addr, piece)
                used.append((head, len(piece)))
            if not data or not mergeable:
                break
        dev.mem.write(first_addr, VnetHeader(num_buffers=len(used)).pack(hl))
        dev.use(used)
    # hand back what was not used (the model pops everything)
    dev.last_avail = u16(dev.last_avail - len(heads))


@pytest.mark.parametrize("mergeable", [True, False])
def test_rx_frames_byte_exact(mem: GuestMemory, mergeable: bool) -> None:
    vq = SplitQueue(mem, 32, base=65530)
    dev = Device(mem, vq)
    rx = RxQueue(vq, buf_size=512 if mergeable else 2048, mergeable=mergeable)
    rx.post_all()
    frames = [bytes([k % 251]) * size for k, size in enumerate([60, 500, 1514, 64, 1000])]
    _deliver(dev, rx, frames, mergeable)
    got = rx.receive()
    assert [f.data for f in got] == frames
    assert rx.bad_frames == 0
    # buffers went back: the device sees them available again
    assert len(dev.pop()) == 32
    dev.last_avail = u16(dev.last_avail - 32)
    _deliver(dev, rx, frames, mergeable)
    assert rx.drain() == (5, sum(len(f) for f in frames))


def test_rx_partial_merged_frame_waits(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 8)
    dev = Device(mem, vq)
    rx = RxQueue(vq, buf_size=256, mergeable=True)
    rx.post_all()
    heads = dev.pop()
    mem.write(dev.chain(heads[0])[0][0], VnetHeader(num_buffers=2).pack())
    dev.use([(heads[0], 256)])
    assert rx.receive() == []  # second buffer not used yet
    dev.use([(heads[1], 10)])
    [frame] = rx.receive()
    assert len(frame.data) == 256 - 12 + 10
    assert rx.vq.in_flight == 8  # both buffers reposted


def test_rx_device_lies(mem: GuestMemory) -> None:
    vq = SplitQueue(mem, 8)
    dev = Device(mem, vq)
    rx = RxQueue(vq, buf_size=256, mergeable=True)
    rx.post_all()
    heads = dev.pop()
    mem.write(dev.chain(heads[0])[0][0], VnetHeader(num_buffers=0).pack())
    mem.write(dev.chain(heads[1])[0][0], VnetHeader(num_buffers=1).pack())
    dev.use([(heads[0], 100), (heads[1], 100000), (heads[2], 3)])
    frames = rx.receive()
    assert len(frames) == 1 and len(frames[0].data) == 256 - 12  # clipped to the buffer
    assert rx.bad_frames == 2 and rx.bad_len == 1


# -- a whole front end over a socketpair ---------------------------------------------------


class ThreadBackend:
    """A scripted back end on the far end of a socketpair: answers what needs an answer,
    keeps every message and the fds that came with it."""

    def __init__(self, sock: socket.socket, features: int, protocol: int) -> None:
        self.sock = sock
        self.features = features
        self.protocol = protocol
        self.msgs: list[tuple[int, int, bytes, list[int]]] = []
        self.status = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def _recv_exact(self, n: int) -> tuple[bytes, list[int]]:
        data = b""
        fds: list[int] = []
        while len(data) < n:
            chunk, anc, _flags, _addr = self.sock.recvmsg(n - len(data), socket.CMSG_SPACE(64 * 4))
            if not chunk:
                raise EOFError
            for level, kind, blob in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += array.array("i", blob[: len(blob) - len(blob) % 4]).tolist()
            data += chunk
        return data, fds

    def serve(self) -> None:
        try:
            while True:
                head, fds = self._recv_exact(12)
                req, flags, size = HEADER.unpack(head)
                payload, more = self._recv_exact(size) if size else (b"", [])
                self.msgs.append((req, flags, payload, fds + more))
                self.answer(req, flags, payload)
        except (EOFError, OSError):
            return

    def answer(self, req: int, flags: int, payload: bytes) -> None:
        values = {
            Request.GET_FEATURES: self.features,
            Request.GET_PROTOCOL_FEATURES: self.protocol,
            Request.GET_QUEUE_NUM: 1,
            Request.GET_STATUS: self.status,
        }
        if req == Request.SET_STATUS:
            self.status = struct.unpack("=Q", payload)[0]
        if req in values:
            body = struct.pack("=Q", values[Request(req)])
        elif req == Request.GET_VRING_BASE:
            body = payload[:4] + struct.pack("=I", 0)
        elif flags & 0x8:
            body = struct.pack("=Q", 0)
        else:
            return
        self.sock.sendall(HEADER.pack(req, 5, len(body)) + body)

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)
        for _, _, _, fds in self.msgs:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


FEATURES = (
    bit(Feature.VERSION_1)
    | bit(Feature.MRG_RXBUF)
    | bit(Feature.EVENT_IDX)
    | bit(Feature.PROTOCOL_FEATURES)
    | bit(Feature.ANY_LAYOUT)
)
PROTOCOL = bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.MQ) | bit(ProtocolFeature.STATUS)


async def _pair(
    cfg: FrontendConfig, features: int = FEATURES
) -> tuple[VhostUserFrontend, ThreadBackend]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    be = ThreadBackend(b, features, PROTOCOL)
    fe = VhostUserFrontend(Channel(a, reply_timeout=5), cfg)
    await fe.init()
    await fe.start()
    return fe, be


def _fd_kind(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


async def test_frontend_start_shares_memory_and_eventfds() -> None:
    fe, be = await _pair(FrontendConfig(queue_size=64))
    try:
        names = [Request(m[0]).name for m in be.msgs]
        assert names.count("SET_VRING_KICK") == 2
        table = next(m for m in be.msgs if m[0] == Request.SET_MEM_TABLE)
        assert len(table[3]) == 1 and _fd_kind(table[3][0]).startswith("/memfd:vhu-guest-0")
        kicks = [m for m in be.msgs if m[0] == Request.SET_VRING_KICK]
        assert all(_fd_kind(m[3][0]) == "anon_inode:[eventfd]" for m in kicks)
        # the back end's mapping of the memfd sees what the driver wrote
        import mmap

        nregions, _ = struct.unpack_from("=II", table[2])
        gpa, size, uva, off = struct.unpack_from("=QQQQ", table[2], 8)
        assert nregions == 1 and gpa == 0 and off == 0
        assert fe.mem is not None and uva == fe.mem.regions[0].uva
        m = mmap.mmap(table[3][0], size)
        addr = next(m2 for m2 in be.msgs if m2[0] == Request.SET_VRING_ADDR)
        _i, _f, _desc, _used, avail_uva, _log = struct.unpack("=IIQQQQ", addr[2])
        assert fe.tx[0].send([b"\x01" * 60]) == 1
        avail_off = avail_uva - uva
        (idx,) = struct.unpack_from("<H", m, fe.vqs[1].layout.avail - 0 + 2)
        assert idx == 1
        assert fe.vqs[0].layout.avail == avail_off  # vring 0 is RX: addresses of vring 0
        m.close()
    finally:
        fe.close()
        be.close()


async def test_hostile_ring_cases_layout() -> None:
    cfg = FrontendConfig(queue_size=64, rx_reserve=4, indirect_max=0)
    fe, be = await _pair(cfg, FEATURES | bit(Feature.INDIRECT_DESC))
    try:
        assert fe.mem is not None
        crafter = RingCrafter(fe)
        txdev = Device(fe.mem, fe.vqs[1])
        rxdev = Device(fe.mem, fe.vqs[0])
        rxdev.pop()  # the normal receive buffers
        num = fe.vqs[1].num
        for case in RING_CASES:
            if case == "chain_longer_than_queue":
                continue  # uses every TX descriptor; checked on its own below
            got = crafter.run(case)
            dev = rxdev if got.vring == 0 else txdev
            heads = dev.pop()
            if case == "avail_idx_jump":
                assert heads == [] or len(heads) > num
                dev.last_avail = got.avail_idx
                fe.vqs[1].avail_idx = got.avail_idx  # keep the model and the driver agreeing
                fe.vqs[1].publish()
                continue
            assert heads == got.heads, case
            if case == "head_out_of_range":
                assert heads == [num]
                continue
            d = fe.vqs[got.vring].desc[heads[0]]
            flags = int(d["flags"])
            if case == "chain_loop":
                a, b = got.descriptors
                assert int(fe.vqs[1].desc[a]["next"]) == b and int(fe.vqs[1].desc[b]["next"]) == a
            elif case == "next_out_of_range":
                assert flags & DESC_F_NEXT and int(d["next"]) == num
            elif case == "write_flag_on_tx":
                assert flags & DESC_F_WRITE
            elif case in ("readonly_rx_buffer",):
                assert not flags & DESC_F_WRITE
            elif case.startswith("indirect"):
                assert flags & DESC_F_INDIRECT
            elif case in ("desc_out_of_memory", "rx_out_of_memory"):
                assert int(d["addr"]) >= max(r.end for r in fe.mem.regions)
            # the device "drops" crafted TX chains: they come back with len 0
            if got.vring == 1:
                dev.use([(heads[0], 0)])
        fe.tx[0].reclaim()
        assert fe.tx[0].free_slots == num
        got = crafter.chain_longer_than_queue()
        assert got.heads and int(fe.vqs[1].desc[got.heads[0]]["flags"]) == DESC_F_INDIRECT
        assert int(fe.vqs[1].desc[got.heads[0]]["len"]) == 16 * (num + 1)
    finally:
        fe.close()
        be.close()


def test_every_message_case_is_documented_and_builds() -> None:
    assert set(BUILDERS) == set(MSG_CASES)
    table = [
        __import__("tools.vhost_user_frontend.protocol", fromlist=["MemRegion"]).MemRegion(
            0, MiB, 0x7F0000000000
        )
    ]
    for case in MSG_CASES:
        ctx = CaseContext(table, [])
        try:
            msg = build(case, ctx)
            if isinstance(msg, bytes):
                assert len(msg) < 12
                continue
            raw = msg.encode()
            _req, flags, size = HEADER.unpack_from(raw)
            if case == "size_field_huge":
                assert size == 0x7FFFFFFF and len(raw) == 20
            elif case == "too_many_fds":
                assert len(msg.fds) == 16
            elif case in ("short_u64", "short_state"):
                assert size == 4
            elif case == "bad_version":
                assert flags == 2
        finally:
            ctx.close()


async def test_hostile_messages_over_the_channel() -> None:
    from tools.vhost_user_frontend.hostile_msgs import send_case

    fe, be = await _pair(FrontendConfig(queue_size=64))
    try:
        n_before = len(be.msgs)
        out = await send_case(fe.channel, "too_many_fds", settle=0.05)
        assert not out.closed
        out = await send_case(fe.channel, "kick_fd_pipe", settle=0.05)
        await fe.barrier()  # still in sync
        sent = be.msgs[n_before:]
        assert len(sent[0][3]) == 16  # the kernel delivered all 16 fds
        assert _fd_kind(sent[1][3][0]).startswith("pipe:")
    finally:
        fe.close()
        be.close()


async def test_listen_mode_accepts_a_back_end(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(str(tmp_path), "fe.sock")

    async def backend() -> ThreadBackend:
        while not os.path.exists(path):
            await asyncio.sleep(0.01)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return ThreadBackend(s, FEATURES, PROTOCOL)

    task = asyncio.ensure_future(backend())
    fe = await VhostUserFrontend.listen(path, FrontendConfig(queue_size=64), timeout=5)
    be = await task
    try:
        await fe.start()
        assert fe.session.started
        assert not os.path.exists(path)  # the listening socket is gone once taken
    finally:
        fe.close()
        be.close()


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


async def test_close_releases_every_fd() -> None:
    before = _open_fds()
    fe, be = await _pair(FrontendConfig(queue_size=64, queue_pairs=1))
    await fe.stop()
    fe.close()
    be.close()  # closes the back end's copies too
    await asyncio.sleep(0)
    assert _open_fds() - before == set()


async def test_silent_back_end_times_out() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(ReplyTimeout):
            await VhostUserFrontend(Channel(a, reply_timeout=0.2)).init()
    finally:
        a.close()
        b.close()


async def test_back_end_closing_mid_conversation() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.close()
    fe = VhostUserFrontend(Channel(a, reply_timeout=1))
    try:
        with pytest.raises(ChannelClosed):
            await fe.init()
    finally:
        fe.close()


def test_slots_are_restored_after_caller_buffers(mem: GuestMemory) -> None:
    from tools.vhost_user_frontend.virtqueue import Segment

    vq = SplitQueue(mem, 4)
    dev = Device(mem, vq)
    tx = TxQueue(vq, slot_size=256)
    other = mem.alloc(4096)
    mem.write(other, bytes(12) + b"elsewhere")
    head = tx.send_buffers([Segment(other, 21)])
    assert dev.read_chain(dev.pop()[0])[12:] == b"elsewhere"
    dev.use([(head, 0)])
    assert tx.send([b"in-slot"] * 4) == 4  # reuses that descriptor: back in its own slot
    assert [dev.read_chain(h)[12:] for h in dev.pop()] == [b"in-slot"] * 4
    with pytest.raises(ValueError, match="idle"):
        tx.blast_prepare(b"x" * 60)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=12),
    slot=st.sampled_from([64, 256, 2048]),
    sep=st.booleans(),
    base=st.integers(0, 65535),
)
def test_tx_round_trip_property(sizes: list[int], slot: int, sep: bool, base: int) -> None:
    with GuestMemory([(0, 16 * MiB)]) as m:
        vq = SplitQueue(m, 64, base=base)
        dev = Device(m, vq)
        tx = TxQueue(vq, slot_size=slot, separate_header=sep)
        frames = [bytes([n & 0xFF]) * n for n in sizes]
        done: list[bytes] = []
        pending = list(frames)
        for _ in range(100):
            pending = pending[tx.send(pending) :]
            heads = dev.pop()
            done += [dev.read_chain(h)[12:] for h in heads]
            dev.use([(h, 0) for h in heads])
            if not pending:
                break
        assert done == frames


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4000), min_size=1, max_size=8),
    buf=st.sampled_from([64, 300, 4096]),
    base=st.integers(0, 65535),
)
def test_rx_mergeable_round_trip_property(sizes: list[int], buf: int, base: int) -> None:
    assume(sum(-(-(n + 12) // buf) for n in sizes) <= 256)  # fits the posted buffers
    with GuestMemory([(0, 16 * MiB)]) as m:
        vq = SplitQueue(m, 256, base=base)
        dev = Device(m, vq)
        rx = RxQueue(vq, buf_size=buf, mergeable=True)
        rx.post_all()
        frames = [bytes([(n * 7) & 0xFF]) * n for n in sizes]
        _deliver(dev, rx, frames, True)
        assert [f.data for f in rx.receive()] == frames
        assert rx.vq.in_flight == 256
