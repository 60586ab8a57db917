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
      queue (one batch, numpy over the descriptor table when every chain is one direct
      descriptor - the common case with Linux and DPDK drivers), returns them as frames and
      gives the buffers back in one batched used-ring write. With host offloads negotiated
      (``CSUM``, ``HOST_TSO4/6``) a frame keeps its 12-byte ``virtio_net_hdr_v1`` when any
      frame of the batch asks for an offload (the batch then travels ``vnet=True``); otherwise
      headers are stripped. ``want_frames=False`` (no one to send to) returns the buffers
      without copying anything out.
    * :meth:`NetDevice.receive`: copies frames into a receive queue's buffers, writes the
      header (``num_buffers`` for mergeable buffers, offload flags from ``vnet`` frames the
      guest negotiated ``GUEST_CSUM``/``GUEST_TSO4/6`` for; anything else it did not
      negotiate is completed in software first) and publishes the used elements in one
      batch. It stops at the first frame the available buffers cannot hold (the caller
      queues the rest); a frame no set of buffers could ever hold is dropped and counted;
      a buffer too small for the header is given back empty (``rx-bad-buffers``).

    Costs measured on the test machine (``bench/bench_vhost_user.py``, single-descriptor
    buffers): ~20 us per batch of numpy work either way, then ~140 ns per transmitted and
    ~220 ns per received frame (one slice of the mapping each, header and frame together).
    The per-frame loops are plain Python on purpose: numpy scatter/gather of many small
    frames measured slower than slice assignment.

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

import numpy as np
from numpy.typing import NDArray

from netstack.net.queue import NET_BUFSIZE
from netstack.proto import vnet as vnet_hdr

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
from .virtqueue import DESC_F_WRITE, RingError, Segment, SimpleBatch, SplitQueue

_HOST_OFFLOADS = (1 << F_CSUM) | (1 << F_HOST_TSO4) | (1 << F_HOST_TSO6)

STATUS_NEEDS_RESET = 0x40
ETH_HLEN = 14
MIN_MTU = 68
MAX_MTU = 65535
#: Chains taken from a transmit queue per call (one batch).
TX_BUDGET = 256
#: Receive buffers looked at beyond one per frame (mergeable buffers), before all are.
MERGE_LOOKAHEAD = 64

