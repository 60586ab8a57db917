"""virtio-net over split virtqueues, driver side: transmit queues that put frames (with a
virtio-net header) into guest buffers, receive queues that post buffers and read frames
back, mergeable receive buffers included.

Spec: virtio 1.x §5.1.6 (device operation). Header ``virtio_net_hdr``: ``u8 flags,
u8 gso_type, u16 hdr_len, u16 gso_size, u16 csum_start, u16 csum_offset`` (10 bytes),
plus ``u16 num_buffers`` (12 bytes) when VERSION_1 or MRG_RXBUF is negotiated
(:func:`header_len`). Without VERSION_1 and ANY_LAYOUT the header must sit in its own
descriptor (``separate_header``).

Buffers are fixed: descriptor ``i`` of a queue always owns slot ``i`` of the queue's arena
(``slot_size`` bytes), so nothing is allocated per frame. A transmitted frame longer than
one slot takes a chain of slots. Receive buffers are single device-writable descriptors;
with MRG_RXBUF a frame spans ``num_buffers`` consecutive used elements, otherwise each
buffer must hold a whole frame (``buf_size`` is chosen by the caller: 65562 bytes with
guest TSO/UFO and no MRG_RXBUF, as the spec requires).

The fast path for benches is :meth:`TxQueue.blast_prepare` / :meth:`TxQueue.blast_step`:
every slot holds the same frame and completed heads go straight back into the avail
ring (numpy, no per-frame Python). :meth:`RxQueue.drain` counts frames and bytes without
copying them.

Invariants: we never read beyond a slot however large ``used.len`` claims to be (counted
in ``bad_len`` and clipped); frames with an impossible ``num_buffers`` are dropped and
counted (``bad_frames``); a TX slot is rewritten only after the device returned it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .packed import PackedQueue
from .protocol import Feature, has
from .virtqueue import DESC_F_NEXT, DESC_F_WRITE, Segment, SplitQueue

_HDR = struct.Struct("<BBHHHHH")
NEEDS_CSUM = 1
DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80
#: Receive buffer size without MRG_RXBUF when the device may send GSO super-frames.
BIG_RX_BUF = 65562
#: Default receive buffer size (one page minus nothing; QEMU/Linux use ~1536-4096).
RX_BUF = 2048


def header_len(features: int) -> int:
    """12 with VERSION_1 or MRG_RXBUF, else 10 (no HASH_REPORT support here)."""
    if has(features, Feature.VERSION_1) or has(features, Feature.MRG_RXBUF):
        return 12
    return 10


def separate_header(features: int) -> bool:
    return not (has(features, Feature.VERSION_1) or has(features, Feature.ANY_LAYOUT))


@dataclass(slots=True)
class VnetHeader:
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0

    def pack(self, size: int = 12) -> bytes:
        raw = _HDR.pack(
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        )
        return raw[:size]

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> VnetHeader:
        raw = bytes(data[:12]).ljust(12, b"\0")
        return cls(*_HDR.unpack(raw))


@dataclass(slots=True)
class RxFrame:
    header: VnetHeader
    data: bytes


Notify = Callable[[], None]


def _noop() -> None:
    return None


class TxQueue:
    """Transmit side of one queue pair (vring ``2i + 1``)."""

    def __init__(
        self,
        vq: SplitQueue | PackedQueue,
        *,
        hdr_len: int = 12,
        slot_size: int = 2048,
        separate_header: bool = False,
        notify: Notify = _noop,
    ) -> None:
        self.vq = vq
        self.hdr_len = hdr_len
        self.slot_size = slot_size
        self.separate = separate_header
        self.notify = notify
        mem = vq.mem
        self.arena = mem.alloc(vq.num * slot_size, 4096)
        self.buf = mem.view(self.arena, vq.num * slot_size)
        vq.claim()
        self.vq.desc["addr"] = self.arena + np.arange(vq.num, dtype=np.uint64) * slot_size
        self._free: list[int] = list(range(vq.num - 1, -1, -1))
        self._chain: list[list[int] | None] = [None] * vq.num
        self._blast = False
        self.frames = 0
        self.bytes = 0
        self.completed = 0
        self.zero_header = bytes(hdr_len)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def reclaim(self) -> int:
        """Take back what the device used; returns the number of frames completed."""
        elems = self.vq.reap()
        n = len(elems)
        if n:
            free = self._free
            chain = self._chain
            for head in elems["id"].tolist():
                ids = chain[head]
                chain[head] = None
                if ids is None:
                    free.append(head)
                else:
                    free.extend(ids)
            self.completed += n
        return n

    def _chain_for(self, total: int, lead: int) -> list[int] | None:
        """Slots for ``lead`` header bytes in their own slot (0: inline) + ``total`` bytes."""
        s = self.slot_size
        need = (1 if lead else 0) + max(1, -(-total // s))
        if need > len(self._free):
            return None
        return [self._free.pop() for _ in range(need)]

    def send(
        self,
        frames: Sequence[bytes | bytearray | memoryview],
        headers: Sequence[VnetHeader | None] | None = None,
        *,
        kick: bool = True,
    ) -> int:
        """Queue frames (each gets ``headers[k]`` or an all-zero header); returns how many
        were taken (the rest did not fit: call again after the device used some)."""
        self.reclaim()
        hl = self.hdr_len
        s = self.slot_size
        buf = self.buf
        desc = self.vq.desc
        base = self.arena
        heads: list[int] = []
        single_ids: list[int] = []
        single_lens: list[int] = []
        nbytes = 0
        for k, frame in enumerate(frames):
            hdr_obj = headers[k] if headers is not None else None
            hdr = self.zero_header if hdr_obj is None else hdr_obj.pack(hl)
            flen = len(frame)
            if not self.separate and hl + flen <= s and self._free:
                i = self._free.pop()
                off = i * s
                buf[off : off + hl] = hdr
                buf[off + hl : off + hl + flen] = frame
                single_ids.append(i)
                single_lens.append(hl + flen)
                heads.append(i)
                nbytes += flen
                continue
            if self.separate:
                ids = self._chain_for(flen, hl)
                if ids is None:
                    break
                pieces = [hdr, *self._split(frame, s)]
            else:
                ids = self._chain_for(hl + flen, 0)
                if ids is None:
                    break
                pieces = self._split(hdr + bytes(frame), s)
            if len(pieces) < len(ids):  # zero-length frame with a separate header
                pieces.append(b"")
            for n, (i, piece) in enumerate(zip(ids, pieces, strict=True)):
                off = i * s
                buf[off : off + len(piece)] = piece
                last = n == len(ids) - 1
                desc[i] = (
                    base + off,
                    len(piece),
                    0 if last else DESC_F_NEXT,
                    0 if last else ids[n + 1],
                )
            self._chain[ids[0]] = ids
            heads.append(ids[0])
            nbytes += flen
        if single_ids:
            idx = np.asarray(single_ids, dtype=np.intp)
            # addr too: a descriptor may come back from send_buffers() or hostile use
            desc["addr"][idx] = base + idx.astype(np.uint64) * s
            desc["len"][idx] = single_lens
            desc["flags"][idx] = 0
        taken = len(heads)
        if taken:
            self.vq.push(heads)
            self.frames += taken
            self.bytes += nbytes
            if self.vq.publish() and kick:
                self.vq.kicks += 1
                self.notify()
        return taken

    def send_buffers(self, segments: Sequence[Segment], *, kick: bool = True) -> int:
        """Post one chain over caller-owned guest buffers (header included by the caller;
        any region, e.g. one hot-added later). Returns the head; the descriptors return
        to the pool when the device is done."""
        ids = self.take_descriptors(len(segments))
        desc = self.vq.desc
        for k, seg in enumerate(segments):
            last = k == len(segments) - 1
            flags = (DESC_F_WRITE if seg.write else 0) | (0 if last else DESC_F_NEXT)
            desc[ids[k]] = (seg.gpa, seg.length, flags, 0 if last else ids[k + 1])
        self.adopt_chain(ids)
        self.vq.push([ids[0]])
        self.frames += 1
        self.bytes += sum(s.length for s in segments) - self.hdr_len
        if self.vq.publish() and kick:
            self.vq.kicks += 1
            self.notify()
        return ids[0]

    def take_descriptors(self, n: int) -> list[int]:
        """Remove ``n`` free descriptors from the queue's pool (hostile crafting); the
        caller hands a chain back with :meth:`adopt_chain` or :meth:`give_back`."""
        self.reclaim()
        if n > len(self._free):
            raise ValueError(f"only {len(self._free)} free descriptors")
        return [self._free.pop() for _ in range(n)]

    def adopt_chain(self, ids: Sequence[int]) -> None:
        """Descriptors ``ids`` were posted with head ``ids[0]``: free them all on return."""
        self._chain[ids[0]] = list(ids)

    def give_back(self, ids: Sequence[int]) -> None:
        self._free.extend(ids)

    def slot_gpa(self, i: int) -> int:
        return self.arena + i * self.slot_size

    @staticmethod
    def _split(data: bytes | bytearray | memoryview, size: int) -> list[bytes]:
        mv = memoryview(data)
        return [bytes(mv[o : o + size]) for o in range(0, len(mv), size)] or [b""]

    # -- bench fast path -----------------------------------------------------------------

    def blast_prepare(self, frame: bytes, header: VnetHeader | None = None) -> None:
        """Fill every slot with ``frame`` (one descriptor each) for :meth:`blast_step`."""
        hl = self.hdr_len
        if self.separate or hl + len(frame) > self.slot_size:
            raise ValueError("blast mode needs the header inline and the frame in one slot")
        self.reclaim()
        if self.vq.in_flight:
            raise ValueError("blast mode needs an idle queue (frames are still in flight)")
        image = (self.zero_header if header is None else header.pack(hl)) + frame
        arr = np.frombuffer(self.buf, dtype=np.uint8).reshape(self.vq.num, self.slot_size)
        arr[:, : len(image)] = np.frombuffer(image, dtype=np.uint8)
        del arr
        self.vq.desc["addr"] = self.arena + np.arange(self.vq.num, dtype=np.uint64) * self.slot_size
        self.vq.desc["len"] = len(image)
        self.vq.desc["flags"] = 0
        self._free = []
        self._blast_len = len(frame)
        self._blast = True
        self._blast_started = False

    def blast_step(self) -> int:
        """Recycle completed slots straight into the avail ring; returns frames completed."""
        vq = self.vq
        if not self._blast_started:
            self._blast_started = True
            vq.push(np.arange(vq.num, dtype=np.uint16))
            if vq.publish():
                vq.kicks += 1
                self.notify()
            return 0
        elems = vq.reap()
        n = len(elems)
        if n:
            vq.push(elems["id"])
            if vq.publish():
                vq.kicks += 1
                self.notify()
            self.completed += n
            self.frames += n
            self.bytes += n * self._blast_len
        return n


class RxQueue:
    """Receive side of one queue pair (vring ``2i``)."""

    def __init__(
        self,
        vq: SplitQueue | PackedQueue,
        *,
        hdr_len: int = 12,
        buf_size: int = RX_BUF,
        mergeable: bool = True,
        notify: Notify = _noop,
        reserve: int = 0,
    ) -> None:
        if buf_size < hdr_len + 1:
            raise ValueError("receive buffers must hold the header and some data")
        self.vq = vq
        self.hdr_len = hdr_len
        self.buf_size = buf_size
        self.mergeable = mergeable
        self.notify = notify
        mem = vq.mem
        self.arena = mem.alloc(vq.num * buf_size, 4096)
        self.buf = mem.view(self.arena, vq.num * buf_size)
        vq.claim()
        desc = vq.desc
        desc["addr"] = self.arena + np.arange(vq.num, dtype=np.uint64) * buf_size
        desc["len"] = buf_size
        desc["flags"] = DESC_F_WRITE
        desc["next"] = 0
        self._pending: list[tuple[int, int]] = []  # (id, len) of an incomplete merged frame
        self._skip = 0  # drain(): continuation buffers of a frame begun in the last batch
        self.frames = 0
        self.bytes = 0
        self.bad_len = 0
        self.bad_frames = 0
        self._posted = False
        if not 0 <= reserve < vq.num:
            raise ValueError("reserve must leave at least one receive buffer")
        #: Descriptors never posted as receive buffers, for hostile crafting.
        self.reserved: list[int] = list(range(vq.num - reserve, vq.num))

    def post_all(self) -> None:
        """Give every (unreserved) buffer to the device, once, after ring set-up."""
        if self._posted:
            return
        self._posted = True
        self.vq.push(np.arange(self.vq.num - len(self.reserved), dtype=np.uint16))
        if self.vq.publish():
            self.vq.kicks += 1
            self.notify()

    def slot_gpa(self, i: int) -> int:
        return self.arena + i * self.buf_size

    def _repost(self, ids: npt.NDArray[np.integer] | list[int]) -> None:
        if self.reserved and len(ids):
            mask = np.isin(np.asarray(ids), self.reserved, invert=True)
            ids = np.asarray(ids)[mask]
        if len(ids):
            self.vq.push(ids)
            if self.vq.publish():
                self.vq.kicks += 1
                self.notify()

    def _lengths(self, elems: npt.NDArray[Any]) -> npt.NDArray[np.uint32]:
        lens: npt.NDArray[np.uint32] = elems["len"]
        over = lens > self.buf_size
        if over.any():
            self.bad_len += int(np.count_nonzero(over))
            lens = np.minimum(lens, self.buf_size).astype(np.uint32)
        return lens

    def receive(self, limit: int | None = None) -> list[RxFrame]:
        """Frames the device delivered since the last call (buffers go back at once)."""
        elems = self.vq.reap(limit)
        if not len(elems) and not self._pending:
            return []
        ids = elems["id"].tolist()
        lens = self._lengths(elems).tolist()
        out: list[RxFrame] = []
        hl = self.hdr_len
        s = self.buf_size
        buf = self.buf
        pairs = self._pending + list(zip(ids, lens, strict=True))
        self._pending = []
        k = 0
        while k < len(pairs):
            i, ln = pairs[k]
            off = i * s
            if ln < hl:
                self.bad_frames += 1
                k += 1
                continue
            hdr = VnetHeader.unpack(buf[off : off + hl])
            nb = hdr.num_buffers if self.mergeable else 1
            if nb < 1 or nb > self.vq.num:
                self.bad_frames += 1
                k += 1
                continue
            if k + nb > len(pairs):
                self._pending = pairs[k:]
                break
            if nb == 1:
                data = bytes(buf[off + hl : off + ln])
            else:
                parts = [buf[off + hl : off + ln]]
                for j, lj in pairs[k + 1 : k + nb]:
                    parts.append(buf[j * s : j * s + lj])
                data = b"".join(parts)
            out.append(RxFrame(hdr, data))
            self.frames += 1
            self.bytes += len(data)
            k += nb
        # Buffers of complete (or dropped) frames go back; a partial frame keeps its own.
        self._repost([i for i, _ in pairs[:k]])
        return out

    def drain(self) -> tuple[int, int]:
        """Count frames and bytes delivered, without copying; buffers go back at once.

        Use either :meth:`drain` or :meth:`receive` on a queue, not both.
        """
        elems = self.vq.reap()
        n = len(elems)
        if n == 0:
            return 0, 0
        ids = elems["id"]
        lens = self._lengths(elems)
        hl = self.hdr_len
        nbytes = int(lens.sum(dtype=np.int64)) - n * hl
        frames = n
        if self.mergeable:
            words = np.frombuffer(self.buf, dtype="<u2")
            nb = words[(ids.astype(np.int64) * self.buf_size + 10) // 2]
            if self._skip or (nb != 1).any():
                frames = 0
                k = self._skip
                nbl = nb.tolist()
                while k < n:
                    frames += 1
                    k += max(1, nbl[k])
                self._skip = k - n
                nbytes = int(lens.sum(dtype=np.int64)) - frames * hl
        self._repost(ids)
        self.frames += frames
        self.bytes += nbytes
        return frames, nbytes
