"""Packed rings for the fuzz recipe of :mod:`tests.fuzz.vring_target`: bytes read as a packed
virtqueue (virtio 1.2 §2.8) in guest memory.

Layout in region 0: the descriptor ring of ``num`` entries (any size up to 64, not only
powers of two) at 0, the driver event structure right after it, the device event structure
after that. Buffers start at the device's avail slot and wrap counter (any), one after
the other, each a run of descriptors ``{u64 addr, u32 len, u16 id, u16 flags}`` with NEXT
on all but the last, or one INDIRECT descriptor naming a table; the AVAIL/USED bits are
those of the lap each slot is in. Valid by default; a later byte can make one thing
hostile: a descriptor of the wrong lap, unknown flag bits (which include the ring bits in
an indirect table), the wrong direction, NEXT on a buffer's last descriptor or on an
indirect one, an address outside the memory, an indirect table that is empty, misaligned,
longer than the ring or nested, or every descriptor of the ring available with NEXT (a
chain over the whole ring).
"""

from __future__ import annotations

import struct

from drivers.vhost_user.packed import DESC_F_AVAIL, DESC_F_USED
from drivers.vhost_user.virtqueue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE
from tests.fuzz.vring_target import Recipe, _Alloc, _fill, _hostile_addr, _where

NUMS = (64, 32, 16, 8, 6, 3, 1)
_PDESC = struct.Struct("<QIHH")  # addr, len, id, flags


def _put(img: bytearray, at: int, addr: int, length: int, buf_id: int, flags: int) -> None:
    _PDESC.pack_into(img, at, addr % (1 << 64), length % (1 << 32), buf_id & 0xFFFF, flags & 0xFFFF)


def layout(
    rec: Recipe, images: list[bytearray], alloc: _Alloc, transmit: bool, hl: int
) -> tuple[int, int]:
    """Write the ring the bytes describe; its size and ``SET_VRING_BASE`` value."""
    num = NUMS[rec.pick(len(NUMS))]
    slot = rec.byte() % num
    wrap = (rec.byte() & 1) ^ 1
    img0 = images[0]
    count = num - rec.pick(num + 1)
    i = 0
    for k in range(count):
        if i >= num:
            break
        buf_id = k if not rec.byte() & 1 else rec.byte() * 257
        i = _buffer(rec, images, alloc, num, slot, wrap, i, buf_id, transmit, hl)
    if rec.rare(6):  # every descriptor available, each with NEXT: a chain over the ring
        for j in range(num):
            at = 16 * ((slot + j) % num) + 14
            struct.pack_into("<H", img0, at, _lap(slot, wrap, num, j) | DESC_F_NEXT)
    return num, slot | wrap << 15


def _lap(slot: int, wrap: int, num: int, i: int) -> int:
    """AVAIL/USED bits of the i-th descriptor from the start for a driver in this lap."""
    on = wrap if slot + i < num else wrap ^ 1
    return DESC_F_AVAIL if on else DESC_F_USED


def _buffer(
    rec: Recipe,
    images: list[bytearray],
    alloc: _Alloc,
    num: int,
    slot: int,
    wrap: int,
    i: int,
    buf_id: int,
    transmit: bool,
    hl: int,
) -> int:
    """One buffer from the i-th descriptor on; the index after it."""
    shape = rec.byte()
    nseg = 1 + (shape >> 6)
    segs = []
    for _ in range(nseg):
        length = (hl + 14 + rec.pick(90)) // nseg + 1 if transmit else 64 + rec.byte() * 8
        if rec.rare(8):
            length = (0, 1, hl - 1, hl + 13, 70000, 0xFFFFFFFF)[rec.pick(6)]
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
    img0 = images[0]
    if shape & 1:
        table = _indirect(rec, images, alloc, segs)
        tlen = 16 * nseg
        if rec.rare(4):
            tlen = (0, 8, 17, 16 * (num + 1))[rec.pick(4)]
        if rec.rare(4):
            table = _hostile_addr(rec, table, tlen)
        flags = DESC_F_INDIRECT | (DESC_F_NEXT if rec.rare(4) else 0)
        if rec.rare(4):
            flags ^= DESC_F_AVAIL | DESC_F_USED  # the wrong lap
        flags ^= _lap(slot, wrap, num, i)
        _put(img0, 16 * ((slot + i) % num), table, tlen, buf_id, flags)
        return i + 1
    for k, (addr, length, flags) in enumerate(segs):
        j = i + k
        if j >= num:
            return num
        last = k + 1 == nseg or j + 1 >= num
        fl = flags | (0 if last else DESC_F_NEXT) | _lap(slot, wrap, num, j)
        if rec.rare(4):
            fl ^= DESC_F_NEXT
        if rec.rare(4):
            fl ^= DESC_F_AVAIL | DESC_F_USED
        _put(img0, 16 * ((slot + j) % num), addr, length, buf_id, fl)
    return min(num, i + nseg)


def _indirect(
    rec: Recipe, images: list[bytearray], alloc: _Alloc, segs: list[tuple[int, int, int]]
) -> int:
    """An indirect table of ``segs``; its guest address."""
    nseg = len(segs)
    table = alloc.take(rec, 16 * nseg)
    tgpa, timg = _where(images, table)
    for k, (addr, length, flags) in enumerate(segs):
        fl = flags | (DESC_F_NEXT if k + 1 < nseg else 0)
        if rec.rare(3):
            fl |= DESC_F_INDIRECT
        if rec.rare(3):
            fl |= DESC_F_AVAIL  # ring bits are unknown flags in a table
        if timg is not None and tgpa + 16 * (k + 1) <= len(timg):
            _put(timg, tgpa + 16 * k, addr, length, 0, fl)
    return table
