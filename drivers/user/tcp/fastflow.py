"""The established-flow fast path of guest TCP: the pure-Python twin of ``_tcpfast``.

Owns the per-netdev flow cache (:class:`FlowCache`) and the lent connections in it
(:class:`FastFlow`). A connection in a plain steady state - ESTABLISHED, nothing out of
order, no SACK scoreboard, no FIN either way, no retransmission, persist or recovery in
progress, everything sent, the host write queue empty - is *lent* by the splicer
(:mod:`.lending` copies the machine's state in) and *reclaimed* (state copied back)
before anything else touches the machine. While lent, two things run here instead of in
:class:`~.machine.TcpEndpoint`:

* a guest frame (:meth:`FlowCache.guest_frames`) that is plain IPv4 TCP for a lent flow
  with ACK (and PSH) only, ``seq == rcv_nxt``, an ACK in ``[snd_una, snd_max]`` that is
  not a duplicate ACK, a non-zero window, no options, the payload within our window, a
  checksum that verifies (or is partial under a virtio-net ``NEEDS_CSUM`` header, as
  :meth:`..v4.router.Gateway.offloaded_tcp` accepts; a TCPv4 TSO super-frame is one
  segment there too): the ACK is applied as
  :meth:`.sender.Sender.on_ack` applies it (RTT sample, congestion window, timer), the
  payload is written to the host socket (``send``, non-blocking; what it does not take
  stays for the machine: the flow is handed back), and the ACK debt follows
  :meth:`~.machine.TcpEndpoint._in_synchronized` and :meth:`~.machine.TcpEndpoint.flush`
  (:meth:`FlowCache.flush` at the end of the batch);
* the host socket's read wake-up (:meth:`FastFlow.readable`, the asyncio reader
  callback): reads as :meth:`.splice.TcpSplicer._read` does and sends each read as the
  machine's :meth:`.sender.Sender.output` would - one frame, or one TSO super-frame -
  with the header bytes :class:`.builder.FrameBuilder` produces; the data stays in the
  machine's send buffer (shared) until acknowledged.

Anything else declines: the frame goes the general way (the splicer reclaims the flow
first), and a read that EOFs, fails, or cannot all be sent at once hands the flow back
through ``on_slow``. Frames are appended to the netdev's outbox list, or - after a host
read when the outbox is empty, so order is kept - given to ``send(frames, True)`` (the
netdev's ``NetClient.send``) directly.

Differences from the machine, all invisible on the wire and to both sockets: the guest's
payload reaches the host socket per frame rather than at the end of the batch; a read
wake-up that cannot send everything at once stops reading (the next wake-up reads on).
The ARP entry of the guest is not refreshed by fast-path frames (their source MAC must
be the one the connection was built with). When a connection is reclaimed in the middle
of a batch (a later frame declined, or the host socket took less than a payload), the
bytes already written are no longer counted as held, so the window of that batch's ACK
may be larger than the machine alone would have said (it is the true free space).
QEMU's libslirp has no such path (every segment goes through ``tcp_input``); otherwise the wire
is the same either way, which the differential tests check.

Deadlines: ``reported`` is the deadline the netdev's :class:`~..endpoint.Deadlines` holds
for the flow; whenever the fast path moves the flow's deadline earlier, it records it and
calls ``on_deadline`` (a deadline that moved later is found when the earlier one fires).

Callbacks (``on_slow``, ``on_deadline``, ``send``, ``pump``) may re-enter the netdev: the
batch's length is read anew for each frame (a frame that is not a contiguous buffer is
declined); a flow hands back (``on_slow``) before its deadline is reported, reports one
only while still lent, and declines every segment while a hand-back is pending
(``err`` or ``leftover`` set), so nothing overtakes guest bytes the host socket did not
take; ``leftover`` holds bytes only. A flush that fails half-way keeps the flows it did
not reach for the next one.

Invariants: nothing here reads or writes outside the frame it was given; ``snd_nxt ==
snd_max == snd_una + len(buf)`` at every return while lent; a flow declines rather than
guessing. Times are floats with ``inf`` for "not armed"; ``srtt < 0`` means no sample.
"""

