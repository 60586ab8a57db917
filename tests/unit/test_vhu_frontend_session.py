"""Unit tests of the front end's vhost-user conversation plans (sans-IO): the exact message
sequence QEMU sends at init, start and stop, NEED_REPLY and barrier rules, negotiation
results and errors, driven by a scripted back end (no sockets)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest

from tools.vhost_user_frontend.protocol import (
    FLAG_NEED_REPLY,
    HEADER,
    BackendFailure,
    DeviceStatus,
    Feature,
    MemRegion,
    ProtocolFeature,
    Reply,
    ReplyError,
    Request,
    bit,
)
from tools.vhost_user_frontend.session import (
    Expect,
    NegotiationError,
    Session,
    SessionConfig,
    Step,
    VringSetup,
    run_plan,
)

NET = (
    bit(Feature.VERSION_1)
    | bit(Feature.MRG_RXBUF)
    | bit(Feature.EVENT_IDX)
    | bit(Feature.CSUM)
    | bit(Feature.CTRL_VQ)
    | bit(Feature.PROTOCOL_FEATURES)
)
PROTO = (
    bit(ProtocolFeature.MQ)
    | bit(ProtocolFeature.REPLY_ACK)
    | bit(ProtocolFeature.STATUS)
    | bit(ProtocolFeature.LOG_SHMFD)
)


@dataclass
class ScriptedBackend:
    features: int = NET
    protocol: int = PROTO
    queues: int = 1
    ack_value: int = 0
    status: int = 0
    seen: list[tuple[str, int, bytes, tuple[int, ...]]] = field(default_factory=list)

    def __call__(self, step: Step) -> Reply | None:
        m = step.message
        name = Request(m.request).name
        self.seen.append((name, m.flags, m.payload, m.fds))
        u64 = {
            Request.GET_FEATURES: self.features,
            Request.GET_PROTOCOL_FEATURES: self.protocol,
            Request.GET_QUEUE_NUM: self.queues,
            Request.GET_MAX_MEM_SLOTS: 32,
            Request.GET_STATUS: self.status,
        }
        if m.request == Request.SET_STATUS:
            self.status = struct.unpack("=Q", m.payload)[0]
        if step.expect is Expect.NONE:
            return None
        if step.expect is Expect.ACK:
            return Reply(m.request, 5, struct.pack("=Q", self.ack_value))
        if step.expect is Expect.STATE:
            index = struct.unpack("=I", m.payload[:4])[0]
            return Reply(m.request, 5, struct.pack("=II", index, 40 + index))
        return Reply(m.request, 5, struct.pack("=Q", u64[Request(m.request)]))

    def names(self) -> list[str]:
        return [s[0] for s in self.seen]


def _vrings(n: int = 2) -> list[VringSetup]:
    return [
        VringSetup(i, 256, 0x1000 * i, 0x1000 * i + 0x800, 0x1000 * i + 0x400, 30 + i, 40 + i)
        for i in range(n)
    ]


REGIONS = [MemRegion(0, 1 << 20, 0x7F00_0000_0000)]


def test_qemu_init_sequence() -> None:
    be = ScriptedBackend()
    s = Session(SessionConfig())
    run_plan(s.init([50, 51], [60, 61]), be)
    assert be.names() == [
        "GET_FEATURES",
        "GET_PROTOCOL_FEATURES",
        "SET_PROTOCOL_FEATURES",
        "GET_QUEUE_NUM",
        "SET_OWNER",
        "GET_FEATURES",
        "SET_VRING_CALL",
        "SET_VRING_ERR",
        "SET_VRING_CALL",
        "SET_VRING_ERR",
        *["SET_VRING_ENABLE"] * 4,  # both vrings, twice (the QEMU 7.2 trace)
    ]
    # our protocol features: offered & supported (LOG_SHMFD is not ours)
    assert struct.unpack("=Q", be.seen[2][2])[0] == PROTO & ~bit(ProtocolFeature.LOG_SHMFD)
    assert s.max_queues == 1
    call0 = be.seen[6]
    assert call0[2] == struct.pack("=Q", 0) and call0[3] == (50,)
    enable = be.seen[10]
    assert enable[1] == 0x1 | FLAG_NEED_REPLY  # REPLY_ACK: QEMU 10 waits for the ack
    assert enable[2] == struct.pack("=II", 0, 1)


def test_qemu_start_and_stop_sequence() -> None:
    be = ScriptedBackend()
    s = Session(SessionConfig(init_enable_rounds=1))
    run_plan(s.init([50, 51], [60, 61]), be)
    be.seen.clear()
    run_plan(s.start(REGIONS, [7], _vrings()), be)
    per_vring = [
        "SET_VRING_NUM",
        "SET_VRING_BASE",
        "SET_VRING_ADDR",
        "SET_VRING_KICK",
        "SET_VRING_CALL",
    ]
    assert be.names() == [
        "SET_FEATURES",
        "GET_STATUS",
        "SET_STATUS",
        "SET_MEM_TABLE",
        *per_vring,
        *per_vring,
        "GET_STATUS",
        "SET_STATUS",
        "SET_VRING_ENABLE",
        "SET_VRING_ENABLE",
    ]
    feats = struct.unpack("=Q", be.seen[0][2])[0]
    assert feats == (NET & ~bit(Feature.CTRL_VQ))  # CTRL_VQ is QEMU's, never ours
    assert be.seen[3][1] & FLAG_NEED_REPLY and be.seen[3][3] == (7,)
    assert struct.unpack("=Q", be.seen[2][2])[0] == DeviceStatus.FEATURES_OK
    assert be.status == 0xF
    assert s.started
    be.seen.clear()
    assert run_plan(s.stop(), be) == [40, 41]
    assert be.names() == ["GET_VRING_BASE", "GET_VRING_BASE", "SET_STATUS"]
    assert be.status == 0 and not s.started


def test_no_protocol_features() -> None:
    be = ScriptedBackend(features=NET & ~bit(Feature.PROTOCOL_FEATURES))
    s = Session(SessionConfig())
    run_plan(s.init([None, None], [None, None]), be)
    assert (
        be.names()
        == ["GET_FEATURES", "SET_OWNER", "GET_FEATURES"] + ["SET_VRING_CALL", "SET_VRING_ERR"] * 2
    )
    assert be.seen[3][2] == struct.pack("=Q", 0x100)  # no fd: bit 8
    be.seen.clear()
    run_plan(s.start(REGIONS, [7], _vrings()), be)
    assert "SET_VRING_ENABLE" not in be.names()  # rings start enabled without bit 30
    assert not be.seen[0][1] & FLAG_NEED_REPLY
    assert not struct.unpack("=Q", be.seen[0][2])[0] & bit(Feature.PROTOCOL_FEATURES)


def test_enable_wait_without_reply_ack_uses_get_features_barrier() -> None:
    be = ScriptedBackend(protocol=bit(ProtocolFeature.MQ))
    s = Session(SessionConfig(init_enable_rounds=1))
    run_plan(s.init([1, 2], [3, 4]), be)
    assert be.names()[-4:] == [
        "SET_VRING_ENABLE",
        "GET_FEATURES",
        "SET_VRING_ENABLE",
        "GET_FEATURES",
    ]
    be.seen.clear()
    s2 = Session(SessionConfig(init_enable_rounds=1, enable_wait=False))
    run_plan(s2.init([1, 2], [3, 4]), be)
    assert be.names()[-2:] == ["SET_VRING_ENABLE", "SET_VRING_ENABLE"]


def test_too_many_queue_pairs() -> None:
    be = ScriptedBackend(queues=2)
    with pytest.raises(
        NegotiationError, match="maximum number of queues supported by the backend is 2"
    ):
        run_plan(Session(SessionConfig(queue_pairs=4)).init([0] * 8, [0] * 8), be)
    ok = Session(SessionConfig(queue_pairs=2))
    run_plan(ok.init([0] * 4, [0] * 4), ScriptedBackend(queues=2, features=NET | bit(Feature.MQ)))
    assert ok.wanted_features() & bit(Feature.MQ)


def test_mem_slots_use_add_mem_reg() -> None:
    be = ScriptedBackend(protocol=PROTO | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS))
    s = Session(SessionConfig(init_enable_rounds=0))
    run_plan(s.init([1, 2], [3, 4]), be)
    assert "GET_MAX_MEM_SLOTS" in be.names() and s.max_mem_slots == 32
    be.seen.clear()
    regions = [*REGIONS, MemRegion(1 << 30, 1 << 20, 0x7F10_0000_0000, 4096)]
    run_plan(s.start(regions, [7, 8], _vrings()), be)
    adds = [x for x in be.seen if x[0] == "ADD_MEM_REG"]
    assert [a[3] for a in adds] == [(7,), (8,)]
    assert all(a[1] & FLAG_NEED_REPLY for a in adds)
    assert "SET_MEM_TABLE" not in be.names()
    be.seen.clear()
    run_plan(s.rem_mem_reg(regions[1]), be)
    assert be.seen[0][0] == "REM_MEM_REG" and be.seen[0][3] == ()


def test_failed_ack_raises() -> None:
    be = ScriptedBackend()
    s = Session(SessionConfig(init_enable_rounds=0))
    run_plan(s.init([1, 2], [3, 4]), be)
    be.ack_value = 1
    with pytest.raises(BackendFailure):
        run_plan(s.start(REGIONS, [7], _vrings()), be)


def test_mtu_rarp_reset_status() -> None:
    proto = (
        PROTO
        | bit(ProtocolFeature.MTU)
        | bit(ProtocolFeature.RARP)
        | bit(ProtocolFeature.RESET_DEVICE)
    )
    be = ScriptedBackend(features=NET | bit(Feature.MTU), protocol=proto)
    s = Session(SessionConfig(init_enable_rounds=0, mtu=9000))
    run_plan(s.init([1, 2], [3, 4]), be)
    be.seen.clear()
    run_plan(s.start(REGIONS, [7], _vrings()), be)
    assert be.seen[0][0] == "NET_SET_MTU" and be.seen[0][2] == struct.pack("=Q", 9000)
    assert be.seen[0][1] & FLAG_NEED_REPLY
    be.seen.clear()
    run_plan(s.send_rarp(b"\x52\x54\0\x12\x34\x56"), be)
    run_plan(s.reset_device(), be)
    assert run_plan(s.get_status(), be) == be.status
    assert be.names() == ["SEND_RARP", "RESET_DEVICE", "GET_STATUS"]
    nomtu = Session(SessionConfig(init_enable_rounds=0))
    run_plan(nomtu.init([1, 2], [3, 4]), ScriptedBackend())
    with pytest.raises(NegotiationError):
        run_plan(nomtu.reset_device(), ScriptedBackend())


def test_wrong_reply_type_is_rejected() -> None:
    def liar(step: Step) -> Reply | None:
        if step.expect is Expect.NONE:
            return None
        return Reply(Request.GET_QUEUE_NUM, 5, struct.pack("=Q", 1))

    with pytest.raises(ReplyError, match="Expected 1 received 17"):
        run_plan(Session().init([1, 2], [3, 4]), liar)


def test_header_of_first_step() -> None:
    plan = Session().init([1, 2], [3, 4])
    step = plan.send(None)
    assert step.message.encode() == HEADER.pack(1, 1, 0)
    assert step.expect is Expect.U64
