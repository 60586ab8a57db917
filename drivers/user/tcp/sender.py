"""The send side of one guest TCP connection: send queue, segmentation, retransmission.

:class:`Sender` owns everything about the bytes we send to the guest: the send queue
(:class:`.queues.FromHost`, host bytes from ``snd_una`` on, plus whether our FIN follows
them), the send sequence variables (``snd_una``, ``snd_nxt``, ``snd_max`` in unwrapped
space, the guest's window and the ACK that last moved it), the negotiated send MSS, window
shift and SACK permission, segmentation into bursts (:meth:`.builder.FrameBuilder.burst`),
the RTO estimator (:mod:`.rto`, RFC 6298, Karn's rule) and the retransmission timer,
congestion control (RFC 5681 slow start / congestion avoidance with byte counting, capped
at twice ``sndbuf``), loss recovery (NewReno, RFC 6582, without SACK; RFC 6675-style pipe
and hole retransmission with the guest's SACK blocks as the scoreboard), sender SWS
avoidance (RFC 1122 §4.2.3.4) and the persist timer (zero-window probes at
``snd_una - 1`` with exponential backoff).

The state machine (:class:`.machine.TcpEndpoint`) holds one :class:`Sender` and is the
only caller. The interface, both ways:

* in: :meth:`Sender.negotiate` and :meth:`Sender.handshake_window` (SYN options and the
  window the handshake carried), :meth:`Sender.syn_acked`, :meth:`Sender.on_ack` (the ACK
  field, window and SACK blocks of an acceptable synchronized segment),
  :meth:`Sender.output` (host data or our FIN queued, or the windows opened),
  :meth:`Sender.on_timeout` and :meth:`Sender.on_persist` (due timers), :meth:`Sender.stop`
  and :meth:`Sender.discard`; the state machine appends host bytes to ``fromhost.buf``,
  sets ``fin_queued``, reads ``retries`` against its limit and clears ``probes`` on
  every guest segment;
* out: frames appended to the shared ``out`` list, counts in the shared ``stats``,
  the two deadlines ``rtx_at`` and ``persist_at``, and return values - :meth:`on_ack`
  says whether the ACK was beyond what we sent or acknowledged our FIN,
  :meth:`on_persist` whether the guest is still alive. Segments carry the receive side's
  ACK number and window: the sender reads ``rx.rcv_nxt`` and calls
  ``rx.window(True)``, which also counts the ACK as sent (:class:`ReceiveSide`; the
  connection's :class:`.receiver.Receiver`).

Send-side choices: RTT by Karn's rule on one segment per flight (no timestamps); RTO
with backoff and bounded retries, after which the state machine sends RST; NewReno fast
retransmit when SACK is off; host reads pause while ``sndbuf`` holds unacknowledged plus
unsent bytes; the retransmission timer sends the head segment even into a closed window
(it doubles as a probe; a live guest's zero-window ACKs reset the retry count, as Linux
does).

The state machine decides *whether* to transmit (``TRANSMITTING`` states); the sender
never looks at the connection state.

Invariants: ``snd_una <= snd_nxt <= snd_max``; only the sender moves ``snd_una`` (on a
cumulative ACK, or the ACK of our SYN); ``fromhost.base == snd_una`` once the SYN is
acknowledged (the queue starts at ``iss + 1``); ``fromhost.sacked`` holds only ranges
within ``[snd_una, snd_max)``; frames go to ``out`` only.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal, Protocol

from netstack.proto.tcp import (
    ACK,
    DEFAULT_MSS_V4,
    DEFAULT_MSS_V6,
    FIN,
    PSH,
    Segment,
    parse_sack_blocks,
    seq_diff,
)

from .builder import FrameBuilder
from .config import TcpConfig, TcpCounter
from .queues import FromHost
from .rto import RtoEstimator

M32 = 0xFFFFFFFF

#: :meth:`Sender.on_ack` results.
AckResult = Literal["ok", "unsent", "fin-acked"]


class ReceiveSide(Protocol):
    """What the sender needs from the receive side for the segments it sends."""

    @property
    def rcv_nxt(self) -> int:
        """The next guest sequence number expected (unwrapped)."""

    def window(self, ack_sent: bool = False) -> int:
        """The window field for a segment now; ``ack_sent``: the segment carries our
        ACK of ``rcv_nxt``, so no ACK is pending any more."""


class Sender:
    """Send queue, segmentation, retransmission and congestion state of one connection."""

    def __init__(
        self, rx: ReceiveSide, b: FrameBuilder, out: list[bytes], stats: Counter[TcpCounter],
        iss: int, now: float, *, config: TcpConfig, v6: bool,
    ) -> None:  # fmt: skip
        cfg = self.cfg = config
        self.rx = rx
        self.b = b
        self.out = out
        self.stats = stats
        self.snd_una = self.snd_nxt = self.snd_max = iss
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.snd_wl1 = 0
        self.snd_wl2 = iss
        self.snd_ws = 0
        self.snd_mss = DEFAULT_MSS_V6 if v6 else DEFAULT_MSS_V4
        self.sack_ok = False
        self.fromhost = FromHost(iss + 1)
        self.fin_queued = False
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
        #: When the retransmission timer and the persist timer are due (None: not armed).
        self.rtx_at: float | None = None
        self.persist_at: float | None = None
        self._rtt_seq: int | None = None
        self._rtt_time = 0.0
        self._persist_backoff = 0.0

    # -- handshake -------------------------------------------------------------------------

    def negotiate(self, mss: int | None, wscale: int | None, sack_ok: bool, rcv_mss: int) -> None:
        """The guest's SYN options: send MSS (at most ours), its window shift, SACK."""
        if mss is not None:
            self.snd_mss = max(64, min(mss, rcv_mss))
        else:
            self.snd_mss = min(self.snd_mss, rcv_mss)
        self.snd_ws = wscale if wscale is not None else 0
        self.sack_ok = sack_ok and self.cfg.sack
        self.cwnd = self.cfg.initial_window * self.snd_mss

    def handshake_window(self, wnd: int, wl1: int, wl2: int) -> None:
        """The guest's window from its SYN or the ACK of ours (already scaled)."""
        self.snd_wnd = self.max_snd_wnd = wnd
        self.snd_wl1, self.snd_wl2 = wl1, wl2

    def syn_acked(self, ack: int, rtt: float) -> None:
        """The guest acknowledged our SYN (``ack`` is ``iss + 1``) ``rtt`` after we sent it."""
        self.snd_una = ack
        if self.retries == 0:  # Karn: no sample from a retransmitted SYN
            self.rto.sample(rtt)
        self.rtx_at = None
        self.retries = 0

    # -- sending ---------------------------------------------------------------------------

    def _send_range(self, start: int, n: int, fin: bool, now: float) -> None:
        """Data ``[start, start + n)`` (plus FIN) from the send buffer, as one burst."""
        flags = ACK
        fh = self.fromhost
        if start + n == fh.end:
            flags |= PSH
        if fin:
            flags |= FIN
        rx = self.rx
        wnd = rx.window(True)
        ackno = rx.rcv_nxt & M32
        if n:
            off = start - fh.base
            frames = self.b.burst(start & M32, ackno, flags, wnd,
                                  memoryview(fh.buf)[off : off + n], self.snd_mss)  # fmt: skip
            self.out.extend(frames)
        else:
            self.out.append(self.b.frame(start & M32, ackno, flags, wnd))
        if self.rtx_at is None:
            self.rtx_at = now + self.rto.rto

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

    def output(self, now: float, force: bool = False) -> None:
        """Send what the windows allow: SACK holes in recovery, then new data, then FIN
        (``force``: the persist timer overrides sender SWS avoidance). The caller checked
        that the connection transmits."""
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
        if fh.end > self.snd_nxt and self.snd_max == self.snd_una and self.persist_at is None:
            self._persist_backoff = self.rto.rto  # data waits, nothing in flight: persist
            self.persist_at = now + self._persist_backoff

    # -- acknowledgements ------------------------------------------------------------------

    def on_ack(self, seg: Segment, seq: int, plen: int, now: float) -> AckResult:
        """The ACK field, window and SACK blocks of an acceptable segment at unwrapped
        ``seq`` with ``plen`` payload bytes. ``"unsent"``: it acknowledges beyond
        ``snd_max`` (counted; the segment is to be dropped and challenged)."""
        snd_una = self.snd_una
        ack = snd_una + seq_diff(seg.ack, snd_una & M32)
        if ack > self.snd_max:
            self.stats["ack-unsent"] += 1
            return "unsent"
        new_wnd = seg.wnd << self.snd_ws
        if not new_wnd and ack == snd_una:
            self.retries = 0  # a live guest with a closed window: probing, not failing
        result: AckResult = "ok"
        if ack > snd_una:
            if self._acked(ack, now):
                result = "fin-acked"
        elif (ack == snd_una and not plen and not seg.flags & FIN and self.snd_max > snd_una
              and (new_wnd == self.snd_wnd or (self.sack_ok and seg.options))):  # fmt: skip
            self._dupack(seg, now)
        if self.sack_ok and seg.options and self.snd_max > self.snd_una:
            self._take_sack(seg.options)
        if seq > self.snd_wl1 or (seq == self.snd_wl1 and ack >= self.snd_wl2):
            opened = new_wnd > self.snd_wnd
            self.snd_wnd = new_wnd
            self.snd_wl1, self.snd_wl2 = seq, ack
            if new_wnd > self.max_snd_wnd:
                self.max_snd_wnd = new_wnd
            if opened and new_wnd:
                self.persist_at = None
        return result

    def _take_sack(self, options: bytes) -> None:
        base = self.snd_una
        fh = self.fromhost
        for left, right in parse_sack_blocks(options):
            start = base + seq_diff(left, base & M32)
            fh.add_sack(start, base + seq_diff(right, base & M32), self.snd_max)

    def _acked(self, ack: int, now: float) -> bool:
        """A cumulative ACK that moved ``snd_una``; True when it covers our FIN."""
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
                self.rtx_at = now + self.rto.rto
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
            self.rtx_at = None
        else:
            self.rtx_at = now + self.rto.rto
        return self.fin_queued and ack == self.snd_max and ack == self.fromhost.end + 1

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
        self.rtx_at = now + self.rto.rto

    # -- timers ----------------------------------------------------------------------------

    def on_timeout(self, now: float, syn: bool, transmitting: bool) -> None:
        """The retransmission timer fired (the caller checked ``retries`` against its
        limit): back off; unless it is our SYN that is retransmitted (``syn``: the caller
        sends it), go back to ``snd_una`` with one segment of congestion window."""
        self.retries += 1
        self.rto.backoff()
        self._rtt_seq = None
        self.stats["timeouts"] += 1
        self.rtx_at = now + self.rto.rto
        if syn:
            return
        mss = self.snd_mss
        self.ssthresh = max((self.snd_max - self.snd_una) // 2, 2 * mss)
        self.cwnd = mss
        self.in_recovery = False
        self.recover = self.snd_max
        self.dupacks = 0
        self.fromhost.sacked.clear()
        self.high_rxt = self.snd_una
        self.snd_nxt = self.snd_una
        self.rtx_at = None
        if transmitting:
            self.output(now)
        if self.rtx_at is None and self.snd_max > self.snd_una:
            # the window is closed (perhaps by an ACK that overtook a newer one): the head
            # segment goes anyway, as a probe - the guest ACKs with its current window
            self._retransmit(self.snd_una, mss, now)
            self.snd_nxt = max(self.snd_nxt, self.snd_una + min(mss, self.snd_max - self.snd_una))
            self.rtx_at = now + self.rto.rto

    def on_persist(self, now: float, transmitting: bool) -> bool:
        """The persist timer fired: probe the zero window (or send into a small one).
        False: ``max_retries`` probes went unanswered, the caller gives up."""
        self.persist_at = None
        if not transmitting or self.fromhost.end <= self.snd_nxt:
            return True
        if self.snd_max > self.snd_una:
            return True  # data in flight: the retransmission timer is in charge
        if self.snd_una + self.snd_wnd > self.snd_nxt:
            self.output(now, force=True)  # a small window: send into it after all
            return True
        self.probes += 1
        if self.probes > self.cfg.max_retries:
            return False
        self.stats["window-probes"] += 1
        rx = self.rx
        wnd = rx.window()
        self.out.append(self.b.frame((self.snd_una - 1) & M32, rx.rcv_nxt & M32, ACK, wnd))
        self._persist_backoff = min(self._persist_backoff * 2, self.cfg.rto_max)
        self.persist_at = now + self._persist_backoff
        return True

    def stop(self) -> None:
        """Disarm both timers (the connection stopped transmitting)."""
        self.rtx_at = self.persist_at = None

    def discard(self) -> None:
        """Drop the queued host bytes and disarm both timers."""
        self.fromhost.buf.clear()
        self.rtx_at = self.persist_at = None
