"""The ``udp`` chardev: a connected datagram socket (``chardev/char-udp.c``,
``inet_dgram_saddr`` of ``util/qemu-sockets.c``).

The socket is bound to ``local`` (default: any address, port 0, in the remote's family)
and connected to ``remote`` (empty host: ``localhost``) when the chardev is created, so
address errors fail ``chardev-add`` with QEMU's texts (``remote port not specified``,
``address resolution failed for H:P: ...``, ``Failed to bind socket: ...``). Each write
of the front end is one datagram; every datagram received becomes input. The
``query-chardev`` filename is ``udp``.

Deviation: QEMU stops reading for good after a receive error (for instance the ICMP
"port unreachable" a connected UDP socket reports when the peer is not listening);
netstack ignores such errors and keeps reading.

Invariants: one socket, owned by the chardev and closed by :meth:`close`; the front end
gets one :class:`~.connections.FdConnection` (datagram mode) when it attaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from netstack.errors import GenericError
from netstack.qapi.chardev import ChardevUdp
from netstack.qapi.sockets import InetSocketAddress

from .base import Chardev
from .connections import FdConnection
from .sockaddr import ai_family


def _oserr(text: str, exc: OSError) -> GenericError:
    return GenericError(f"{text}: {exc.strerror}")


async def _lookup(host: str | None, port: str, family: int, flags: int) -> list[Any]:
    """getaddrinfo with QEMU's error text (a missing host prints as C's ``(null)``)."""
    try:
        return await asyncio.get_running_loop().getaddrinfo(
            host, port, family=family, type=socket.SOCK_DGRAM, flags=flags
        )
    except socket.gaierror as exc:
        raise GenericError(
            f"address resolution failed for {host or '(null)'}:{port}: {exc.strerror}"
        ) from exc


class UdpChardev(Chardev):
    """``udp``."""

    backend = "udp"

    def __init__(self, chardev_id: str, options: ChardevUdp) -> None:
        super().__init__(chardev_id)
        self.options = options
        self.sock: socket.socket | None = None

    async def start(self) -> None:
        remote = self.options.remote.data
        local = self.options.local.data if self.options.local is not None else None
        if not isinstance(remote, InetSocketAddress) or not (
            local is None or isinstance(local, InetSocketAddress)
        ):
            raise GenericError("socket type unsupported for datagram")
        family = ai_family(remote)
        host = remote.host or "localhost"
        if not remote.port:
            raise GenericError("remote port not specified")
        flags = socket.AI_CANONNAME | socket.AI_ADDRCONFIG | getattr(socket, "AI_V4MAPPED", 0)
        peer = (await _lookup(host, remote.port, family, flags))[0]
        lhost = (local.host or None) if local is not None else None
        lport = (local.port or "0") if local is not None else "0"
        here = (await _lookup(lhost, lport, peer[0], socket.AI_PASSIVE))[0]
        try:
            sock = socket.socket(peer[0], peer[1], peer[2])
        except OSError as exc:
            raise _oserr(f"Failed to create socket family {peer[0]}", exc) from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(here[4])
            except OSError as exc:
                raise _oserr("Failed to bind socket", exc) from exc
            try:
                sock.connect(peer[4])  # a datagram connect does not wait for anything
            except OSError as exc:
                # QEMU names the local address here (its variables were reused).
                shown = lhost or "(null)"
                raise _oserr(f"Failed to connect to '{shown}:{lport}'", exc) from exc
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock

    def on_attach(self) -> None:
        assert self.sock is not None
        fd = self.sock.fileno()
        self.serve_connection(
            FdConnection(fd, fd, peer="udp", on_write=self.log_hook, datagram=True)
        )

    async def close(self) -> None:
        await super().close()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