_NUM_BUFFERS = struct.Struct("<H")
_ZERO_HDR_12 = vnet_hdr.PLAIN_HDR[:10] + _NUM_BUFFERS.pack(1)
_ZERO_HDR_10 = bytes(10)

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
        self, q: SplitQueue, budget: int = TX_BUDGET, want_frames: bool = True
    ) -> tuple[list[bytes], bool, int]:
        """Take up to ``budget`` chains from transmit queue ``q``.

        Returns ``(frames, vnet, chains)``: the frames (none when ``want_frames`` is
        False), whether they carry a virtio-net header, and how many chains were consumed.
        The buffers are already back in the used ring and the driver notified as it asked.
        A disabled ring is left alone until it is enabled (DPDK's vhost library does the
        same; the spec's "consume and discard" would drop what a guest queued while QEMU
        was still enabling the ring). Raises :class:`RingError` (the caller breaks the
        queue)."""
        if not q.enabled:
            return [], False, 0
        n = q.avail_count()
        if not n:
            self.check_memory()
            return [], False, 0
        n = min(n, budget)
        heads = q.heads(n)
        want = want_frames
        batch = q.simple_batch(self.mem, heads, 0)
        if batch is not None:
            frames, vnet = self._tx_simple(batch, want)
        else:
            frames, vnet = self._tx_chains(q, heads, want)
        self.check_memory()  # nothing read from a faulted batch goes out
        q.consume(n)
        q.push_used(heads, 0)
        self.counters["tx-chains"] += n
        if q.call_if_needed():
            self.counters["calls"] += 1
        return frames, vnet, n

    def _tx_simple(self, batch: SimpleBatch, want: bool) -> tuple[list[bytes], bool]:
        hl = self.hdr_len
        lens = batch.length
        shortest = int(lens.min())
        if shortest < hl:
            raise RingError(f"transmit chain of {shortest} bytes is shorter than the header")
        bad: NDArray[np.bool_] | None = None
        if shortest < hl + ETH_HLEN or int(lens.max()) > hl + NET_BUFSIZE:
            bad = (lens < hl + ETH_HLEN) | (lens > hl + NET_BUFSIZE)
            self.counters["tx-malformed"] += int(np.count_nonzero(bad))
        if not want:
            return [], False
        place = batch.place
        at = place.at
        region = place.region
        keep = False
        if self.host_offloads:
            if region is not None:
                idx = at.astype(np.intp)
                keep = bool(np.any(region.whole[idx]) or np.any(region.whole[idx + 1]))
            else:
                assert place.per_entry is not None
                keep = any(
                    r.mm[a] or r.mm[a + 1]
                    for r, a in zip(place.per_entry, at.tolist(), strict=True)
                )
        ends = (at + lens).tolist()
        firsts = at.tolist() if keep else (at + np.uint64(hl)).tolist()
        if region is not None:
            mm = region.mm
            frames = [mm[a:b] for a, b in zip(firsts, ends, strict=True)]
        else:
            frames = [m[a:b] for m, a, b in zip(place.mms(), firsts, ends, strict=True)]
        if bad is not None:
            frames = [f for f, b in zip(frames, bad.tolist(), strict=True) if not b]
        if keep and hl == 10:
            frames = [f[:10] + b"\0\0" + f[10:] for f in frames]
        return frames, keep

    def _tx_chains(
        self, q: SplitQueue, heads: NDArray[np.uint16], want: bool
    ) -> tuple[list[bytes], bool]:
        hl = self.hdr_len
        mem = self.mem
        frames: list[bytes] = []
        keep = False
        for head in heads.tolist():
            segments, total = q.chain(mem, head, writable=False)
            if total < hl:
                raise RingError(f"transmit chain of {total} bytes is shorter than the header")
            if total < hl + ETH_HLEN or total > hl + NET_BUFSIZE:
                self.counters["tx-malformed"] += 1
                continue
            if not want:
                continue
            data = _gather(segments)
            if self.host_offloads and (data[0] or data[1]):
                keep = True
            frames.append(data)
        if keep:
            if hl == 10:
                frames = [f[:10] + b"\0\0" + f[10:] for f in frames]
        else:
            frames = [f[hl:] for f in frames]
        return frames, keep

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
        done = 0
        called = False
        spare = MERGE_LOOKAHEAD
        while done < len(frames):
            avail = q.avail_count()
            if not avail:
                break
            rest = frames[done:] if done else frames
            # Mergeable buffers: a frame may take several, so look a little further ahead
            # (everything available when that was not enough for the next frame).
            want = len(rest) + spare if self.mergeable else len(rest)
            heads = q.heads(min(avail, want))
            batch = q.simple_batch(self.mem, heads, DESC_F_WRITE)
            if batch is not None:
                took, used = self._rx_simple(q, batch, rest, vnet)
            else:
                took, used = self._rx_chains(q, rest, vnet, len(heads))
            done += took
            called = called or bool(used)
            if not took and not used:
                if not self.mergeable or want >= avail:
                    break
                spare = avail  # the next frame needs more buffers than were looked at
        self.check_memory()
        if called and q.call_if_needed():
            self.counters["calls"] += 1
        return done

    def _rx_simple(
        self, q: SplitQueue, batch: SimpleBatch, frames: Sequence[bytes], vnet: bool
    ) -> tuple[int, int]:
        hl = self.hdr_len
        place = batch.place
        caps: list[int] = batch.length.tolist()
        ats: list[int] = place.at.tolist()
        used: list[int] = []
        put = used.append
        region = place.region
        if region is not None and not vnet:
            # The hot path: one slice assignment per frame, header and frame together.
            mm = region.mm
            zero = _ZERO_HDR_12 if hl == 12 else _ZERO_HDR_10
            for f, a, c in zip(frames, ats, caps, strict=False):
                size = len(f) + hl
                if size > c:
                    break
                mm[a : a + size] = zero + f
                put(size)
        else:
            for f, a, c, m in zip(frames, ats, caps, place.mms(), strict=False):
                if vnet:
                    size = len(f) - vnet_hdr.HDR_LEN + hl
                    if size > c:
                        break
                    m[a : a + hl] = f[:hl]
                    if hl == 12:
                        m[a + 10 : a + 12] = b"\x01\x00"
                    m[a + hl : a + size] = memoryview(f)[vnet_hdr.HDR_LEN :]
                else:
                    size = len(f) + hl
                    if size > c:
                        break
                    m[a : a + size] = (_ZERO_HDR_12 if hl == 12 else _ZERO_HDR_10) + f
                put(size)
        j = done = len(used)
        if j < len(frames) and j < len(ats):
            j, done = self._rx_rest(q, batch, frames, vnet, j, used)
        if j:
            if self.dirty.active:
                _log_batch(self.dirty, batch, used)
            q.consume(j)
            q.push_used(batch.heads[:j], np.array(used, dtype=np.uint32))
        return done, j

    def _rx_rest(
        self,
        q: SplitQueue,
        batch: SimpleBatch,
        frames: Sequence[bytes],
        vnet: bool,
        j: int,
        used: list[int],
    ) -> tuple[int, int]:
        """Frames from ``frames[j]`` on, one at a time: merged over several buffers, or
        dropped when too big; stops when the fetched buffers run out. A buffer that cannot
        even hold the header is given back empty (used length 0: the driver drops it)."""
        hl = self.hdr_len
        nbuf = len(batch.heads)
        caps = batch.length.tolist()
        starts = batch.place.at.tolist()
        mms = batch.place.mms()
        i = done = j
        while i < len(frames) and j < nbuf:
            if caps[j] < hl:
                self.counters["rx-bad-buffers"] += 1
                used.append(0)
                j += 1
                continue
            frame = frames[i]
            size = len(frame) + hl - (vnet_hdr.HDR_LEN if vnet else 0)
            spans = [size] if size <= caps[j] else None
            if spans is None:
                if not self.mergeable:
                    self.counters["rx-too-big"] += 1  # no single buffer of this queue fits it
                    i += 1
                    done += 1
                    continue
                spans = _take_buffers(caps, j, size)
                if spans is None:
                    if nbuf == q.num and sum(caps[j:]) < size:
                        self.counters["rx-too-big"] += 1  # the whole ring could not hold it
                        i += 1
                        done += 1
                        continue
                    break  # wait for more buffers
            data = _rx_bytes(frame, vnet, hl, len(spans))
            pos = 0
            for k, cut in enumerate(spans):
                at = starts[j + k]
                mms[j + k][at : at + cut] = data[pos : pos + cut]
                used.append(cut)
                pos += cut
            j += len(spans)
            i += 1
            done += 1
        return j, done

    def _rx_chains(
        self, q: SplitQueue, frames: Sequence[bytes], vnet: bool, avail: int
    ) -> tuple[int, int]:
        hl = self.hdr_len
        mem = self.mem
        heads = q.heads(avail).tolist()
        chains: list[tuple[list[Segment], int]] = []  # walked lazily, once each
        pos = 0
        done = 0
        i = 0
        while i < len(frames) and pos < len(heads):
            if pos == len(chains):
                chains.append(q.chain(mem, heads[pos], writable=True))
            if chains[pos][1] < hl:  # cannot hold the header: given back empty
                self.counters["rx-bad-buffers"] += 1
                q.push_one(heads[pos], 0)
                q.consume(1)
                pos += 1
                continue
            frame = frames[i]
            size = (len(frame) - vnet_hdr.HDR_LEN if vnet else len(frame)) + hl
            picked: list[int] = []
            got = 0
            k = pos
            while got < size and k < len(heads):
                if k == len(chains):
                    chains.append(q.chain(mem, heads[k], writable=True))
                picked.append(k)
                got += chains[k][1]
                k += 1
                if not self.mergeable:
                    break
            if got < size:
                if not self.mergeable or (len(heads) == q.num and k == len(heads)):
                    self.counters["rx-too-big"] += 1  # no buffer (or whole ring) can hold it
                    i += 1
                    done += 1
                    continue
                break
            data = _rx_bytes(frame, vnet, hl, len(picked))
            off = 0
            for idx in picked:
                segments, cap = chains[idx]
                cut = min(cap, size - off)
                _scatter(data, off, cut, segments)
                if self.dirty.active:
                    for region, at, length in segments:
                        self.dirty.mark_range(region.spec.gpa + at, length)
                q.push_one(heads[idx], cut)
                off += cut
            q.consume(len(picked))
            pos = k
            i += 1
            done += 1
        return done, pos


