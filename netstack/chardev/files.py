"""Back ends over host files: ``file`` and ``pipe`` (``chardev/char-file.c``,
``chardev/char-pipe.c``, ``chardev/char-fd.c``).

* ``file``: output to ``out`` (created 0666 minus umask, truncated unless ``append``),
  input from ``in`` if given. Without ``in`` the front end never reads anything; with it
  the front end reads the file and the connection ends at its end (QEMU's
  ``CHR_EVENT_CLOSED``).
* ``pipe``: ``PATH.in`` (input) and ``PATH.out`` (output) if both open, else ``PATH``
  for both; every path is opened read-write, as QEMU does, so opening a FIFO never waits
  for the other side and its input never reaches end of stream.

Errors are QEMU's: ``Could not open 'PATH': <strerror>``. The ``query-chardev`` filename is
the type name (``file``, ``pipe``).

Invariants: the back end owns its fds (closed by :meth:`close`); the front end gets one
:class:`~.connections.FdConnection` when it attaches. Opens never block: FIFOs are opened
non-blocking (``O_RDWR``, or ``O_RDONLY|O_NONBLOCK`` for a file's ``in``).
"""

from __future__ import annotations

import contextlib
import os

from netstack.errors import GenericError
from netstack.qapi.chardev import ChardevFile

from .base import Chardev
from .connections import FdConnection


def open_path(path: str, flags: int) -> int:
    """``qmp_chardev_open_file_source``: open with QEMU's error text."""
    try:
        return os.open(path, flags | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise GenericError(f"Could not open '{path}': {exc.strerror}") from exc


class _FdChardev(Chardev):
    """A back end with an input fd (or none) and an output fd (``TYPE_CHARDEV_FD``)."""

    def __init__(self, chardev_id: str) -> None:
        super().__init__(chardev_id)
        self.fd_in: int | None = None
        self.fd_out: int | None = None

    def on_attach(self) -> None:
        self.serve_connection(
            FdConnection(self.fd_in, self.fd_out, peer=self.backend, on_write=self.log_hook)
        )

    async def close(self) -> None:
        await super().close()
        for fd in {self.fd_in, self.fd_out}:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd_in = self.fd_out = None


class FileChardev(_FdChardev):
    """``file``: ``out`` (and optionally ``in``)."""

    backend = "file"

    def __init__(self, chardev_id: str, options: ChardevFile) -> None:
        super().__init__(chardev_id)
        self.options = options

    async def start(self) -> None:
        opts = self.options
        flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK
        flags |= os.O_APPEND if opts.append else os.O_TRUNC
        self.fd_out = open_path(opts.out, flags)
        if opts.in_ is not None:
            try:
                self.fd_in = open_path(opts.in_, os.O_RDONLY | os.O_NONBLOCK)
            except GenericError:
                os.close(self.fd_out)
                self.fd_out = None
                raise


class PipeChardev(_FdChardev):
    """``pipe``: ``PATH.in``/``PATH.out``, or ``PATH`` both ways."""

    backend = "pipe"

    def __init__(self, chardev_id: str, device: str) -> None:
        super().__init__(chardev_id)
        self.device = device

    async def start(self) -> None:
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC
        fds: list[int] = []
        for path in (self.device + ".in", self.device + ".out"):
            try:
                fds.append(os.open(path, flags))
            except OSError:
                break
        if len(fds) == 2:
            self.fd_in, self.fd_out = fds
            return
        for fd in fds:
            os.close(fd)
        fd = open_path(self.device, os.O_RDWR | os.O_NONBLOCK)
        self.fd_in = self.fd_out = fd
