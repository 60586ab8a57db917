"""virtio-net as a vhost-user back end sees it: the device state and the data path between
its rings and the daemon's frames.

Follows the virtio 1.x spec §5.1 (network device) with the layouts of
``include/standard-headers/linux/virtio_net.h`` and QEMU's ``hw/net/virtio-net.c``
behaviour where the spec leaves room.

What it owns
    The negotiated features and what they imply (virtio-net header length: 12 bytes with
    ``VERSION_1`` or ``MRG_RXBUF``, else 10; mergeable receive buffers; event-idx and
    indirect descriptors per queue), the guest memory table, the queues (vring 2i receives
    for pair i, 2i+1 transmits), the device status byte, the MTU the front end set, the
    per-device counters, and the two halves of the data path:

    * :meth:`NetDevice.transmit`: takes the chains the driver made available on a transmit
      queue, returns them as frames and gives the buffers back (:mod:`.txpath`).
    * :meth:`NetDevice.receive`: copies frames into a receive queue's buffers and publishes
      the used elements (:mod:`.rxpath`), after :meth:`NetDevice.prepare_rx` completed in
      software what the guest did not negotiate.

    Each call runs either the pure-Python reference (:mod:`.txpath`, :mod:`.rxpath`) or,
    for split and packed rings when the extension is built, the compiled loops of ``_vring.c``
    through :mod:`.fastring`; :attr:`NetDevice.vring` says which (``NETSTACK_PURE_PYTHON=1``
    forces Python). Both give the same frames, rings, counters and errors.

Errors
    A driver breaking the ring rules raises :class:`~.virtqueue.RingError` inside; the queue
    is marked broken (the reason logged once by the owner via ``on_broken``, counted in
    ``rings-broken``), ``DEVICE_NEEDS_RESET`` is set in the status, the err eventfd is
    signalled, and that queue is not touched again until the front end reconfigures it,
    resets the device or reconnects. Short transmit chains (shorter than the header) break
    the queue as in QEMU ("virtio-net header incorrect"); runts without an Ethernet header
    and frames above ``NET_BUFSIZE`` are dropped and counted (``tx-malformed``).

    A fault in guest memory (the front end truncated its file: :mod:`.memguard` turned the
    SIGBUS into zero pages) is noticed after the batch that met it, or before a queue is
    broken for what the zeros looked like: every queue of the device stops with that reason,
    ``memory-faults`` counts it, ``on_memory_fault`` reports it once, and nothing read from
    the faulted batch leaves the device. Queues refuse to start again until a new memory
    table replaces the region (or the front end reconnects).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Literal, get_args

from netstack.proto import vnet as vnet_hdr

from . import fastring, rxpath, txpath
from .dirtylog import DirtyLog
from .features import (
    F_CSUM,
    F_EVENT_IDX,
    F_GUEST_CSUM,
    F_GUEST_TSO4,
    F_GUEST_TSO6,
    F_HOST_TSO4,
    F_HOST_TSO6,
    F_INDIRECT_DESC,
    F_LOG_ALL,
    F_MRG_RXBUF,
    F_PROTOCOL_FEATURES,
    F_RING_PACKED,
    F_VERSION_1,
)
from .memguard import fault_count
from .memory import GuestMemory, Region
from .packed import PackedQueue, relayout
from .virtqueue import RingError, SplitQueue

_HOST_OFFLOADS = (1 << F_CSUM) | (1 << F_HOST_TSO4) | (1 << F_HOST_TSO6)

STATUS_NEEDS_RESET = 0x40
MIN_MTU = 68
MAX_MTU = 65535
#: Chains taken from a transmit queue per call (one batch).
TX_BUDGET = 256
#: The device's counters (``query-netdev``), in their order.
DeviceCounter = Literal[
    "tx-chains",
    "tx-malformed",
    "rx-too-big",
    "rx-bad-buffers",
    "rx-offload-completed",
    "rings-broken",
    "memory-faults",
    "calls",
]
COUNTER_NAMES: tuple[DeviceCounter, ...] = get_args(DeviceCounter)


class NetDevice:
    """The state and data path of one vhost-user virtio-net device (all its queue pairs)."""

    def __init__(self, max_pairs: int, on_broken: Callable[[SplitQueue, str], None] | None = None):
        self.max_pairs = max_pairs
        self.mem = GuestMemory()
        #: Dirty-page log (live migration): every receive buffer written is marked in it.
        self.dirty = DirtyLog()
        self.queues = [SplitQueue(i) for i in range(2 * max_pairs)]
        self.on_broken = on_broken
        #: Told (once per fault) why every queue stopped when guest memory faulted.
        self.on_memory_fault: Callable[[str], None] | None = None
        #: Why the device's memory is unusable, until a new table replaces it.
        self.memory_fault: str | None = None
        self.counters: dict[DeviceCounter, int] = dict.fromkeys(COUNTER_NAMES, 0)
        #: The compiled ring loops (:mod:`.fastring`), or None: the pure-Python reference.
        self.vring = fastring.load()
        self._init_state()

    def _init_state(self) -> None:
        self.features = 0
        self.features_set = False
        self.hdr_len = 12
        self.mergeable = False
        self.host_offloads = False
        self.status = 0
        self.mtu: int | None = None
        self._guest_csum = False
        self._guest_tso4 = False
        self._guest_tso6 = False

    # -- configuration -------------------------------------------------------------------

    def set_features(self, features: int) -> None:
        self.features = features
        self.features_set = True
        has = self.has
        self.hdr_len = 12 if has(F_VERSION_1) or has(F_MRG_RXBUF) else 10
        self.mergeable = has(F_MRG_RXBUF)
        self.host_offloads = bool(features & _HOST_OFFLOADS)
        self._guest_csum = has(F_GUEST_CSUM)
        self._guest_tso4 = self._guest_csum and has(F_GUEST_TSO4)
        self._guest_tso6 = self._guest_csum and has(F_GUEST_TSO6)
        self.dirty.enabled = has(F_LOG_ALL)
        self.queues = [relayout(q, has(F_RING_PACKED)) for q in self.queues]
        for q in self.queues:
            if isinstance(q, PackedQueue):
                q.dirty = self.dirty
        for q in self.queues:
            if q.event_idx != has(F_EVENT_IDX):
                q.unmap()
            q.event_idx = has(F_EVENT_IDX)
            q.indirect = has(F_INDIRECT_DESC)
        if not has(F_PROTOCOL_FEATURES):
            # vhost-user: without protocol features every ring is enabled from the start.
            for q in self.queues:
                q.enabled = True
        for q in self.queues:
            if q.started:
                self.ensure_mapped(q)

    def has(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)

    @property
    def guest_offloads(self) -> bool:
        """Whether the driver takes partial checksums (and so vnet frames) on receive."""
        return self._guest_csum

    def memory_changed(self) -> None:
        """After the memory table changed: re-translate every started queue."""
        if self.memory_fault is not None and self.mem.faulted() is None:
            self.memory_fault = None
        for q in self.queues:
            if q.started:
                self.ensure_mapped(q)

    def drop_views(self) -> None:
        """Before the memory table changes: no view of the old mappings may survive."""
        for q in self.queues:
            q.unmap()

    def ensure_mapped(self, q: SplitQueue) -> bool:
        if q.broken is not None:
            return False
        if self.memory_fault is not None:
            q.broken = self.memory_fault
            return False
        try:
            q.map(self.mem)
        except RingError as exc:
            self.break_queue(q, str(exc))
            return False
        return True

    def start_queue(self, q: SplitQueue) -> bool:
        """The queue starts (kick fd installed or first kick): map it; False if broken."""
        q.started = True
        q.forget_signalled()
        return self.ensure_mapped(q)

    def break_queue(self, q: SplitQueue, reason: str) -> None:
        region = self.mem.poll_faults()
        if region is not None:
            self.memory_faulted(region)  # what the queue saw were zero pages
        if q.broken is not None:
            return
        q.broken = reason
        self.counters["rings-broken"] += 1
        self.status |= STATUS_NEEDS_RESET
        q.signal_error()
        if self.on_broken is not None:
            self.on_broken(q, reason)

    def check_memory(self) -> None:
        """After a batch touched guest memory: raise :class:`RingError` (every queue
        stopped) if an access faulted."""
        if fault_count() == self.mem.fault_mark:
            return
        region = self.mem.faulted()
        if region is not None:
            raise RingError(self.memory_faulted(region))

    def memory_faulted(self, region: Region) -> str:
        """Stop every queue: ``region``'s memory faulted. Returns the reason."""
        if self.memory_fault is not None:
            return self.memory_fault
        spec = region.spec
        reason = (
            f"guest memory at gpa {spec.gpa:#x}+{spec.size:#x} ({region.backing.kind}) faulted:"
            " the front end truncated or unmapped it"
        )
        self.memory_fault = reason
        self.counters["memory-faults"] += 1
        self.status |= STATUS_NEEDS_RESET
        for q in self.queues:
            if q.broken is None:
                q.broken = reason
                if q.started:
                    self.counters["rings-broken"] += 1
                    q.signal_error()
        if self.on_memory_fault is not None:
            self.on_memory_fault(reason)
        return reason

    def reset(self) -> None:
        """``RESET_DEVICE``: every queue back to stopped and disabled; features forgotten.
        The memory table stays (the front end owns it and says when it changes)."""
        for q in self.queues:
            q.reset()
        self.dirty.close()
        self.queues = [relayout(q, False) for q in self.queues]  # no features: split
        self._init_state()

    def close(self) -> None:
        """The connection ended: queues reset, memory and log unmapped."""
        for q in self.queues:
            q.reset()
        self.dirty.close()
        self.queues = [relayout(q, False) for q in self.queues]
        self.mem.clear()
        self.memory_fault = None
        self._init_state()

    def rx_queue(self, pair: int) -> SplitQueue:
        return self.queues[2 * pair]

    def tx_queue(self, pair: int) -> SplitQueue:
        return self.queues[2 * pair + 1]

    def rx_ready(self, pair: int) -> bool:
        q = self.queues[2 * pair]
        return q.enabled and q.ready

    # -- transmit: driver -> daemon --------------------------------------------------------

    def transmit(
        self, q: SplitQueue, budget: int = TX_BUDGET, want_frames: bool = True, quiet: bool = False
    ) -> tuple[list[bytes], bool, int]:
        """Take up to ``budget`` chains from transmit queue ``q``.

        Returns ``(frames, vnet, chains)``: the frames (none when ``want_frames`` is
        False), whether they carry a virtio-net header, and how many chains were consumed.
        The buffers are already back in the used ring and the driver notified as it asked;
        with ``quiet`` a burst that took chains also asks the driver not to kick.
        A disabled ring is left alone until it is enabled (DPDK's vhost library does the
        same; the spec's "consume and discard" would drop what a guest queued while QEMU
        was still enabling the ring). Raises :class:`RingError` (the caller breaks the
        queue)."""
        if not q.enabled:
            return [], False, 0
        vring = self.vring
        if vring is not None and fastring.eligible(q):
            return fastring.transmit(self, q, vring, budget, want_frames, quiet)
        return txpath.transmit(self, q, budget, want_frames, quiet)

    # -- receive: daemon -> driver ---------------------------------------------------------

    def prepare_rx(self, frames: Sequence[bytes], vnet: bool) -> tuple[Sequence[bytes], bool]:
        """Frames whose headers the driver can take as they are: offloads it did not
        negotiate are completed in software (checksum, segmentation) and their header
        dropped. Returns the frames and whether they still carry headers."""
        if not vnet:
            return frames, False
        if not self._guest_csum:
            self.counters["rx-offload-completed"] += len(frames)
            return vnet_hdr.to_plain(frames), False
        out: list[bytes] = []
        for frame in frames:
            if len(frame) < vnet_hdr.HDR_LEN:
                continue
            gso = frame[1]
            if (
                gso == vnet_hdr.GSO_NONE
                or (gso == vnet_hdr.GSO_TCPV4 and self._guest_tso4)
                or (gso == vnet_hdr.GSO_TCPV6 and self._guest_tso6)
            ):
                out.append(frame)
            else:
                self.counters["rx-offload-completed"] += 1
                out.extend(vnet_hdr.PLAIN_HDR + f for f in vnet_hdr.to_plain((frame,)))
        return out, True

    def receive(self, q: SplitQueue, frames: Sequence[bytes], vnet: bool) -> int:
        """Copy ``frames`` (already through :meth:`prepare_rx`) into receive queue ``q``;
        returns how many were disposed of (written, or dropped as too big for any buffer).
        Raises :class:`RingError` (the caller breaks the queue)."""
        vring = self.vring
        if vring is not None and fastring.eligible(q):
            return fastring.receive(self, q, vring, frames, vnet)
        return rxpath.receive(self, q, frames, vnet)


def rarp_frame(mac: bytes) -> bytes:
    """The gratuitous RARP a back end broadcasts for a migrated guest (what QEMU's
    ``announce-self`` and DPDK's ``make_rarp_packet`` send): reverse request from ``mac``,
    padded to 60 bytes."""
    body = (
        b"\xff" * 6
        + mac
        + b"\x80\x35"  # ETH_P_RARP
        + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3)  # Ethernet, IPv4, hlen, plen, reverse request
        + mac
        + bytes(4)
        + mac
        + bytes(4)
    )
    return body + bytes(60 - len(body))
