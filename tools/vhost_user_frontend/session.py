"""The front end's side of a vhost-user conversation as sans-IO *plans*: generators that
yield the next :class:`Step` (a message and the reply it expects) and receive the reply.

An adapter (:mod:`.channel`) sends each step and feeds the reply back; unit tests drive
the same generators with a scripted back end. :class:`Session` holds what was negotiated.

Sequences follow QEMU (``hw/virtio/vhost-user.c``, ``hw/virtio/vhost.c``;
checked against a QEMU 7.2 trace):

* :meth:`Session.init` (``vhost_user_backend_init`` + ``vhost_dev_init``): GET_FEATURES;
  if bit 30 is offered GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES(offered & ours),
  GET_QUEUE_NUM (MQ), GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS); SET_OWNER; GET_FEATURES;
  per vring SET_VRING_CALL + SET_VRING_ERR; then SET_VRING_ENABLE(1) for every vring,
  ``init_enable_rounds`` times (QEMU 7.2 was seen sending it twice).
* :meth:`Session.start` (``vhost_dev_start``): NET_SET_MTU (MTU negotiated and an MTU
  configured); SET_FEATURES (acked | bit 30), with STATUS: GET_STATUS + SET_STATUS
  (FEATURES_OK); SET_MEM_TABLE, or ADD_MEM_REG per region with CONFIGURE_MEM_SLOTS; per
  vring SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL;
  with STATUS: GET_STATUS + SET_STATUS(ACKNOWLEDGE|DRIVER|DRIVER_OK); SET_VRING_ENABLE(1)
  per vring.
* :meth:`Session.stop`: optional SET_VRING_ENABLE(0), GET_VRING_BASE per vring, then with
  STATUS SET_STATUS(0) (``vhost_user_reset_status``).

Waiting like QEMU's ``vhost_user_write_sync``: with REPLY_ACK negotiated, NEED_REPLY is set
on SET_MEM_TABLE, ADD/REM_MEM_REG, NET_SET_MTU and SET_VRING_ENABLE (QEMU 10; 7.2 sent
SET_VRING_ENABLE without it, see ``enable_wait``); where a wait is wanted without
REPLY_ACK a GET_FEATURES round trip is the barrier.
"""

from __future__ import annotations

import enum
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from .protocol import (
    FLAG_NEED_REPLY,
    DeviceStatus,
    Feature,
    MemRegion,
    Message,
    ProtocolFeature,
    Reply,
    ReplyError,
    Request,
    bit,
    check_ack,
    check_reply,
    has,
    msg_mem_reg,
    msg_mem_table,
    msg_none,
    msg_rarp,
    msg_state,
    msg_u64,
    msg_vring_addr,
    msg_vring_file,
)


class Expect(enum.Enum):
    NONE = 0  # no reply
    U64 = 1  # a u64 reply with the same request id
    STATE = 2  # a vring-state reply
    ACK = 3  # a REPLY_ACK u64 (0 = success)


@dataclass(frozen=True)
class Step:
    message: Message
    expect: Expect


T = TypeVar("T")
Plan = Generator[Step, Reply | None, T]

