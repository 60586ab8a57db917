"""Splicing guest TCP connections to host sockets: the flow table and its asyncio adapter.

Owns the bookkeeping between :class:`~.machine.TcpEndpoint` machines and host stream
sockets on one asyncio loop: the flow table keyed by (guest address, guest port, far
address, far port); new guest SYNs (a ``resolve`` callback names the host address to
connect to, or an errno to reject with - the NAT policy belongs to the caller); RSTs for
segments no flow owns (RFC 9293 §3.10.7.1); non-blocking connects; reads gated by the
machine's ``host_read_room`` (reader removed while it is 0: host->guest backpressure),
writes from ``host_chunks`` with ``sendmsg`` (writer added only while the socket is
full: guest->host backpressure is the machine's shrinking window); ``shutdown(SHUT_WR)``
when the guest half-closes; each connection one entry of the netdev's
:class:`~..endpoint.Deadlines` (pushed after every call into its machine); and closing
(with ``SO_LINGER`` 0, i.e. a RST to the host peer, when the guest reset or the
connection was aborted). hostfwd connections come in through :meth:`TcpSplicer.forward`
with a socket the caller accepted; a resolver may also answer a SYN with a socket that is
already connected (guestfwd: one end of a socketpair), which is adopted without a connect.

Frames for the guest from every machine go into one list - the netdev's
:class:`~..endpoint.Outbox` (its virtio-net frame list) when one is given, then the
netdev's ``pump`` drains it after each host wake-up; else a list of the splicer's own that
leaves through ``send`` - once per wake-up (a guest batch, a host read, a timer), so a
batch of guest frames costs at most one ACK per connection (the machines' ``flush``).
Without the netdev's deadlines the splicer keeps its own (:class:`~..endpoint.NetdevTimer`).
Errors from host sockets become machine input; nothing a guest or host peer does raises
out of a callback.

With the netdev's flow cache (``fast``, :mod:`.fastflow`), every connection has a
fast-path flow: at the end of :meth:`TcpSplicer._sync` a connection in the steady state
:func:`.lending.lendable` names is lent to it, its host socket's reader is the flow's
``readable``, and :attr:`Splice.m` reclaims it before any use of the machine (guest
segments the fast path declined, timers, writes, closing, migration, monitor views).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from netstack.limits import check_flow_fd
from netstack.proto.tcp import SYN, Segment, parse_frame

from ..endpoint import Deadlines, NetdevTimer, Outbox
from .builder import rejection, reset_for
from .config import Event, State, TcpConfig
from .lending import flow_key, lend, lendable, reclaim, template
from .machine import TcpEndpoint

#: ``resolve(seg)`` -> (family, sockaddr) to connect to, an errno to reject the SYN, or a
#: socket already connected to the far end (adopted: the SYN is answered at once).
Resolver = Callable[[Segment], "tuple[int, tuple[Any, ...]] | int | socket.socket"]
READ_MAX = 256 * 1024
READS_PER_WAKEUP = 4
IOV_MAX = 512
_LINGER_RST = struct.pack("ii", 1, 0)
_RESET_EVENTS = frozenset({Event.GUEST_RESET, Event.TIMEOUT, Event.IDLE, Event.REFUSED})


class Splice:
    """One guest connection: its machine and its host socket; an entry of the deadlines.

    ``fast`` is the connection's fast-path flow (:mod:`.fastflow`) when the netdev has a
    flow cache; while it is lent, reading :attr:`m` reclaims it first, so nobody sees
    the machine's stale copies."""

    __slots__ = ("_m", "fast", "owner", "reading", "shut", "sock", "writing")

    def __init__(self, m: TcpEndpoint, sock: socket.socket, owner: TcpSplicer) -> None:
        self._m = m
        self.sock = sock
        self.owner = owner
        self.reading = False
        self.writing = False
        self.shut = False
        self.fast: Any = None
        owner.attach_fast(self)

    @property
    def m(self) -> TcpEndpoint:
        """The machine (reclaimed from the fast path first if it is lent)."""
        f = self.fast
        if f is not None and f.lent:
            self.owner.reclaim(self)
        return self._m

    def next_deadline(self) -> float | None:
        f = self.fast
        if f is not None and f.lent:
            return float(f.next_deadline())
        m = self._m
        return None if m.done else m.next_deadline

    def on_deadline(self, now: float) -> None:
        self.owner.on_deadline(self, now)


