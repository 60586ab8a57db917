"""A vhost-user-net front end that plays the VM: it owns guest memory, the eventfds and the
virtqueues, negotiates over a :class:`~.channel.Channel` with :mod:`.session` plans, and
exposes virtio-net transmit/receive queues (:mod:`.net`).

Life cycle (QEMU's): ``connect()``/``listen()`` run the init sequence; ``start()`` sizes
guest memory for the negotiated features, lays out the rings, sends the start sequence
and posts every receive buffer; ``stop()`` collects each vring's base; ``close()`` drops
the connection and frees fds and memory. ``async with`` closes.

Queue numbering is virtio-net's: vring ``2i`` is RX of pair ``i``, ``2i + 1`` its TX.
By default the driver polls (``interrupts=False``: avail NO_INTERRUPT, far used_event) and
kicks only when the device asks for it (NO_NOTIFY / avail_event); with interrupts on,
:meth:`VhostUserFrontend.wait_call` waits for a vring's call eventfd.

Invariants: every fd this object creates is closed by :meth:`close` (also when start-up
fails half-way); guest memory is never shared before SET_MEM_TABLE/ADD_MEM_REG; a vring's
buffers are posted only after its addresses were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .channel import DEFAULT_TIMEOUT, Channel
from .memory import GuestMemory, Region
from .net import BIG_RX_BUF, RX_BUF, RxQueue, TxQueue, header_len, separate_header
from .packed import PackedQueue
from .protocol import Feature, ProtocolFeature, has
from .session import (
    SUPPORTED_FEATURES,
    SUPPORTED_PROTOCOL,
    Plan,
    Session,
    SessionConfig,
    VringSetup,
)
from .virtqueue import SplitQueue

T = TypeVar("T")
_MIB = 1 << 20


@dataclass
class FrontendConfig:
    queue_pairs: int = 1
    queue_size: int = 256
    features: int = SUPPORTED_FEATURES
    protocol_features: int = SUPPORTED_PROTOCOL
    mtu: int | None = None
    #: Guest memory layout: ``(gpa, size[, mmap_offset])`` per region; None = one region at
    #: guest-physical 0 sized for the queues plus ``spare_memory``.
    memory: tuple[tuple[int, ...], ...] | None = None
    spare_memory: int = 4 * _MIB
    #: What guest memory lives in: ``memfd`` (unsealed), ``sealed-memfd`` or ``file:DIR``.
    memory_backing: str = "memfd"
    tx_slot_size: int = 2048
    #: None: 2048 with MRG_RXBUF (or no guest GSO), 65562 without MRG_RXBUF but with GSO.
    rx_buf_size: int | None = None
    #: Entries per indirect table (0: no indirect tables are reserved).
    indirect_max: int = 0
    #: Receive descriptors per queue kept out of the ring for hostile crafting.
    rx_reserve: int = 0
    #: First avail/used index of every vring (SET_VRING_BASE); exercises u16 wraparound.
    ring_base: int = 0
    #: Header in its own descriptor; None: only when neither VERSION_1 nor ANY_LAYOUT.
    separate_header: bool | None = None
    interrupts: bool = False
    use_mem_slots: bool = True
    init_enable_rounds: int = 2
    enable_wait: bool = True
    disable_on_stop: bool = False
    reply_timeout: float = DEFAULT_TIMEOUT

    def session_config(self) -> SessionConfig:
        return SessionConfig(
            queue_pairs=self.queue_pairs,
            features=self.features,
            protocol_features=self.protocol_features,
            mtu=self.mtu,
            use_mem_slots=self.use_mem_slots,
            init_enable_rounds=self.init_enable_rounds,
            enable_wait=self.enable_wait,
            disable_on_stop=self.disable_on_stop,
        )


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


@dataclass
class _Fds:
    kick: list[int] = field(default_factory=list)
    call: list[int] = field(default_factory=list)
    err: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in (*self.kick, *self.call, *self.err):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.kick, self.call, self.err = [], [], []


class VhostUserFrontend:
    """One virtio-net device's vhost-user front end."""

    def __init__(self, channel: Channel, config: FrontendConfig | None = None) -> None:
        self.channel = channel
        self.config = config or FrontendConfig()
        self.session = Session(self.config.session_config())
        n = 2 * self.config.queue_pairs
        self.fds = _Fds()
        try:
            for _ in range(n):
                self.fds.kick.append(_eventfd())
                self.fds.call.append(_eventfd())
                self.fds.err.append(_eventfd())
        except BaseException:
            self.fds.close()
            raise
        self.mem: GuestMemory | None = None
        self.vqs: list[SplitQueue | PackedQueue] = []
        self.tx: list[TxQueue] = []
        self.rx: list[RxQueue] = []

    # -- construction --------------------------------------------------------------------

    @classmethod
    async def connect(
        cls, path: str, config: FrontendConfig | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> VhostUserFrontend:
        """Client mode: connect to a back end's socket, then run the init sequence."""
        cfg = config or FrontendConfig()
        ch = await Channel.connect(path, timeout=timeout, reply_timeout=cfg.reply_timeout)
        return await cls._initialised(ch, cfg)

    @classmethod
    async def listen(
        cls, path: str, config: FrontendConfig | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> VhostUserFrontend:
        """Server mode: listen on ``path``, take one back end, run the init sequence."""
        cfg = config or FrontendConfig()
        ch = await Channel.accept(path, timeout=timeout, reply_timeout=cfg.reply_timeout)
        return await cls._initialised(ch, cfg)

    @classmethod
    async def _initialised(cls, ch: Channel, cfg: FrontendConfig) -> VhostUserFrontend:
        try:
            fe = cls(ch, cfg)
        except BaseException:
            ch.close()
            raise
        try:
            await fe.init()
        except BaseException:
            fe.close()
            raise
        return fe

    async def __aenter__(self) -> VhostUserFrontend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- control -------------------------------------------------------------------------

    async def run(self, plan: Plan[T]) -> T:
        return await self.channel.run(plan)

    async def init(self) -> None:
        await self.run(self.session.init(self.fds.call, self.fds.err))

    @property
    def features(self) -> int:
        """Acked features (after :meth:`start`), else what the back end offers."""
        return self.session.acked if self.session.started else self.session.offered

    @property
    def hdr_len(self) -> int:
        return header_len(self.session.acked)

    @property
    def mergeable(self) -> bool:
        return has(self.session.acked, Feature.MRG_RXBUF)

    def _rx_buf_size(self, acked: int) -> int:
        if self.config.rx_buf_size is not None:
            return self.config.rx_buf_size
        gso = any(
            has(acked, f) for f in (Feature.GUEST_TSO4, Feature.GUEST_TSO6, Feature.GUEST_UFO)
        )
        if gso and not has(acked, Feature.MRG_RXBUF):
            return BIG_RX_BUF
        return RX_BUF

    def _memory_layout(self, rx_buf: int) -> tuple[tuple[int, ...], ...]:
        cfg = self.config
        if cfg.memory is not None:
            return cfg.memory
        q = cfg.queue_size
        per_pair = (
            2 * (16 * q + 2 * 4096 + 8 * q)
            + q * (cfg.tx_slot_size + rx_buf)
            + 2 * q * cfg.indirect_max * 16
            + 4 * 4096
        )
        total = cfg.queue_pairs * per_pair + cfg.spare_memory
        total = -(-total // (2 * _MIB)) * 2 * _MIB
        return ((0, total),)

    async def start(self) -> None:
        """Negotiate features, share memory, set up every vring and post RX buffers."""
        cfg = self.config
        s = self.session
        acked = s.offered & s.wanted_features()
        rx_buf = self._rx_buf_size(acked)
        self.mem = mem = GuestMemory(self._memory_layout(rx_buf), cfg.memory_backing)
        event_idx = has(acked, Feature.EVENT_IDX)
        hl = header_len(acked)
        sep = separate_header(acked) if cfg.separate_header is None else cfg.separate_header
        vrings: list[VringSetup] = []
        layout = PackedQueue if has(acked, Feature.RING_PACKED) else SplitQueue
        for i in range(2 * cfg.queue_pairs):
            vq = layout(
                mem,
                cfg.queue_size,
                i,
                event_idx=event_idx,
                indirect_max=cfg.indirect_max,
                base=cfg.ring_base,
            )
            if isinstance(vq, PackedQueue):
                vq.in_order = has(acked, Feature.IN_ORDER)
            vq.set_interrupts(cfg.interrupts)
            self.vqs.append(vq)
            desc, used, avail = vq.user_addresses()
            vrings.append(
                VringSetup(
                    i,
                    cfg.queue_size,
                    desc,
                    used,
                    avail,
                    self.fds.kick[i],
                    self.fds.call[i],
                    base=vq.base,
                )
            )
        for p in range(cfg.queue_pairs):
            self.rx.append(
                RxQueue(
                    self.vqs[2 * p],
                    hdr_len=hl,
                    buf_size=rx_buf,
                    mergeable=has(acked, Feature.MRG_RXBUF),
                    notify=self._notifier(2 * p),
                    reserve=cfg.rx_reserve,
                )
            )
            self.tx.append(
                TxQueue(
                    self.vqs[2 * p + 1],
                    hdr_len=hl,
                    slot_size=cfg.tx_slot_size,
                    separate_header=sep,
                    notify=self._notifier(2 * p + 1),
                )
            )
        await self.run(s.start(mem.table(), mem.fds(), vrings))
        for rx in self.rx:
            rx.post_all()

    def _notifier(self, vring: int) -> Callable[[], None]:
        fd = self.fds.kick[vring]

        def kick() -> None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_write(fd, 1)

        return kick

    def kick(self, vring: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_write(self.fds.kick[vring], 1)

    async def wait_call(self, vring: int, timeout: float) -> bool:
        """Wait for the device to signal vring's call eventfd; False on timeout."""
        loop = asyncio.get_running_loop()
        fd = self.fds.call[vring]
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _wake, fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(fd)
        return True

    async def stop(self) -> list[int]:
        return await self.run(self.session.stop())

    async def send_rarp(self, mac: bytes) -> None:
        await self.run(self.session.send_rarp(mac))

    async def set_mtu(self, mtu: int) -> None:
        await self.run(self.session.set_mtu(mtu))

    async def reset_device(self) -> None:
        await self.run(self.session.reset_device())

    async def get_status(self) -> int:
        return await self.run(self.session.get_status())

    async def set_status(self, status: int) -> None:
        await self.run(self.session.set_status(status))

    async def get_queue_num(self) -> int:
        return await self.run(self.session.get_queue_num())

    async def barrier(self) -> int:
        return await self.run(self.session.barrier())

    async def add_region(self, gpa: int, size: int, mmap_offset: int = 0) -> Region:
        """Hot-add guest memory: ADD_MEM_REG with CONFIGURE_MEM_SLOTS, else a new table."""
        if self.mem is None:
            raise RuntimeError("start() first")
        region = self.mem.add_region(gpa, size, mmap_offset)
        if self.session.has_protocol(ProtocolFeature.CONFIGURE_MEM_SLOTS):
            await self.run(self.session.add_mem_reg(region.table_entry(), region.fd))
        else:
            await self.run(self.session.set_memory(self.mem.table(), self.mem.fds()))
        return region

    async def remove_region(self, region: Region) -> None:
        if self.mem is None:
            raise RuntimeError("start() first")
        entry = region.table_entry()
        self.mem.remove_region(region)
        if self.session.has_protocol(ProtocolFeature.CONFIGURE_MEM_SLOTS):
            await self.run(self.session.rem_mem_reg(entry))
        else:
            await self.run(self.session.set_memory(self.mem.table(), self.mem.fds()))

    def close(self) -> None:
        self.channel.close()
        self.fds.close()
        self.tx, self.rx, self.vqs = [], [], []
        if self.mem is not None:
            self.mem.close()
            self.mem = None
