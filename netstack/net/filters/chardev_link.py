"""A filter's end of a chardev: QEMU's ``CharBackend`` for filter-mirror/redirector.

:class:`ChardevLink` is a front end in the sense of :mod:`netstack.chardev.base`: it
attaches to one chardev (``qemu_chr_fe_init``; a chardev that already has a front end
gives ``Device 'X' is in use``), serves each connection the back end hands it, passes
the bytes it reads to ``on_data`` (filter-redirector's ``indev``) or discards them (an
output-only link), and writes to every open connection.

Writes never block the loop. QEMU blocks its main loop in ``qemu_chr_fe_write_all``
until a slow reader catches up; here a connection whose transport buffers more than
``high_water`` bytes misses the write (whole writes only: a reader never sees a torn
frame); :meth:`write` says so and the filter counts the frames. Writes while nothing is
connected are discarded, as QEMU's socket chardev does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from netstack.chardev.base import Connection
from netstack.errors import GenericError

#: Bytes a connection may have queued before further writes to it are dropped.
HIGH_WATER = 4 << 20

DataHandler = Callable[[bytes], bool]
"""Called with bytes read; returns False to stop reading (the connection is closed)."""


def buffered(conn: Connection) -> int:
    """Bytes written to ``conn`` that it has not sent yet.

    Uses the connection's own ``buffered()`` when it has one (fd-based connections keep
    their own buffer), else the stream transport's buffer size.
    """
    probe = getattr(conn, "buffered", None)
    if callable(probe):
        return int(probe())
    writer = conn.writer
    if writer is None:
        return 0
    size: int = writer.transport.get_write_buffer_size()
    return size


class ChardevLink:
    """Front end of one chardev, owned by one filter."""

    multi_connection = False
    raw_socket = False

    def __init__(
        self,
        chardev: Any,
        on_data: DataHandler | None = None,
        *,
        high_water: int = HIGH_WATER,
    ) -> None:
        self.chardev = chardev
        self.on_data = on_data
        self.high_water = high_water
        self.connections: list[Connection] = []
        self.written = 0

    def open(self) -> None:
        """Attach to the chardev (QEMU's ``qemu_chr_fe_init``)."""
        if self.chardev.frontend is not None:
            raise GenericError(f"Device '{self.chardev.id}' is in use")
        self.chardev.attach(self)

    def close(self) -> None:
        """Detach (QEMU's ``qemu_chr_fe_deinit``); the back end closes its connections."""
        if self.chardev.frontend is self:
            self.chardev.detach()
        self.connections.clear()

    async def serve(self, conn: Connection) -> None:
        self.connections.append(conn)
        try:
            while True:
                data = await conn.read()
                if not data:
                    break
                if self.on_data is not None and not self.on_data(data):
                    break
        finally:
            if conn in self.connections:
                self.connections.remove(conn)

    def write(self, parts: Sequence[bytes]) -> bool:
        """Write ``parts`` as one unit to every connection; False if any missed it."""
        if not parts or not self.connections:
            return True
        data = b"".join(parts)
        ok = True
        for conn in self.connections:
            if buffered(conn) > self.high_water:
                ok = False
                continue
            conn.write(data)
            self.written += len(data)
        return ok