from __future__ import annotations

import errno as errno_mod
import math
import socket
import time
from collections.abc import Callable, Sequence
from typing import Final

from netstack.proto.checksum import ones_sum

M32: Final = 0xFFFFFFFF
INF: Final = math.inf
#: Offsets of a guest-bound frame laid out by :class:`.builder.FrameBuilder` (virtio-net
#: header, Ethernet, IPv4, TCP) and its length.
VNET_LEN: Final = 12
IP_OFF: Final = VNET_LEN + 14
TCP_OFF: Final = IP_OFF + 20
TPL_LEN: Final = TCP_OFF + 20
ETH_ZLEN: Final = 60
NEEDS_CSUM: Final = 1
DATA_VALID: Final = 2
GSO_TCPV4: Final = 1
ACK: Final = 0x10
PSH: Final = 0x08
#: Bytes read per ``recv`` and reads per wake-up (as :mod:`.splice`).
READ_MAX: Final = 256 * 1024
READS_PER_WAKEUP: Final = 4
GRANULARITY: Final = 0.001
_AGAIN: Final = (errno_mod.EAGAIN, errno_mod.EWOULDBLOCK, errno_mod.EINTR)


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _sum16(data: bytes | memoryview) -> int:
    total = 0
    n = len(data)
    for i in range(0, n - 1, 2):
        total += (data[i] << 8) | data[i + 1]
    if n & 1:
        total += data[n - 1] << 8
    return total


def _seq_diff(a: int, b: int) -> int:
    return ((a - b + 0x80000000) & M32) - 0x80000000


