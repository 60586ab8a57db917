"""vhost-user protocol, sans-IO: framing with descriptors, replies (flags exactly 0x5),
NEED_REPLY acks, the requests QEMU 7.2 and DPDK send, refusals, descriptor ownership."""

from __future__ import annotations

import os
import struct

import pytest

from drivers.vhost_user import protocol as vp
from drivers.vhost_user.device import NetDevice
from drivers.vhost_user.features import (
    DEVICE_FEATURES,
    F_EVENT_IDX,
    F_MRG_RXBUF,
    F_PROTOCOL_FEATURES,
    F_VERSION_1,
)
from drivers.vhost_user.memory import MAX_MEM_SLOTS, RegionSpec
from drivers.vhost_user.protocol import SessionHooks
from drivers.vhost_user.virtqueue import SplitQueue
from tests.kit.polling import open_fds
from tests.kit.vhost_user import (
    GuestRam,
    GuestSetup,
    mem_table,
    msg,
    region_payload,
    state,
    u64,
)


class Hooks(SessionHooks):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.errors: list[str] = []
        self.macs: list[bytes] = []

    def kick_attach(self, q: SplitQueue) -> None:
        self.events.append(("attach", q.index))

    def kick_detach(self, q: SplitQueue) -> None:
        self.events.append(("detach", q.index))

    def queue_started(self, q: SplitQueue) -> None:
        self.events.append(("started", q.index))

    def queue_stopped(self, q: SplitQueue) -> None:
        self.events.append(("stopped", q.index))

    def enable_changed(self, q: SplitQueue) -> None:
        self.events.append(("enable", q.index))

    def rarp(self, mac: bytes) -> None:
        self.macs.append(mac)

    def error(self, text: str) -> None:
        self.errors.append(text)


def reply_of(data: bytes | None) -> tuple[int, int, bytes]:
    assert data is not None
    req, flags, size = vp.HEADER.unpack_from(data)
    assert len(data) == 12 + size
    return req, flags, data[12:]


@pytest.fixture
def guest():  # type: ignore[no-untyped-def]
    g = GuestSetup(num=64)
    yield g
    g.close()


def make(pairs: int = 1) -> tuple[vp.Session, NetDevice, Hooks]:
    dev = NetDevice(pairs)
    hooks = Hooks()
    return vp.Session(dev, hooks), dev, hooks


# -- framing -----------------------------------------------------------------------------------


def test_reader_reassembles_any_chunking_and_keeps_fds_with_their_message() -> None:
    a = vp.encode(vp.SET_VRING_KICK, u64(1), flags=1)
    b = vp.encode(vp.GET_FEATURES, flags=1)
    c = vp.encode(vp.SET_VRING_NUM, state(0, 256), flags=9)
    stream = a + b + c
    for cut in range(1, len(stream)):
        reader = vp.MessageReader()
        out = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [(m.request, m.flags, m.payload) for m in out] == [
            (vp.SET_VRING_KICK, 1, u64(1)),
            (vp.GET_FEATURES, 1, b""),
            (vp.SET_VRING_NUM, 9, state(0, 256)),
        ]
    reader = vp.MessageReader()
    fd = os.eventfd(0)
    first = reader.feed(a[:5], [fd])
    assert first == [] and reader.wanted() == 7
    (m,) = reader.feed(a[5:])
    assert m.fds == [fd] and m.need_reply is False
    m.close_fds()


def test_reader_rejects_bad_version_and_huge_payloads() -> None:
    with pytest.raises(vp.ProtocolError, match="version"):
        vp.MessageReader().feed(struct.pack("=III", 1, 2, 0))
    with pytest.raises(vp.ProtocolError, match="payload"):
        vp.MessageReader().feed(struct.pack("=III", 5, 1, 1 << 20))
    fds = [os.eventfd(0) for _ in range(vp.MAX_FDS + 1)]
    before = open_fds()
    with pytest.raises(vp.ProtocolError, match="descriptors"):
        vp.MessageReader().feed(b"\1", fds)
    assert open_fds() == before - len(fds)  # closed, not leaked


# -- replies -----------------------------------------------------------------------------------


def test_get_requests_reply_with_flags_0x5_and_their_request_id() -> None:
    session, _dev, _hooks = make(pairs=4)
    for request, value in (
        (vp.GET_FEATURES, DEVICE_FEATURES | 1 << F_PROTOCOL_FEATURES),
        (vp.GET_PROTOCOL_FEATURES, vp.PROTOCOL_FEATURES),
        (vp.GET_QUEUE_NUM, 4),
        (vp.GET_MAX_MEM_SLOTS, MAX_MEM_SLOTS),
        (vp.GET_STATUS, 0),
    ):
        req, flags, payload = reply_of(session.handle(msg(request)))
        assert (req, flags) == (request, 0x5)
        assert struct.unpack("=Q", payload) == (value,)
    # what DPDK's virtio-user needs offered: VERSION_1 (and it negotiates these)
    offered = struct.unpack("=Q", reply_of(session.handle(msg(vp.GET_FEATURES)))[2])[0]
    for bit in (F_VERSION_1, F_MRG_RXBUF, F_EVENT_IDX, 28, 35, 22, 0, 1, 7, 8, 11, 12, 3, 16):
        assert offered >> bit & 1, bit
    for bit in (vp.PF_MQ, vp.PF_REPLY_ACK, vp.PF_STATUS, vp.PF_RARP, vp.PF_MTU,
                vp.PF_CONFIGURE_MEM_SLOTS, vp.PF_RESET_DEVICE):  # fmt: skip
        assert vp.PROTOCOL_FEATURES >> bit & 1, bit


