"""One guest TCP connection, terminated here: a sans-IO TCP endpoint (RFC 9293).

We play the far end of the guest's connection. Outbound guest connections start passive
(:meth:`TcpEndpoint.accept` on the guest's SYN; the SYN-ACK waits for
:meth:`~TcpEndpoint.host_connected`); hostfwd connections start active
(:meth:`TcpEndpoint.connect`). Inputs carry ``now``: guest segments
(:meth:`~TcpEndpoint.segment_from_guest`), host events (``host_data``, ``host_eof``,
``host_error``, ``host_written``) and :meth:`~TcpEndpoint.timer`. Outputs: frames
appended to ``out`` (shared by the adapter across connections, so one batch carries many),
``events``, and state the adapter polls after each call - ``host_chunks`` (bytes for the
host socket), ``host_read_room`` (0: stop reading the host socket), ``host_shut_wr``
(shut the socket's write side now), ``done`` and ``next_deadline``.

The endpoint owns the connection state (RFC 9293's states plus ``CONNECTING``), the
handshake and option negotiation, FIN/RST/close and TIME_WAIT, when data may be taken and
what we acknowledge when (pure ACKs, delayed ACKs, challenge ACKs), and the adapter-facing
API above. It holds two parts by composition and is their only caller:

* :attr:`TcpEndpoint.tx`, the send side (:class:`.sender.Sender`: send queue,
  segmentation, retransmission and RTO, SACK scoreboard, congestion window, persist). The
  endpoint decides whether the connection transmits and hands it the ACK fields of
  acceptable segments; it reports back through return values (see its docstring);
* :attr:`TcpEndpoint.rx`, the receive side (:class:`.receiver.Receiver`: ``rcv_nxt``,
  the guest's bytes for the host in order and out of order, the window we advertise,
  the ACK debt). The endpoint passes it in-window data in ``RECEIVING`` states and acts on
  the guest's FIN it reports; the sender reads its ``rcv_nxt`` and window directly.

Choices (see the package docstring for the reasoning):

* sequence numbers are kept unwrapped (unbounded ints); the wire's 32-bit values are
  mapped to the nearest unwrapped value, so ordering survives wrap-around;
* window scaling (RFC 7323) and SACK (RFC 2018) both ways; no timestamps (no PAWS), no
  ECN, urgent data inline; RST and SYN checks of RFC 5961 (exact RST, challenge ACKs);
* our window is the free part of ``rcvbuf`` (bytes not yet written to the host); its right
  edge never retracts by a scale unit (RFC 7323 §2.4) and is SWS-avoided (RFC 1122
  §4.2.3.3); pure ACKs carry ``snd_max`` (BSD), so a go-back-N retransmission never
  makes the guest drop our ACKs as old;
* ACKs for in-order data are batched: sent at ``flush`` (the adapter calls it after each
  batch of guest frames), when a threshold is reached, or after ``delack``; out-of-order,
  duplicate and FIN segments are acknowledged at once.

Invariants: only the sender moves ``snd_una``; after the handshake only the receiver
moves ``rcv_nxt``; the
endpoint, the sender and the receiver share one ``out`` list and one ``stats`` counter;
frames go to ``out`` only.

Never raises on guest input: malformed or unexpected segments are counted in ``stats``.
"""

from __future__ import annotations

import errno as errno_mod
import random
from collections import Counter

from netstack.proto.tcp import (
    ACK,
    FIN,
    RST,
    SYN,
    Segment,
    parse_syn_options,
    sack_option,
    seq_diff,
    syn_options,
)

from .builder import FrameBuilder, rejection, unreachable_frame
from .config import RECEIVING, SENDING, TRANSMITTING, Event, State, TcpConfig, TcpCounter
from .queues import Chunk
from .receiver import FIN_IN, Receiver
from .sender import M32, Sender

#: Answers to unacceptable segments per connection and second.
CHALLENGE_ACKS = 50


