"""The vhost-user protocol, back-end side: the sans-IO request handler of a virtio-net
device (what each request does, and what is offered and negotiated). The wire format
(request numbers, framing, :class:`~.wire.MessageReader`) is :mod:`.wire`'s; its names are
re-exported here for callers that treat the protocol as one module.

Follows QEMU's ``docs/interop/vhost-user.rst`` and what QEMU 7.2 (``hw/virtio/vhost-user.c``)
and DPDK's virtio-user really send.

Handling (:class:`Session`)
    ``handle(message) -> reply bytes | None``; the device state lives in
    :class:`~.device.NetDevice`, and what needs the event loop (watching kick eventfds,
    announcing a MAC) goes to a :class:`SessionHooks` object. Replies: the mandatory ones
    (``GET_FEATURES``, ``GET_PROTOCOL_FEATURES``, ``GET_QUEUE_NUM``, ``GET_VRING_BASE``,
    ``GET_MAX_MEM_SLOTS``, ``GET_STATUS``, ``GET_CONFIG``, ``GET_INFLIGHT_FD``, and
    ``SET_LOG_BASE``: ``u64`` 0 mapped, 1 refused, see :mod:`.dirtylog`) always,
    with their payload; any other message with NEED_REPLY gets a ``u64`` 0 (done) or 1
    (refused) - whether or not REPLY_ACK was negotiated, as libvhost-user does.

Tolerated beyond the spec (real front ends do it): ``SET_VRING_ENABLE`` and
``SET_VRING_CALL`` before features or protocol features (DPDK), ``ADD_MEM_REG`` of a region
already mapped (QEMU 7.2 sends it once per queue pair), a file descriptor with
``REM_MEM_REG`` (closed unused), ``SET_VRING_KICK`` before the ring is configured (the ring
starts at the first kick instead). Refused requests are counted and reported through
``SessionHooks.error``; only framing errors (wrong version, oversized payload, too many
descriptors) are fatal (:class:`~.wire.ProtocolError`: close the connection).

Migration: ``GET_VRING_BASE`` stops the ring and answers with the next avail index; the data
path is synchronous, so every buffer taken before it is complete, in the used ring and in the
dirty log when the answer goes out. ``SET_VRING_ADDR`` with ``VHOST_VRING_F_LOG`` makes the
ring log its used-ring writes at ``log_guest_addr``.

Invariants: every descriptor a message brings is either owned by the device afterwards or
closed before :meth:`Session.handle` returns; a reply never goes out without a request.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable

from . import wire
from .device import MAX_MTU, MIN_MTU, NetDevice
from .dirtylog import LogError, used_logger
from .features import DEVICE_FEATURES, F_PROTOCOL_FEATURES
from .memory import MAX_MEM_SLOTS, MemoryTableError, RegionSpec
from .virtqueue import RingError, SplitQueue
from .wire import *  # noqa: F403 (re-exported: the wire vocabulary is part of the interface)
from .wire import (
    PF_CONFIGURE_MEM_SLOTS,
    PF_LOG_SHMFD,
    PF_MQ,
    PF_MTU,
    PF_RARP,
    PF_REPLY_ACK,
    PF_RESET_DEVICE,
    PF_STATUS,
    BadRequest,
    Message,
    encode,
    u64,
)

PROTOCOL_FEATURES = sum(
    1 << bit
    for bit in (
        PF_MQ,
        PF_LOG_SHMFD,
        PF_RARP,
        PF_REPLY_ACK,
        PF_MTU,
        PF_RESET_DEVICE,
        PF_CONFIGURE_MEM_SLOTS,
        PF_STATUS,
    )
)
#: Features offered in ``GET_FEATURES``: the device's plus ``VHOST_USER_F_PROTOCOL_FEATURES``.
OFFERED_FEATURES = DEVICE_FEATURES | (1 << F_PROTOCOL_FEATURES)

_U64 = struct.Struct("=Q")
_STATE = struct.Struct("=II")
_ADDR = struct.Struct("=IIQQQQ")
_REGION = struct.Struct("=QQQQ")
_MEM_HDR = struct.Struct("=II")
_LOG = struct.Struct("=QQ")
#: ``VHOST_VRING_F_LOG`` in ``SET_VRING_ADDR``'s flags.
VRING_F_LOG = 0x1
MAX_REGIONS = 8
VRING_IDX_MASK = 0xFF
VRING_NOFD = 0x100


class SessionHooks:
    """What the session needs from its owner (the event-loop adapter). No-ops here."""

    def kick_attach(self, q: SplitQueue) -> None:
        """``q`` got a kick eventfd (watch it) or polling was asked for."""

    def kick_detach(self, q: SplitQueue) -> None:
        """Stop watching ``q``'s kick eventfd: it is about to be closed or replaced."""

    def queue_started(self, q: SplitQueue) -> None:
        """``q`` started: process what is pending."""

    def queue_stopped(self, q: SplitQueue) -> None:
        """``q`` stopped (``GET_VRING_BASE``) or the device was reset."""

    def enable_changed(self, q: SplitQueue) -> None:
        """``SET_VRING_ENABLE`` changed ``q.enabled``."""

    def kicked(self, q: SplitQueue) -> None:
        """An in-band kick (``VRING_KICK``)."""

    def features_changed(self) -> None:
        """``SET_FEATURES`` was applied."""

    def rarp(self, mac: bytes) -> None:
        """``SEND_RARP``: the guest's MAC after a migration."""

    def error(self, text: str) -> None:
        """A request was refused (text says why)."""


