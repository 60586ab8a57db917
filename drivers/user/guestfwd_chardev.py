"""The chardev side of a guestfwd rule: one chardev stream shared by the rule's guest
connections.

Follows QEMU's ``net/slirp.c`` (``guestfwd_can_read``, ``guestfwd_read``,
``guestfwd_write``) with libslirp's ``slirp_find_ctl_socket``/``slirp_send``: a rule has
one chardev; bytes from *every* guest connection of the rule are written to it (chunks
interleave), and bytes read from it go to the *newest* guest connection (when that one
goes, to the newest left); with no guest connection the chardev is not read
(``can_read`` 0), so its data waits in the chardev (here: up to :data:`HIGH_WATER`
bytes are read ahead and go to the next guest connection of the same chardev session, so
the end of the chardev's stream is noticed while no guest connection is open).

:class:`ChardevBridge` is the chardev front end (one connection at a time: a listening
socket chardev serves one client after the other) and owns our ends of the guest
connections' unix socketpairs (the splicer owns the other ends). Choices beyond QEMU,
where QEMU drops data or hangs:

* guest bytes are read only while the chardev has a connection and its output buffer is
  below :data:`HIGH_WATER` (QEMU writes blocking, or drops while a socket chardev is
  disconnected): backpressure reaches the guest through the TCP window, nothing is lost;
* chardev bytes go to the receiver's socket with a bounded buffer (:data:`HIGH_WATER`);
  the chardev is read only while it has room;
* a guest connection that half-closed keeps receiving while it is the newest; once a newer
  one takes over it can neither send nor receive, so it gets our FIN (QEMU leaves it
  open forever);
* when the chardev's connection ends (peer closed, chardev removed), every guest
  connection gets what was queued for it and then our FIN; guest connections made while
  the chardev has no connection wait for the next one (a listening chardev's next
  client, a reconnecting client's next connect).

The guest's FIN is never passed to the chardev (it is shared and outlives the
connection). Invariants: every socket here is closed by :meth:`ChardevBridge.close` or
when its connection ends; a connection the splicer closed (our end sees POLLHUP) is
dropped at once; nothing raises out of a loop callback.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections import Counter
from typing import Final, Literal

from netstack.chardev import Connection

READ_CHUNK: Final = 65536
HIGH_WATER: Final = 256 * 1024


#: The names this module counts under (``query-netdev`` counters).
GuestfwdChardevCounter = Literal[
    "guestfwd-chardev-bytes-dropped",
    "guestfwd-chardev-bytes-in",
    "guestfwd-chardev-bytes-out",
    "guestfwd-chardev-connections",
    "guestfwd-chardev-sessions",
]


class _Pipe:
    """One guest connection: our end of its socketpair."""

    __slots__ = ("closing", "in_eof", "out", "reading", "sock", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = bytearray()  # chardev bytes not yet taken by the socket
        self.reading = False
        self.writing = False
        self.in_eof = False  # the guest half-closed
        self.closing = False  # our FIN follows once ``out`` is written


class ChardevBridge:
    """The front end of one guestfwd rule's chardev (``netstack.chardev.Frontend``)."""

    multi_connection = False
    raw_socket = False

    def __init__(self, loop: asyncio.AbstractEventLoop, log: logging.Logger) -> None:
        self._loop = loop
        self._log = log
        self.pipes: list[_Pipe] = []  # oldest first
        self.conn: Connection | None = None
        self.backlog = bytearray()  # chardev bytes no guest connection has taken yet
        self.stats: Counter[GuestfwdChardevCounter] = Counter()
        self._room = asyncio.Event()
        self._drain: asyncio.Task[None] | None = None
        self.closed = False

    # -- guest connections -----------------------------------------------------------------

    def open_pipe(self) -> socket.socket:
        """A new guest connection: the splicer's end of its socketpair (raises OSError)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours.setblocking(False)
        theirs.setblocking(False)
        p = _Pipe(ours)
        self.pipes.append(p)
        self.stats["guestfwd-chardev-connections"] += 1
        for old in self.pipes[:-1]:
            if old.in_eof and not old.closing:
                self._finish(old)  # half-closed and no longer the receiver: done
        self._want_read(p)
        self._push()
        return theirs

    def _receiver(self) -> _Pipe | None:
        for p in reversed(self.pipes):
            if not p.closing:
                return p
        return None

    def _want_read(self, p: _Pipe) -> None:
        want = (not p.in_eof and not p.closing and self.conn is not None
                and self._drain is None and not self.closed)  # fmt: skip
        if want != p.reading:
            p.reading = want
            if want:
                self._loop.add_reader(p.sock.fileno(), self._readable, p)
            else:
                self._loop.remove_reader(p.sock.fileno())

    def _readable(self, p: _Pipe) -> None:
        conn = self.conn
        if conn is None or p not in self.pipes:
            return
        try:
            data = p.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(p)
            return
        if not data:
            p.in_eof = True
            self._want_read(p)
            if _peer_gone(p.sock):
                self._drop(p)  # the splicer closed its end: the connection is over
            elif p is not self._receiver():
                self._finish(p)
            return
        self.stats["guestfwd-chardev-bytes-out"] += len(data)
        conn.write(data)
        if conn.buffered() >= HIGH_WATER and self._drain is None:
            self._drain = self._loop.create_task(self._wait_drain(conn))
            for q in self.pipes:
                self._want_read(q)

    async def _wait_drain(self, conn: Connection) -> None:
        try:
            await conn.drain()
        finally:
            if self._drain is asyncio.current_task():
                self._drain = None
                for q in self.pipes:
                    self._want_read(q)

    def _flush(self, p: _Pipe) -> None:
        view = memoryview(p.out)
        sent = 0
        try:
            while sent < len(view):
                n = p.sock.send(view[sent : sent + READ_CHUNK])
                if n <= 0:
                    break
                sent += n
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the splicer closed its end
            view.release()
            del p.out[:sent]
            if not p.closing:  # the receiver: what it did not take goes to the next one
                self.backlog[:0] = p.out
                p.out.clear()
            self._drop(p)
            return
        view.release()
        del p.out[:sent]
        want = bool(p.out)
        if want != p.writing:
            p.writing = want
            if want:
                self._loop.add_writer(p.sock.fileno(), self._flush, p)
            else:
                self._loop.remove_writer(p.sock.fileno())
        if not p.out:
            if p.closing:
                self._close_pipe(p)
            self._wake()

    def _push(self) -> None:
        """Hand the backlog to the receiver."""
        r = self._receiver()
        if r is not None and self.backlog:
            r.out += self.backlog
            self.backlog.clear()
            self._flush(r)
        self._wake()

    def _finish(self, p: _Pipe) -> None:
        """Our FIN after what is queued for ``p``."""
        p.closing = True
        self._want_read(p)
        if not p.out:
            self._close_pipe(p)

    def _drop(self, p: _Pipe) -> None:
        self.stats["guestfwd-chardev-bytes-dropped"] += len(p.out)
        p.out.clear()
        self._close_pipe(p)
        self._push()  # the receiver may have changed

    def _close_pipe(self, p: _Pipe) -> None:
        if p in self.pipes:
            self.pipes.remove(p)
        fd = p.sock.fileno()
        if fd >= 0:
            if p.reading:
                self._loop.remove_reader(fd)
            if p.writing:
                self._loop.remove_writer(fd)
            p.reading = p.writing = False
            p.sock.close()
        self._wake()

    # -- the chardev -----------------------------------------------------------------------

    def _has_room(self) -> bool:
        r = self._receiver()
        return len(self.backlog) < HIGH_WATER and (r is None or len(r.out) < HIGH_WATER)

    def _wake(self) -> None:
        if self.closed or self._has_room():
            self._room.set()

    async def serve(self, conn: Connection) -> None:
        """One chardev connection: guest bytes to it, its bytes to the receiver."""
        if self.closed:
            return
        self.conn = conn
        self.stats["guestfwd-chardev-sessions"] += 1
        for p in self.pipes:
            self._want_read(p)
        try:
            while not self.closed:
                if not self._has_room():
                    self._room.clear()
                    await self._room.wait()
                    continue
                data = await conn.read(READ_CHUNK)
                if not data:
                    break
                self.stats["guestfwd-chardev-bytes-in"] += len(data)
                self.backlog += data
                self._push()
        finally:
            if self.conn is conn:
                self.conn = None
            if self._drain is not None:
                self._drain.cancel()
                self._drain = None
            self._push()
            self.stats["guestfwd-chardev-bytes-dropped"] += len(self.backlog)
            self.backlog.clear()  # nobody took it; the next session starts afresh
            for p in list(self.pipes):
                self._finish(p)  # the stream ended: every guest connection gets our FIN

    def close(self) -> None:
        """The rule is going: every guest connection ends now (our FIN)."""
        self.closed = True
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        for p in list(self.pipes):
            self._close_pipe(p)
        self.backlog.clear()
        self._room.set()


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the other end of a unix socketpair is closed (not just shut for writing)."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return any(ev & (select.POLLHUP | select.POLLERR) for _fd, ev in poller.poll(0))