class TcpEndpoint:
    """The far end of one guest TCP connection: its state machine and receive side; the
    send side is :attr:`tx`."""

    def __init__(
        self, local: bytes, guest: bytes, local_port: int, guest_port: int, now: float, *,
        config: TcpConfig, l2: bytes = b"", out: list[bytes] | None = None,
        iss: int | None = None,
    ) -> None:  # fmt: skip
        cfg = self.cfg = config
        self.b = FrameBuilder(local, guest, local_port, guest_port, l2=l2, vnet=config.vnet)
        self.out: list[bytes] = out if out is not None else []
        self.events: list[tuple[Event, int]] = []
        self.stats: Counter[TcpCounter] = Counter()
        self.state = State.CLOSED
        self.done = False
        self.host_shut_wr = False
        self.syn: Segment | None = None
        self._now = now
        self._last_activity = now
        iss = random.getrandbits(32) if iss is None else iss & M32
        self.iss = iss
        v6 = len(local) == 16
        self.irs = 0
        self._tw_at: float | None = None
        self._connect_at: float | None = None
        self._syn_time = now
        self._ws_ok = False
        self._challenge_start = now
        self._challenges = 0
        self._connect_failed = False
        #: The receive side: guest bytes for the host, our window (:mod:`.receiver`).
        self.rx = Receiver(cfg, self.stats, v6)
        #: The send side: send queue, retransmission, congestion (:mod:`.sender`).
        self.tx = Sender(self.rx, self.b, self.out, self.stats, iss, now, config=cfg, v6=v6)

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def accept(
        cls, syn: Segment, now: float, *, config: TcpConfig, l2: bytes = b"",
        out: list[bytes] | None = None, iss: int | None = None,
    ) -> TcpEndpoint:  # fmt: skip
        """The endpoint for a guest SYN; it answers once :meth:`host_connected` is called."""
        ep = cls(syn.dst, syn.src, syn.dport, syn.sport, now, config=config, l2=l2, out=out,
                 iss=iss)  # fmt: skip
        ep.syn = syn
        ep.irs = syn.seq
        ep.rx.rcv_nxt = ep.rx.rcv_adv = ep.rx.rcv_acked = syn.seq + 1
        opts = parse_syn_options(syn.options)
        ep._negotiate(opts.mss, opts.wscale, opts.sack_ok)
        ep.tx.handshake_window(syn.wnd, syn.seq, ep.tx.snd_wl2)
        ep.state = State.CONNECTING
        ep._connect_at = now + config.connect_timeout
        return ep

    @classmethod
    def connect(
        cls, local: bytes, guest: bytes, local_port: int, guest_port: int, now: float, *,
        config: TcpConfig, l2: bytes = b"", out: list[bytes] | None = None,
        iss: int | None = None,
    ) -> TcpEndpoint:  # fmt: skip
        """An endpoint that opens a connection to the guest (hostfwd): sends the SYN."""
        ep = cls(local, guest, local_port, guest_port, now, config=config, l2=l2, out=out,
                 iss=iss)  # fmt: skip
        ep.state = State.SYN_SENT
        tx = ep.tx
        tx.snd_nxt = tx.snd_max = ep.iss + 1
        ep._send_syn(ack=False)
        tx.rtx_at = now + tx.rto.rto
        return ep

    def _negotiate(self, mss: int | None, wscale: int | None, sack_ok: bool) -> None:
        self.tx.negotiate(mss, wscale, sack_ok, self.rx.rcv_mss)
        self._ws_ok = wscale is not None
        self.rx.rcv_ws = self.cfg.wscale() if wscale is not None else 0

    def _send_syn(self, ack: bool) -> None:
        cfg = self.cfg
        if ack:  # SYN-ACK: answer only what the guest offered
            opts = syn_options(self.rx.rcv_mss, self.rx.rcv_ws if self._ws_ok else None,
                               self.tx.sack_ok)  # fmt: skip
            flags, ackno = SYN | ACK, self.rx.rcv_nxt & M32
        else:
            opts = syn_options(self.rx.rcv_mss, cfg.wscale(), cfg.sack)
            flags, ackno = SYN, 0
        wnd = min(cfg.rcvbuf, 0xFFFF)
        if ack:
            self.rx.rcv_adv = self.rx.rcv_nxt + wnd
            self.rx.rcv_acked = self.rx.rcv_nxt
        self._syn_time = self._now
        self.out.append(self.b.frame(self.iss, ackno, flags, wnd, b"", opts))

    # -- acknowledgements -------------------------------------------------------------------

    def _send_ack(self) -> None:
        if self.state in (State.CONNECTING, State.SYN_SENT, State.CLOSED):
            return
        opts = b""
        if self.tx.sack_ok and self.rx.tohost.ooo:
            opts = sack_option(self.rx.tohost.sack_blocks(4))
        wnd = self.rx.window(True)
        # a pure ACK carries snd_max, not a snd_nxt pulled back by go-back-N: a sequence
        # number the guest has already passed would make it drop the ACK (as BSD does)
        self.out.append(self.b.frame(self.tx.snd_max & M32, self.rx.rcv_nxt & M32, ACK, wnd, b"",
                                     opts))  # fmt: skip

    def flush(self, now: float) -> None:
        """End of a batch of guest frames: send the ACK we have been holding back once
        two full segments' worth is unacknowledged (RFC 5681 §4.2). Less waits for host
        data to carry it or for ``delack``, so a request/response exchange costs the guest
        one frame per direction, not an extra pure ACK."""
        pending = self.rx.ack_pending
        if (
            pending
            and not self.done
            and (pending >= self.rx.quick_ack or self.rx.delack_at is None)
        ):
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

    # -- adapter-facing properties ---------------------------------------------------------

    @property
    def key(self) -> tuple[bytes, int, bytes, int]:
        """(guest address, guest port, our address, our port)."""
        b = self.b
        return b.dst, b.dport, b.src, b.sport

    @property
    def host_read_room(self) -> int:
        """How many bytes :meth:`host_data` would take now (0: pause host reads)."""
        if self.state not in SENDING or self.tx.fin_queued or self.done:
            return 0
        return max(0, self.cfg.sndbuf - len(self.tx.fromhost.buf))

    @property
    def host_pending(self) -> int:
        """Bytes waiting to be written to the host socket."""
        return self.rx.tohost.size

    def host_chunks(self, max_chunks: int = 64) -> list[Chunk]:
        """Buffers to write to the host socket (e.g. one ``sendmsg``), then report with
        :meth:`host_written`; valid until the next call into the machine."""
        return self.rx.tohost.head(max_chunks)

    @property
    def send_queue(self) -> int:
        """Host bytes held for the guest (unacknowledged plus unsent)."""
        return len(self.tx.fromhost.buf)

    @property
    def next_deadline(self) -> float | None:
        """When :meth:`timer` is next due (None: nothing pending)."""
        if self.done:
            return None
        best = self._last_activity + self.cfg.idle_timeout
        tx = self.tx
        for t in (tx.rtx_at, tx.persist_at, self.rx.delack_at, self._tw_at,
                  self._connect_at):  # fmt: skip
            if t is not None and t < best:
                best = t
        return best

    # -- host side ------------------------------------------------------------------------

    def host_connected(self, now: float) -> None:
        """The host socket connected: answer the guest's SYN."""
        if self.state is not State.CONNECTING or self._connect_failed or self.done:
            return
        self._now = now
        self._connect_at = None
        self.state = State.SYN_RCVD
        tx = self.tx
        tx.snd_nxt = tx.snd_max = self.iss + 1
        self._send_syn(ack=True)
        tx.rtx_at = now + tx.rto.rto

    def host_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes read from the host socket (at most :attr:`host_read_room`; any excess is
        dropped and counted: the adapter broke the contract)."""
        if self.done:
            return
        self._now = now
        room = self.host_read_room
        if len(data) > room:
            self.stats["host-data-over-room"] += 1
            data = memoryview(data)[:room]
        if not data:
            return
        self._last_activity = now
        self.tx.fromhost.buf += data
        if self.state in TRANSMITTING:
            self.tx.output(now)

    def host_eof(self, now: float) -> None:
        """The host closed its sending side: send our FIN after the queued data."""
        if self.done or self.tx.fin_queued:
            return
        self._now = now
        self._last_activity = now
        self.tx.fin_queued = True
        if self.state is State.ESTABLISHED:
            self.state = State.FIN_WAIT_1
        elif self.state is State.CLOSE_WAIT:
            self.state = State.LAST_ACK
        if self.state in TRANSMITTING:
            self.tx.output(now)

    def host_written(self, n: int, now: float) -> None:
        """The host socket took ``n`` bytes of :meth:`host_chunks`."""
        if n <= 0 or self.done:
            return
        self._now = now
        self._last_activity = now
        self.rx.tohost.consume(n)
        if self.state in RECEIVING:
            cfg = self.cfg
            free_edge = self.rx.rcv_nxt + cfg.rcvbuf - self.rx.tohost.size
            if (self.rx.rcv_adv - self.rx.rcv_nxt < cfg.rcvbuf // 2
                    and free_edge - self.rx.rcv_adv >= min(cfg.rcvbuf // 4, 65536)):  # fmt: skip
                self._send_ack()
                self.stats["window-updates"] += 1
        self._check_host_side()

    def host_error(self, err: int, now: float) -> None:
        """The host socket failed with ``err`` (errno)."""
        if self.done:
            return
        self._now = now
        if self.state is State.CONNECTING:
            self._fail_connect(err)
            return
        self._abort(Event.HOST_ERROR, err)

    def _fail_connect(self, err: int) -> None:
        if not self._connect_failed:
            self._connect_failed = True
            self._connect_at = None
            self.events.append((Event.CONNECT_FAILED, err))

    # -- answers to a failed connect (the adapter's pick) ----------------------------------

    def refuse(self, now: float) -> None:
        """Answer the guest's SYN with RST (as a closed port does) and finish."""
        self._answer_syn(errno_mod.ECONNREFUSED)

    def unreachable(self, code: int, now: float, src: bytes | None = None) -> None:
        """Answer the guest's SYN with ICMP destination unreachable ``code`` (IPv4 type
        3 / ICMPv6 type 1), from ``src`` (default: the address the guest tried)."""
        if self.syn is not None and self.state is State.CONNECTING:
            self.out.append(unreachable_frame(self.syn, code, l2=self.b.l2, vnet=self.cfg.vnet,
                                              src=src))  # fmt: skip
        self._finish()

    def reject(self, err: int, now: float) -> None:
        """Answer the guest's SYN as :func:`rejection` does for ``err`` and finish."""
        self._answer_syn(err)

    def _answer_syn(self, err: int) -> None:
        if self.syn is not None and self.state is State.CONNECTING:
            frame = rejection(self.syn, err, l2=self.b.l2, vnet=self.cfg.vnet)
            if frame is not None:
                self.out.append(frame)
        self._finish()

    # -- guest segments -------------------------------------------------------------------

    def segment_from_guest(self, seg: Segment, now: float) -> None:
        """One TCP segment the guest sent on this connection."""
        if self.done or self.state is State.CLOSED:
            self.stats["after-close"] += 1
            return
        self._now = now
        self._last_activity = now
        self.tx.probes = 0
        st = self.state
        if st is State.CONNECTING:
            self._in_connecting(seg)
        elif st is State.SYN_SENT:
            self._in_syn_sent(seg, now)
        else:
            self._in_synchronized(seg, now)
        if not self.done:
            self._check_host_side()

    def accepts_syn(self, seg: Segment) -> bool:
        """Whether a new guest SYN on this connection's 4-tuple may replace it: the
        connection is finished or in TIME_WAIT and the SYN's sequence number is beyond
        what we received (RFC 9293 §3.10.7.4 / RFC 6191 without timestamps)."""
        if not seg.flags & SYN or seg.flags & ACK:
            return False
        if self.done:
            return True
        return self.state is State.TIME_WAIT and seq_diff(seg.seq, self.rx.rcv_nxt & M32) > 0

    def _in_connecting(self, seg: Segment) -> None:
        flags = seg.flags
        if flags & RST:
            if seg.seq == (self.irs + 1) & M32:
                self.events.append((Event.GUEST_RESET, 0))
                self._finish()
            return
        if flags & SYN and seg.seq == self.irs:
            self.stats["syn-retransmit-held"] += 1
        else:
            self.stats["segment-while-connecting"] += 1

    def _in_syn_sent(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        tx = self.tx
        ack = tx.snd_una + seq_diff(seg.ack, tx.snd_una & M32)
        if flags & ACK and (ack <= self.iss or ack > tx.snd_max):
            if not flags & RST:
                self.out.append(self.b.frame(seg.ack, 0, RST, 0))
            return
        if flags & RST:
            if flags & ACK:
                self.events.append((Event.REFUSED, 0))
                self._finish()
            return
        if not flags & SYN:
            return
        self.irs = seg.seq
        self.rx.rcv_nxt = self.rx.rcv_acked = seg.seq + 1
        opts = parse_syn_options(seg.options)
        self._negotiate(opts.mss, opts.wscale, opts.sack_ok)
        tx.handshake_window(seg.wnd, seg.seq, ack)
        if flags & ACK:
            tx.syn_acked(ack, now - self._syn_time)
            self.state = State.FIN_WAIT_1 if tx.fin_queued else State.ESTABLISHED
            self.events.append((Event.ESTABLISHED, 0))
            self.rx.rcv_adv = self.rx.rcv_nxt
            self._send_ack()
            tx.output(now)
        else:  # simultaneous open
            self.state = State.SYN_RCVD
            self._send_syn(ack=True)

    def _in_synchronized(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        rx = self.rx
        rcv_nxt = rx.rcv_nxt
        seq = rcv_nxt + seq_diff(seg.seq, rcv_nxt & M32)
        payload = seg.payload
        plen = len(payload)
        end = seq + plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        wnd = rx.rcv_adv - rcv_nxt
        if end < rx.rcv_acked or seq > rcv_nxt + max(wnd, 0):
            if not flags & RST:
                self.stats["unacceptable"] += 1
                self._challenge_ack(now)
            return
        if flags & RST:
            if seq == rcv_nxt:
                self._guest_reset()
            else:
                self.stats["rst-challenged"] += 1
                self._challenge_ack(now)
            return
        if flags & SYN:
            if self.state is State.SYN_RCVD and seg.seq == self.irs:
                self._send_syn(ack=True)
            else:
                self.stats["syn-challenged"] += 1
                self._challenge_ack(now)
            return
        if not flags & ACK:
            self.stats["no-ack"] += 1
            return
        if self.state is State.SYN_RCVD and not self._syn_rcvd_ack(seg, seq, now):
            return
        acked = self.tx.on_ack(seg, seq, plen, now)
        if acked == "unsent":
            self._challenge_ack(now)
            return
        if acked == "fin-acked":
            self._our_fin_acked(now)
            if self.done:
                return
        ack_now = False
        if plen or flags & FIN:
            fin = bool(flags & FIN)
            if self.state in RECEIVING:
                took = rx.take(seq, payload, fin)
                if took == FIN_IN:
                    self._guest_fin()
                ack_now = took != 0
            else:
                ack_now = True
                if self.state is State.TIME_WAIT and fin:
                    self._tw_at = self._now + self.cfg.time_wait
                else:
                    self.stats["data-after-fin"] += 1
        if self.state in TRANSMITTING:
            self.tx.output(now)
        if ack_now:
            self._send_ack()
        elif rx.ack_pending:
            if rx.ack_pending >= rx.ack_threshold:
                self._send_ack()
            elif rx.delack_at is None:
                rx.delack_at = now + self.cfg.delack

    def _guest_reset(self) -> None:
        """An acceptable RST. Once the guest's FIN is in, its whole stream is ours and
        acknowledged: it is still delivered to the host (RFC 1337 spirit - e.g. a guest
        in LAST_ACK that closed on our first ACK answers the second with RST). Only in
        CLOSE_WAIT does the RST abort something (our direction): reported, after which the
        connection ends as soon as the host took the guest's data."""
        if not self.rx.fin_rcvd:
            self.events.append((Event.GUEST_RESET, 0))
            self._finish()
            return
        self.stats["rst-after-guest-fin"] += 1
        if self.state is State.CLOSE_WAIT:
            self.events.append((Event.GUEST_RESET, 0))
        self.state = State.CLOSED
        self.tx.fin_queued = True
        self.tx.discard()
        self.rx.delack_at = self._tw_at = None
        self._check_host_side()

    def _syn_rcvd_ack(self, seg: Segment, seq: int, now: float) -> bool:
        """In SYN_RCVD: an ACK of our SYN-ACK establishes the connection; anything else
        is answered with RST and dropped (False)."""
        tx = self.tx
        ack = tx.snd_una + seq_diff(seg.ack, tx.snd_una & M32)
        if not tx.snd_una < ack <= tx.snd_max:
            self.out.append(self.b.frame(seg.ack, 0, RST, 0))
            return False
        self.state = State.FIN_WAIT_1 if tx.fin_queued else State.ESTABLISHED
        self.events.append((Event.ESTABLISHED, 0))
        tx.syn_acked(ack, now - self._syn_time)
        tx.handshake_window(seg.wnd << tx.snd_ws, seq, ack)
        return True

    def _our_fin_acked(self, now: float) -> None:
        st = self.state
        if st is State.FIN_WAIT_1:
            self.state = State.FIN_WAIT_2
        elif st is State.CLOSING:
            self._enter_time_wait(now)
        elif st is State.LAST_ACK:
            self.state = State.CLOSED
            self._check_host_side()

    def _guest_fin(self) -> None:
        """The guest's FIN is in order (the receiver took it)."""
        st = self.state
        if st is State.ESTABLISHED:
            self.state = State.CLOSE_WAIT
        elif st is State.FIN_WAIT_1:
            self.state = State.CLOSING
        elif st is State.FIN_WAIT_2:
            self._enter_time_wait(self._now)

    def _enter_time_wait(self, now: float) -> None:
        self.state = State.TIME_WAIT
        self.tx.stop()
        self._tw_at = now + self.cfg.time_wait

    # -- timers ---------------------------------------------------------------------------

    def timer(self, now: float) -> None:
        """Run whatever timer is due at ``now``."""
        if self.done:
            return
        self._now = now
        if self._connect_at is not None and now >= self._connect_at:
            self._fail_connect(errno_mod.ETIMEDOUT)
        tx = self.tx
        if tx.rtx_at is not None and now >= tx.rtx_at:
            self._on_rto(now)
        if self.done:
            return
        persist = tx.persist_at
        if (
            persist is not None
            and now >= persist
            and not tx.on_persist(now, self.state in TRANSMITTING)
        ):
            self._abort(Event.TIMEOUT, errno_mod.ETIMEDOUT)
        if self.rx.delack_at is not None and now >= self.rx.delack_at:
            self._send_ack()
        if self._tw_at is not None and now >= self._tw_at:
            self._tw_at = None
            self.state = State.CLOSED
            self._check_host_side()
        if not self.done and now >= self._last_activity + self.cfg.idle_timeout:
            if self.state is State.CONNECTING:
                self._fail_connect(errno_mod.ETIMEDOUT)
                self._finish()
            else:
                self._abort(Event.IDLE, 0)

    def _on_rto(self, now: float) -> None:
        st = self.state
        tx = self.tx
        limit = self.cfg.syn_retries if st in (State.SYN_SENT, State.SYN_RCVD) else None
        if tx.retries >= (limit if limit is not None else self.cfg.max_retries):
            if st is State.SYN_SENT:
                self.events.append((Event.TIMEOUT, errno_mod.ETIMEDOUT))
                self._finish()
            else:
                self._abort(Event.TIMEOUT, errno_mod.ETIMEDOUT)
            return
        tx.on_timeout(now, limit is not None, st in TRANSMITTING)
        if limit is not None:
            self._send_syn(ack=st is State.SYN_RCVD)

    # -- endings --------------------------------------------------------------------------

    def _abort(self, why: Event, err: int) -> None:
        """Send RST to the guest, report ``why`` and finish."""
        if self.state not in (State.CONNECTING, State.SYN_SENT, State.CLOSED):
            self.out.append(
                self.b.frame(self.tx.snd_max & M32, self.rx.rcv_nxt & M32, RST | ACK, 0)
            )
        self.events.append((why, err))
        self._finish()

    def _finish(self) -> None:
        self.state = State.CLOSED
        self.done = True
        self.rx.tohost.clear()
        self.tx.discard()
        self.rx.delack_at = self._tw_at = None
        self._connect_at = None

    def _check_host_side(self) -> None:
        if self.rx.fin_rcvd and not self.rx.tohost.size:
            self.host_shut_wr = True
        if self.state is State.CLOSED and not self.rx.tohost.size and not self.done:
            self.events.append((Event.CLOSED, 0))
            self._finish()

    def abort(self, now: float) -> None:
        """The adapter gives up on the connection (e.g. the netdev is deleted): RST."""
        if not self.done:
            self._now = now
            self._abort(Event.HOST_ERROR, errno_mod.ECONNABORTED)
