"""Fuzz entry point for the compiled ring loops (``drivers/vhost_user/_vring.c``), split and
packed.

:func:`fuzz_one` takes arbitrary bytes and reads them as a recipe: features, ring layout,
queue size, start index (and wrap counter), two guest memory regions, a burst of
descriptor chains (direct, chained with NEXT, indirect) and, for receive, the frames to
deliver, then the call-suppression state (driver event structure or ``used_event``, the
last signalled index) - valid by default, with each later byte able to make one thing
hostile (an address outside or straddling the memory or near 2**64, a wrong direction,
unknown flags, a loop, a next index past its table, a head past the table, an avail index
too far ahead, a packed descriptor of the wrong lap, a chain over the whole packed ring,
an indirect table that is empty, misaligned, too long, nested or not allowed, lengths of
0, shorter than the header, larger than a frame; a receive frame that is a memoryview,
a bytearray, a non-contiguous view, a str or shorter than its vnet header). The packed
layout lives in
:mod:`tests.fuzz.vring_packed_recipe`. The
same guest memory is built twice, once per ring implementation; one transmit or receive
burst runs through :class:`~drivers.vhost_user.device.NetDevice` with the compiled loops
and with the pure-Python reference, and everything observable must be identical: frames,
the vnet flag, chains consumed, errors (type and text), ring indices (slots and wrap
counters), counters (calls included), the signalled index, every byte of guest memory and
every bit of the dirty log. A mismatch raises :class:`AssertionError`;
a memory error in the C code crashes (ASan reports it).

Used by ``tests/property/test_vhost_user_vring_diff.py`` (hypothesis) and by the fuzzing
stage (atheris or libFuzzer: ``fuzz_one`` is a plain callable; without the compiled module
it only runs the Python path, which must never raise anything but :class:`AssertionError`
for a disagreement).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from drivers.vhost_user import fastring
from drivers.vhost_user.device import NetDevice
from drivers.vhost_user.dirtylog import used_logger
from drivers.vhost_user.features import (
    F_CSUM,
    F_EVENT_IDX,
    F_GUEST_CSUM,
    F_INDIRECT_DESC,
    F_LOG_ALL,
    F_MRG_RXBUF,
    F_RING_PACKED,
    F_VERSION_1,
)
from drivers.vhost_user.memory import RegionSpec
from drivers.vhost_user.packed import PackedQueue
from drivers.vhost_user.virtqueue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    RingError,
    SplitQueue,
)

#: Guest-physical layout: region 0 holds the rings and buffers, region 1 more buffers.
REGIONS = ((0x0, 0x10000), (0x40000, 0x4000))
UADDR = 0x7F00_0000_0000
LOG_BYTES = 16  # 128 pages: 512 KiB of guest-physical space, both regions
_DESC = struct.Struct("<QIHH")
_RING_AREA = 0x3000  # desc table, avail and used rings of up to 64 entries
_MFD_ALLOW_SEALING = 2
_F_SEAL_SHRINK = 0x0002
_F_ADD_SEALS = 1033


class Recipe:
    """Bytes read as decisions; 0 (and running out of bytes) always means "valid"."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def pick(self, n: int) -> int:
        return self.byte() % n

    def rare(self, k: int = 12) -> bool:
        """True for about ``k`` of 256 byte values (never for 0)."""
        return self.byte() >= 256 - k


@dataclass
class Scenario:
    transmit: bool
    features: int
    num: int
    base: int
    avail_idx: int
    budget: int
    want: bool
    vnet: bool
    log: bool
    log_used_addr: int
    images: list[bytearray]
    #: Receive frames: bytes, and where the recipe says so other bytes-like objects,
    #: non-contiguous views, str or frames shorter than a vnet header.
    frames: list[Any] = field(default_factory=list)
    packed: bool = False
    #: Transmit asks the driver not to kick after the burst.
    quiet: bool = False
    #: The last signalled used index (split) or slot (packed), None: none since the start.
    signalled: int | None = None


def _put_desc(img: bytearray, at: int, addr: int, length: int, flags: int, nxt: int) -> None:
    """One descriptor as a guest would store it: every field wraps to its width (a hostile
    address computed below zero or past 2**64 is stored as the guest's u64 would be)."""
    _DESC.pack_into(img, at, addr % (1 << 64), length % (1 << 32), flags & 0xFFFF, nxt & 0xFFFF)


class _Alloc:
    def __init__(self) -> None:
        self.next = [_RING_AREA, 0]

    def take(self, rec: Recipe, size: int) -> int:
        region = 1 if rec.byte() & 0x80 else 0
        gpa, length = REGIONS[region]
        at = (self.next[region] + 15) // 16 * 16
        if at + size > length:
            region, (gpa, length) = 0, REGIONS[0]
            at = (self.next[0] + 15) // 16 * 16
            if at + size > length:
                at = _RING_AREA  # reuse: overlapping buffers are allowed and harmless
        self.next[region] = at + size
        return gpa + at


