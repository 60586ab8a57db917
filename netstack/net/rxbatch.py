"""Batch rx filtering with numpy: the same verdicts as :meth:`RxFilter.accepts`, per batch.

What it owns
    :class:`RxBatchClassifier` compiles an :class:`~netstack.net.rxfilter.RxFilter`'s state
    into a small plan of numpy arrays (recompiled when the filter's ``version`` moves) and
    classifies a batch of frames with a fixed number of vectorised passes. The hot core,
    :meth:`RxBatchClassifier.classify_headers`, takes the first 16 bytes after the vnet
    header of every frame packed in an ``(N, 16) uint8`` array; :func:`pack_headers` builds
    that array from a list of frames.

Spec followed
    QEMU's ``receive_filter`` (``hw/net/virtio-net.c``), through the
    pure-Python reference :meth:`RxFilter.accepts`, which this module must agree with for every
    state and frame (differential property test: ``tests/property/test_rxbatch.py``).

How
    Every check before the destination rules only drops, and the destination rules depend on
    the destination MAC and the modes alone, so a verdict is
    ``promisc or (length_ok and vlan_ok and dest_ok)`` and each term is computed for the whole
    batch. The 16 header bytes are viewed as two little-endian ``uint64`` words: the low 48
    bits of word 0 are the destination MAC as a key, bits 32..47 of word 1 the TPID and bits
    48..63 the raw TCI, which indexes a 65536-entry table derived from the VLAN bitmap. The
    destinations accepted by lookup (own MAC and unicast entries, multicast entries, each
    only while its class is not decided wholesale by a mode; broadcast when ``nobcast`` is
    off) form one key set, tested with a collision-free multiplicative hash (one multiply,
    shift and two gathers) or, for up to three keys, plain compares. Length checks run only
    when some frame is shorter than 16 bytes; batches are processed in chunks of 16384 rows
    so that temporaries stay in cache.

Invariants
    * Results depend only on the filter state and, per frame, on its length and on header
      bytes that lie inside the frame: bytes past a short frame's end may be anything.
    * The classifier never mutates the filter and holds no frame after returning.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any, Final, TypeVar

import numpy as np
from numpy.typing import NDArray

from netstack.net.rxfilter import BROADCAST_MAC, MAX_VLAN, RxFilter

__all__ = ["DEFAULT_MIN_BATCH", "HEADER_BYTES", "RxBatchClassifier", "pack_headers"]

#: Header bytes per frame the classifier looks at (after the vnet header).
HEADER_BYTES: Final = 16
#: Below this many frames :meth:`RxBatchClassifier.accepted` uses the pure-Python filter.
DEFAULT_MIN_BATCH: Final = 40

_Frame = TypeVar("_Frame", bytes, bytearray, memoryview)

_LE_U64: Final = np.dtype("<u8")
_MASK48: Final = np.uint64((1 << 48) - 1)
_BCAST_KEY: Final = int.from_bytes(BROADCAST_MAC, "little")
_TPID_MASK: Final = np.uint64(0xFFFF << 32)  # bytes 12..13 within word 1
_TPID_8021Q: Final = np.uint64(0x0081 << 32)  # 81 00 read little-endian
_SHIFT_TCI: Final = np.uint64(48)  # bytes 14..15 within word 1
_HASH_SHIFT: Final = np.uint64(48)  # 16-bit hash: the top bits of the product
_NO_KEY: Final = (1 << 64) - 1  # never equal to a 48-bit key
_SMALL_KEYS: Final = 3  # up to this many keys, compares beat the hash
_HASH_TRIES: Final = 64
_CHUNK_ROWS: Final = 16384  # keeps temporaries in cache and off fresh mmap'd pages

_VLAN_ALL: Final = 0  # every vid allowed: no lookup
_VLAN_NONE: Final = 1  # no vid allowed: every tagged frame dropped
_VLAN_TABLE: Final = 2


@dataclass(frozen=True, slots=True)
class _Plan:
    """A filter state compiled for numpy (one per filter ``version``)."""

    accept_all: bool
    vlan: int
    vlan_lut: NDArray[np.bool_] | None  # raw little-endian TCI word -> allowed
    bcast_ok: bool
    mcast_all: bool  # every non-broadcast multicast frame accepted
    ucast_all: bool  # every unicast frame accepted
    keys: NDArray[np.uint64]  # destinations accepted by lookup, incl. broadcast (sorted)
    hash_mult: np.uint64 | None  # None: no perfect hash found, use np.isin
    hash_lut: NDArray[np.uint8] | None  # 16-bit hash -> slot (0 = empty)
    hash_keys: NDArray[np.uint64] | None  # slot -> key; slot 0 holds _NO_KEY


@functools.cache
def _vid_of_raw_tci() -> NDArray[np.intp]:
    """For each raw little-endian u16 read from bytes 14..15, the 12-bit vid it carries."""
    raw = np.arange(1 << 16, dtype=np.intp)
    return ((raw & 0x0F) << 8) | (raw >> 8)


@functools.cache
def _hash_multipliers() -> tuple[int, ...]:
    """Fixed odd 64-bit multipliers (splitmix64 sequence): deterministic across runs."""
    out: list[int] = []
    state = 0x9E3779B97F4A7C15
    for _ in range(_HASH_TRIES):
        state = (state + 0x9E3779B97F4A7C15) & _NO_KEY
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _NO_KEY
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _NO_KEY
        out.append((z ^ (z >> 31)) | 1)
    return tuple(out)


def _mac_key(mac: bytes) -> int:
    return int.from_bytes(mac, "little")


def _compile(f: RxFilter) -> _Plan:
    bitmap = np.frombuffer(f.vlan_bitmap, dtype=np.uint8).astype(np.bool_)
    allowed = int(np.count_nonzero(bitmap))
    vlan_lut: NDArray[np.bool_] | None = None
    if allowed == MAX_VLAN:
        vlan = _VLAN_ALL
    elif allowed == 0:
        vlan = _VLAN_NONE
    else:
        vlan = _VLAN_TABLE
        vlan_lut = bitmap[_vid_of_raw_tci()]

    ucast_all = not f.nouni and (f.alluni or f.uni_overflow)
    mcast_all = not f.nomulti and (f.allmulti or f.multi_overflow)
    keys: set[int] = set()
    if not f.nouni and not ucast_all:
        # A unicast frame only reaches the table; entries with the group bit never match it.
        keys.update(_mac_key(m) for m in (*f.unicast_table, f.mac) if not m[0] & 1)
    if not f.nomulti and not mcast_all:
        keys.update(_mac_key(m) for m in f.multicast_table if m[0] & 1)
    # Broadcast is decided by nobcast alone, before nomulti/allmulti and the table.
    keys.discard(_BCAST_KEY)
    if not f.nobcast and not mcast_all:
        keys.add(_BCAST_KEY)
    key_arr = np.array(sorted(keys), dtype=np.uint64)

    hash_mult = hash_lut = hash_keys = None
    if key_arr.size > _SMALL_KEYS:
        for mult in _hash_multipliers():
            m = np.uint64(mult)
            slots = (key_arr * m) >> _HASH_SHIFT
            if np.unique(slots).size == key_arr.size:
                hash_mult = m
                hash_lut = np.zeros(1 << 16, dtype=np.uint8)
                hash_lut[slots.astype(np.intp)] = np.arange(1, key_arr.size + 1, dtype=np.uint8)
                hash_keys = np.concatenate((np.array([_NO_KEY], dtype=np.uint64), key_arr))
                break

    return _Plan(
        accept_all=f.promisc,
        vlan=vlan,
        vlan_lut=vlan_lut,
        bcast_ok=not f.nobcast,
        mcast_all=mcast_all,
        ucast_all=ucast_all,
        keys=key_arr,
        hash_mult=hash_mult,
        hash_lut=hash_lut,
        hash_keys=hash_keys,
    )


def _member(plan: _Plan, dst: NDArray[np.uint64]) -> NDArray[np.bool_]:
    """Whether each destination key is in ``plan.keys``."""
    keys = plan.keys
    if keys.size == 0:
        return np.zeros(dst.shape, dtype=np.bool_)
    hit: NDArray[np.bool_]
    if keys.size <= _SMALL_KEYS:
        hit = dst == keys[0]
        for key in keys[1:]:
            hit |= dst == key
    elif plan.hash_mult is None or plan.hash_lut is None or plan.hash_keys is None:
        hit = np.isin(dst, keys)
    else:
        slots = plan.hash_lut.take((dst * plan.hash_mult) >> _HASH_SHIFT)
        hit = plan.hash_keys.take(slots) == dst
    return hit


def _classify_chunk(
    plan: _Plan, hdrs: NDArray[np.uint8], lengths: NDArray[np.integer[Any]] | None
) -> NDArray[np.bool_]:
    """Verdicts for one chunk (``plan`` not promiscuous; ``lengths`` only if some are short)."""
    words = hdrs[:, :HEADER_BYTES].view(_LE_U64)
    w0 = words[:, 0]
    w1 = words[:, 1]

    # Destination rules: lookup, plus whole classes accepted by mode.
    ok: NDArray[np.bool_]
    if plan.mcast_all and plan.ucast_all:
        ok = np.ones(hdrs.shape[0], dtype=np.bool_)
    else:
        ok = _member(plan, w0 & _MASK48)
        if plan.mcast_all or plan.ucast_all:
            group = (hdrs[:, 0] & 1).view(np.bool_)
            ok |= group if plan.mcast_all else ~group
    if plan.mcast_all and not plan.bcast_ok:
        ok &= (w0 & _MASK48) != _MASK48

    # 802.1Q (TPID 0x8100 only) and lengths.
    if plan.vlan != _VLAN_ALL or lengths is not None:
        tagged = (w1 & _TPID_MASK) == _TPID_8021Q
        if plan.vlan == _VLAN_NONE:
            ok &= ~tagged
        elif plan.vlan_lut is not None:
            ok &= plan.vlan_lut.take(w1 >> _SHIFT_TCI) | ~tagged
        if lengths is not None:
            ok &= lengths >= 14
            ok &= ~(tagged & (lengths < HEADER_BYTES))
    return ok


def pack_headers(
    frames: Sequence[bytes | bytearray | memoryview], hdr_len: int = 0
) -> tuple[NDArray[np.uint8], NDArray[np.int64] | None]:
    """Pack bytes ``hdr_len .. hdr_len+16`` of every frame into an ``(N, 16) uint8`` array.

    Returns ``(headers, lengths)``. ``lengths`` is ``None`` when every frame has at least 16
    bytes after the vnet header (so no length check can fail); otherwise it holds each
    frame's length minus ``hdr_len``, and the bytes past a short frame's end are zero. The
    array may be read-only and its rows need not be contiguous with each other.
    """
    n = len(frames)
    width = hdr_len + HEADER_BYTES
    packed: NDArray[np.uint8]
    try:
        # Fast path for bytes: numpy truncates each frame to ``width`` and zero-pads it.
        rows = np.fromiter(frames, dtype=np.dtype(f"S{width}"), count=n)
        packed = rows.view(np.uint8).reshape(n, width)[:, hdr_len:]
    except ValueError:  # bytearray / memoryview items: numpy sees sequences, not strings
        slices = [f[hdr_len:width] for f in frames]
        blob = b"".join(
            s if len(s) == HEADER_BYTES else bytes(s).ljust(HEADER_BYTES, b"\0") for s in slices
        )
        packed = np.frombuffer(blob, dtype=np.uint8).reshape(n, HEADER_BYTES)
    if min(map(len, frames), default=width) >= width:
        return packed, None
    lengths = np.fromiter((len(f) - hdr_len for f in frames), dtype=np.int64, count=n)
    return packed, lengths


class RxBatchClassifier:
    """Classifies batches of frames against one :class:`RxFilter`, caching its compiled state.

    Create one per NIC and keep it: the plan is rebuilt lazily when ``rxfilter.version``
    changes, so no callback wiring is needed. :meth:`accepted` hands batches smaller than
    ``min_batch`` to the pure-Python filter, which is faster below about 40 frames (numpy's
    fixed cost per call is some 15 us).
    """

    __slots__ = ("_filter", "_plan", "_plan_version", "min_batch")

    def __init__(self, rxfilter: RxFilter, *, min_batch: int = DEFAULT_MIN_BATCH) -> None:
        self._filter = rxfilter
        self.min_batch = min_batch
        self._plan: _Plan | None = None
        self._plan_version = -1

    @property
    def rxfilter(self) -> RxFilter:
        return self._filter

    def _compiled(self) -> _Plan:
        """The compiled state for the filter's current version."""
        plan = self._plan
        if plan is None or self._plan_version != self._filter.version:
            plan = self._plan = _compile(self._filter)
            self._plan_version = self._filter.version
        return plan

    def classify_headers(
        self, hdrs: NDArray[np.uint8], lengths: NDArray[np.integer[Any]] | None = None
    ) -> NDArray[np.bool_]:
        """The hot core: a boolean accept mask for ``N`` frames given as packed headers.

        ``hdrs`` is ``(N, >=16) uint8`` holding, per frame, the bytes from the end of the
        vnet header on; only columns 0..15 are read and their rows need not be contiguous,
        but each row's 16 bytes must be (C order). ``lengths`` is each frame's length minus
        the vnet header length; ``None`` asserts that every frame has at least 16 such bytes.
        """
        if hdrs.ndim != 2 or hdrs.shape[1] < HEADER_BYTES or hdrs.dtype != np.uint8:
            raise ValueError(f"headers must be (N, >=16) uint8, got {hdrs.shape} {hdrs.dtype}")
        n = hdrs.shape[0]
        plan = self._compiled()
        if plan.accept_all:
            return np.ones(n, dtype=np.bool_)
        if hdrs.strides[1] != 1:
            hdrs = np.ascontiguousarray(hdrs)
        if lengths is not None and (n == 0 or int(lengths.min()) >= HEADER_BYTES):
            lengths = None
        if n <= _CHUNK_ROWS:
            return _classify_chunk(plan, hdrs, lengths)
        ok = np.empty(n, dtype=np.bool_)
        for i in range(0, n, _CHUNK_ROWS):
            part = None if lengths is None else lengths[i : i + _CHUNK_ROWS]
            ok[i : i + _CHUNK_ROWS] = _classify_chunk(plan, hdrs[i : i + _CHUNK_ROWS], part)
        return ok

    def classify(
        self, frames: Sequence[bytes | bytearray | memoryview], hdr_len: int = 0
    ) -> NDArray[np.bool_]:
        """The accept mask for a list of frames (packs the headers, then classifies)."""
        if self._compiled().accept_all:
            return np.ones(len(frames), dtype=np.bool_)
        hdrs, lengths = pack_headers(frames, hdr_len)
        return self.classify_headers(hdrs, lengths)

    def accepted(self, frames: Sequence[_Frame], hdr_len: int = 0) -> list[_Frame]:
        """The frames the filter accepts, in order: a drop-in for ``RxFilter.filter_batch``."""
        if len(frames) < self.min_batch:
            return self._filter.filter_batch(frames, hdr_len)
        if self._compiled().accept_all:
            return list(frames)
        return list(compress(frames, self.classify(frames, hdr_len).tolist()))
