"""The transmit half of the vhost-user data path in Python: chains a driver made available
on a transmit queue become frames (virtio 1.x §5.1.6.2 "Packet Transmission").

The reference for behaviour; :mod:`.fastring` runs the compiled loops of ``_vring.c``
instead for split and packed rings when they are built, with the same results (the
differential tests in ``tests/property/test_vhost_user_vring_diff.py`` hold both to that).

What it owns
    One transmit burst (:func:`transmit`): take the chains (numpy over the descriptor table
    when every chain is one direct descriptor - the common case with Linux and DPDK
    drivers - else walked one by one), return them as frames and give the buffers back in
    one batched used-ring write. With host offloads negotiated (``CSUM``, ``HOST_TSO4/6``)
    a frame keeps its 12-byte ``virtio_net_hdr_v1`` when any frame of the batch asks for an
    offload (the batch then travels ``vnet=True``); otherwise headers are stripped.
    ``want_frames=False`` (no one to send to) returns the buffers without copying anything
    out.

Errors
    Short transmit chains (shorter than the header) break the queue as in QEMU
    ("virtio-net header incorrect"); runts without an Ethernet header and frames above
    ``NET_BUFSIZE`` are dropped and counted (``tx-malformed``). Nothing read from a batch in
    which guest memory faulted leaves (:meth:`.device.NetDevice.check_memory` runs before
    the buffers are given back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from netstack.net.queue import NET_BUFSIZE

from .virtqueue import RingError, Segment, SimpleBatch, SplitQueue

if TYPE_CHECKING:
    from .device import NetDevice

ETH_HLEN = 14


def transmit(
    dev: NetDevice, q: SplitQueue, budget: int, want_frames: bool, quiet: bool = False
) -> tuple[list[bytes], bool, int]:
    """:meth:`.device.NetDevice.transmit` in Python: up to ``budget`` chains from ``q``
    (split or packed), as ``(frames, vnet, chains)``; with ``quiet``, a burst that took
    chains also asks the driver not to kick. Raises :class:`RingError`."""
    n = q.avail_count()
    if not n:
        dev.check_memory()
        return [], False, 0
    n = min(n, budget)
    heads = q.heads(n)
    want = want_frames
    batch = q.simple_batch(dev.mem, heads, 0)
    if batch is not None:
        frames, vnet = _tx_simple(dev, batch, want)
    else:
        frames, vnet = _tx_chains(dev, q, heads, want)
    dev.check_memory()  # nothing read from a faulted batch goes out
    q.consume(n)
    q.push_used(heads, 0)
    dev.counters["tx-chains"] += n
    if q.call_if_needed():
        dev.counters["calls"] += 1
    if quiet:
        q.set_notification(False)
    return frames, vnet, n


def _tx_simple(dev: NetDevice, batch: SimpleBatch, want: bool) -> tuple[list[bytes], bool]:
    hl = dev.hdr_len
    lens = batch.length
    shortest = int(lens.min())
    if shortest < hl:
        raise RingError(f"transmit chain of {shortest} bytes is shorter than the header")
    bad: NDArray[np.bool_] | None = None
    if shortest < hl + ETH_HLEN or int(lens.max()) > hl + NET_BUFSIZE:
        bad = (lens < hl + ETH_HLEN) | (lens > hl + NET_BUFSIZE)
        dev.counters["tx-malformed"] += int(np.count_nonzero(bad))
    if not want:
        return [], False
    place = batch.place
    at = place.at
    region = place.region
    keep = False
    if dev.host_offloads:
        if region is not None:
            idx = at.astype(np.intp)
            keep = bool(np.any(region.whole[idx]) or np.any(region.whole[idx + 1]))
        else:
            assert place.per_entry is not None
            keep = any(
                r.mm[a] or r.mm[a + 1] for r, a in zip(place.per_entry, at.tolist(), strict=True)
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
    dev: NetDevice, q: SplitQueue, heads: NDArray[np.uint16], want: bool
) -> tuple[list[bytes], bool]:
    hl = dev.hdr_len
    mem = dev.mem
    frames: list[bytes] = []
    keep = False
    for head in heads.tolist():
        segments, total = q.chain(mem, head, writable=False)
        if total < hl:
            raise RingError(f"transmit chain of {total} bytes is shorter than the header")
        if total < hl + ETH_HLEN or total > hl + NET_BUFSIZE:
            dev.counters["tx-malformed"] += 1
            continue
        if not want:
            continue
        data = _gather(segments)
        if dev.host_offloads and (data[0] or data[1]):
            keep = True
        frames.append(data)
    if keep:
        if hl == 10:
            frames = [f[:10] + b"\0\0" + f[10:] for f in frames]
    else:
        frames = [f[hl:] for f in frames]
    return frames, keep


def _gather(segments: list[Segment]) -> bytes:
    if len(segments) == 1:
        region, off, length = segments[0]
        at = region.base + off
        return region.mm[at : at + length]
    return b"".join(r.mm[r.base + o : r.base + o + n] for r, o, n in segments)