def _log_batch(dirty: DirtyLog, batch: SimpleBatch, used: list[int]) -> None:
    """Mark the guest pages of the first ``len(used)`` buffers of ``batch`` (``used[i]``
    bytes written at the start of each)."""
    n = len(used)
    place = batch.place
    at = place.at[:n]
    if place.region is not None:
        spec = place.region.spec
        gpas = at - np.uint64(spec.mmap_offset) + np.uint64(spec.gpa)
    else:
        assert place.per_entry is not None
        regs = place.per_entry[:n]
        offs = np.array([r.spec.mmap_offset for r in regs], dtype=np.uint64)
        gpas = at - offs + np.array([r.spec.gpa for r in regs], dtype=np.uint64)
    dirty.mark(gpas, np.array(used, dtype=np.uint64))


def _gather(segments: list[Segment]) -> bytes:
    if len(segments) == 1:
        region, off, length = segments[0]
        at = region.base + off
        return region.mm[at : at + length]
    return b"".join(r.mm[r.base + o : r.base + o + n] for r, o, n in segments)


def _scatter(data: bytes, start: int, count: int, segments: list[Segment]) -> None:
    """Write ``data[start:start + count]`` across ``segments`` (which hold at least that)."""
    pos = start
    end = start + count
    for region, off, length in segments:
        if pos >= end:
            return
        cut = min(length, end - pos)
        at = region.base + off
        region.mm[at : at + cut] = data[pos : pos + cut]
        pos += cut


def _take_buffers(caps: list[int], first: int, size: int) -> list[int] | None:
    """Bytes to put in buffers ``first, first + 1, ...`` to hold ``size``; None if the
    fetched buffers are not enough."""
    spans: list[int] = []
    left = size
    for cap in caps[first:]:
        cut = min(cap, left)
        spans.append(cut)
        left -= cut
        if not left:
            return spans
    return None


def _rx_bytes(frame: bytes, vnet: bool, hl: int, num_buffers: int) -> bytes:
    """Header (``num_buffers`` filled in) and payload as one bytes object."""
    if vnet:
        hdr = frame[:10]
        payload = frame[vnet_hdr.HDR_LEN :]
    else:
        hdr = bytes(10)
        payload = frame
    if hl == 12:
        hdr += _NUM_BUFFERS.pack(num_buffers)
    return hdr + payload


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
