"""The receive half of the vhost-user data path in Python: frames copied into the buffers a
driver made available on a receive queue (virtio 1.x §5.1.6.3-4 "Receiving Packets",
``VIRTIO_NET_F_MRG_RXBUF``).

The reference for behaviour; :mod:`.fastring` runs the compiled loops of ``_vring.c``
instead for split and packed rings when they are built, with the same results (the
differential tests in ``tests/property/test_vhost_user_vring_diff.py`` hold both to that).

What it owns
    One receive call (:func:`receive`): copy frames into the buffers, write the header
    (``num_buffers`` for mergeable buffers; the offload fields of ``vnet`` frames, which
    :meth:`.device.NetDevice.prepare_rx` made acceptable to the driver), mark the written
    pages in the dirty log while it is active, and publish the used elements in one batch.
    It stops at the first frame the available buffers cannot hold (the caller queues the
    rest); a frame no set of buffers could ever hold is dropped and counted
    (``rx-too-big``); a buffer too small for the header is given back empty
    (``rx-bad-buffers``). Frames are any C-contiguous bytes-like objects, checked before
    the ring is touched (:func:`check_frames`).

"Never fits" is decided on all of the ring: a frame the available buffers cannot hold
together is dropped when they hold every entry of the ring (the descriptors of a split
ring's table, an indirect descriptor counting one; the slots of a packed ring), since the
driver cannot post more, and waits for buffers otherwise. QEMU (``hw/net/virtio-net.c``
``virtio_net_receive_rcu``) asks ``virtqueue_avail_bytes`` for the frame's size first and
leaves a frame bigger than the whole ring queued, which stalls the queue for good; we drop
and count it instead.

Costs measured on the test machine (``bench/bench_vhost_user.py``, single-descriptor
buffers): ~20 us per batch of numpy work, then ~220 ns per received frame (one slice of
the mapping each, header and frame together). Numpy scatter/gather of many small frames
measured slower than slice assignment.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from netstack.proto import vnet as vnet_hdr

from .dirtylog import DirtyLog
from .virtqueue import DESC_F_WRITE, Segment, SimpleBatch, SplitQueue

if TYPE_CHECKING:
    from .device import NetDevice

#: Receive buffers looked at beyond one per frame (mergeable buffers), before all are.
MERGE_LOOKAHEAD = 64

_NUM_BUFFERS = struct.Struct("<H")
_ZERO_HDR_12 = vnet_hdr.PLAIN_HDR[:10] + _NUM_BUFFERS.pack(1)
_ZERO_HDR_10 = bytes(10)
_PLAIN = frozenset((bytes, bytearray))


def check_frames(frames: Sequence[bytes], vnet: bool) -> Sequence[bytes]:
    """``frames`` as bytes or bytearray (other contiguous bytes-like objects copied), before
    anything is written: :class:`TypeError` for one that is not bytes-like or not
    contiguous, :class:`ValueError` for a ``vnet`` one shorter than its header."""
    if not set(map(type, frames)) <= _PLAIN:
        return [_checked(f, vnet) for f in frames]  # in order: the first bad frame's error
    if vnet and frames and min(map(len, frames)) < vnet_hdr.HDR_LEN:
        raise ValueError("vnet frame shorter than its header")
    return frames


def _checked(frame: object, vnet: bool) -> bytes:
    if isinstance(frame, bytes):
        data = frame
    elif isinstance(frame, bytearray):
        data = bytes(frame)
    else:
        try:
            view = memoryview(frame)  # type: ignore[arg-type]
        except TypeError:
            view = None
        if view is None or not view.c_contiguous:
            raise TypeError("frames must be contiguous bytes-like objects")
        data = view.tobytes()
    if vnet and len(data) < vnet_hdr.HDR_LEN:
        raise ValueError("vnet frame shorter than its header")
    return data


def receive(dev: NetDevice, q: SplitQueue, frames: Sequence[bytes], vnet: bool) -> int:
    """:meth:`.device.NetDevice.receive` in Python: ``frames`` into receive queue ``q``
    (split or packed); how many were disposed of. Raises :class:`RingError`, and
    :class:`TypeError` / :class:`ValueError` from :func:`check_frames` (the ring untouched)."""
    frames = check_frames(frames, vnet)
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
        want = len(rest) + spare if dev.mergeable else len(rest)
        heads = q.heads(min(avail, want))
        batch = q.simple_batch(dev.mem, heads, DESC_F_WRITE)
        if batch is not None:
            took, used = _rx_simple(dev, q, batch, rest, vnet)
        else:
            took, used = _rx_chains(dev, q, rest, vnet, len(heads))
        done += took
        called = called or bool(used)
        if not took and not used:
            if not dev.mergeable or want >= avail:
                break
            spare = avail  # the next frame needs more buffers than were looked at
    dev.check_memory()
    if called and q.call_if_needed():
        dev.counters["calls"] += 1
    return done


def _rx_simple(
    dev: NetDevice, q: SplitQueue, batch: SimpleBatch, frames: Sequence[bytes], vnet: bool
) -> tuple[int, int]:
    hl = dev.hdr_len
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
        j, done = _rx_rest(dev, q, batch, frames, vnet, j, used)
    if j:
        if dev.dirty.active:
            _log_batch(dev.dirty, batch, used)
        q.consume(j)
        q.push_used(batch.heads[:j], np.array(used, dtype=np.uint32))
    return done, j


def _rx_rest(
    dev: NetDevice,
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
    hl = dev.hdr_len
    nbuf = len(batch.heads)
    caps = batch.length.tolist()
    starts = batch.place.at.tolist()
    mms = batch.place.mms()
    i = done = j
    while i < len(frames) and j < nbuf:
        if caps[j] < hl:
            dev.counters["rx-bad-buffers"] += 1
            used.append(0)
            j += 1
            continue
        frame = frames[i]
        size = len(frame) + hl - (vnet_hdr.HDR_LEN if vnet else 0)
        spans = [size] if size <= caps[j] else None
        if spans is None:
            if not dev.mergeable:
                dev.counters["rx-too-big"] += 1  # no single buffer of this queue fits it
                i += 1
                done += 1
                continue
            spans = _take_buffers(caps, j, size)
            if spans is None:
                if nbuf == q.num and sum(caps[j:]) < size:
                    dev.counters["rx-too-big"] += 1  # the whole ring could not hold it
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
    dev: NetDevice, q: SplitQueue, frames: Sequence[bytes], vnet: bool, avail: int
) -> tuple[int, int]:
    hl = dev.hdr_len
    mem = dev.mem
    heads = q.heads(avail).tolist()
    chains: list[tuple[list[Segment], int]] = []  # walked lazily, once each
    pos = 0
    done = 0
    i = 0
    entries = 0  # ring entries of the walked chains: num of them and the driver can post no more
    while i < len(frames) and pos < len(heads):
        if pos == len(chains):
            chains.append(q.chain(mem, heads[pos], writable=True))
            entries += q.walked
        if chains[pos][1] < hl:  # cannot hold the header: given back empty
            dev.counters["rx-bad-buffers"] += 1
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
                entries += q.walked
            picked.append(k)
            got += chains[k][1]
            k += 1
            if not dev.mergeable:
                break
        if got < size:
            if not dev.mergeable or (k == len(heads) and entries >= q.num):
                dev.counters["rx-too-big"] += 1  # no buffer (or whole ring) can hold it
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
            if dev.dirty.active:
                for region, at, length in segments:
                    dev.dirty.mark_range(region.spec.gpa + at, length)
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