class TcpSplicer:
    """Every guest TCP connection of one guest-facing port, spliced to host sockets."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, config: TcpConfig, *,
        send: Callable[[list[bytes]], None], resolve: Resolver,
        l2_for: Callable[[Segment], bytes] | None = None,
        on_event: Callable[[TcpEndpoint, Event, int], None] | None = None,
        max_flows: int = 4096, log: logging.Logger | None = None,
        outbox: Outbox | None = None, deadlines: Deadlines | None = None,
        pump: Callable[[], None] | None = None, fast: Any = None,
    ) -> None:  # fmt: skip
        self.loop = loop
        #: The netdev's flow cache (:class:`.fastflow.FlowCache` or its compiled twin):
        #: connections in a steady state are lent to it (:mod:`.lending`).
        self.fast = fast
        self.fast_stats: Counter[str] = Counter()
        self.cfg = config
        self._send = send
        self._resolve = resolve
        self._l2_for = l2_for if l2_for is not None else (lambda seg: b"")
        self._on_event = on_event
        self.max_flows = max_flows
        self.log = log if log is not None else logging.getLogger(__name__)
        self.flows: dict[tuple[bytes, int, bytes, int], Splice] = {}
        #: Guest-bound frames: the netdev's outbox list, drained by ``pump``; else ours.
        self.out: list[bytes] = outbox.vnet_frames if outbox is not None else []
        self._pump = pump if outbox is not None else None
        self._timer: NetdevTimer | None = None
        if deadlines is None:
            self._timer = NetdevTimer(loop, self._on_own_timer)
            deadlines = self._timer.deadlines
        self._deadlines = deadlines
        self.stats: Counter[str] = Counter()
        self._touched: set[Splice] = set()
        self._buf = bytearray(READ_MAX)
        self._view = memoryview(self._buf)
        self.closed = False

    # -- guest side ----------------------------------------------------------------------

    def guest_frames(self, frames: Sequence[bytes], vnet: bool = False) -> None:
        """A batch of guest frames (Ethernet, with virtio-net headers when ``vnet``)."""
        now = self.loop.time()
        for frame in frames:
            seg = parse_frame(frame, vnet)
            if isinstance(seg, str):
                self.stats[seg] += 1
                continue
            self.guest_segment(seg, now)
        self.flush()

    def guest_segment(self, seg: Segment, now: float) -> None:
        """One parsed guest segment; call :meth:`flush` after a batch of them."""
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        sp = self.flows.get(key)
        if sp is not None and sp.m.accepts_syn(seg):
            self._close(sp)
            sp = None
        if sp is None:
            if seg.flags & SYN and not seg.flags & 0x14:  # SYN without ACK/RST
                self._new_flow(key, seg, now)
            else:
                frame = reset_for(seg, l2=self._l2_for(seg), vnet=self.cfg.vnet)
                self.stats["no-flow"] += 1
                if frame is not None:
                    self.out.append(frame)
            return
        try:
            sp.m.segment_from_guest(seg, now)
        except Exception:  # a bug must not take the loop down: drop the flow
            self.stats["internal-error"] += 1
            self.log.exception("tcp machine failed on a guest segment")
            self._abort(sp, now)
            return
        self._touched.add(sp)

    def flush(self) -> None:
        """Send held-back ACKs and every frame produced since the last flush."""
        if self._touched:
            now = self.loop.time()
            touched, self._touched = self._touched, set()
            for sp in touched:
                sp.m.flush(now)
                self._sync(sp)
        if self._pump is not None:
            self._pump()
        elif self.out:
            out = self.out[:]  # machines append to this very list
            self.out.clear()
            self._send(out)

    def flush_acks(self) -> None:
        """Send held-back ACKs of the connections a guest batch touched (their frames
        stay in the outbox for the netdev's pump)."""
        if self._touched:
            now = self.loop.time()
            touched, self._touched = self._touched, set()
            for sp in touched:
                sp.m.flush(now)
                self._sync(sp)

    def _new_flow(self, key: tuple[bytes, int, bytes, int], seg: Segment, now: float) -> None:
        l2 = self._l2_for(seg)
        target: tuple[int, tuple[Any, ...]] | int | socket.socket
        if len(self.flows) >= self.max_flows:
            self.stats["flow-limit"] += 1
            target = errno.ECONNREFUSED
        else:
            try:
                target = self._resolve(seg)
            except Exception:
                self.stats["internal-error"] += 1
                self.log.exception("tcp resolve callback failed")
                target = errno.ECONNREFUSED
        if isinstance(target, int):
            self.stats["rejected"] += 1
            frame = rejection(seg, target, l2=l2, vnet=self.cfg.vnet)
            if frame is not None:
                self.out.append(frame)
            return
        m = TcpEndpoint.accept(seg, now, config=self.cfg, l2=l2, out=self.out)
        if isinstance(target, socket.socket):
            self._adopt(key, m, target, now)
            return
        family, addr = target
        try:
            sock = check_flow_fd(socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.stats["fd-reserve"] += 1
            m.host_error(exc.errno or errno.EMFILE, now)
            self._reject(m, now)
            return
        sp = Splice(m, sock, self)
        self.flows[key] = sp
        self.stats["connects"] += 1
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
        except OSError as exc:
            err = exc.errno or errno.EINVAL
        if err in (0, errno.EINPROGRESS):
            sp.writing = True
            self.loop.add_writer(sock.fileno(), self._connected, sp)
        else:
            m.host_error(err, now)
        self._sync(sp)

    def _adopt(
        self, key: tuple[bytes, int, bytes, int], m: TcpEndpoint, sock: socket.socket,
        now: float,
    ) -> None:  # fmt: skip
        """A socket the resolver connected already (guestfwd): answer the SYN now."""
        sp = Splice(m, sock, self)
        self.flows[key] = sp
        self.stats["adopted"] += 1
        try:
            sock.setblocking(False)
        except OSError as exc:
            m.host_error(exc.errno or errno.EBADF, now)
        else:
            m.host_connected(now)
        self._sync(sp)

    def _run(self, sp: Splice, work: Callable[[Splice, float], None]) -> None:
        """One host-side wake-up of ``sp``: the work, the adapter's invariant, the frames.
        A failure (a bug) resets that connection only."""
        self._work(sp, work, self.loop.time())
        self.flush()

    def _work(self, sp: Splice, work: Callable[[Splice, float], None], now: float) -> None:
        try:
            work(sp, now)
            self._sync(sp)
        except Exception:
            self.stats["internal-error"] += 1
            self.log.exception("tcp splice failed")
            self._abort(sp, now)

    def _connected(self, sp: Splice) -> None:
        self._run(sp, self._finish_connect)

    def _finish_connect(self, sp: Splice, now: float) -> None:
        self.loop.remove_writer(sp.sock.fileno())
        sp.writing = False
        err = sp.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sp.m.host_error(err, now)
        else:
            sp.m.host_connected(now)

    def forward(
        self, sock: socket.socket, guest: bytes, guest_port: int, local: bytes,
        local_port: int, l2: bytes = b"",
    ) -> TcpEndpoint:  # fmt: skip
        """Take an accepted host socket (hostfwd) and open its connection to the guest
        from ``local:local_port``."""
        sock.setblocking(False)
        now = self.loop.time()
        m = TcpEndpoint.connect(local, guest, local_port, guest_port, now, config=self.cfg,
                                l2=l2, out=self.out)  # fmt: skip
        sp = Splice(m, sock, self)
        key = (guest, guest_port, local, local_port)
        old = self.flows.get(key)
        if old is not None:
            self._close(old)
        self.flows[key] = sp
        self.stats["forwards"] += 1
        self._sync(sp)
        self.flush()
        return m

    # -- host side -----------------------------------------------------------------------

    def _readable(self, sp: Splice) -> None:
        self._run(sp, self._read)

    def _read(self, sp: Splice, now: float) -> None:
        m = sp.m
        try:
            for _ in range(READS_PER_WAKEUP):
                room = min(m.host_read_room, READ_MAX)
                if room <= 0:
                    break
                n = sp.sock.recv_into(self._view[:room])
                if n == 0:
                    m.host_eof(now)
                    break
                m.host_data(self._view[:n], now)
                if n < room:
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            m.host_error(exc.errno or errno.EIO, now)

    def _writable(self, sp: Splice) -> None:
        self._run(sp, self._write)

    def _write(self, sp: Splice, now: float) -> None:
        m = sp.m
        while m.host_pending:
            try:
                n = sp.sock.sendmsg(m.host_chunks(IOV_MAX))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                m.host_error(exc.errno or errno.EIO, now)
                return
            m.host_written(n, now)
            if m.done:
                return

    def on_deadline(self, sp: Splice, now: float) -> None:
        """``sp``'s deadline came (from the deadlines' run; the caller pumps after)."""
        if not sp.m.done and self.flows.get(sp.m.key) is sp:
            self._work(sp, self._fire, now)

    def _fire(self, sp: Splice, now: float) -> None:
        sp.m.timer(now)

    def _on_own_timer(self) -> None:
        assert self._timer is not None
        self._timer.deadlines.run(self.loop.time())
        self.flush()
        self._timer.rearm()

    # -- the adapter's invariant: socket interest, shutdown, timer, end ------------------

    def _sync(self, sp: Splice) -> None:
        m = sp.m
        if m.events:
            self._events(sp)
        if m.done:
            self._close(sp)
            return
        sock = sp.sock
        if m.host_pending and not sp.writing:
            self._write(sp, self.loop.time())
            if m.done:
                self._close(sp)
                return
            if m.host_pending:
                sp.writing = True
                self.loop.add_writer(sock.fileno(), self._writable, sp)
        elif not m.host_pending and sp.writing and not self._connecting(sp):
            sp.writing = False
            self.loop.remove_writer(sock.fileno())
        if m.host_shut_wr and not sp.shut and not m.host_pending:
            sp.shut = True
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.stats["shutdown-failed"] += 1
        want_read = m.host_read_room > 0 and not self._connecting(sp)
        if want_read != sp.reading:
            sp.reading = want_read
            if want_read:
                if sp.fast is not None:
                    self.loop.add_reader(sock.fileno(), sp.fast.readable)
                else:
                    self.loop.add_reader(sock.fileno(), self._readable, sp)
            else:
                self.loop.remove_reader(sock.fileno())
        f = sp.fast
        if f is not None and sp.reading and not sp.writing and not sp.shut and lendable(m):
            lend(m, f, self.fast)
            self.fast_stats["lends"] += 1
            self._deadlines.set(sp, f.next_deadline())
            return
        self._deadlines.set(sp, m.next_deadline)

    # -- the fast path -----------------------------------------------------------------------

    def attach_fast(self, sp: Splice) -> None:
        """Give a new connection its fast-path flow (IPv4 with virtio-net headers only)."""
        m = sp._m
        b = m.b
        if self.fast is None or not b.vnet or b.v6 or len(b.l2) != 14:
            return
        sp.fast = self.fast.flow(
            flow_key(m), sp.sock, template(m), m.tx.fromhost.buf,
            functools.partial(self._fast_slow, sp), functools.partial(self._fast_deadline, sp),
        )  # fmt: skip

    def reclaim(self, sp: Splice) -> None:
        """Take ``sp``'s connection back from the fast path (its state into the machine)."""
        f = sp.fast
        if f is not None and f.lent:
            reclaim(sp._m, f, self.fast)
            self.fast_stats["reclaims"] += 1

    def _fast_slow(self, sp: Splice) -> None:
        """The fast path hands ``sp`` back (a host read it does not handle, a host socket
        error, guest bytes the host socket did not take), or its reader fired while the
        connection is not lent."""
        f = sp.fast
        if f is None or not f.lent:
            self._readable(sp)
            return
        err, unsent, leftover = f.err, f.unsent, bool(f.leftover)
        f.err = 0
        f.unsent = False
        m = sp.m  # reclaims
        if err:
            self._run(sp, lambda sp, now: m.host_error(err, now))
        elif unsent:
            self._run(sp, lambda sp, now: m.tx.output(now))
        elif leftover:
            self._touched.add(sp)  # written (or the writer added) by the batch's flush
        else:
            self._run(sp, self._read)

    def _fast_deadline(self, sp: Splice) -> None:
        """The fast path moved ``sp``'s deadline earlier (nothing once it is closed or
        reclaimed: then the machine's deadline is the one that counts)."""
        f = sp.fast
        if f is None or not f.lent:
            return
        self._deadlines.set(sp, f.reported)

    def _connecting(self, sp: Splice) -> bool:
        return sp.m.state is State.CONNECTING

    def _events(self, sp: Splice) -> None:
        m = sp.m
        events = m.events  # the machine's list: read, then the handled ones removed
        count = len(events)
        for event, detail in events[:count]:
            self.stats[f"event-{event.value}"] += 1
            if self._on_event is not None:
                self._on_event(m, event, detail)
            if event is Event.CONNECT_FAILED:
                self._reject(m, self.loop.time(), detail)
            elif event in _RESET_EVENTS:
                self._linger_rst(sp)
        del events[:count]  # any event raised while handling these waits for the next sync

    def _reject(self, m: TcpEndpoint, now: float, err: int = errno.ECONNREFUSED) -> None:
        m.reject(err, now)

    def _linger_rst(self, sp: Splice) -> None:
        with contextlib.suppress(OSError):
            sp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)

    def _abort(self, sp: Splice, now: float) -> None:
        try:
            sp.m.abort(now)
        except Exception:
            self.stats["internal-error"] += 1
            self.log.exception("tcp machine failed to abort")
        self._linger_rst(sp)
        self._close(sp)

    def _close(self, sp: Splice) -> None:
        key = sp.m.key
        if self.flows.get(key) is sp:
            del self.flows[key]
            self.stats.update(sp.m.stats)
        self._touched.discard(sp)
        self._deadlines.drop(sp)
        sp.fast = None
        fd = sp.sock.fileno()
        if fd >= 0:
            if sp.reading:
                self.loop.remove_reader(fd)
            if sp.writing:
                self.loop.remove_writer(fd)
            sp.reading = sp.writing = False
            sp.sock.close()

    def release(self, key: tuple[bytes, int, bytes, int]) -> None:
        """Forget the flow ``key`` without a word to either side: its socket was handed
        over (live migration: the socket is in repair mode, so closing it is silent)."""
        sp = self.flows.get(key)
        if sp is not None:
            self._close(sp)

    def install(self, m: TcpEndpoint, sock: socket.socket) -> None:
        """Take a flow moved here (live migration): its machine and its connected,
        non-blocking host socket."""
        sp = Splice(m, sock, self)
        old = self.flows.get(m.key)
        if old is not None:
            self._close(old)
        self.flows[m.key] = sp
        self.stats["installed"] += 1
        self._sync(sp)
        self.flush()

    def close(self) -> None:
        """Reset every connection (the port is going away) and close every socket."""
        now = self.loop.time()
        for sp in list(self.flows.values()):
            self._abort(sp, now)
        self.closed = True
        if self._timer is not None:
            self._timer.close()
        if self._pump is None and self.out:
            out = self.out[:]
            self.out.clear()
            self._send(out)

    def counters(self) -> dict[str, int]:
        total: Counter[str] = Counter(self.stats)
        for sp in self.flows.values():
            total.update(sp._m.stats)
            if sp.fast is not None and sp.fast.window_updates:  # counted while lent
                total["window-updates"] += sp.fast.window_updates
        total["flows"] = len(self.flows)
        if self.fast is not None:
            total.update(self.fast.counters())
            total.update({f"fast-{k}": v for k, v in self.fast_stats.items()})
        return dict(total)
