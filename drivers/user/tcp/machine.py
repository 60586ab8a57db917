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

Protocol choices (see the package docstring for the reasoning):

* sequence numbers are kept unwrapped (unbounded ints); the wire's 32-bit values are
  mapped to the nearest unwrapped value, so ordering survives wrap-around;
* window scaling (RFC 7323) both ways; SACK (RFC 2018) both ways with RFC 6675-style
  loss recovery; no timestamps (RTT by Karn's rule; no PAWS), no ECN, urgent data inline;
* RTO per RFC 6298 (:mod:`.rto`) with backoff and bounded retries, then RST; NewReno fast
  retransmit (RFC 6582) when SACK is off; zero-window probes (``snd_una - 1``) with
  backoff; RST and SYN checks of RFC 5961 (exact RST, challenge ACKs);
* our window is the free part of ``rcvbuf`` (bytes not yet written to the host); its right
  edge never retracts by a scale unit (RFC 7323 §2.4) and is SWS-avoided (RFC 1122
  §4.2.3.3); host reads pause while ``sndbuf`` holds unacknowledged plus unsent bytes;
* pure ACKs carry ``snd_max`` (BSD), so a go-back-N retransmission never makes the guest
  drop our ACKs as old; the retransmission timer sends the head segment even into a
  closed window (it doubles as a probe; a live guest's zero-window ACKs reset the retry
  count, as Linux does);
* ACKs for in-order data are batched: sent at ``flush`` (the adapter calls it after each
  batch of guest frames), when a threshold is reached, or after ``delack``; out-of-order,
  duplicate and FIN segments are acknowledged at once.

Never raises on guest input: malformed or unexpected segments are counted in ``stats``.
"""

from __future__ import annotations

import errno as errno_mod

from netstack.proto.tcp import ACK, FIN, RST, SYN, Segment, parse_syn_options, seq_diff, syn_options

from .builder import rejection, unreachable_frame
from .config import RECEIVING, SENDING, Event, State, TcpConfig
from .queues import Chunk
from .transmit import M32, Transmitter


class TcpEndpoint(Transmitter):
    """The far end of one guest TCP connection."""

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
        ep.rcv_nxt = ep.rcv_adv = ep.rcv_acked = syn.seq + 1
        ep.snd_wl1 = syn.seq
        opts = parse_syn_options(syn.options)
        ep._negotiate(opts.mss, opts.wscale, opts.sack_ok)
        ep.snd_wnd = syn.wnd
        ep.max_snd_wnd = syn.wnd
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
        ep.snd_nxt = ep.snd_max = ep.iss + 1
        ep._send_syn(ack=False)
        ep._rtx_at = now + ep.rto.rto
        return ep

    def _negotiate(self, mss: int | None, wscale: int | None, sack_ok: bool) -> None:
        if mss is not None:
            self.snd_mss = max(64, min(mss, self.rcv_mss))
        else:
            self.snd_mss = min(self.snd_mss, self.rcv_mss)
        self._ws_ok = wscale is not None
        if wscale is not None:
            self.snd_ws = wscale
            self.rcv_ws = self.cfg.wscale()
        else:
            self.snd_ws = self.rcv_ws = 0
        self.sack_ok = sack_ok and self.cfg.sack
        self.cwnd = self.cfg.initial_window * self.snd_mss

    def _send_syn(self, ack: bool) -> None:
        cfg = self.cfg
        if ack:  # SYN-ACK: answer only what the guest offered
            opts = syn_options(self.rcv_mss, self.rcv_ws if self._ws_ok else None, self.sack_ok)
            flags, ackno = SYN | ACK, self.rcv_nxt & M32
        else:
            opts = syn_options(self.rcv_mss, cfg.wscale(), cfg.sack)
            flags, ackno = SYN, 0
        wnd = min(cfg.rcvbuf, 0xFFFF)
        if ack:
            self.rcv_adv = self.rcv_nxt + wnd
            self.rcv_acked = self.rcv_nxt
        self._syn_time = self._now
        self.out.append(self.b.frame(self.iss, ackno, flags, wnd, b"", opts))

    # -- adapter-facing properties ---------------------------------------------------------

    @property
    def key(self) -> tuple[bytes, int, bytes, int]:
        """(guest address, guest port, our address, our port)."""
        b = self.b
        return b.dst, b.dport, b.src, b.sport

    @property
    def host_read_room(self) -> int:
        """How many bytes :meth:`host_data` would take now (0: pause host reads)."""
        if self.state not in SENDING or self.fin_queued or self.done:
            return 0
        return max(0, self.cfg.sndbuf - len(self.fromhost.buf))

    @property
    def host_pending(self) -> int:
        """Bytes waiting to be written to the host socket."""
        return self.tohost.size

    def host_chunks(self, max_chunks: int = 64) -> list[Chunk]:
        """Buffers to write to the host socket (e.g. one ``sendmsg``), then report with
        :meth:`host_written`; valid until the next call into the machine."""
        return self.tohost.head(max_chunks)

    @property
    def send_queue(self) -> int:
        """Host bytes held for the guest (unacknowledged plus unsent)."""
        return len(self.fromhost.buf)

    @property
    def next_deadline(self) -> float | None:
        """When :meth:`timer` is next due (None: nothing pending)."""
        if self.done:
            return None
        best = self._last_activity + self.cfg.idle_timeout
        for t in (self._rtx_at, self._persist_at, self._delack_at, self._tw_at,
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
        self.snd_nxt = self.snd_max = self.iss + 1
        self._send_syn(ack=True)
        self._rtx_at = now + self.rto.rto

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
        self.fromhost.buf += data
        self._output(now)

    def host_eof(self, now: float) -> None:
        """The host closed its sending side: send our FIN after the queued data."""
        if self.done or self.fin_queued:
            return
        self._now = now
        self._last_activity = now
        self.fin_queued = True
        if self.state is State.ESTABLISHED:
            self.state = State.FIN_WAIT_1
        elif self.state is State.CLOSE_WAIT:
            self.state = State.LAST_ACK
        self._output(now)

    def host_written(self, n: int, now: float) -> None:
        """The host socket took ``n`` bytes of :meth:`host_chunks`."""
        if n <= 0 or self.done:
            return
        self._now = now
        self._last_activity = now
        self.tohost.consume(n)
        if self.state in RECEIVING:
            cfg = self.cfg
            free_edge = self.rcv_nxt + cfg.rcvbuf - self.tohost.size
            if (self.rcv_adv - self.rcv_nxt < cfg.rcvbuf // 2
                    and free_edge - self.rcv_adv >= min(cfg.rcvbuf // 4, 65536)):  # fmt: skip
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
        self.probes = 0
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
        return self.state is State.TIME_WAIT and seq_diff(seg.seq, self.rcv_nxt & M32) > 0

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
        ack = self.snd_una + seq_diff(seg.ack, self.snd_una & M32)
        if flags & ACK and (ack <= self.iss or ack > self.snd_max):
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
        self.rcv_nxt = self.rcv_acked = seg.seq + 1
        opts = parse_syn_options(seg.options)
        self._negotiate(opts.mss, opts.wscale, opts.sack_ok)
        self.snd_wl1 = seg.seq
        self.snd_wl2 = ack
        self.snd_wnd = self.max_snd_wnd = seg.wnd
        if flags & ACK:
            self.snd_una = ack
            self._rtt_sample_syn(now)
            self._rtx_at = None
            self.retries = 0
            self.state = State.FIN_WAIT_1 if self.fin_queued else State.ESTABLISHED
            self.events.append((Event.ESTABLISHED, 0))
            self.rcv_adv = self.rcv_nxt
            self._send_ack()
            self._output(now)
        else:  # simultaneous open
            self.state = State.SYN_RCVD
            self._send_syn(ack=True)

    def _rtt_sample_syn(self, now: float) -> None:
        if self.retries == 0:  # Karn: no sample from a retransmitted SYN
            self.rto.sample(now - self._syn_time)

    def _in_synchronized(self, seg: Segment, now: float) -> None:
        flags = seg.flags
        rcv_nxt = self.rcv_nxt
        seq = rcv_nxt + seq_diff(seg.seq, rcv_nxt & M32)
        payload = seg.payload
        plen = len(payload)
        end = seq + plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        wnd = self.rcv_adv - rcv_nxt
        if end < self.rcv_acked or seq > rcv_nxt + max(wnd, 0):
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
        if not self._process_ack(seg, seq, plen, now):
            return
        if self.done:
            return
        ack_now = False
        if plen or flags & FIN:
            ack_now = self._receive(seq, payload, bool(flags & FIN))
        self._output(now)
        if ack_now:
            self._send_ack()
        elif self._ack_pending:
            if self._ack_pending >= self._ack_threshold:
                self._send_ack()
            elif self._delack_at is None:
                self._delack_at = now + self.cfg.delack

    def _guest_reset(self) -> None:
        """An acceptable RST. Once the guest's FIN is in, its whole stream is ours and
        acknowledged: it is still delivered to the host (RFC 1337 spirit - e.g. a guest
        in LAST_ACK that closed on our first ACK answers the second with RST). Only in
        CLOSE_WAIT does the RST abort something (our direction): reported, after which the
        connection ends as soon as the host took the guest's data."""
        if not self.fin_rcvd:
            self.events.append((Event.GUEST_RESET, 0))
            self._finish()
            return
        self.stats["rst-after-guest-fin"] += 1
        if self.state is State.CLOSE_WAIT:
            self.events.append((Event.GUEST_RESET, 0))
        self.state = State.CLOSED
        self.fin_queued = True
        self.fromhost.buf.clear()
        self._rtx_at = self._persist_at = self._delack_at = self._tw_at = None
        self._check_host_side()

    def _process_ack(self, seg: Segment, seq: int, plen: int, now: float) -> bool:
        """The ACK field and window of ``seg``; False when the segment is to be dropped."""
        snd_una = self.snd_una
        ack = snd_una + seq_diff(seg.ack, snd_una & M32)
        if self.state is State.SYN_RCVD:
            if not snd_una < ack <= self.snd_max:
                self.out.append(self.b.frame(seg.ack, 0, RST, 0))
                return False
            self.state = State.FIN_WAIT_1 if self.fin_queued else State.ESTABLISHED
            self.events.append((Event.ESTABLISHED, 0))
            self.snd_una = snd_una = ack
            self._rtt_sample_syn(now)
            self._rtx_at = None
            self.retries = 0
            self.snd_wnd = self.max_snd_wnd = seg.wnd << self.snd_ws
            self.snd_wl1, self.snd_wl2 = seq, ack
        if ack > self.snd_max:
            self.stats["ack-unsent"] += 1
            self._challenge_ack(now)
            return False
        new_wnd = seg.wnd << self.snd_ws
        if not new_wnd and ack == snd_una:
            self.retries = 0  # a live guest with a closed window: probing, not failing
        if ack > snd_una:
            self._acked(ack, now)
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
                self._persist_at = None
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

    def _receive(self, seq: int, payload: memoryview | bytes, fin: bool) -> bool:
        """In-window data and FIN; returns True when an ACK must go out at once."""
        if self.state not in RECEIVING:
            if self.state is State.TIME_WAIT and fin:
                self._tw_at = self._now + self.cfg.time_wait
            else:
                self.stats["data-after-fin"] += 1
            return True
        rcv_nxt = self.rcv_nxt
        data = payload if isinstance(payload, memoryview) else memoryview(payload)
        if seq < rcv_nxt:
            cut = rcv_nxt - seq
            if cut > len(data):
                return True
            data = data[cut:]
            seq = rcv_nxt
            if not data and not fin:
                self.stats["duplicate"] += 1
                return True
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
            return True
        ack_now = False
        if data:
            tohost.append(data)
            rcv_nxt += len(data)
            self._ack_pending += len(data)
        if tohost.ooo:
            rcv_nxt = tohost.pull(rcv_nxt)
            ack_now = True
        self.rcv_nxt = rcv_nxt
        if fin or tohost.ooo_fin == rcv_nxt:
            self._guest_fin()
            ack_now = True
        return ack_now

    def _guest_fin(self) -> None:
        self.rcv_nxt += 1
        self.fin_rcvd = True
        self.tohost.ooo.clear()
        self.tohost.ooo_bytes = 0
        st = self.state
        if st is State.ESTABLISHED:
            self.state = State.CLOSE_WAIT
        elif st is State.FIN_WAIT_1:
            self.state = State.CLOSING
        elif st is State.FIN_WAIT_2:
            self._enter_time_wait(self._now)

    def _enter_time_wait(self, now: float) -> None:
        self.state = State.TIME_WAIT
        self._rtx_at = self._persist_at = None
        self._tw_at = now + self.cfg.time_wait

    # -- sending --------------------------------------------------------------------------

    # -- timers ---------------------------------------------------------------------------

    def timer(self, now: float) -> None:
        """Run whatever timer is due at ``now``."""
        if self.done:
            return
        self._now = now
        if self._connect_at is not None and now >= self._connect_at:
            self._fail_connect(errno_mod.ETIMEDOUT)
        if self._rtx_at is not None and now >= self._rtx_at:
            self._on_rto(now)
        if self.done:
            return
        if self._persist_at is not None and now >= self._persist_at:
            self._on_persist(now)
        if self._delack_at is not None and now >= self._delack_at:
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
        limit = self.cfg.syn_retries if st in (State.SYN_SENT, State.SYN_RCVD) else None
        if self.retries >= (limit if limit is not None else self.cfg.max_retries):
            if st is State.SYN_SENT:
                self.events.append((Event.TIMEOUT, errno_mod.ETIMEDOUT))
                self._finish()
            else:
                self._abort(Event.TIMEOUT, errno_mod.ETIMEDOUT)
            return
        self.retries += 1
        self.rto.backoff()
        self._rtt_seq = None
        self.stats["timeouts"] += 1
        self._rtx_at = now + self.rto.rto
        if st is State.SYN_SENT:
            self._send_syn(ack=False)
            return
        if st is State.SYN_RCVD:
            self._send_syn(ack=True)
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
        self._rtx_at = None
        self._output(now)
        if self._rtx_at is None and self.snd_max > self.snd_una:
            # the window is closed (perhaps by an ACK that overtook a newer one): the head
            # segment goes anyway, as a probe - the guest ACKs with its current window
            self._retransmit(self.snd_una, mss, now)
            self.snd_nxt = max(self.snd_nxt, self.snd_una + min(mss, self.snd_max - self.snd_una))
            self._rtx_at = now + self.rto.rto

    # -- endings --------------------------------------------------------------------------

    def _abort(self, why: Event, err: int) -> None:
        """Send RST to the guest, report ``why`` and finish."""
        if self.state not in (State.CONNECTING, State.SYN_SENT, State.CLOSED):
            self.out.append(self.b.frame(self.snd_max & M32, self.rcv_nxt & M32, RST | ACK, 0))
        self.events.append((why, err))
        self._finish()

    def _finish(self) -> None:
        self.state = State.CLOSED
        self.done = True
        self.tohost.clear()
        self.fromhost.buf.clear()
        self._rtx_at = self._persist_at = self._delack_at = self._tw_at = None
        self._connect_at = None

    def _check_host_side(self) -> None:
        if self.fin_rcvd and not self.tohost.size:
            self.host_shut_wr = True
        if self.state is State.CLOSED and not self.tohost.size and not self.done:
            self.events.append((Event.CLOSED, 0))
            self._finish()

    def abort(self, now: float) -> None:
        """The adapter gives up on the connection (e.g. the netdev is deleted): RST."""
        if not self.done:
            self._now = now
            self._abort(Event.HOST_ERROR, errno_mod.ECONNABORTED)
