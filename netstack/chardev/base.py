"""Character devices: byte streams the daemon's front ends (monitors, vhost-user) use.

Follows QEMU's chardev model (``chardev/char.c``): a chardev is a named
back end (socket, file, pty, ringbuf, ...) that at most one *front end* opens at a time
(``frontend-open`` in ``query-chardev``; ``chardev-remove`` of an open chardev fails with
``Chardev 'X' is busy``).

The interface between the two halves:

* a back end produces :class:`Connection` objects — one per accepted or established socket
  connection, or a single one for stream back ends such as files, pipes, ptys and stdio;
* the front end's :meth:`Frontend.serve` coroutine runs once per connection and returns
  when it is done with it (EOF or error); the back end then closes the connection and, for
  a listening socket, accepts the next one;
* a front end that sets ``multi_connection`` (QMP monitors) is served several connections
  at once, each its own session — beyond QEMU, whose socket chardev takes one client;
* a front end that sets ``raw_socket`` (vhost-user: file descriptors travel as
  SCM_RIGHTS) gets the connected socket in :attr:`Connection.sock` and does its own I/O;
  only back ends with :attr:`Chardev.fd_pass` (unix sockets) accept such a front end.

Optional front-end members, looked up with ``getattr``: ``on_break()`` receives
``chardev-send-break`` (QEMU's ``CHR_EVENT_BREAK``); ``supports_hotswap = True`` lets
``chardev-change`` move the front end to a new back end (QEMU's ``chr_be_change``).

Writes from the front end go through :meth:`Connection.write`; a back end with a log file
(``logfile=``, opened by :meth:`Chardev.open_log`) copies everything the front end writes
into it, best effort, like ``qemu_chr_write_log``.

Invariants: every task a chardev starts is in ``_tasks`` and is cancelled by
:meth:`Chardev.close`; a path in ``created_paths`` is unlinked on close only while it is
still the file the chardev created (a successor that re-bound the path keeps its socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Protocol

from netstack.errors import GenericError


class Connection:
    """One byte stream between a back end and its front end."""

    def __init__(
        self,
        reader: asyncio.StreamReader | None,
        writer: asyncio.StreamWriter | None,
        *,
        sock: socket.socket | None = None,
        peer: str = "",
        on_write: Callable[[bytes], None] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.sock = sock
        self.peer = peer
        self._on_write = on_write
        self.closed = False

    def buffered(self) -> int:
        """Bytes accepted by :meth:`write` but not yet sent."""
        if self.writer is None or self.writer.transport is None:
            return 0
        return self.writer.transport.get_write_buffer_size()

    async def read(self, n: int = 65536) -> bytes:
        """Up to ``n`` bytes; b"" at end of stream."""
        if self.reader is None or self.closed:
            return b""
        try:
            return await self.reader.read(n)
        except (ConnectionError, OSError):
            return b""

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._on_write is not None:
            self._on_write(data)
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(data)

    async def drain(self) -> None:
        if self.writer is not None and not self.closed:
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.drain()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.reader is not None:
            # Wake a reader blocked in read() even before the transport reports EOF.
            self.reader.feed_eof()
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        elif self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()


class Frontend(Protocol):
    """Who opens a chardev: a QMP monitor, a vhost-user netdev, a filter."""

    multi_connection: bool
    raw_socket: bool

    async def serve(self, conn: Connection) -> None:
        """Use ``conn`` until done with it."""
        ...


class Chardev:
    """Base of all back ends. Subclasses implement :meth:`start`, :meth:`filename`."""

    backend: ClassVar[str] = "null"
    #: QEMU_CHAR_FEATURE_FD_PASS: the back end can carry SCM_RIGHTS (unix sockets).
    fd_pass: bool = False
    #: QEMU_CHAR_FEATURE_RECONNECTABLE: a socket back end.
    reconnectable: bool = False

    def __init__(self, chardev_id: str) -> None:
        self.id = chardev_id
        self.frontend: Frontend | None = None
        #: The configuration this chardev was created from (None: made internally, e.g. the
        #: base of a ``mux=on`` chardev); what ``-writeconfig`` writes.
        self.spec: object = None
        self.connections: list[Connection] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.created_paths: list[str] = []
        self._path_ids: dict[str, tuple[int, int]] = {}
        self._logfd = -1

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the back end (bind, listen, connect, open files)."""

    def filename(self) -> str:
        """``filename`` of ``query-chardev``."""
        return self.backend

    async def close(self) -> None:
        """Close every connection and the back end; remove files it created."""
        for conn in list(self.connections):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for path in self.created_paths:
            if self._still_ours(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        self.created_paths.clear()
        self._path_ids.clear()
        if self._logfd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._logfd)
            self._logfd = -1

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task owned by this chardev (cancelled by :meth:`close`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def claim_path(self, path: str) -> None:
        """Remember that this chardev created the file ``path`` (removed on close)."""
        with contextlib.suppress(OSError):
            st = os.stat(path)
            self._path_ids[path] = (st.st_dev, st.st_ino)
        self.created_paths.append(path)

    def _still_ours(self, path: str) -> bool:
        ident = self._path_ids.get(path)
        if ident is None:
            return True
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == ident

    # -- log file ---------------------------------------------------------------------------

    def open_log(self, path: str | None, append: bool | None) -> None:
        """Open ``logfile=`` like ``qemu_char_open`` (create 0666 minus umask; truncate
        unless ``logappend``). Never blocks: a FIFO without reader is opened non-blocking."""
        if path is None:
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        flags |= os.O_APPEND if append else os.O_TRUNC
        try:
            self._logfd = os.open(path, flags, 0o666)
        except OSError as exc:
            raise GenericError(f"Could not create '{path}': {exc.strerror}") from exc

    def log_output(self, data: bytes) -> None:
        """Copy front-end output into the log file (best effort, like QEMU)."""
        view = memoryview(data)
        while self._logfd >= 0 and view:
            try:
                done = os.write(self._logfd, view)
            except OSError:
                return
            if done <= 0:
                return
            view = view[done:]

    @property
    def log_hook(self) -> Callable[[bytes], None] | None:
        """``on_write`` for connections: :meth:`log_output` when a log file is open."""
        return self.log_output if self._logfd >= 0 else None

    # -- front ends -------------------------------------------------------------------------

    @property
    def frontend_open(self) -> bool:
        return self.frontend is not None

    @property
    def busy(self) -> bool:
        """``qemu_chr_is_busy``: a front end holds the chardev (``chardev-remove`` fails)."""
        return self.frontend is not None

    def attach(self, frontend: Frontend) -> None:
        if self.frontend is not None:
            raise GenericError(f"Device '{self.id}' is in use")
        if getattr(frontend, "raw_socket", False) and not self.fd_pass:
            raise GenericError(f'chardev "{self.id}" does not support FD passing')
        self.frontend = frontend
        self.on_attach()

    def detach(self) -> None:
        self.frontend = None
        for conn in list(self.connections):
            conn.close()

    def on_attach(self) -> None:
        """Hook: a front end arrived (stream back ends hand it their connection)."""

    def serve_connection(self, conn: Connection) -> asyncio.Task[None] | None:
        """Hand ``conn`` to the front end in a task; close it when the front end is done."""
        fe = self.frontend
        if fe is None:
            return None
        self.connections.append(conn)

        async def run() -> None:
            try:
                await fe.serve(conn)
            finally:
                conn.close()
                if conn in self.connections:
                    self.connections.remove(conn)
                self.connection_closed(conn)

        return self.spawn(run())

    def connection_closed(self, conn: Connection) -> None:
        """Hook: a connection ended (listening sockets accept again)."""

    def send_break(self) -> None:
        """``chardev-send-break``: tell a front end that understands breaks."""
        handler = getattr(self.frontend, "on_break", None)
        if callable(handler):
            handler()

    def write(self, data: bytes) -> None:
        """Write to every open connection (used by ringbuf-write-like operations)."""
        for conn in self.connections:
            conn.write(data)

    def describe(self) -> dict[str, Any]:
        return {"label": self.id, "filename": self.filename(), "frontend-open": self.frontend_open}