def _hostile_addr(rec: Recipe, addr: int, length: int) -> int:
    kind = rec.pick(5)
    if kind == 0:
        return REGIONS[0][1] - length // 2 if length > 1 else REGIONS[0][1]  # straddles the end
    if kind == 1:
        return (1 << 64) - 1 - rec.pick(64)  # wraps
    if kind == 2:
        return REGIONS[1][0] - 8  # between the regions
    if kind == 3:
        return 0x1000_0000 + rec.byte()  # far outside
    return addr + 0x3FF0  # maybe across the end of region 1


def build(data: bytes, kinds: bytes | None = None) -> Scenario:
    """The scenario the bytes describe (deterministic); ``kinds``: the bytes that choose
    each receive frame's object (:func:`_frame_kinds`) instead of the recipe's last ones."""
    rec = Recipe(data)
    first = rec.byte()
    transmit = not first & 1
    packed = bool(first & 2)
    f = rec.byte()
    features = 0
    if not f & 1:
        features |= 1 << F_VERSION_1
    if not f & 2:
        features |= 1 << F_MRG_RXBUF
    if not f & 4:
        features |= 1 << F_INDIRECT_DESC
    if f & 8:
        features |= 1 << F_CSUM
    if f & 16:
        features |= 1 << F_GUEST_CSUM
    if f & 32:
        features |= 1 << F_LOG_ALL
    if f & 64:
        features |= 1 << F_EVENT_IDX
    hl = 12 if features & ((1 << F_VERSION_1) | (1 << F_MRG_RXBUF)) else 10
    images = [bytearray(size) for _gpa, size in REGIONS]
    if packed:
        from tests.fuzz import vring_packed_recipe

        features |= 1 << F_RING_PACKED
        num, base = vring_packed_recipe.layout(rec, images, _Alloc(), transmit, hl)
        idx = base
    else:
        num, base, idx = _split_layout(rec, images, transmit, hl)
    frames = []
    vnet = False
    if not transmit:
        vnet = bool(rec.byte() & 1)
        for k in range(12 - rec.pick(13)):
            size = 60 + rec.byte() * rec.pick(24)
            body = bytes((k + i) & 0xFF for i in range(size))
            frames.append((bytes([rec.byte() & 1, 0]) + bytes(10) + body) if vnet else body)
    sc = Scenario(
        transmit=transmit,
        features=features,
        num=num,
        base=base,
        avail_idx=idx,
        budget=1 + rec.pick(256) if rec.rare(40) else 256,
        want=not rec.rare(20),
        vnet=vnet,
        log=bool(features & (1 << F_LOG_ALL)),
        log_used_addr=rec.byte() << 12 if not rec.rare(8) else (1 << 64) - 4096,
        images=images,
        frames=frames,
        packed=packed,
    )
    _notification(rec, sc)
    _frame_kinds(rec if kinds is None else Recipe(kinds), sc)
    return sc


