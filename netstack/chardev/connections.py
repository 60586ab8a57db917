"""Connections of back ends that are not stream sockets: file descriptors and memory.

Owns two :class:`~netstack.chardev.base.Connection` flavours:

* :class:`FdConnection` - input from one fd, output to another (``chardev/char-fd.c``):
  files, pipes, the pty master, stdio and connected UDP sockets. Reads wait for
  readability with ``loop.add_reader``; fds the selector refuses (regular files, which
  are always ready) are read directly. Writes are attempted at once; what the fd does not
  take is buffered and flushed with ``loop.add_writer`` (:meth:`FdConnection.drain`
  waits for the buffer to empty). In *datagram* mode (UDP) every read returns one
  datagram, empty datagrams do not mean end of stream, every write is one datagram and
  what cannot be sent at once is dropped (UDP is lossy anyway).
* :class:`MemoryConnection` - a connection whose input is fed by the back end itself
  (mux input, or nothing for null and ringbuf) and whose output goes to a callback.

Invariants: neither flavour closes the fds it uses (the back end owns them, a pty keeps
its master across connections); :meth:`close` removes every reader/writer registration
and wakes a blocked :meth:`read`, which then returns ``b""``. Nothing blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
from collections.abc import Callable

from .base import Connection

#: QEMU's ``CHR_READ_BUF_LEN``: the most one read takes from an fd.
READ_CHUNK = 4096


class FdConnection(Connection):
    """A byte stream over ``fd_in`` (may be None: no input) and ``fd_out``."""

    def __init__(
        self,
        fd_in: int | None,
        fd_out: int | None,
        *,
        peer: str = "",
        on_write: Callable[[bytes], None] | None = None,
        datagram: bool = False,
    ) -> None:
        super().__init__(None, None, peer=peer, on_write=on_write)
        self.fd_in = fd_in
        self.fd_out = fd_out
        self.datagram = datagram
        self._loop = asyncio.get_running_loop()
        self._wait_in: asyncio.Future[None] | None = None
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        self._pending = bytearray()
        self._writer_on = False
        self._drained: asyncio.Future[None] | None = None
        self._pollable_in = fd_in is not None and not stat.S_ISREG(os.fstat(fd_in).st_mode)

    # -- input -----------------------------------------------------------------------------

    async def read(self, n: int = 65536) -> bytes:
        if self.fd_in is None:
            if not self.closed:
                await asyncio.shield(self._closed_fut)
            return b""
        n = min(n, READ_CHUNK)
        if not self._pollable_in:
            await asyncio.sleep(0)  # a regular file is always ready: let others run
        while not self.closed:
            try:
                data = os.read(self.fd_in, n)
            except (BlockingIOError, InterruptedError):
                if not await self._readable():
                    return b""
                continue
            except OSError as exc:
                if self.datagram and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                    continue
                return b""  # EIO: a pty without slave; anything else ends the stream
            if data or not self.datagram:
                return data
        return b""

    async def _readable(self) -> bool:
        """Wait until ``fd_in`` is readable; False when closed meanwhile."""
        assert self.fd_in is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        try:
            self._loop.add_reader(self.fd_in, _set_done, fut)
        except PermissionError:
            # Not pollable (regular file): always ready; let others run between reads.
            await asyncio.sleep(0)
            return not self.closed
        self._wait_in = fut
        try:
            await fut
        finally:
            if self._wait_in is fut:  # close() did not clean up already
                self._wait_in = None
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_reader(self.fd_in)
        return not self.closed

    # -- output ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._on_write is not None:
            self._on_write(data)
        if self.fd_out is None or not data:
            return
        if self.datagram:
            with contextlib.suppress(OSError):
                os.write(self.fd_out, data)
            return
        self._pending += data
        if not self._writer_on:
            self._flush()

    def _flush(self) -> None:
        assert self.fd_out is not None
        while self._pending and not self.closed:
            try:
                done = os.write(self.fd_out, self._pending)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._pending.clear()  # EPIPE/EIO: the reader went away; drop, like QEMU
                break
            del self._pending[:done]
        if self._pending and not self.closed:
            if not self._writer_on:
                try:
                    self._loop.add_writer(self.fd_out, self._flush)
                    self._writer_on = True
                except PermissionError:
                    self._pending.clear()  # regular file that did not take it all: full disk
            return
        self._stop_writer()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _stop_writer(self) -> None:
        if self._writer_on and self.fd_out is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(self.fd_out)
        self._writer_on = False

    def buffered(self) -> int:
        """Bytes written but not yet taken by the fd."""
        return len(self._pending)

    async def drain(self) -> None:
        if self.closed or not self._pending:
            return
        if self._drained is None:
            self._drained = self._loop.create_future()
        await asyncio.wait({self._drained, self._closed_fut}, return_when=asyncio.FIRST_COMPLETED)

    # -- end -------------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._stop_writer()
        self._pending.clear()
        if self._wait_in is not None:
            # Unregister now: a successor connection may register the same fd at once.
            with contextlib.suppress(ValueError, OSError):
                if self.fd_in is not None:
                    self._loop.remove_reader(self.fd_in)
            _set_done(self._wait_in)
            self._wait_in = None
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


class MemoryConnection(Connection):
    """Input fed by the back end (:meth:`feed`); output handed to ``sink``."""

    def __init__(
        self,
        sink: Callable[[bytes], None] | None = None,
        *,
        peer: str = "",
        on_write: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(asyncio.StreamReader(), None, peer=peer, on_write=on_write)
        self._sink = sink

    def feed(self, data: bytes) -> None:
        if not self.closed and self.reader is not None and data:
            self.reader.feed_data(data)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        super().write(data)
        if self._sink is not None:
            self._sink(data)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