class FlowCache:
    """The lent connections of one netdev, keyed by 12 wire bytes: guest address and
    port, our address and port (IPv4, network order)."""

    def __init__(
        self, out: list[bytes], send: Callable[[list[bytes], bool], object],
        pump: Callable[[], object], *, rcvbuf: int,
        sndbuf: int, delack: float, idle_timeout: float,
    ) -> None:  # fmt: skip
        self.out = out
        self.send = send
        self.pump = pump
        self.rcvbuf = rcvbuf
        self.sndbuf = sndbuf
        self.delack = delack
        self.idle_timeout = idle_timeout
        self.flows: dict[bytes, FastFlow] = {}
        self.touched: list[FastFlow] = []
        #: Guest frames taken, host reads taken, ACKs sent, data frames sent here.
        self.frames_in = 0
        self.reads = 0
        self.acks = 0
        self.frames_out = 0

    def counters(self) -> dict[str, int]:
        return {
            "fast-frames-in": self.frames_in,
            "fast-reads": self.reads,
            "fast-acks": self.acks,
            "fast-frames-out": self.frames_out,
        }

    def flow(
        self, key: bytes, sock: socket.socket, tpl: bytes, buf: bytearray,
        on_slow: Callable[[], object], on_deadline: Callable[[], object],
    ) -> FastFlow:  # fmt: skip
        """A new (not yet lent) flow of this cache; :mod:`.lending` lends it."""
        return FastFlow(self, key, sock, tpl, buf, on_slow, on_deadline)

    # -- guest frames ----------------------------------------------------------------------

    def guest_frames(self, frames: Sequence[bytes], start: int, now: float, vnet: bool) -> int:
        """Take ``frames[start:]`` (behind virtio-net headers when ``vnet``) in order
        while they are the fast path's; the index of the first one that is not
        (``len(frames)`` when all were taken). A frame that is not a contiguous buffer
        is declined. ``on_slow`` and ``on_deadline`` may change the list: its length is
        read anew for each frame."""
        i = max(start, 0)
        while i < len(frames):
            try:
                frame = memoryview(frames[i]).cast("B")
            except (TypeError, ValueError, BufferError):
                return i  # not a buffer: the general path says why
            if not self._frame(frame, now, vnet):
                return i
            i += 1
        return len(frames)

    def _frame(self, frame: memoryview, now: float, vnet: bool) -> bool:
        n = len(frame)
        base = VNET_LEN if vnet else 0
        if n < base + 54:
            return False
        verify = True
        gso = False
        if vnet:
            # a TSO super-frame is one segment (Gateway.offloaded_tcp); its checksum is not
            # verified when flagged partial or valid, a plain frame's only when partial
            if frame[1] == GSO_TCPV4:
                gso = True
            elif frame[1] != 0:
                return False
            verify = not frame[0] & (NEEDS_CSUM | DATA_VALID if gso else NEEDS_CSUM)
        eth = base
        if frame[eth + 12] != 0x08 or frame[eth + 13] != 0x00:
            return False
        ip = eth + 14
        if frame[ip] != 0x45 or frame[ip + 9] != 6:
            return False
        total = (frame[ip + 2] << 8) | frame[ip + 3]
        if gso and total == 0:
            total = n - ip
        if total < 40 or ip + total > n:
            return False
        if ((frame[ip + 6] << 8) | frame[ip + 7]) & 0x3FFF:
            return False
        if _fold(_sum16(frame[ip : ip + 20])) != 0xFFFF:
            return False
        tcp = ip + 20
        if frame[tcp + 12] != 0x50:  # no options, no reserved bits
            return False
        key = bytes(frame[ip + 12 : ip + 16]) + bytes(frame[tcp : tcp + 2])
        key += bytes(frame[ip + 16 : ip + 20]) + bytes(frame[tcp + 2 : tcp + 4])
        f = self.flows.get(key)
        if f is None or not f.lent:
            return False
        tpl = f.tpl
        if frame[eth : eth + 6] != tpl[VNET_LEN + 6 : VNET_LEN + 12]:
            return False  # to the gateway's MAC
        if frame[eth + 6 : eth + 12] != tpl[VNET_LEN : VNET_LEN + 6]:
            return False  # from the guest's MAC
        end = ip + total
        if verify:
            pseudo = _sum16(frame[ip + 12 : ip + 20]) + 6 + total - 20
            if _fold(pseudo + ones_sum(frame[tcp:end])) != 0xFFFF:
                return False
        flags = frame[tcp + 13]
        if flags not in (ACK, ACK | PSH):
            return False
        seq = int.from_bytes(frame[tcp + 4 : tcp + 8], "big")
        ack32 = int.from_bytes(frame[tcp + 8 : tcp + 12], "big")
        wnd = (frame[tcp + 14] << 8) | frame[tcp + 15]
        return f._segment(seq, ack32, wnd, frame, tcp + 20, end, now)

    def flush(self, now: float) -> None:
        """End of a batch: the ACK each touched flow owes (``TcpEndpoint.flush``)."""
        touched, self.touched = self.touched, []
        done = 0
        try:
            for f in touched:
                done += 1
                f.touched = False
                pending = f.ack_pending
                if not f.lent:
                    f.held = 0
                    continue
                if pending and (pending >= f.quick_ack or f.delack_at == INF):
                    f.now = now
                    f._send_ack(self.out)
                if f.held:
                    f.held = 0
                    f._window_update(now)
        except BaseException:
            # the flows not reached yet stay touched: the next flush owes their ACKs
            self.touched += touched[done:]
            raise


