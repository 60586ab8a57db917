"""The transmit path and connection state of a guest TCP endpoint.

:class:`Transmitter` owns the state of one connection (sequence variables in unwrapped
space, windows, the two byte queues, RTO estimator, congestion state) and everything that
puts segments on the guest's link: the window we advertise (free part of ``rcvbuf``, never
shrinking the right edge - RFC 7323 §2.4 - and SWS-avoided - RFC 1122 §4.2.3.3), ACKs with
SACK blocks for held out-of-order data (RFC 2018), sending host data as far as the guest's
window and the congestion window allow (RFC 5681 slow start / congestion avoidance with
byte counting; sender SWS avoidance with a persist override), loss recovery (NewReno,
RFC 6582, without SACK; RFC 6675-style pipe and hole retransmission with it), processing
of cumulative ACKs and SACK blocks, and zero-window probes (``snd_una - 1``, exponential
backoff). The state machine (:mod:`.machine`) subclasses it and supplies the hooks
:meth:`Transmitter._our_fin_acked` and :meth:`Transmitter._abort`.

Invariants: ``snd_una <= snd_nxt <= snd_max``; ``fromhost.base == snd_una`` once the SYN is
acknowledged (its buffer starts at ``iss + 1``); ``rcv_adv - rcv_nxt + tohost.size <=
rcvbuf`` (whatever the guest may still send within the farthest advertised edge fits);
frames go to ``out`` only.
"""

from __future__ import annotations

import abc
import errno as errno_mod
import random
from collections import Counter
from typing import Literal

from netstack.proto.tcp import (
    ACK,
    DEFAULT_MSS_V4,
    DEFAULT_MSS_V6,
    FIN,
    PSH,
    Segment,
    parse_sack_blocks,
    sack_option,
    seq_diff,
)

from .builder import FrameBuilder
from .config import TRANSMITTING, Event, State, TcpConfig
from .queues import FromHost, ToHost
from .rto import RtoEstimator

M32 = 0xFFFFFFFF
#: Answers to unacceptable segments per connection and second.
CHALLENGE_ACKS = 50


#: The names a TCP machine counts under (``query-netdev`` counters, ``tcp-`` prefixed).
TransmitCounter = Literal[
    "ack-unsent",
    "after-close",
    "beyond-window",
    "challenge-acks-suppressed",
    "data-after-fin",
    "dupacks",
    "duplicate",
    "fast-retransmits",
    "host-data-over-room",
    "no-ack",
    "out-of-order",
    "out-of-order-dropped",
    "retransmits",
    "rst-after-guest-fin",
    "rst-challenged",
    "segment-while-connecting",
    "syn-challenged",
    "syn-retransmit-held",
    "timeouts",
    "unacceptable",
    "window-probes",
    "window-updates",
]


