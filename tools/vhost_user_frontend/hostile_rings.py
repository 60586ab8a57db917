"""Hostile mode, rings: deliberately broken descriptor chains and ring indices, so that a
back end's defences can be tested. Every case is a method of :class:`RingCrafter` and an
entry of :data:`RING_CASES` (name -> what it does, what a sound back end does about it).

A crafter works on one queue pair of a *started* front end. Transmit cases take free
descriptors from the TX queue's pool (:meth:`~.net.TxQueue.take_descriptors`); receive
cases need descriptors held back from the RX ring (``FrontendConfig(rx_reserve=N)``).
Each case writes its descriptors, puts the head(s) into the avail ring, publishes and
kicks, and returns a :class:`Crafted` record. Cases never write outside our own guest
memory: "outside" addresses are only *named* in descriptors.

After ``avail_idx_jump``, ``head_out_of_range`` or a loop the device may (rightly) treat
the ring as broken; use a fresh connection for further traffic on that queue. The
crafter keeps the front end's shadow state consistent where the case allows it (chains
are adopted so that returned descriptors go back to the pool).

On packed rings (:mod:`.packed`) the same names play the packed forms of the faults
(:mod:`.hostile_packed`).

Expected defences follow Linux vhost-net and QEMU's ``virtqueue_pop`` (the "virtio:
..." errors): bounded chain walks (at most ``num`` descriptors, ``num`` per indirect
table), address ranges checked against the memory table, no device writes into
device-readable buffers and no reads of device-writable ones on TX, no indirect
descriptors unless negotiated, and an avail index that may not run more than ``num``
ahead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .frontend import VhostUserFrontend
from .hostile_packed import PackedCrafter
from .net import RxQueue, TxQueue
from .packed import PackedQueue
from .protocol import Feature, has
from .virtqueue import (
    DESC_DTYPE,
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    DESC_SIZE,
    SplitQueue,
    u16,
)

#: name -> (what the case does, what a sound back end does)
RING_CASES: dict[str, tuple[str, str]] = {
    "desc_out_of_memory": (
        "TX descriptor whose address lies beyond every memory region",
        "drop the chain (return it used, len 0) without touching memory; keep serving",
    ),
    "desc_straddles_region": (
        "TX descriptor starting 16 bytes before a region's end, 4096 bytes long",
        "reject: the whole range must lie in one region",
    ),
    "desc_addr_overflow": (
        "TX descriptor at 2**64 - 16 with length 64 (address + length wraps)",
        "reject without wrapping into low memory",
    ),
    "chain_loop": (
        "two TX descriptors whose NEXT pointers point at each other",
        "stop after at most num descriptors, drop the chain",
    ),
    "chain_longer_than_queue": (
        "a TX chain through every descriptor whose last one points back to the first "
        "(num + 1 hops), or an indirect table with num + 1 entries",
        "stop at num descriptors (QEMU: 'Looped descriptor'), drop",
    ),
    "next_out_of_range": (
        "TX descriptor with NEXT set and next = num (past the table)",
        "reject ('Desc next is %u'), drop",
    ),
    "zero_length_desc": (
        "TX chain: a 0-byte descriptor, then the header and a frame",
        "skip the empty descriptor or drop the chain; never underflow",
    ),
    "zero_length_chain": (
        "TX chain made of one 0-byte descriptor",
        "drop as shorter than the virtio-net header",
    ),
    "short_header": (
        "TX chain shorter than the virtio-net header (4 bytes)",
        "drop as malformed, count it",
    ),
    "write_flag_on_tx": (
        "TX descriptor carrying VRING_DESC_F_WRITE (device-writable in a device-readable queue)",
        "drop the chain (Linux vhost: 'Unexpected descriptor format for TX')",
    ),
    "indirect_without_feature": (
        "TX descriptor with VRING_DESC_F_INDIRECT although INDIRECT_DESC was not acked "
        "(start the front end with features lacking INDIRECT_DESC)",
        "reject, drop (or treat the ring as broken)",
    ),
    "indirect_bad_len": (
        "indirect descriptor whose table length (24) is not a multiple of 16",
        "reject ('Invalid size for indirect buffer table'), drop",
    ),
    "indirect_zero_len": (
        "indirect descriptor with a 0-byte table",
        "reject, drop",
    ),
    "indirect_out_of_memory": (
        "indirect descriptor whose table lies outside guest memory",
        "reject, drop",
    ),
    "indirect_nested": (
        "an indirect table containing another INDIRECT descriptor",
        "reject ('Nested indirect descriptor'), drop",
    ),
    "indirect_with_next": (
        "a descriptor with both INDIRECT and NEXT",
        "reject (the spec forbids the combination), drop",
    ),
    "indirect_next_out_of_table": (
        "an indirect table entry whose next points past the table",
        "reject, drop",
    ),
    "huge_chain": (
        "a TX chain of 32 full slots (64 KiB) plus more: a frame over 65535 + header bytes",
        "drop (frames above the maximum size), never allocate unboundedly",
    ),
    "head_out_of_range": (
        "avail ring entry = num (no such descriptor)",
        "reject ('Guest says index %u is available'), treat the ring as broken or skip",
    ),
    "avail_idx_jump": (
        "avail.idx advanced by num + 5 past what the device has seen",
        "reject ('Guest moved avail index from %u to %u'), stop the ring; never process "
        "more than num entries",
    ),
    "readonly_rx_buffer": (
        "RX buffer without VRING_DESC_F_WRITE",
        "do not write into it; drop the frame or skip the buffer",
    ),
    "rx_buffer_too_small": (
        "RX buffer of 4 bytes (smaller than the virtio-net header)",
        "do not write past it; drop the frame or skip",
    ),
    "rx_out_of_memory": (
        "RX buffer whose address lies outside guest memory",
        "do not write; drop",
    ),
}


@dataclass
class Crafted:
    """What a case put into the ring."""

    case: str
    vring: int
    heads: list[int]
    descriptors: list[int] = field(default_factory=list)
    avail_idx: int = 0


class RingCrafter:
    """Builds the :data:`RING_CASES` on queue pair ``pair`` of a started front end."""

    def __init__(self, fe: VhostUserFrontend, pair: int = 0) -> None:
        if fe.mem is None or not fe.tx:
            raise RuntimeError("the front end must be started")
        self.fe = fe
        self.mem = fe.mem
        self.tx: TxQueue = fe.tx[pair]
        self.rx: RxQueue = fe.rx[pair]
        self.packed = isinstance(self.tx.vq, PackedQueue)
        self.pair = pair
        self.indirect_acked = has(fe.session.acked, Feature.INDIRECT_DESC)
        self.hdr_len = fe.hdr_len
        # Scratch space for frames and indirect tables of crafted chains.
        self.scratch = self.mem.alloc(64 * 1024, 4096)
        self._scratch_used = 0

    @property
    def tx_vq(self) -> SplitQueue:
        vq = self.tx.vq
        assert isinstance(vq, SplitQueue)
        return vq

    @property
    def rx_vq(self) -> SplitQueue:
        vq = self.rx.vq
        assert isinstance(vq, SplitQueue)
        return vq

    # -- helpers -------------------------------------------------------------------------

    def beyond_memory(self) -> int:
        """A guest-physical address no region covers (1 GiB past the highest end)."""
        return max(r.end for r in self.mem.regions) + (1 << 30)

    def _scratch(self, size: int) -> int:
        off = (self._scratch_used + 15) // 16 * 16
        if off + size > 64 * 1024:
            self._scratch_used = 0
            off = 0
        self._scratch_used = off + size
        return self.scratch + off

    def _frame(self, size: int = 60) -> tuple[int, int]:
        """A header + frame in scratch memory: (gpa, length)."""
        data = bytes(self.hdr_len) + b"\xff" * 6 + b"\x02\0\0\0\0\xbb" + b"\x88\xb5"
        data = data.ljust(self.hdr_len + size, b"\0")
        gpa = self._scratch(len(data))
        self.mem.write(gpa, data)
        return gpa, len(data)

    def _post(
        self, case: str, vq: SplitQueue, heads: list[int], ids: list[int], adopt: bool
    ) -> Crafted:
        if adopt and vq is self.tx_vq and ids:
            self.tx.adopt_chain(ids)
        vq.push_raw(heads)
        vq.publish()
        self.fe.kick(vq.index)
        return Crafted(case, vq.index, heads, ids, vq.avail_idx)

    def _tx_chain(self, case: str, entries: list[tuple[int, int, int]]) -> Crafted:
        """Descriptors (addr, len, extra flags) chained with NEXT in order."""
        ids = self.tx.take_descriptors(len(entries))
        for k, (addr, length, flags) in enumerate(entries):
            last = k == len(entries) - 1
            nxt = 0 if last else ids[k + 1]
            self.tx_vq.write_desc(ids[k], addr, length, flags | (0 if last else DESC_F_NEXT), nxt)
        return self._post(case, self.tx_vq, [ids[0]], ids, True)

    def _indirect(
        self,
        case: str,
        table: list[tuple[int, int, int, int]],
        length: int | None,
        table_gpa: int | None = None,
        head_flags: int = DESC_F_INDIRECT,
    ) -> Crafted:
        gpa = self._scratch(max(16, DESC_SIZE * len(table))) if table_gpa is None else table_gpa
        if table_gpa is None and table:
            arr = self.mem.array(gpa, DESC_DTYPE, len(table))
            for k, entry in enumerate(table):
                arr[k] = entry
        ids = self.tx.take_descriptors(1)
        ln = DESC_SIZE * len(table) if length is None else length
        self.tx_vq.write_desc(ids[0], gpa, ln, head_flags, 0)
        return self._post(case, self.tx_vq, ids, ids, True)

    # -- transmit cases --------------------------------------------------------------------

    def desc_out_of_memory(self) -> Crafted:
        return self._tx_chain("desc_out_of_memory", [(self.beyond_memory(), 64, 0)])

    def desc_straddles_region(self) -> Crafted:
        end = self.mem.regions[0].end
        return self._tx_chain("desc_straddles_region", [(end - 16, 4096, 0)])

    def desc_addr_overflow(self) -> Crafted:
        return self._tx_chain("desc_addr_overflow", [(2**64 - 16, 64, 0)])

    def chain_loop(self) -> Crafted:
        gpa, ln = self._frame()
        ids = self.tx.take_descriptors(2)
        self.tx_vq.write_desc(ids[0], gpa, ln, DESC_F_NEXT, ids[1])
        self.tx_vq.write_desc(ids[1], gpa, ln, DESC_F_NEXT, ids[0])
        return self._post("chain_loop", self.tx_vq, [ids[0]], ids, True)

    def chain_longer_than_queue(self) -> Crafted:
        num = self.tx_vq.num
        gpa, ln = self._frame(16)
        if self.indirect_acked:
            table = [(gpa, ln, DESC_F_NEXT, k + 1) for k in range(num)] + [(gpa, ln, 0, 0)]
            return self._indirect("chain_longer_than_queue", table, None)
        ids = self.tx.take_descriptors(num)
        for k, i in enumerate(ids):
            self.tx_vq.write_desc(i, gpa, ln, DESC_F_NEXT, ids[(k + 1) % num])
        return self._post("chain_longer_than_queue", self.tx_vq, [ids[0]], ids, True)

    def next_out_of_range(self) -> Crafted:
        gpa, ln = self._frame()
        ids = self.tx.take_descriptors(1)
        self.tx_vq.write_desc(ids[0], gpa, ln, DESC_F_NEXT, self.tx_vq.num)
        return self._post("next_out_of_range", self.tx_vq, ids, ids, True)

    def zero_length_desc(self) -> Crafted:
        gpa, ln = self._frame()
        return self._tx_chain("zero_length_desc", [(gpa, 0, 0), (gpa, ln, 0)])

    def zero_length_chain(self) -> Crafted:
        gpa, _ = self._frame()
        return self._tx_chain("zero_length_chain", [(gpa, 0, 0)])

    def short_header(self) -> Crafted:
        gpa, _ = self._frame()
        return self._tx_chain("short_header", [(gpa, 4, 0)])

    def write_flag_on_tx(self) -> Crafted:
        gpa, ln = self._frame()
        return self._tx_chain("write_flag_on_tx", [(gpa, ln, DESC_F_WRITE)])

    def indirect_without_feature(self) -> Crafted:
        gpa, ln = self._frame()
        return self._indirect("indirect_without_feature", [(gpa, ln, 0, 0)], None)

    def indirect_bad_len(self) -> Crafted:
        gpa, ln = self._frame()
        return self._indirect("indirect_bad_len", [(gpa, ln, 0, 0), (gpa, ln, 0, 0)], 24)

    def indirect_zero_len(self) -> Crafted:
        gpa, ln = self._frame()
        return self._indirect("indirect_zero_len", [(gpa, ln, 0, 0)], 0)

    def indirect_out_of_memory(self) -> Crafted:
        return self._indirect("indirect_out_of_memory", [], 64, table_gpa=self.beyond_memory())

    def indirect_nested(self) -> Crafted:
        gpa, ln = self._frame()
        inner = self._scratch(16)
        self.mem.array(inner, DESC_DTYPE, 1)[0] = (gpa, ln, 0, 0)
        return self._indirect("indirect_nested", [(inner, 16, DESC_F_INDIRECT, 0)], None)

    def indirect_with_next(self) -> Crafted:
        gpa, ln = self._frame()
        return self._indirect(
            "indirect_with_next",
            [(gpa, ln, 0, 0)],
            None,
            head_flags=DESC_F_INDIRECT | DESC_F_NEXT,
        )

    def indirect_next_out_of_table(self) -> Crafted:
        gpa, ln = self._frame()
        return self._indirect(
            "indirect_next_out_of_table", [(gpa, ln, DESC_F_NEXT, 7), (gpa, ln, 0, 0)], None
        )

    def huge_chain(self, n: int = 40) -> Crafted:
        n = min(n, self.tx.free_slots)
        entries = [(self.tx.slot_gpa(0), self.tx.slot_size, 0)] * n
        return self._tx_chain("huge_chain", entries)

    def head_out_of_range(self) -> Crafted:
        vq = self.tx_vq
        vq.push_raw([vq.num])
        vq.publish()
        self.fe.kick(vq.index)
        return Crafted("head_out_of_range", vq.index, [vq.num], [], vq.avail_idx)

    def avail_idx_jump(self, extra: int = 5) -> Crafted:
        vq = self.tx_vq
        target = u16(vq.avail_idx + vq.num + extra)
        vq.publish_raw(target)
        self.fe.kick(vq.index)
        return Crafted("avail_idx_jump", vq.index, [], [], target)

    # -- receive cases -------------------------------------------------------------------

    def _rx_take(self) -> int:
        for i in self.rx.reserved:
            if not self.rx_vq.outstanding[i]:
                return i
        raise ValueError("no idle reserved RX descriptor (FrontendConfig.rx_reserve)")

    def readonly_rx_buffer(self) -> Crafted:
        i = self._rx_take()
        self.rx_vq.write_desc(i, self.rx.slot_gpa(i), self.rx.buf_size, 0, 0)
        return self._post("readonly_rx_buffer", self.rx_vq, [i], [i], False)

    def rx_buffer_too_small(self) -> Crafted:
        i = self._rx_take()
        self.rx_vq.write_desc(i, self.rx.slot_gpa(i), 4, DESC_F_WRITE, 0)
        return self._post("rx_buffer_too_small", self.rx_vq, [i], [i], False)

    def rx_out_of_memory(self) -> Crafted:
        i = self._rx_take()
        self.rx_vq.write_desc(i, self.beyond_memory(), self.rx.buf_size, DESC_F_WRITE, 0)
        return self._post("rx_out_of_memory", self.rx_vq, [i], [i], False)

    # -- by name -------------------------------------------------------------------------

    def run(self, case: str) -> Crafted:
        if case not in RING_CASES:
            raise KeyError(f"unknown ring case {case!r}")
        if self.packed:
            return PackedCrafter(self).run(case)
        result: Crafted = getattr(self, case)()
        return result
