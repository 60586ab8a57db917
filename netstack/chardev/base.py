"""Character devices: byte streams the daemon's front ends (monitors, vhost-user) use.

Follows QEMU's chardev model (``chardev/char.c``, reference §10): a chardev is a named
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
  SCM_RIGHTS) gets the connected socket in :attr:`Connection.sock` and does its own I/O.

Writes from the front end go through :meth:`Connection.write`; a back end with a log file
(``logfile=``) copies everything the front end writes into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, ClassVar, Protocol


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

    def __init__(self, chardev_id: str) -> None:
        self.id = chardev_id
        self.frontend: Frontend | None = None
        self.connections: list[Connection] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.created_paths: list[str] = []

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
        import os

        for path in self.created_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)

    # -- front ends -------------------------------------------------------------------------

    @property
    def frontend_open(self) -> bool:
        return self.frontend is not None

    def attach(self, frontend: Frontend) -> None:
        from netstack.errors import GenericError

        if self.frontend is not None:
            raise GenericError(f"chardev '{self.id}' is already in use")
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

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def connection_closed(self, conn: Connection) -> None:
        """Hook: a connection ended (listening sockets accept again)."""

    def send_break(self) -> None:
        """``chardev-send-break``: nothing to do for most back ends."""

    def write(self, data: bytes) -> None:
        """Write to every open connection (used by ringbuf-write-like operations)."""
        for conn in self.connections:
            conn.write(data)

    def describe(self) -> dict[str, Any]:
        return {"label": self.id, "filename": self.filename(), "frontend-open": self.frontend_open}
