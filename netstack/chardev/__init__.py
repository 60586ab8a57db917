"""Character devices (QEMU's ``chardev/``): named byte-stream back ends for front ends.

Modules: :mod:`.base` (the back-end/front-end contract), :mod:`.connections` (fd and
in-memory connections), :mod:`.sockaddr` and :mod:`.sockets` (``socket``), :mod:`.udp`,
:mod:`.files` (``file``, ``pipe``), :mod:`.terminals` (``pty``, ``stdio``),
:mod:`.memory` (``null``, ``ringbuf``, ``memory``), :mod:`.mux`, and :mod:`.table` (the
daemon's table and the QMP commands). Importing the package has no side effects.
"""

from __future__ import annotations

from .base import Chardev, Connection, Frontend
from .table import ChardevTable, create_backend

__all__ = ["Chardev", "ChardevTable", "Connection", "Frontend", "create_backend"]
