"""Hostile mode, packed rings: the :data:`~.hostile_rings.RING_CASES` played on packed
virtqueues (:mod:`.packed`), where there is no descriptor table, no ``next`` index and
no avail index. Each case keeps its name; where the split-ring fault has no packed form,
the nearest packed fault stands in:

* ``chain_loop``: NEXT on every descriptor of the ring (the chain would wrap onto itself);
* ``chain_longer_than_queue``: an indirect table of ``num + 1`` entries (or, without
  INDIRECT_DESC, NEXT on every descriptor);
* ``next_out_of_range``: a chain whose last available descriptor still has NEXT (the rest
  never comes): the device must wait, never read on;
* ``indirect_next_out_of_table``: an indirect table entry carrying AVAIL/USED bits;
* ``head_out_of_range``: buffer id ``0xffff`` (ids are opaque to a device: it must give
  the id back or refuse the ring, and keep serving);
* ``avail_idx_jump``: descriptors marked available for the *next* lap (wrong wrap bits):
  never taken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .packed import DESC_F_AVAIL, DESC_F_USED, PACKED_DTYPE, PackedQueue, avail_bits
from .virtqueue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE

if TYPE_CHECKING:
    from .hostile_rings import Crafted, RingCrafter

Entry = tuple[int, int, int]  # addr, len, extra flags


class PackedCrafter:
    """The packed-ring forms of the cases, on the queues of ``base``'s front end."""

    def __init__(self, base: RingCrafter) -> None:
        self.base = base
        tx, rx = base.tx.vq, base.rx.vq
        assert isinstance(tx, PackedQueue) and isinstance(rx, PackedQueue)
        self.tx_vq: PackedQueue = tx
        self.rx_vq: PackedQueue = rx

    def _crafted(self, case: str, vq: PackedQueue, ids: list[int]) -> Crafted:
        from .hostile_rings import Crafted

        vq.publish()
        self.base.fe.kick(vq.index)
        return Crafted(case, vq.index, ids[:1], ids, vq.avail_idx)

    def _tx_chain(self, case: str, entries: list[Entry], *, last_next: bool = False) -> Crafted:
        ids = self.base.tx.take_descriptors(len(entries))
        self.base.tx.adopt_chain(ids)
        raw = []
        for k, (addr, length, flags) in enumerate(entries):
            nxt = k < len(entries) - 1 or last_next
            raw.append((addr, length, ids[0], flags | (DESC_F_NEXT if nxt else 0)))
        self.tx_vq.post_raw(raw)
        return self._crafted(case, self.tx_vq, ids)

    def _indirect(
        self,
        case: str,
        table: list[tuple[int, int, int, int]],
        length: int | None,
        table_gpa: int | None = None,
        head_flags: int = DESC_F_INDIRECT,
    ) -> Crafted:
        b = self.base
        gpa = b._scratch(max(16, DESC_SIZE * len(table))) if table_gpa is None else table_gpa
        if table_gpa is None and table:
            arr = b.mem.array(gpa, PACKED_DTYPE, len(table))
            for k, entry in enumerate(table):
                arr[k] = entry
        ids = b.tx.take_descriptors(1)
        b.tx.adopt_chain(ids)
        ln = DESC_SIZE * len(table) if length is None else length
        self.tx_vq.post_raw([(gpa, ln, ids[0], head_flags)])
        return self._crafted(case, self.tx_vq, ids)

    def _whole_ring(self, case: str) -> Crafted:
        gpa, ln = self.base._frame(16)
        return self._tx_chain(case, [(gpa, ln, 0)] * self.tx_vq.num, last_next=True)

    def run(self, case: str) -> Crafted:
        b = self.base
        gpa, ln = b._frame()
        if case == "desc_out_of_memory":
            return self._tx_chain(case, [(b.beyond_memory(), 64, 0)])
        if case == "desc_straddles_region":
            return self._tx_chain(case, [(b.mem.regions[0].end - 16, 4096, 0)])
        if case == "desc_addr_overflow":
            return self._tx_chain(case, [(2**64 - 16, 64, 0)])
        if case == "chain_loop":
            return self._whole_ring(case)
        if case == "chain_longer_than_queue":
            if not b.indirect_acked:
                return self._whole_ring(case)
            table = [(gpa, ln, 0, 0)] * (self.tx_vq.num + 1)
            return self._indirect(case, table, None)
        if case == "next_out_of_range":
            return self._tx_chain(case, [(gpa, ln, 0)], last_next=True)
        if case == "zero_length_desc":
            return self._tx_chain(case, [(gpa, 0, 0), (gpa, ln, 0)])
        if case == "zero_length_chain":
            return self._tx_chain(case, [(gpa, 0, 0)])
        if case == "short_header":
            return self._tx_chain(case, [(gpa, 4, 0)])
        if case == "write_flag_on_tx":
            return self._tx_chain(case, [(gpa, ln, DESC_F_WRITE)])
        if case == "indirect_without_feature":
            return self._indirect(case, [(gpa, ln, 0, 0)], None)
        if case == "indirect_bad_len":
            return self._indirect(case, [(gpa, ln, 0, 0), (gpa, ln, 0, 0)], 24)
        if case == "indirect_zero_len":
            return self._indirect(case, [(gpa, ln, 0, 0)], 0)
        if case == "indirect_out_of_memory":
            return self._indirect(case, [], 64, table_gpa=b.beyond_memory())
        if case == "indirect_nested":
            inner = b._scratch(16)
            b.mem.array(inner, PACKED_DTYPE, 1)[0] = (gpa, ln, 0, 0)
            return self._indirect(case, [(inner, 16, 0, DESC_F_INDIRECT)], None)
        if case == "indirect_with_next":
            flags = DESC_F_INDIRECT | DESC_F_NEXT
            return self._indirect(case, [(gpa, ln, 0, 0)], None, head_flags=flags)
        if case == "indirect_next_out_of_table":
            bits = DESC_F_AVAIL | DESC_F_USED
            return self._indirect(case, [(gpa, ln, 0, bits), (gpa, ln, 0, 0)], None)
        if case == "huge_chain":
            n = min(40, b.tx.free_slots)
            return self._tx_chain(case, [(b.tx.slot_gpa(0), b.tx.slot_size, 0)] * n)
        if case == "head_out_of_range":
            self.tx_vq.post_raw([(gpa, ln, 0xFFFF, 0)])
            return self._crafted(case, self.tx_vq, [])
        if case == "avail_idx_jump":
            ids = b.tx.take_descriptors(1)
            b.tx.adopt_chain(ids)
            wrong = avail_bits(self.tx_vq.avail_wrap ^ 1)
            self.tx_vq.post_raw([(gpa, ln, ids[0], wrong)], avail=False)
            return self._crafted(case, self.tx_vq, ids)
        return self._rx_case(case)

    def _rx_case(self, case: str) -> Crafted:
        b = self.base
        i = next((i for i in b.rx.reserved if not self.rx_vq.outstanding[i]), None)
        if i is None:
            raise ValueError("no idle reserved RX descriptor (FrontendConfig.rx_reserve)")
        entry = {
            "readonly_rx_buffer": (b.rx.slot_gpa(i), b.rx.buf_size, i, 0),
            "rx_buffer_too_small": (b.rx.slot_gpa(i), 4, i, DESC_F_WRITE),
            "rx_out_of_memory": (b.beyond_memory(), b.rx.buf_size, i, DESC_F_WRITE),
        }[case]
        self.rx_vq.post_raw([entry])
        return self._crafted(case, self.rx_vq, [i])