class Transmitter(abc.ABC):
    """Connection state and the sending side of one guest TCP connection."""

    def __init__(
        self, local: bytes, guest: bytes, local_port: int, guest_port: int, now: float, *,
        config: TcpConfig, l2: bytes = b"", out: list[bytes] | None = None,
        iss: int | None = None,
    ) -> None:  # fmt: skip
        cfg = self.cfg = config
        self.b = FrameBuilder(local, guest, local_port, guest_port, l2=l2, vnet=config.vnet)
        self.out: list[bytes] = out if out is not None else []
        self.events: list[tuple[Event, int]] = []
        self.stats: Counter[TransmitCounter] = Counter()
        self.state = State.CLOSED
        self.done = False
        self.host_shut_wr = False
        self.syn: Segment | None = None
        self._now = now
        self._last_activity = now
        iss = random.getrandbits(32) if iss is None else iss & M32
        self.iss = iss
        self.snd_una = self.snd_nxt = self.snd_max = iss
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = iss
        self.snd_ws = self.rcv_ws = 0
        v6 = len(local) == 16
        self.rcv_mss = cfg.mss_for(v6)
        self.snd_mss = DEFAULT_MSS_V6 if v6 else DEFAULT_MSS_V4
        self.sack_ok = False
        self.irs = self.rcv_nxt = self.rcv_adv = self.rcv_acked = 0
        self.fromhost = FromHost(iss + 1)
        self.tohost = ToHost(min(cfg.ooo_max, cfg.rcvbuf), cfg.ooo_segs)
        self.fin_queued = False
        self.fin_rcvd = False
        self.rto = RtoEstimator(cfg.rto_initial, cfg.rto_min, cfg.rto_max)
        self.cwnd = cfg.initial_window * self.snd_mss
        self.ssthresh = 1 << 62
        self.dupacks = 0
        #: Fast recovery in progress (RFC 6582 / RFC 6675) and its exit point.
        self.in_recovery = False
        self.recover = iss
        #: RFC 6675 HighRxt: retransmissions in this recovery reached here.
        self.high_rxt = iss
        self.retries = 0
        self.probes = 0
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._rtx_at: float | None = None
        self._persist_at: float | None = None
        self._delack_at: float | None = None
        self._tw_at: float | None = None
        self._connect_at: float | None = None
        self._persist_backoff = 0.0
        self._syn_time = now
        self._ws_ok = False
        self._ack_pending = 0
        self._challenge_start = now
        self._challenges = 0
        self._ack_threshold = max(2 * self.rcv_mss, cfg.rcvbuf // 16)
        #: Unacknowledged bytes that are acknowledged at the end of a batch at once (two
        #: full segments, RFC 5681; at most 16 KiB, so jumbo MTUs don't wait for delack).
        self._quick_ack = min(2 * self.rcv_mss, 16384)
        self._connect_failed = False
        #: Largest amount of guest data seen beyond our last ACK (window use evidence).
        self.max_guest_flight = 0

    def _window(self) -> int:
        """The window field for a segment now: the free part of ``rcvbuf`` (SWS-avoided),
        rounded down to the scale granularity. ``rcv_adv`` is the farthest edge ever
        advertised and the limit for accepting data; the field never pulls the edge back
        by a whole scale unit (RFC 7323 §2.4 and its Appendix F: only the rounding of
        the last unit can make it appear to retract)."""
        cfg = self.cfg
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

    def _send_ack(self) -> None:
        if self.state in (State.CONNECTING, State.SYN_SENT, State.CLOSED):
            return
        opts = b""
        if self.sack_ok and self.tohost.ooo:
            opts = sack_option(self.tohost.sack_blocks(4))
        wnd = self._window()
        # a pure ACK carries snd_max, not a snd_nxt pulled back by go-back-N: a sequence
        # number the guest has already passed would make it drop the ACK (as BSD does)
        self.out.append(self.b.frame(self.snd_max & M32, self.rcv_nxt & M32, ACK, wnd, b"", opts))
        self.rcv_acked = self.rcv_nxt
        self._ack_pending = 0
        self._delack_at = None

    def flush(self, now: float) -> None:
        """End of a batch of guest frames: send the ACK we have been holding back once
        two full segments' worth is unacknowledged (RFC 5681 §4.2). Less waits for host
        data to carry it or for ``delack``, so a request/response exchange costs the guest
        one frame per direction, not an extra pure ACK."""
        pending = self._ack_pending
        if pending and not self.done and (pending >= self._quick_ack or self._delack_at is None):
            self._now = now
            self._send_ack()

    def _challenge_ack(self, now: float) -> None:
        """An ACK answering an unacceptable segment (RFC 9293 §3.10.7.4, RFC 5961 challenge
        ACKs), at most ``CHALLENGE_ACKS`` per second: two ends that disagree on sequence
        space must not ACK each other forever."""
        if now - self._challenge_start >= 1.0:
            self._challenge_start = now
            self._challenges = 0
        if self._challenges >= CHALLENGE_ACKS:
            self.stats["challenge-acks-suppressed"] += 1
            return
        self._challenges += 1
        self._send_ack()

    def _send_range(self, start: int, n: int, fin: bool, now: float) -> None:
        """Data ``[start, start + n)`` (plus FIN) from the send buffer, as one burst."""
        flags = ACK
        fh = self.fromhost
        if start + n == fh.end:
            flags |= PSH
        if fin:
            flags |= FIN
        wnd = self._window()
        ackno = self.rcv_nxt & M32
        if n:
            off = start - fh.base
            frames = self.b.burst(start & M32, ackno, flags, wnd,
                                  memoryview(fh.buf)[off : off + n], self.snd_mss)  # fmt: skip
            self.out.extend(frames)
        else:
            self.out.append(self.b.frame(start & M32, ackno, flags, wnd))
        self.rcv_acked = self.rcv_nxt
        self._ack_pending = 0
        self._delack_at = None
        if self._rtx_at is None:
            self._rtx_at = now + self.rto.rto

    def _retransmit(self, start: int, n: int, now: float) -> None:
        fh = self.fromhost
        n = max(0, min(n, fh.end - start, self.snd_max - start))  # only what was sent
        fin = self.fin_queued and start + n == fh.end and self.snd_max > fh.end
        if not n and not fin:
            return
        self.stats["retransmits"] += 1
        self._send_range(start, n, fin, now)

    def _pipe(self) -> int:
        """RFC 6675 §4 estimate of bytes in flight (holes below the highest SACKed byte
        not yet retransmitted count as lost)."""
        sacked = self.fromhost.sacked
        if not (self.in_recovery and self.sack_ok and sacked):
            return self.snd_nxt - self.snd_una
        flight = self.snd_max - self.snd_una
        pos = max(self.high_rxt, self.snd_una)
        lost = 0
        for start, end in sacked:
            flight -= end - start
            if start > pos:
                lost += start - pos
            pos = max(pos, end)
        return flight - lost

    def _output(self, now: float, force: bool = False) -> None:
        """Send what the windows allow: SACK holes in recovery, then new data, then FIN
        (``force``: the persist timer overrides sender SWS avoidance)."""
        if self.state not in TRANSMITTING:
            return
        fh = self.fromhost
        mss = self.snd_mss
        budget = self.cwnd - self._pipe()
        if self.in_recovery and self.sack_ok:
            while budget > 0:
                hole = fh.next_hole(max(self.high_rxt, self.snd_una))
                if hole is None:
                    break
                n = min(hole[1] - hole[0], self.b.max_burst(mss), max(budget, mss))
                self._retransmit(hole[0], n, now)
                self.high_rxt = hole[0] + n
                budget -= n
        limit = self.b.max_burst(mss)
        edge = self.snd_una + self.snd_wnd
        while True:
            start = self.snd_nxt
            end = fh.end
            avail = end - start
            if avail <= 0:
                break
            n = min(avail, edge - start, budget, limit)
            if n <= 0:
                break
            if n < avail and n < mss and n < self.max_snd_wnd // 2 and not force:
                break  # sender-side SWS avoidance: wait for a useful window (or persist)
            fin = self.fin_queued and start + n == end
            new = start >= self.snd_max
            if new and self._rtt_seq is None:
                self._rtt_seq, self._rtt_time = start, now
            elif not new:
                self.stats["retransmits"] += 1
            self._send_range(start, n, fin, now)
            self.snd_nxt = start + n + (1 if fin else 0)
            if self.snd_nxt > self.snd_max:
                self.snd_max = self.snd_nxt
            budget -= n
            force = False
        if self.fin_queued and self.snd_nxt == fh.end:
            self._send_range(fh.end, 0, True, now)
            self.snd_nxt = fh.end + 1
            self.snd_max = max(self.snd_max, self.snd_nxt)
        if fh.end > self.snd_nxt and self.snd_max == self.snd_una and self._persist_at is None:
            self._persist_backoff = self.rto.rto  # data waits, nothing in flight: persist
            self._persist_at = now + self._persist_backoff

    def _take_sack(self, options: bytes) -> None:
        base = self.snd_una
        fh = self.fromhost
        for left, right in parse_sack_blocks(options):
            start = base + seq_diff(left, base & M32)
            fh.add_sack(start, base + seq_diff(right, base & M32), self.snd_max)

    def _acked(self, ack: int, now: float) -> None:
        acked = ack - self.snd_una
        self.snd_una = ack
        self.fromhost.ack_to(ack)
        if self.snd_nxt < ack:
            self.snd_nxt = ack
        if self.retries:
            self.retries = 0
            self.rto.reset_backoff()
        if self._rtt_seq is not None and ack > self._rtt_seq:
            self.rto.sample(now - self._rtt_time)
            self._rtt_seq = None
        mss = self.snd_mss
        if self.in_recovery:
            if ack >= self.recover:
                flight = self.snd_max - ack
                self.cwnd = max(min(self.ssthresh, flight + mss), mss)
                self.in_recovery = False
                self.dupacks = 0
            else:  # partial ACK (RFC 6582 §3.2 step 5)
                if not self.sack_ok:
                    self._retransmit(ack, mss, now)
                    self.cwnd = max(self.cwnd - acked + mss, mss)
                self._rtx_at = now + self.rto.rto
        else:
            self.dupacks = 0
            if self.cwnd < self.ssthresh:
                self.cwnd += acked
            else:
                self.cwnd += max(1, mss * acked // self.cwnd)
            cap = 2 * self.cfg.sndbuf
            if self.cwnd > cap:
                self.cwnd = cap
        if self.snd_una >= self.snd_max:
            self._rtx_at = None
        else:
            self._rtx_at = now + self.rto.rto
        if self.fin_queued and ack == self.snd_max and ack == self.fromhost.end + 1:
            self._our_fin_acked(now)

    def _dupack(self, seg: Segment, now: float) -> None:
        self.dupacks += 1
        self.stats["dupacks"] += 1
        mss = self.snd_mss
        if self.in_recovery:
            if not self.sack_ok:
                self.cwnd += mss
            return
        if self.dupacks < 3 or self.snd_una <= self.recover:
            return  # RFC 6582 §3.2 step 2: not while an earlier loss is being repaired
        flight = self.snd_max - self.snd_una
        self.ssthresh = max(flight // 2, 2 * mss)
        self.in_recovery = True
        self.recover = self.snd_max
        self._rtt_seq = None
        self.stats["fast-retransmits"] += 1
        if self.sack_ok:
            if seg.options:
                self._take_sack(seg.options)
            self.cwnd = self.ssthresh
            self.high_rxt = self.snd_una
            if not self.fromhost.sacked:
                self._retransmit(self.snd_una, mss, now)
        else:
            self._retransmit(self.snd_una, mss, now)
            self.cwnd = self.ssthresh + 3 * mss
        self._rtx_at = now + self.rto.rto

    def _on_persist(self, now: float) -> None:
        self._persist_at = None
        if self.state not in TRANSMITTING or self.fromhost.end <= self.snd_nxt:
            return
        if self.snd_max > self.snd_una:
            return  # data in flight: the retransmission timer is in charge
        if self.snd_una + self.snd_wnd > self.snd_nxt:
            self._output(now, force=True)  # a small window: send into it after all
            return
        self.probes += 1
        if self.probes > self.cfg.max_retries:
            self._abort(Event.TIMEOUT, errno_mod.ETIMEDOUT)
            return
        self.stats["window-probes"] += 1
        wnd = self._window()
        self.out.append(self.b.frame((self.snd_una - 1) & M32, self.rcv_nxt & M32, ACK, wnd))
        self._persist_backoff = min(self._persist_backoff * 2, self.cfg.rto_max)
        self._persist_at = now + self._persist_backoff

    # -- hooks for the state machine -------------------------------------------------------

    @abc.abstractmethod
    def _our_fin_acked(self, now: float) -> None:
        """The guest acknowledged our FIN."""

    @abc.abstractmethod
    def _abort(self, why: Event, err: int) -> None:
        """Send RST, report ``why`` and finish."""