def test_need_reply_is_acked_zero_or_one_and_plain_requests_get_nothing() -> None:
    session, dev, hooks = make()
    assert session.handle(msg(vp.SET_OWNER)) is None
    req, flags, payload = reply_of(session.handle(msg(vp.SET_OWNER, flags=9)))
    assert (req, flags, payload) == (vp.SET_OWNER, 5, u64(0))
    # refused: bad vring index, with and without NEED_REPLY
    assert session.handle(msg(vp.SET_VRING_NUM, state(7, 256))) is None
    _, _, payload = reply_of(session.handle(msg(vp.SET_VRING_NUM, state(7, 256), flags=9)))
    assert payload == u64(1)
    _, _, payload = reply_of(session.handle(msg(vp.NET_SET_MTU, u64(9000), flags=9)))
    assert payload == u64(0) and dev.mtu == 9000
    _, _, payload = reply_of(session.handle(msg(vp.NET_SET_MTU, u64(20), flags=9)))
    assert payload == u64(1) and dev.mtu == 9000
    assert session.refused == 3 and len(hooks.errors) == 3
    # unknown requests never hang a front end that asked for a reply
    _, _, payload = reply_of(session.handle(msg(99, flags=9)))
    assert payload == u64(1)


def test_mandatory_replies_even_when_refused() -> None:
    session, _dev, _hooks = make()
    req, flags, payload = reply_of(session.handle(msg(vp.GET_VRING_BASE, state(9, 0))))
    assert (req, flags, payload) == (vp.GET_VRING_BASE, 5, state(9, 0))
    req, flags, payload = reply_of(session.handle(msg(vp.GET_CONFIG, bytes(12 + 10))))
    assert (req, flags, payload) == (vp.GET_CONFIG, 5, b"")  # empty: the spec's error reply
    req, _, payload = reply_of(session.handle(msg(vp.GET_INFLIGHT_FD, bytes(24))))
    assert req == vp.GET_INFLIGHT_FD and payload[:8] == bytes(8)


# -- the start-up sequence ---------------------------------------------------------------------


def test_qemu_sequence_starts_both_rings(guest: GuestSetup) -> None:
    session, dev, hooks = make()
    before = open_fds()
    replies = [session.handle(m) for m in guest.start_messages()]
    assert all(r is None or reply_of(r)[1] == 5 for r in replies)
    assert session.refused == 0
    assert dev.hdr_len == 12 and dev.mergeable
    assert [q.ready and q.enabled for q in dev.queues] == [True, True]
    assert ("started", 0) in hooks.events and ("started", 1) in hooks.events
    # two kick and two call eventfds, and the mapping (Python's mmap keeps a dup of the fd)
    assert open_fds() == before + 5
    # GET_VRING_BASE stops the ring, gives up the kick fd, replies the next avail index
    req, flags, payload = reply_of(session.handle(msg(vp.GET_VRING_BASE, state(1, 0))))
    assert (req, flags, payload) == (vp.GET_VRING_BASE, 5, state(1, 0))
    assert not dev.queues[1].started and dev.queues[1].kick_fd == -1
    assert hooks.events[-2:] == [("detach", 1), ("stopped", 1)]
    assert open_fds() == before + 4
    dev.close()
    assert open_fds() == before


def test_dpdk_order_call_and_enable_before_features(guest: GuestSetup) -> None:
    """DPDK sends SET_VRING_CALL before SET_FEATURES and SET_VRING_ENABLE regardless."""
    session, dev, _hooks = make()
    call = os.eventfd(0)
    assert session.handle(msg(vp.SET_VRING_CALL, u64(0), [call])) is None
    assert session.handle(msg(vp.SET_VRING_ENABLE, state(0, 1))) is None
    assert dev.queues[0].enabled and dev.queues[0].call_fd == call
    assert session.refused == 0
    dev.close()


def test_without_protocol_features_rings_start_enabled(guest: GuestSetup) -> None:
    session, dev, _hooks = make()
    session.handle(msg(vp.SET_FEATURES, u64(1 << F_VERSION_1)))
    assert all(q.enabled for q in dev.queues)
    session2, dev2, _ = make()
    session2.handle(msg(vp.SET_FEATURES, u64(1 << F_VERSION_1 | 1 << F_PROTOCOL_FEATURES)))
    assert not any(q.enabled for q in dev2.queues)