class FastFlow:
    """One lent connection: the machine's steady-state variables while lent."""

    def __init__(
        self, cache: FlowCache, key: bytes, sock: socket.socket, tpl: bytes, buf: bytearray,
        on_slow: Callable[[], object], on_deadline: Callable[[], object],
    ) -> None:  # fmt: skip
        if len(key) != 12 or len(tpl) != TPL_LEN:
            raise ValueError("a 12-byte key and a 66-byte IPv4 frame template")
        self.cache = cache
        self.key = key
        self.sock = sock
        self.tpl = bytes(tpl)
        self.buf = buf
        self.on_slow = on_slow
        self.on_deadline = on_deadline
        self.lent = False
        self.touched = False
        ip = IP_OFF
        hdr = self.tpl[ip : ip + 20]
        # the header's fixed words (what FrameBuilder precomputes): all but length and sum
        self.ip_base = _sum16(hdr) - ((hdr[2] << 8) | hdr[3]) - ((hdr[10] << 8) | hdr[11])
        self.pseudo = _sum16(hdr[12:20]) + 6
        self.now = 0.0
        self.last_activity = 0.0
        self.rcv_nxt = self.rcv_adv = self.rcv_acked = 0
        self.ack_pending = 0
        self.delack_at = INF
        self.max_guest_flight = 0
        self.rcv_ws = 0
        self.rcv_mss = 0
        self.ack_threshold = 0
        self.quick_ack = 0
        self.snd_una = self.snd_nxt = 0
        self.snd_wnd = self.max_snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.snd_ws = 0
        self.snd_mss = 0
        self.max_burst = 0
        self.cwnd = 0
        self.ssthresh = 0
        self.rtx_at = INF
        self.rtt_seq = -1
        self.rtt_time = 0.0
        self.rto = 1.0
        self.srtt = -1.0
        self.rttvar = 0.0
        self.rto_min = 0.2
        self.rto_max = 60.0
        self.reported = INF
        #: Handed back: the errno of a failed host read/write, guest bytes the host
        #: socket did not take, host bytes read but not sent.
        self.err = 0
        self._leftover = b""
        self.unsent = False
        #: Guest bytes of the current batch: the machine writes them to the host at the
        #: end of the batch, so its window counts them as held until then.
        self.held = 0
        #: Window updates sent (the machine's ``window-updates``, added back on reclaim).
        self.window_updates = 0

    @property
    def leftover(self) -> bytes:
        """Guest bytes the host socket did not take (handed back); bytes only."""
        return self._leftover

    @leftover.setter
    def leftover(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("leftover must be bytes")
        self._leftover = value

    @leftover.deleter
    def leftover(self) -> None:
        raise AttributeError("cannot delete leftover")

    # -- deadline --------------------------------------------------------------------------

    def deadline(self) -> float:
        """The flow's next deadline (``TcpEndpoint.next_deadline`` for what can be armed
        while lent)."""
        best = self.last_activity + self.cache.idle_timeout
        if self.rtx_at < best:
            best = self.rtx_at
        if self.delack_at < best:
            best = self.delack_at
        return best

    def next_deadline(self) -> float:
        """:meth:`deadline`, recorded as the one the netdev holds."""
        self.reported = when = self.deadline()
        return when

    def _check_deadline(self) -> None:
        when = self.deadline()
        if when < self.reported:
            self.reported = when
            self.on_deadline()

    # -- receive side ----------------------------------------------------------------------

    def _window(self, ack_sent: bool) -> int:
        """``Receiver.window`` with nothing held for the host and no FIN."""
        if ack_sent:
            self.rcv_acked = self.rcv_nxt
            self.ack_pending = 0
            self.delack_at = INF
        ws = self.rcv_ws
        rcvbuf = self.cache.rcvbuf
        free = rcvbuf - self.held
        if free < self.rcv_mss and free < rcvbuf // 2:
            free = 0
        raw = min(free >> ws, 0xFFFF)
        edge = self.rcv_nxt + (raw << ws)
        if edge >= self.rcv_adv:
            self.rcv_adv = edge
            return raw
        return min(max(self.rcv_adv - self.rcv_nxt, 0) >> ws, 0xFFFF)

    def _segment(
        self,
        seq32: int,
        ack32: int,
        wnd: int,
        frame: memoryview,
        at: int,
        end: int,
        now: float,
    ) -> bool:
        if self.err or self._leftover:
            return False  # a hand-back not done yet: the machine takes this after it
        rcv_nxt = self.rcv_nxt
        if seq32 != rcv_nxt & M32:
            return False
        snd_una = self.snd_una
        ack = snd_una + _seq_diff(ack32, snd_una & M32)
        snd_max = self.snd_nxt
        if ack < snd_una or ack > snd_max:
            return False
        new_wnd = wnd << self.snd_ws
        if not new_wnd:
            return False
        plen = end - at
        if ack == snd_una and not plen and snd_max > snd_una and new_wnd == self.snd_wnd:
            return False  # a duplicate ACK: loss recovery is the machine's
        if plen > self.rcv_adv - rcv_nxt:
            return False
        cache = self.cache
        cache.frames_in += 1
        self.now = now
        self.last_activity = now
        if ack > snd_una:
            self._acked(ack, now)
        if rcv_nxt > self.snd_wl1 or (rcv_nxt == self.snd_wl1 and ack >= self.snd_wl2):
            self.snd_wnd = new_wnd
            self.snd_wl1, self.snd_wl2 = rcv_nxt, ack
            if new_wnd > self.max_snd_wnd:
                self.max_snd_wnd = new_wnd
        if plen:
            flight = rcv_nxt + plen - self.rcv_acked
            if flight > self.max_guest_flight:
                self.max_guest_flight = flight
            self.rcv_nxt = rcv_nxt + plen
            self.ack_pending += plen
            self.held += plen
            self._to_host(frame[at:end])
        if self.ack_pending:
            if self.ack_pending >= self.ack_threshold:
                self._send_ack(cache.out)
            elif self.delack_at == INF:
                self.delack_at = now + cache.delack
        if not self.touched:
            self.touched = True
            cache.touched.append(self)
        if self.err or self._leftover:
            self.on_slow()
        if self.lent:
            self._check_deadline()
        return True

    def _acked(self, ack: int, now: float) -> None:
        """``Sender._acked`` outside recovery, without retries, FIN or SACK."""
        acked = ack - self.snd_una
        del self.buf[:acked]  # (a buffer exported elsewhere) before snd_una moves
        self.snd_una = ack
        if self.rtt_seq >= 0 and ack > self.rtt_seq:
            self._sample(now - self.rtt_time)
            self.rtt_seq = -1
        mss = self.snd_mss
        if self.cwnd < self.ssthresh:
            self.cwnd += acked
        else:
            self.cwnd += max(1, mss * acked // self.cwnd if self.cwnd > 0 else 1)
        cap = 2 * self.cache.sndbuf
        if self.cwnd > cap:
            self.cwnd = cap
        self.rtx_at = INF if ack >= self.snd_nxt else now + self.rto

    def _sample(self, rtt: float) -> None:
        """``RtoEstimator.sample``."""
        if rtt < 0:
            return
        if self.srtt < 0:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        rto = self.srtt + max(GRANULARITY, 4 * self.rttvar)
        self.rto = min(max(rto, self.rto_min), self.rto_max)

    def _to_host(self, data: memoryview) -> None:
        try:
            n = self.sock.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError as exc:
            if exc.errno not in _AGAIN:
                self.err = exc.errno or errno_mod.EIO
            n = 0
        if n < len(data):
            self._leftover = bytes(data[n:])

    # -- frames ----------------------------------------------------------------------------

    def _frame(self, seq: int, flags: int, wnd: int, data: bytes | memoryview) -> bytes:
        """``FrameBuilder.frame`` / ``burst`` for a data or ACK segment, no options."""
        tpl = bytearray(self.tpl)
        plen = len(data)
        tcp_len = 20 + plen
        total = 20 + tcp_len
        gso = plen > self.snd_mss
        tpl[0] = NEEDS_CSUM
        tpl[1] = GSO_TCPV4 if gso else 0
        tpl[2:4] = (TCP_OFF - VNET_LEN + 20 - 0).to_bytes(2, "little")
        tpl[4:6] = (self.snd_mss if gso else 0).to_bytes(2, "little")
        tpl[6:8] = (TCP_OFF - VNET_LEN).to_bytes(2, "little")
        tpl[8:10] = (16).to_bytes(2, "little")
        tpl[10:12] = b"\0\0"
        tpl[IP_OFF + 2 : IP_OFF + 4] = total.to_bytes(2, "big")
        tpl[IP_OFF + 10 : IP_OFF + 12] = (~_fold(self.ip_base + total) & 0xFFFF).to_bytes(2, "big")
        t = TCP_OFF
        tpl[t + 4 : t + 8] = (seq & M32).to_bytes(4, "big")
        tpl[t + 8 : t + 12] = (self.rcv_nxt & M32).to_bytes(4, "big")
        tpl[t + 12] = 0x50
        tpl[t + 13] = flags
        tpl[t + 14 : t + 16] = wnd.to_bytes(2, "big")
        tpl[t + 16 : t + 18] = _fold(self.pseudo + tcp_len).to_bytes(2, "big")
        tpl[t + 18 : t + 20] = b"\0\0"
        tpl += data
        if len(tpl) - VNET_LEN < ETH_ZLEN:
            tpl += bytes(ETH_ZLEN + VNET_LEN - len(tpl))
        return bytes(tpl)

    def _window_update(self, now: float) -> None:
        """``TcpEndpoint.host_written`` after the batch's bytes went to the host: an ACK
        when our window has shrunk to under half and twice ``min(rcvbuf / 4, 64 KiB)``
        more would open (a guest without window scaling)."""
        rcvbuf = self.cache.rcvbuf
        free_edge = self.rcv_nxt + rcvbuf
        if self.rcv_adv - self.rcv_nxt < rcvbuf // 2 and free_edge - self.rcv_adv >= min(
            rcvbuf // 4, 65536
        ):
            self.now = now
            self._send_ack(self.cache.out)
            self.window_updates += 1

    def _send_ack(self, out: list[bytes]) -> None:
        """``TcpEndpoint._send_ack`` (no SACK blocks: nothing is held out of order)."""
        wnd = self._window(True)
        out.append(self._frame(self.snd_nxt, ACK, wnd, b""))
        self.cache.acks += 1

    # -- host reads ------------------------------------------------------------------------

    def readable(self, now: float | None = None) -> None:
        """The host socket is readable (the asyncio reader callback)."""
        if not self.lent:
            self.on_slow()
            return
        if now is None:
            now = time.monotonic()
        cache = self.cache
        out = cache.out
        direct = not out
        frames: list[bytes] = [] if direct else out
        before = len(frames)
        slow = False
        for _ in range(READS_PER_WAKEUP):
            room = min(cache.sndbuf - len(self.buf), READ_MAX)
            if room <= 0:
                slow = True
                break
            try:
                data = self.sock.recv(room, socket.MSG_DONTWAIT)
            except OSError as exc:
                if exc.errno not in _AGAIN:
                    self.err = exc.errno or errno_mod.EIO
                    slow = True
                break
            if not data:
                slow = True  # EOF: the machine queues our FIN
                break
            cache.reads += 1
            self.now = now
            self.last_activity = now
            self.buf += data
            if not self._output(data, now, frames):
                self.unsent = True
                slow = True
                break
            if len(data) < room:
                break
        if len(frames) > before:
            if direct:
                cache.send(frames, True)
            else:
                cache.pump()
        if slow:
            self.on_slow()
        elif self.lent:  # send or pump may have reclaimed it
            self._check_deadline()

    def _output(self, data: bytes, now: float, frames: list[bytes]) -> bool:
        """``Sender.output`` for new data when all of it can go at once; False (nothing
        sent) otherwise."""
        n = len(data)
        start = self.snd_nxt
        in_flight = start - self.snd_una
        if (
            n > self.snd_una + self.snd_wnd - start
            or n > self.cwnd - in_flight
            or n > self.max_burst
        ):
            return False
        if self.rtt_seq < 0:
            self.rtt_seq, self.rtt_time = start, now
        wnd = self._window(True)
        frames.append(self._frame(start, ACK | PSH, wnd, data))
        self.cache.frames_out += 1
        self.snd_nxt = start + n
        if self.rtx_at == INF:
            self.rtx_at = now + self.rto
        return True
