"""The receive side of one guest TCP connection: the guest's bytes and our window.

:class:`Receiver` owns the receive sequence variables (``rcv_nxt``, the farthest edge we
advertised ``rcv_adv``, the last ACK we sent ``rcv_acked``; unwrapped), our window shift
and MSS, the queue of guest bytes for the host (:class:`.queues.ToHost`, in order plus
out-of-order pieces with their SACK blocks), the guest's FIN once it is in order, and the
ACK debt (bytes received but not acknowledged, the delayed-ACK deadline). It places
in-window data (:meth:`Receiver.take`) and computes the window we advertise
(:meth:`Receiver.window`): the free part of ``rcvbuf``, never pulling the right edge back
by a scale unit (RFC 7323 §2.4) and SWS-avoided (RFC 1122 §4.2.3.3).

The state machine (:class:`.machine.TcpEndpoint`) holds one and decides when data may be
taken (``RECEIVING`` states) and when ACKs go out; the send side
(:class:`.sender.Sender`) reads ``rcv_nxt`` and calls :meth:`Receiver.window` for the
ACK fields of its segments. Neither the state nor the send side is visible from here.

Invariants: ``rcv_adv - rcv_nxt + tohost.size <= rcvbuf`` (whatever the guest may still
send within the farthest advertised edge fits); ``rcv_nxt`` only grows, and after the
handshake (which sets it to ``irs + 1``) only here.
"""

from __future__ import annotations

from collections import Counter

from .config import TcpConfig, TcpCounter
from .queues import ToHost

#: :meth:`Receiver.take` results: acknowledge now; the guest's FIN arrived (in order).
ACK_NOW = 1
FIN_IN = 2


class Receiver:
    """Receive sequence space, the bytes for the host and the window of one connection."""

    def __init__(self, config: TcpConfig, stats: Counter[TcpCounter], v6: bool) -> None:
        cfg = self.cfg = config
        self.stats = stats
        self.rcv_ws = 0
        self.rcv_mss = cfg.mss_for(v6)
        self.rcv_nxt = self.rcv_adv = self.rcv_acked = 0
        self.tohost = ToHost(min(cfg.ooo_max, cfg.rcvbuf), cfg.ooo_segs)
        self.fin_rcvd = False
        #: In-order bytes received since our last ACK, and when a delayed ACK is due.
        self.ack_pending = 0
        self.delack_at: float | None = None
        self.ack_threshold = max(2 * self.rcv_mss, cfg.rcvbuf // 16)
        #: Unacknowledged bytes that are acknowledged at the end of a batch at once (two
        #: full segments, RFC 5681; at most 16 KiB, so jumbo MTUs don't wait for delack).
        self.quick_ack = min(2 * self.rcv_mss, 16384)
        #: Largest amount of guest data seen beyond our last ACK (window use evidence).
        self.max_guest_flight = 0

    def window(self, ack_sent: bool = False) -> int:
        """The window field for a segment now: the free part of ``rcvbuf`` (SWS-avoided),
        rounded down to the scale granularity. ``rcv_adv`` is the farthest edge ever
        advertised and the limit for accepting data; the field never pulls the edge back
        by a whole scale unit (RFC 7323 §2.4 and its Appendix F: only the rounding of
        the last unit can make it appear to retract). ``ack_sent``: the segment carries
        our ACK of ``rcv_nxt``, which ends any pending or delayed ACK."""
        cfg = self.cfg
        if ack_sent:
            self.rcv_acked = self.rcv_nxt
            self.ack_pending = 0
            self.delack_at = None
        ws = self.rcv_ws
        free = cfg.rcvbuf - self.tohost.size
        if self.fin_rcvd:
            free = cfg.rcvbuf
        elif free < self.rcv_mss and free < cfg.rcvbuf // 2:
            free = 0
        raw = min(free >> ws, 0xFFFF)
        edge = self.rcv_nxt + (raw << ws)
        if edge >= self.rcv_adv:
            self.rcv_adv = edge
            return raw
        return min(max(self.rcv_adv - self.rcv_nxt, 0) >> ws, 0xFFFF)

    def take(self, seq: int, payload: memoryview | bytes, fin: bool) -> int:
        """In-window data (at unwrapped ``seq``) and FIN while the guest may send: 0,
        :data:`ACK_NOW` when an ACK must go out at once (out of order, duplicate, a hole filled),
        or :data:`FIN_IN` when the guest's FIN is now in order (``rcv_nxt`` covers it)."""
        rcv_nxt = self.rcv_nxt
        data = payload if isinstance(payload, memoryview) else memoryview(payload)
        if seq < rcv_nxt:
            cut = rcv_nxt - seq
            if cut > len(data):
                return ACK_NOW
            data = data[cut:]
            seq = rcv_nxt
            if not data and not fin:
                self.stats["duplicate"] += 1
                return ACK_NOW
        room = self.rcv_adv - seq
        if len(data) > room:
            self.stats["beyond-window"] += 1
            data = data[: max(room, 0)]
            fin = False
        flight = seq + len(data) - self.rcv_acked
        if flight > self.max_guest_flight:
            self.max_guest_flight = flight
        tohost = self.tohost
        if seq > rcv_nxt:
            self.stats["out-of-order"] += 1
            if not tohost.add_ooo(seq, data, fin):
                self.stats["out-of-order-dropped"] += 1
            return ACK_NOW
        ack_now = False
        if data:
            tohost.append(data)
            rcv_nxt += len(data)
            self.ack_pending += len(data)
        if tohost.ooo:
            rcv_nxt = tohost.pull(rcv_nxt)
            ack_now = True
        self.rcv_nxt = rcv_nxt
        if fin or tohost.ooo_fin == rcv_nxt:
            self.rcv_nxt = rcv_nxt + 1
            self.fin_rcvd = True
            tohost.ooo.clear()
            tohost.ooo_bytes = 0
            return FIN_IN
        return ACK_NOW if ack_now else 0