def test_legacy_header_is_10_bytes() -> None:
    session, dev, _ = make()
    session.handle(msg(vp.SET_FEATURES, u64(0)))
    assert dev.hdr_len == 10 and not dev.mergeable
    session.handle(msg(vp.SET_FEATURES, u64(1 << F_MRG_RXBUF)))
    assert dev.hdr_len == 12


def test_unoffered_features_are_masked_and_refused() -> None:
    session, dev, _hooks = make()
    _, _, payload = reply_of(session.handle(msg(vp.SET_FEATURES, u64(1 << 54 | 1), flags=9)))
    assert payload == u64(1) and dev.features == 1  # GUEST_USO4 not offered


def test_send_rarp_reports_the_mac() -> None:
    session, _dev, hooks = make()
    mac = bytes.fromhex("525400123456")
    session.handle(msg(vp.SEND_RARP, mac + b"\0\0"))
    assert hooks.macs == [mac]
    session.handle(msg(vp.SEND_RARP, b"\xff" * 8))
    assert hooks.macs == [mac] and session.refused == 1


def test_status_round_trip() -> None:
    session, _dev, _ = make()
    session.handle(msg(vp.SET_STATUS, u64(0x0B)))
    assert reply_of(session.handle(msg(vp.GET_STATUS)))[2] == u64(0x0B)


# -- memory ------------------------------------------------------------------------------------


def test_mem_table_errors_close_every_fd() -> None:
    session, dev, _ = make()
    ram = GuestRam(1 << 20)
    try:
        before = open_fds()
        spec = ram.spec()
        # two regions, one fd
        bad = msg(vp.SET_MEM_TABLE, mem_table([spec, spec]), [os.dup(ram.fd)], flags=9)
        assert reply_of(session.handle(bad))[2] == u64(1)
        # overlapping regions
        fds = [os.dup(ram.fd), os.dup(ram.fd)]
        overlap = msg(vp.SET_MEM_TABLE, mem_table([spec, spec]), fds, flags=9)
        assert reply_of(session.handle(overlap))[2] == u64(1)
        # larger than the file
        huge = RegionSpec(0, 8 << 20, 0, 0)
        big = msg(vp.SET_MEM_TABLE, mem_table([huge]), [os.dup(ram.fd)], flags=9)
        assert reply_of(session.handle(big))[2] == u64(1)
        assert open_fds() == before and len(dev.mem) == 0
        ok = msg(vp.SET_MEM_TABLE, mem_table([spec]), [os.dup(ram.fd)], flags=9)
        assert reply_of(session.handle(ok))[2] == u64(0)
        assert len(dev.mem) == 1 and open_fds() == before + 1  # mmap's own dup only
        dev.close()
    finally:
        ram.close()


def test_add_and_remove_regions_with_duplicates_like_qemu_7_2() -> None:
    session, dev, _ = make(pairs=2)
    ram = GuestRam(1 << 20)
    try:
        session.handle(msg(vp.SET_PROTOCOL_FEATURES, u64(vp.PROTOCOL_FEATURES)))
        add = region_payload(ram.spec())
        for _ in range(2):  # once per queue pair's vhost_dev
            r = session.handle(msg(vp.ADD_MEM_REG, add, [os.dup(ram.fd)], flags=9))
            assert reply_of(r)[2] == u64(0)
        assert len(dev.mem) == 1
        assert dev.mem.gpa(0x1000, 16) is not None
        # REM_MEM_REG ignores mmap_offset; a stray fd is closed
        before = open_fds()
        fd = os.dup(ram.fd)
        rem = region_payload(RegionSpec(ram.gpa, ram.size, ram.uaddr, 4096))
        assert reply_of(session.handle(msg(vp.REM_MEM_REG, rem, [fd], flags=9)))[2] == u64(0)
        assert len(dev.mem) == 1  # one reference left
        assert open_fds() == before
        assert reply_of(session.handle(msg(vp.REM_MEM_REG, rem, flags=9)))[2] == u64(0)
        assert len(dev.mem) == 0
        assert reply_of(session.handle(msg(vp.REM_MEM_REG, rem, flags=9)))[2] == u64(1)
    finally:
        dev.close()
        ram.close()


def test_reset_device_stops_and_disables_everything(guest: GuestSetup) -> None:
    session, dev, hooks = make()
    for m in guest.start_messages():
        session.handle(m)
    before = open_fds()
    session.handle(msg(vp.RESET_DEVICE))
    assert not any(q.started or q.enabled for q in dev.queues)
    assert ("detach", 0) in hooks.events and ("stopped", 1) in hooks.events
    assert open_fds() == before - 4
    assert len(dev.mem) == 1  # the memory table is the front end's to change
    dev.close()