def _frame_kinds(rec: Recipe, sc: Scenario) -> None:
    """Now and then a frame given as another object: bytes-like ones are delivered as
    their bytes, the others refused before the ring is touched."""
    for k, f in enumerate(sc.frames):
        if not rec.rare(16):
            continue
        kind = rec.pick(6)
        if kind == 0:
            sc.frames[k] = memoryview(f)
        elif kind == 1:
            sc.frames[k] = bytearray(f)
        elif kind == 2:
            sc.frames[k] = memoryview(f[: len(f) // 2 * 2]).cast("H")  # len() counts items
        elif kind == 3:
            sc.frames[k] = memoryview(f + f)[::2]  # not contiguous: refused
        elif kind == 4:
            sc.frames[k] = f.hex()  # not bytes-like: refused
        else:
            sc.frames[k] = f[: rec.pick(12)]  # shorter than a vnet header


def _split_layout(
    rec: Recipe, images: list[bytearray], transmit: bool, hl: int
) -> tuple[int, int, int]:
    """Descriptor table, avail and used rings of a split ring in region 0: size, start
    index and avail index."""
    num = 64 >> rec.pick(6)
    base = (rec.byte() * 257 + rec.byte()) & 0xFFFF
    img0 = images[0]
    desc, avail = 0, 16 * num
    used = (avail + 4 + 2 * num + 2 + 3) // 4 * 4
    struct.pack_into("<HH", img0, used, 0, base)  # used.idx: where the device resumes
    alloc = _Alloc()
    count = num - rec.pick(num + 1)
    slot = 0
    heads: list[int] = []
    for _ in range(count):
        if slot >= num:
            break
        heads.append(slot)
        slot = _chain(rec, img0, images, alloc, desc, num, slot, transmit, hl)
    for k, head in enumerate(heads):
        if rec.rare(6):
            head = num + rec.byte()  # past the table
        struct.pack_into("<H", img0, avail + 4 + 2 * ((base + k) % num), head & 0xFFFF)
    idx = base + len(heads)
    if rec.rare(6):
        idx = base + num + 1 + rec.byte()
    struct.pack_into("<HH", img0, avail, 0, idx & 0xFFFF)
    return num, base, idx


def _notification(rec: Recipe, sc: Scenario) -> None:
    """The driver's call suppression (split: avail flags and ``used_event``; packed: the
    driver event structure), the device's last signalled index and ``quiet``."""
    sc.quiet = bool(rec.byte() & 1)
    flags, event = rec.pick(4), rec.byte() * 257 + rec.byte()
    if rec.byte() & 1:
        sc.signalled = (rec.byte() * 257 + rec.byte()) % (sc.num if sc.packed else 0x10000)
    img0 = sc.images[0]
    if sc.packed:
        struct.pack_into("<HH", img0, 16 * sc.num, event & 0xFFFF, flags)
    else:
        avail = 16 * sc.num
        struct.pack_into("<H", img0, avail, flags & 1)  # VRING_AVAIL_F_NO_INTERRUPT
        struct.pack_into("<H", img0, avail + 4 + 2 * sc.num, event & 0xFFFF)  # used_event


def _chain(
    rec: Recipe,
    img0: bytearray,
    images: list[bytearray],
    alloc: _Alloc,
    desc: int,
    num: int,
    slot: int,
    transmit: bool,
    hl: int,
) -> int:
    """Descriptors of one chain from ``slot``; the next free slot."""
    shape = rec.byte()
    nseg = 1 + (shape >> 6)
    indirect = bool(shape & 1)
    lengths = []
    for _ in range(nseg):
        length = (hl + 14 + rec.pick(90)) // nseg + 1 if transmit else 64 + rec.byte() * 8
        if rec.rare(8):
            length = (0, 1, hl - 1, hl + 13, 70000, 0xFFFFFFFF)[rec.pick(6)]
        lengths.append(length)
    segs = []
    for length in lengths:
        addr = alloc.take(rec, min(length, 4096))
        if rec.rare(6):
            addr = _hostile_addr(rec, addr, length)
        flags = 0 if transmit else DESC_F_WRITE
        if rec.rare(5):
            flags ^= DESC_F_WRITE
        if rec.rare(3):
            flags |= 8 << rec.pick(8)
        segs.append((addr, length, flags))
        _fill(images, addr, min(length, 4096), rec, transmit)
    if indirect:
        table = alloc.take(rec, 16 * nseg)
        tgpa, timg = _where(images, table)
        for k, (addr, length, flags) in enumerate(segs):
            nxt = k + 1 if k + 1 < nseg else 0
            fl = flags | (DESC_F_NEXT if k + 1 < nseg else 0)
            if rec.rare(4):
                nxt = rec.pick(nseg + 2)
            if rec.rare(3):
                fl |= DESC_F_INDIRECT
            if timg is not None and tgpa + 16 * (k + 1) <= len(timg):
                _put_desc(timg, tgpa + 16 * k, addr, length, fl, nxt)
        tlen = 16 * nseg
        tflags = DESC_F_INDIRECT
        if rec.rare(4):
            tlen = (0, 8, 17, 16 * 4096)[rec.pick(4)]
        if rec.rare(4):
            tflags |= DESC_F_NEXT
        if rec.rare(4):
            table = _hostile_addr(rec, table, tlen)
        _put_desc(img0, desc + 16 * slot, table, tlen, tflags, 0)
        return slot + 1
    for k, (addr, length, flags) in enumerate(segs):
        at = slot + k
        if at >= num:
            break
        last = k + 1 == nseg or at + 1 >= num
        nxt = 0 if last else at + 1
        fl = flags | (0 if last else DESC_F_NEXT)
        if rec.rare(4):
            nxt = rec.pick(num + 2)
            fl |= DESC_F_NEXT
        _put_desc(img0, desc + 16 * at, addr, length, fl, nxt)
    return min(num, slot + nseg)


def _where(images: list[bytearray], gpa: int) -> tuple[int, bytearray | None]:
    for (start, size), img in zip(REGIONS, images, strict=True):
        if start <= gpa < start + size:
            return gpa - start, img
    return 0, None


def _fill(images: list[bytearray], gpa: int, size: int, rec: Recipe, transmit: bool) -> None:
    off, img = _where(images, gpa)
    if img is None:
        return
    end = min(len(img), off + size)
    seed = rec.byte()
    img[off:end] = bytes((seed + i) & 0xFF for i in range(end - off))
    if transmit and off + 2 <= end and not rec.byte() & 1:
        img[off : off + 2] = b"\0\0"  # usually no offload asked for


# -- running -------------------------------------------------------------------------------


class _Guest:
    """One copy of the scenario's memory, mapped into a fresh device."""

    def __init__(self, sc: Scenario, vring: ModuleType | None) -> None:
        self.fds: list[int] = []
        self.maps: list[mmap.mmap] = []
        specs, fds = [], []
        for (gpa, size), img in zip(REGIONS, sc.images, strict=True):
            fd = os.memfd_create("vring-fuzz")
            os.ftruncate(fd, size)
            os.pwrite(fd, bytes(img), 0)
            self.maps.append(mmap.mmap(fd, size))
            specs.append(RegionSpec(gpa=gpa, size=size, uaddr=UADDR + gpa, mmap_offset=0))
            fds.append(fd)
        self.dev = dev = NetDevice(1)
        dev.vring = vring
        dev.set_features(sc.features)
        dev.mem.replace(specs, fds)
        self.log_mm: mmap.mmap | None = None
        if sc.log:
            lfd = os.memfd_create("vring-fuzz-log", _MFD_ALLOW_SEALING)
            os.ftruncate(lfd, LOG_BYTES)
            fcntl.fcntl(lfd, _F_ADD_SEALS, _F_SEAL_SHRINK)
            self.log_mm = mmap.mmap(lfd, LOG_BYTES)
            dev.dirty.set_base(lfd, LOG_BYTES, 0, REGIONS[-1][0] + REGIONS[-1][1])
        q = dev.tx_queue(0) if sc.transmit else dev.rx_queue(0)
        assert type(q) is (PackedQueue if sc.packed else SplitQueue)
        self.q = q
        num = sc.num
        q.set_num(num)
        if sc.packed:  # ring, then the driver's and the device's event structures
            q.set_addr(UADDR, UADDR + 16 * num + 4, UADDR + 16 * num)
        else:
            used = (16 * num + 4 + 2 * num + 2 + 3) // 4 * 4
            q.set_addr(UADDR, UADDR + used, UADDR + 16 * num)
        q.set_base(sc.base)
        q.enabled = True
        if sc.log:
            q.log_used = used_logger(dev.dirty, sc.log_used_addr)
        assert dev.start_queue(q)
        if sc.signalled is not None:
            if isinstance(q, PackedQueue):
                q._signalled_slot = sc.signalled
            else:
                q._signalled_used = sc.signalled
            q._signalled_valid = True

    def run(self, sc: Scenario) -> dict[str, Any]:
        dev, q = self.dev, self.q
        out: dict[str, Any] = {}
        try:
            if sc.transmit:
                frames, vnet, n = dev.transmit(q, sc.budget, sc.want, sc.quiet)
                out["tx"] = ([bytes(f) for f in frames], vnet, n)
            else:
                out["rx"] = dev.receive(q, sc.frames, sc.vnet)
        except RingError as exc:
            out["error"] = str(exc)
        except (TypeError, ValueError) as exc:  # a frame refused: nothing may have changed
            out["error"] = f"{type(exc).__name__}: {exc}"
        out["last_avail"] = q.last_avail
        out["used_idx"] = q.used_idx
        out["signal"] = q.signal_mark
        out["counters"] = dict(dev.counters)
        out["memory"] = [bytes(m) for m in self.maps]
        out["log"] = bytes(self.log_mm) if self.log_mm is not None else None
        return out

    def close(self) -> None:
        self.dev.close()
        for m in self.maps:
            with contextlib.suppress(BufferError):
                m.close()
        if self.log_mm is not None:
            with contextlib.suppress(BufferError):
                self.log_mm.close()


def run(data: bytes, vring: ModuleType | None, kinds: bytes | None = None) -> dict[str, Any]:
    """One burst of the scenario ``data`` describes, through ``vring`` (None: Python)."""
    sc = build(data, kinds)
    guest = _Guest(sc, vring)
    try:
        return guest.run(sc)
    finally:
        guest.close()


def fuzz_one(data: bytes, kinds: bytes | None = None) -> None:
    """Run ``data``'s scenario through both ring implementations; they must agree."""
    py = run(data, None, kinds)
    compiled = fastring.load()
    if compiled is None:
        return
    c = run(data, compiled, kinds)
    for key in py:
        assert c[key] == py[key], (
            f"{key} differs: compiled {_short(c[key])} python {_short(py[key])}"
        )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) < 300 else text[:300] + "..."
