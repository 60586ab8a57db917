"""Terminal back ends: ``pty`` and ``stdio`` (``chardev/char-pty.c``,
``chardev/char-stdio.c``).

* ``pty``: a new pseudo-terminal pair; the slave is put in raw mode and closed, the
  daemon keeps the master. ``query-chardev`` shows ``pty:/dev/pts/N`` and ``chardev-add``
  returns ``{"pty": "/dev/pts/N"}``. As in QEMU the master is polled for ``POLLHUP`` to
  learn whether somebody has the slave open: each time a program opens it the front end
  gets a new connection, which ends when the last one closes it (the master then reads
  EIO). Output while nobody has the slave open is discarded. QEMU polls once a second;
  netstack every :data:`PTY_POLL_INTERVAL` seconds.
* ``stdio``: the daemon's own fd 0 (input) and fd 1 (output); one connection, ending at
  end of input. If fd 0 is a terminal it is put in raw mode (``signal=off`` also turns
  off ``ISIG``, so Ctrl-C reaches the front end) and restored on close, together with the
  fds' blocking modes. Only one stdio chardev may exist at a time: ``cannot use stdio by
  multiple character devices``.

Invariants: the pty master is closed by :meth:`PtyChardev.close`; stdio never closes fds
0 and 1, and leaves the terminal as it found it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import termios
import tty
from typing import Any, ClassVar

from netstack.errors import GenericError

from .base import Chardev
from .connections import FdConnection

log = logging.getLogger("netstack.chardev")

#: Seconds between two looks at whether somebody opened the pty's slave side.
PTY_POLL_INTERVAL = 0.25


class PtyChardev(Chardev):
    """``pty``."""

    backend = "pty"

    def __init__(self, chardev_id: str) -> None:
        super().__init__(chardev_id)
        self.master = -1
        self.pty_name = ""
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise GenericError(f"Failed to create PTY: {exc.strerror}") from exc
        try:
            self.pty_name = os.ttyname(slave)
            tty.setraw(slave)
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self.master = master
        log.info("char device redirected to %s (label %s)", self.pty_name, self.id)

    def filename(self) -> str:
        return f"pty:{self.pty_name}"

    def slave_open(self) -> bool:
        """Whether some program has the slave side open (no ``POLLHUP`` on the master)."""
        poller = select.poll()
        poller.register(self.master, select.POLLOUT)
        return not any(ev & select.POLLHUP for _fd, ev in poller.poll(0))

    def on_attach(self) -> None:
        self._poller = self.spawn(self._watch())

    def detach(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        super().detach()

    async def _watch(self) -> None:
        while True:
            if self.master >= 0 and self.slave_open():
                conn = FdConnection(
                    self.master, self.master, peer=self.pty_name, on_write=self.log_hook
                )
                task = self.serve_connection(conn)
                if task is None:
                    return
                with contextlib.suppress(Exception):
                    await task
            await asyncio.sleep(PTY_POLL_INTERVAL)

    async def close(self) -> None:
        await super().close()
        if self.master >= 0:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = -1


class StdioChardev(Chardev):
    """``stdio`` (``fd_in``/``fd_out`` default to 0 and 1; tests pass other fds)."""

    backend = "stdio"
    _in_use: ClassVar[bool] = False

    def __init__(
        self, chardev_id: str, signal: bool | None, *, fd_in: int = 0, fd_out: int = 1
    ) -> None:
        super().__init__(chardev_id)
        self.allow_signal = signal is None or signal
        self.fd_in = fd_in
        self.fd_out = fd_out
        self._owner = False
        self._saved_tty: list[Any] | None = None
        self._saved_blocking: tuple[bool, bool] | None = None

    async def start(self) -> None:
        if StdioChardev._in_use:
            raise GenericError("cannot use stdio by multiple character devices")
        StdioChardev._in_use = True
        self._owner = True
        try:
            self._saved_blocking = (
                os.get_blocking(self.fd_in),
                os.get_blocking(self.fd_out),
            )
            os.set_blocking(self.fd_in, False)
            os.set_blocking(self.fd_out, False)
        except OSError as exc:
            raise GenericError(f"Failed to set FD nonblocking: {exc.strerror}") from exc
        if os.isatty(self.fd_in):
            self._saved_tty = termios.tcgetattr(self.fd_in)
            self._set_raw()

    def _set_raw(self) -> None:
        assert self._saved_tty is not None
        saved = self._saved_tty
        iflag, oflag, cflag, lflag = (int(saved[i]) for i in range(4))
        iflag &= ~(
            termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
            | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
        )  # fmt: skip
        oflag |= termios.OPOST
        lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.IEXTEN)
        cflag &= ~(termios.CSIZE | termios.PARENB)
        cflag |= termios.CS8
        if not self.allow_signal:
            lflag &= ~termios.ISIG
        cc = list(saved[6])
        cc[termios.VMIN] = 1
        cc[termios.VTIME] = 0
        attrs = [iflag, oflag, cflag, lflag, saved[4], saved[5], cc]
        with contextlib.suppress(termios.error):
            termios.tcsetattr(self.fd_in, termios.TCSANOW, attrs)

    def on_attach(self) -> None:
        self.serve_connection(
            FdConnection(self.fd_in, self.fd_out, peer="stdio", on_write=self.log_hook)
        )

    async def close(self) -> None:
        await super().close()
        if not self._owner:
            return
        if self._saved_tty is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.fd_in, termios.TCSANOW, self._saved_tty)
            self._saved_tty = None
        if self._saved_blocking is not None:
            with contextlib.suppress(OSError):
                os.set_blocking(self.fd_in, self._saved_blocking[0])
                os.set_blocking(self.fd_out, self._saved_blocking[1])
            self._saved_blocking = None
        self._owner = False
        StdioChardev._in_use = False