#: Virtio features this front end can drive (offloads: it only carries header fields).
SUPPORTED_FEATURES = (
    bit(Feature.CSUM)
    | bit(Feature.GUEST_CSUM)
    | bit(Feature.MTU)
    | bit(Feature.GUEST_TSO4)
    | bit(Feature.GUEST_TSO6)
    | bit(Feature.GUEST_ECN)
    | bit(Feature.GUEST_UFO)
    | bit(Feature.HOST_TSO4)
    | bit(Feature.HOST_TSO6)
    | bit(Feature.HOST_ECN)
    | bit(Feature.HOST_UFO)
    | bit(Feature.MRG_RXBUF)
    | bit(Feature.MQ)
    | bit(Feature.ANY_LAYOUT)
    | bit(Feature.INDIRECT_DESC)
    | bit(Feature.EVENT_IDX)
    | bit(Feature.VERSION_1)
    | bit(Feature.GUEST_USO4)
    | bit(Feature.GUEST_USO6)
    | bit(Feature.HOST_USO)
)
#: The same over packed virtqueues (:mod:`.packed`); opt-in, split rings stay the default.
PACKED_FEATURES = SUPPORTED_FEATURES | bit(Feature.RING_PACKED) | bit(Feature.IN_ORDER)
#: Protocol features this front end implements.
SUPPORTED_PROTOCOL = (
    bit(ProtocolFeature.MQ)
    | bit(ProtocolFeature.RARP)
    | bit(ProtocolFeature.REPLY_ACK)
    | bit(ProtocolFeature.MTU)
    | bit(ProtocolFeature.RESET_DEVICE)
    | bit(ProtocolFeature.CONFIGURE_MEM_SLOTS)
    | bit(ProtocolFeature.STATUS)
)


class NegotiationError(Exception):
    """The back end cannot serve what the front end was configured for."""


@dataclass(frozen=True)
class VringSetup:
    """What SET_VRING_NUM/BASE/ADDR/KICK/CALL carry for one vring."""

    index: int
    num: int
    desc: int  # user addresses
    used: int
    avail: int
    kick_fd: int | None
    call_fd: int | None
    base: int = 0
    log: int = 0
    flags: int = 0


@dataclass
class SessionConfig:
    queue_pairs: int = 1
    features: int = SUPPORTED_FEATURES
    protocol_features: int = SUPPORTED_PROTOCOL
    mtu: int | None = None
    use_mem_slots: bool = True
    init_enable_rounds: int = 2
    enable_wait: bool = True
    disable_on_stop: bool = False