class Session:
    """The back-end half of one vhost-user connection of a virtio-net device."""

    def __init__(self, device: NetDevice, hooks: SessionHooks | None = None) -> None:
        self.device = device
        self.hooks = hooks or SessionHooks()
        self.protocol_features = 0
        self.owner = False
        self.refused = 0
        self.handled = 0
        self._table: dict[int, Callable[[Message], bytes | None]] = {
            wire.GET_FEATURES: self._get_features,
            wire.SET_FEATURES: self._set_features,
            wire.SET_OWNER: self._set_owner,
            wire.RESET_OWNER: self._reset_owner,
            wire.SET_MEM_TABLE: self._set_mem_table,
            wire.SET_LOG_BASE: self._set_log_base,
            wire.SET_LOG_FD: self._set_log_fd,
            wire.SET_VRING_NUM: self._set_vring_num,
            wire.SET_VRING_ADDR: self._set_vring_addr,
            wire.SET_VRING_BASE: self._set_vring_base,
            wire.GET_VRING_BASE: self._get_vring_base,
            wire.SET_VRING_KICK: self._set_vring_kick,
            wire.SET_VRING_CALL: self._set_vring_call,
            wire.SET_VRING_ERR: self._set_vring_err,
            wire.GET_PROTOCOL_FEATURES: self._get_protocol_features,
            wire.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            wire.GET_QUEUE_NUM: self._get_queue_num,
            wire.SET_VRING_ENABLE: self._set_vring_enable,
            wire.SEND_RARP: self._send_rarp,
            wire.NET_SET_MTU: self._net_set_mtu,
            wire.SET_BACKEND_REQ_FD: self._set_backend_req_fd,
            wire.GET_CONFIG: self._get_config,
            wire.GET_INFLIGHT_FD: self._get_inflight_fd,
            wire.RESET_DEVICE: self._reset_device,
            wire.VRING_KICK: self._vring_kick,
            wire.GET_MAX_MEM_SLOTS: self._get_max_mem_slots,
            wire.ADD_MEM_REG: self._add_mem_reg,
            wire.REM_MEM_REG: self._rem_mem_reg,
            wire.SET_STATUS: self._set_status,
            wire.GET_STATUS: self._get_status,
        }

    def negotiated(self, bit: int) -> bool:
        return bool(self.protocol_features >> bit & 1)

    # -- dispatch --------------------------------------------------------------------------

    def handle(self, msg: Message) -> bytes | None:
        """Apply one request; the reply to send, if any."""
        self.handled += 1
        handler = self._table.get(msg.request)
        ok = True
        reply: bytes | None = None
        try:
            if handler is None:
                raise BadRequest(f"{msg.name} is not supported")
            reply = handler(msg)
        except BadRequest as exc:
            ok = False
            self.refused += 1
            self.hooks.error(f"{msg.name}: {exc}")
        finally:
            msg.close_fds()
        if reply is not None:
            return encode(msg.request, reply)
        if msg.need_reply:
            return encode(msg.request, u64(0 if ok else 1))
        return None

    # -- payload helpers -------------------------------------------------------------------

    @staticmethod
    def _u64(msg: Message) -> int:
        if len(msg.payload) < 8:
            raise BadRequest(f"payload of {len(msg.payload)} bytes, expected 8")
        return int(_U64.unpack_from(msg.payload)[0])

    @staticmethod
    def _state(msg: Message) -> tuple[int, int]:
        if len(msg.payload) < _STATE.size:
            raise BadRequest(f"payload of {len(msg.payload)} bytes, expected {_STATE.size}")
        index, num = _STATE.unpack_from(msg.payload)
        return int(index), int(num)

    def _queue(self, index: int) -> SplitQueue:
        queues = self.device.queues
        if not 0 <= index < len(queues):
            raise BadRequest(f"vring index {index} (this device has {len(queues)})")
        return queues[index]

    # -- features and ownership ------------------------------------------------------------

    def _get_features(self, msg: Message) -> bytes:
        return u64(OFFERED_FEATURES)

    def _set_features(self, msg: Message) -> None:
        value = self._u64(msg)
        unknown = value & ~OFFERED_FEATURES
        self.device.set_features(value & OFFERED_FEATURES)
        self.hooks.features_changed()
        if unknown:
            raise BadRequest(f"features {unknown:#x} were not offered (ignored)")

    def _get_protocol_features(self, msg: Message) -> bytes:
        return u64(PROTOCOL_FEATURES)

    def _set_protocol_features(self, msg: Message) -> None:
        value = self._u64(msg)
        self.protocol_features = value & PROTOCOL_FEATURES
        if value & ~PROTOCOL_FEATURES:
            raise BadRequest(f"protocol features {value & ~PROTOCOL_FEATURES:#x} not offered")

    def _set_owner(self, msg: Message) -> None:
        self.owner = True

    def _reset_owner(self, msg: Message) -> None:
        # Deprecated; the spec recommends ignoring it or disabling the rings.
        for q in self.device.queues:
            if q.enabled:
                q.enabled = False
                self.hooks.enable_changed(q)

    def _get_queue_num(self, msg: Message) -> bytes:
        return u64(self.device.max_pairs)

    def _reset_device(self, msg: Message) -> None:
        for q in self.device.queues:
            self.hooks.kick_detach(q)
        self.device.reset()
        for q in self.device.queues:
            self.hooks.queue_stopped(q)

    def _set_status(self, msg: Message) -> None:
        self.device.status = self._u64(msg) & 0xFF

    def _get_status(self, msg: Message) -> bytes:
        return u64(self.device.status)

    # -- memory ----------------------------------------------------------------------------

    def _set_mem_table(self, msg: Message) -> None:
        payload = msg.payload
        if len(payload) < _MEM_HDR.size:
            raise BadRequest("memory table payload too short")
        count, _pad = _MEM_HDR.unpack_from(payload)
        if count > MAX_REGIONS:
            raise BadRequest(f"{count} regions (at most {MAX_REGIONS})")
        if len(payload) < _MEM_HDR.size + count * _REGION.size:
            raise BadRequest(f"memory table of {count} regions in {len(payload)} bytes")
        specs = [
            RegionSpec(*_REGION.unpack_from(payload, _MEM_HDR.size + i * _REGION.size))
            for i in range(count)
        ]
        fds, msg.fds = msg.fds, []
        self.device.drop_views()
        try:
            self.device.mem.replace(specs, fds)
        except MemoryTableError as exc:
            raise BadRequest(str(exc)) from None
        finally:
            self.device.memory_changed()

    def _region(self, msg: Message) -> RegionSpec:
        if len(msg.payload) < 8 + _REGION.size:
            raise BadRequest(f"region payload of {len(msg.payload)} bytes")
        return RegionSpec(*_REGION.unpack_from(msg.payload, 8))

    def _add_mem_reg(self, msg: Message) -> None:
        spec = self._region(msg)
        if len(msg.fds) != 1:
            raise BadRequest(f"{len(msg.fds)} file descriptors (expected 1)")
        fd = msg.take_fd()
        self.device.drop_views()
        try:
            self.device.mem.add(spec, fd)
        except MemoryTableError as exc:
            raise BadRequest(str(exc)) from None
        finally:
            self.device.memory_changed()

    def _rem_mem_reg(self, msg: Message) -> None:
        spec = self._region(msg)
        self.device.drop_views()
        try:
            self.device.mem.remove(spec)
        except MemoryTableError as exc:
            raise BadRequest(str(exc)) from None
        finally:
            self.device.memory_changed()

    def _set_log_base(self, msg: Message) -> bytes:
        # Always answered (QEMU waits for it with LOG_SHMFD): 0 mapped, 1 refused.
        regions = self.device.mem.regions
        end = max((r.spec.gpa + r.spec.size for r in regions), default=None)
        try:
            if len(msg.payload) < _LOG.size:
                raise BadRequest(f"log payload of {len(msg.payload)} bytes")
            size, offset = _LOG.unpack_from(msg.payload)
            self.device.dirty.set_base(msg.take_fd(), size, offset, end)
        except (LogError, BadRequest) as exc:
            self.refused += 1
            self.hooks.error(f"SET_LOG_BASE: {exc}")
            return u64(1)
        return u64(0)

    def _set_log_fd(self, msg: Message) -> None:
        # No payload; the eventfd rides alone (none: stop signalling).
        fd = msg.take_fd() if msg.fds else -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, False)
        self.device.dirty.set_fd(fd)

    def _get_max_mem_slots(self, msg: Message) -> bytes:
        return u64(MAX_MEM_SLOTS)

    # -- vrings ----------------------------------------------------------------------------

    def _reconfigure(self, q: SplitQueue) -> None:
        """A ring being configured again is no longer broken (the front end recovers it)."""
        q.broken = None

    def _set_vring_num(self, msg: Message) -> None:
        index, num = self._state(msg)
        q = self._queue(index)
        try:
            q.set_num(num)
        except RingError as exc:
            raise BadRequest(str(exc)) from None
        self._reconfigure(q)

    def _set_vring_addr(self, msg: Message) -> None:
        if len(msg.payload) < _ADDR.size:
            raise BadRequest(f"vring address payload of {len(msg.payload)} bytes")
        index, flags, desc, used, avail, log = _ADDR.unpack_from(msg.payload)
        q = self._queue(index)
        q.set_addr(desc, used, avail)
        q.log_used = used_logger(self.device.dirty, log) if flags & VRING_F_LOG else None
        self._reconfigure(q)
        if q.started and self.device.mem.regions:
            self.device.ensure_mapped(q)

    def _set_vring_base(self, msg: Message) -> None:
        index, num = self._state(msg)
        q = self._queue(index)
        q.set_base(num)
        self._reconfigure(q)

    def _get_vring_base(self, msg: Message) -> bytes:
        # A reply is mandatory: an unknown index still gets one (the front end waits).
        index, _num = self._state(msg) if len(msg.payload) >= 8 else (0, 0)
        queues = self.device.queues
        if not 0 <= index < len(queues):
            self.refused += 1
            self.hooks.error(f"GET_VRING_BASE: vring index {index}")
            return _STATE.pack(index & 0xFFFFFFFF, 0)
        q = queues[index]
        self.hooks.kick_detach(q)
        q.stop()
        self.hooks.queue_stopped(q)
        return _STATE.pack(index, q.last_avail)

    def _file(self, msg: Message) -> tuple[SplitQueue, int]:
        value = self._u64(msg)
        q = self._queue(value & VRING_IDX_MASK)
        if value & VRING_NOFD:
            return q, -1
        fd = msg.take_fd()
        # Eventfds from QEMU and DPDK are non-blocking already; anything else must never
        # block the loop on a read or a write.
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)
        return q, fd

    def _set_vring_kick(self, msg: Message) -> None:
        q, fd = self._file(msg)
        self.hooks.kick_detach(q)
        q.set_fd("kick", fd)
        q.poll = fd < 0
        self._reconfigure(q)
        self.hooks.kick_attach(q)
        if q.num and q.addr_set and self.device.mem.regions:
            # libvhost-user starts the ring here (and re-checks it for missed kicks).
            self.device.start_queue(q)
            self.hooks.queue_started(q)

    def _set_vring_call(self, msg: Message) -> None:
        q, fd = self._file(msg)
        q.set_fd("call", fd)
        q.forget_signalled()

    def _set_vring_err(self, msg: Message) -> None:
        q, fd = self._file(msg)
        q.set_fd("err", fd)

    def _set_vring_enable(self, msg: Message) -> None:
        index, num = self._state(msg)
        q = self._queue(index)
        q.enabled = bool(num)
        self.hooks.enable_changed(q)

    def _vring_kick(self, msg: Message) -> None:
        index, _num = self._state(msg)
        self.hooks.kicked(self._queue(index))

    # -- net -------------------------------------------------------------------------------

    def _send_rarp(self, msg: Message) -> None:
        if len(msg.payload) < 6:
            raise BadRequest("SEND_RARP payload shorter than a MAC address")
        mac = bytes(msg.payload[:6])
        if mac[0] & 1 or mac == bytes(6):
            raise BadRequest("SEND_RARP with a multicast or zero MAC")
        self.hooks.rarp(mac)

    def _net_set_mtu(self, msg: Message) -> None:
        mtu = self._u64(msg)
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise BadRequest(f"MTU {mtu} outside {MIN_MTU}..{MAX_MTU}")
        self.device.mtu = mtu

    # -- not offered, answered so that a front end never waits for ever --------------------

    def _set_backend_req_fd(self, msg: Message) -> None:
        raise BadRequest("no back-end request channel (BACKEND_REQ not offered)")

    def _get_config(self, msg: Message) -> bytes:
        self.refused += 1
        self.hooks.error("GET_CONFIG: no config space (CONFIG not offered)")
        return b""  # an empty payload is the spec's error answer

    def _get_inflight_fd(self, msg: Message) -> bytes:
        self.refused += 1
        self.hooks.error("GET_INFLIGHT_FD: inflight tracking not offered")
        payload = bytearray(msg.payload[:24].ljust(24, b"\0"))
        payload[:16] = bytes(16)  # mmap_size 0: nothing to share
        return bytes(payload)