@dataclass
class Session:
    """Negotiated state plus the plans that change it."""

    config: SessionConfig = field(default_factory=SessionConfig)
    offered: int = 0
    protocol_offered: int = 0
    protocol: int = 0
    acked: int = 0
    max_queues: int = 1
    max_mem_slots: int = 8
    owner_set: bool = False
    started: bool = False
    status: int = 0
    log: list[str] = field(default_factory=list)

    # -- building blocks -----------------------------------------------------------------

    @property
    def reply_ack(self) -> bool:
        return has(self.protocol, ProtocolFeature.REPLY_ACK)

    @property
    def n_vrings(self) -> int:
        return 2 * self.config.queue_pairs

    def has_protocol(self, feature: ProtocolFeature) -> bool:
        return has(self.protocol, feature)

    def send(self, msg: Message, expect: Expect = Expect.NONE) -> Plan[Reply | None]:
        """One message; a NEED_REPLY message without another reply expects an ACK."""
        if expect is Expect.NONE and msg.needs_reply:
            expect = Expect.ACK
        self.log.append(_name(msg.request))
        reply = yield Step(msg, expect)
        if expect is Expect.NONE:
            return None
        if reply is None:
            raise ReplyError(f"no reply to {_name(msg.request)}")
        if expect is Expect.ACK:
            check_ack(msg.request, reply)
        else:
            check_reply(msg.request, reply)
            if expect is Expect.U64:
                reply.u64()
            else:
                reply.state()
        return reply

    def get_u64(self, request: int) -> Plan[int]:
        reply = yield from self.send(msg_none(request), Expect.U64)
        assert reply is not None
        return reply.u64()

    def send_sync(self, msg: Message, wait: bool) -> Plan[None]:
        """QEMU's ``vhost_user_write_sync``: NEED_REPLY with REPLY_ACK, else a barrier."""
        if wait and self.reply_ack:
            msg = Message(msg.request, msg.flags | FLAG_NEED_REPLY, msg.payload, msg.fds, msg.size)
        yield from self.send(msg)
        if wait and not self.reply_ack:
            yield from self.get_u64(Request.GET_FEATURES)

    def need_reply(self) -> bool:
        return self.reply_ack

    # -- init ----------------------------------------------------------------------------

    def init(self, call_fds: Sequence[int | None], err_fds: Sequence[int | None]) -> Plan[None]:
        cfg = self.config
        self.offered = yield from self.get_u64(Request.GET_FEATURES)
        if has(self.offered, Feature.PROTOCOL_FEATURES):
            self.protocol_offered = yield from self.get_u64(Request.GET_PROTOCOL_FEATURES)
            self.protocol = self.protocol_offered & cfg.protocol_features
            yield from self.send(msg_u64(Request.SET_PROTOCOL_FEATURES, self.protocol))
            if self.has_protocol(ProtocolFeature.MQ):
                self.max_queues = yield from self.get_u64(Request.GET_QUEUE_NUM)
            else:
                self.max_queues = 1
            if cfg.queue_pairs > self.max_queues:
                raise NegotiationError(
                    f"The maximum number of queues supported by the backend is {self.max_queues}"
                )
            if self.has_protocol(ProtocolFeature.CONFIGURE_MEM_SLOTS):
                self.max_mem_slots = yield from self.get_u64(Request.GET_MAX_MEM_SLOTS)
        elif cfg.queue_pairs > 1:
            raise NegotiationError("The maximum number of queues supported by the backend is 1")
        yield from self.send(msg_none(Request.SET_OWNER))
        self.owner_set = True
        self.offered = yield from self.get_u64(Request.GET_FEATURES)
        for i in range(self.n_vrings):
            yield from self.send(msg_vring_file(Request.SET_VRING_CALL, i, call_fds[i]))
            yield from self.send(msg_vring_file(Request.SET_VRING_ERR, i, err_fds[i]))
        if has(self.offered, Feature.PROTOCOL_FEATURES):
            for _ in range(cfg.init_enable_rounds):
                for i in range(self.n_vrings):
                    yield from self.set_vring_enable(i, True)

    def set_vring_enable(self, index: int, enable: bool) -> Plan[None]:
        msg = msg_state(Request.SET_VRING_ENABLE, index, int(enable))
        yield from self.send_sync(msg, self.config.enable_wait)

    # -- start / stop ----------------------------------------------------------------------

    def wanted_features(self) -> int:
        cfg = self.config
        want = cfg.features
        if cfg.queue_pairs <= 1:
            want &= ~bit(Feature.MQ)
        if cfg.mtu is None:
            want &= ~bit(Feature.MTU)
        return want

    def start(
        self,
        regions: Sequence[MemRegion],
        region_fds: Sequence[int],
        vrings: Sequence[VringSetup],
    ) -> Plan[None]:
        cfg = self.config
        self.acked = self.offered & self.wanted_features()
        if cfg.mtu is not None and has(self.acked, Feature.MTU):
            yield from self.set_mtu(cfg.mtu)
        yield from self.set_features(self.acked)
        yield from self.set_memory(regions, region_fds)
        for v in vrings:
            yield from self.setup_vring(v)
        if self.has_protocol(ProtocolFeature.STATUS):
            yield from self.add_status(
                DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.DRIVER_OK
            )
        if has(self.offered, Feature.PROTOCOL_FEATURES):
            for v in vrings:
                yield from self.set_vring_enable(v.index, True)
        self.started = True

    def set_features(self, features: int) -> Plan[None]:
        value = features
        if has(self.offered, Feature.PROTOCOL_FEATURES):
            value |= bit(Feature.PROTOCOL_FEATURES)
        yield from self.send(msg_u64(Request.SET_FEATURES, value))
        if self.has_protocol(ProtocolFeature.STATUS):
            yield from self.add_status(DeviceStatus.FEATURES_OK)

    def add_status(self, status: int) -> Plan[None]:
        """QEMU's ``vhost_user_add_status``: read, OR in, write only if it changes."""
        current = yield from self.get_u64(Request.GET_STATUS)
        self.status = current
        if current & status == status:
            return
        self.status = current | status
        yield from self.send(msg_u64(Request.SET_STATUS, self.status))

    def set_memory(self, regions: Sequence[MemRegion], fds: Sequence[int]) -> Plan[None]:
        if self.config.use_mem_slots and self.has_protocol(ProtocolFeature.CONFIGURE_MEM_SLOTS):
            for region, fd in zip(regions, fds, strict=True):
                yield from self.add_mem_reg(region, fd)
        else:
            msg = msg_mem_table(regions, fds, need_reply=self.need_reply())
            yield from self.send(msg)

    def add_mem_reg(self, region: MemRegion, fd: int) -> Plan[None]:
        yield from self.send(
            msg_mem_reg(Request.ADD_MEM_REG, region, fd, need_reply=self.need_reply())
        )

    def rem_mem_reg(self, region: MemRegion) -> Plan[None]:
        yield from self.send(
            msg_mem_reg(Request.REM_MEM_REG, region, None, need_reply=self.need_reply())
        )

    def setup_vring(self, v: VringSetup) -> Plan[None]:
        yield from self.send(msg_state(Request.SET_VRING_NUM, v.index, v.num))
        yield from self.send(msg_state(Request.SET_VRING_BASE, v.index, v.base))
        yield from self.send(
            msg_vring_addr(v.index, v.desc, v.used, v.avail, flags=v.flags, log=v.log)
        )
        yield from self.send(msg_vring_file(Request.SET_VRING_KICK, v.index, v.kick_fd))
        yield from self.send(msg_vring_file(Request.SET_VRING_CALL, v.index, v.call_fd))

    def stop(self, n_vrings: int | None = None) -> Plan[list[int]]:
        """Stop every vring; returns the back end's next avail index per vring."""
        n = self.n_vrings if n_vrings is None else n_vrings
        if self.config.disable_on_stop and has(self.offered, Feature.PROTOCOL_FEATURES):
            for i in range(n):
                yield from self.set_vring_enable(i, False)
        bases: list[int] = []
        for i in range(n):
            reply = yield from self.send(msg_state(Request.GET_VRING_BASE, i, 0), Expect.STATE)
            assert reply is not None
            bases.append(reply.state()[1])
        if self.has_protocol(ProtocolFeature.STATUS):
            yield from self.send(msg_u64(Request.SET_STATUS, 0))
            self.status = 0
        self.started = False
        return bases

    # -- one-offs ------------------------------------------------------------------------

    def set_mtu(self, mtu: int) -> Plan[None]:
        if not self.has_protocol(ProtocolFeature.MTU):
            return
        yield from self.send(msg_u64(Request.NET_SET_MTU, mtu, need_reply=self.need_reply()))

    def send_rarp(self, mac: bytes) -> Plan[None]:
        yield from self.send(msg_rarp(mac))

    def reset_device(self) -> Plan[None]:
        if not self.has_protocol(ProtocolFeature.RESET_DEVICE):
            raise NegotiationError("RESET_DEVICE protocol feature not negotiated")
        yield from self.send(msg_none(Request.RESET_DEVICE))
        self.started = False

    def get_status(self) -> Plan[int]:
        value = yield from self.get_u64(Request.GET_STATUS)
        self.status = value
        return value

    def set_status(self, status: int) -> Plan[None]:
        yield from self.send(msg_u64(Request.SET_STATUS, status))
        self.status = status

    def get_queue_num(self) -> Plan[int]:
        return (yield from self.get_u64(Request.GET_QUEUE_NUM))

    def barrier(self) -> Plan[int]:
        """A GET_FEATURES round trip (proves the back end still answers)."""
        return (yield from self.get_u64(Request.GET_FEATURES))


def _name(request: int) -> str:
    try:
        return Request(request).name
    except ValueError:
        return f"REQUEST_{request}"


def run_plan(plan: Plan[T], answer: object) -> T:
    """Drive a plan synchronously with ``answer(step) -> Reply | None`` (tests, scripts)."""
    assert callable(answer)
    reply: Reply | None = None
    try:
        step = plan.send(None)
        while True:
            reply = answer(step)
            step = plan.send(reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
