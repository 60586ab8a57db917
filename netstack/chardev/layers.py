"""A socket connection seen through protocol layers (WebSocket, telnet): the adapter.

Owns :class:`LayeredConnection`, a :class:`~netstack.chardev.base.Connection` that wraps
the connection of an accepted or connected socket (plain or TLS) and drives a stack of
sans-IO :class:`~netstack.proto.layer.Layer` machines, lowest first, in QEMU's order
(``chardev/char-socket.c``: TLS, then WebSocket, then telnet): wire bytes go up through
every layer's ``feed``; the front end's output goes down through every layer's
``encode``; what a layer answers by itself (the WebSocket handshake answer, pongs, close
frames, telnet refusals) goes down through the layers below it only.

:meth:`LayeredConnection.open` runs the layers' handshakes in order (each layer begins
once the one below it is open: telnet negotiates inside an open WebSocket) and must
succeed before the front end sees the connection, as QEMU emits ``CHR_EVENT_OPENED``
only then (so a QMP greeting is the first thing a WebSocket client receives).

A layer that ends the connection because of bad input reports it through ``on_error``
(the chardev counts and logs it); the connection then behaves as closed by the peer.

Invariants: nothing here blocks the loop or raises on peer input; the application bytes
buffered are at most what one wire read produced; :meth:`close` sends each layer's
closing bytes (a WebSocket close frame) before closing the socket.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from netstack.proto.layer import Layer

from .base import Connection

ErrorHook = Callable[[str], None]


class LayeredConnection(Connection):
    """``inner`` (the socket's byte stream) seen through ``layers`` (lowest first)."""

    def __init__(
        self,
        inner: Connection,
        layers: Sequence[Layer],
        *,
        on_error: ErrorHook | None = None,
        on_write: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(None, None, sock=inner.sock, peer=inner.peer, on_write=on_write)
        self.inner = inner
        self.layers = list(layers)
        self._on_error = on_error
        self._app = bytearray()
        self._ended = False

    # -- handshakes ------------------------------------------------------------------------

    async def open(self) -> bool:
        """Run the handshakes; False when the connection ended before they completed."""
        self._begin_from(0)
        while not self._ended and not all(layer.opened for layer in self.layers):
            raw = await self.inner.read()
            if not raw:
                self._ended = True
                break
            self._process(raw)
        return not self._ended and not self.closed

    def _begin_from(self, index: int) -> None:
        while index < len(self.layers):
            layer = self.layers[index]
            self._send_below(index, layer.begin())
            if not layer.opened:
                return
            index += 1

    # -- input -----------------------------------------------------------------------------

    def _process(self, raw: bytes) -> None:
        data = raw
        for index, layer in enumerate(self.layers):
            step = layer.feed(data)
            if step.reply:
                self._send_below(index, step.reply)
            if step.closed:
                self._ended = True
                if layer.error is not None and self._on_error is not None:
                    self._on_error(layer.error)
                data = step.data
                self._app += self._through(index + 1, data)
                return
            if step.opened:
                self._begin_from(index + 1)
            data = step.data
            if not data:
                return
        self._app += data

    def _through(self, index: int, data: bytes) -> bytes:
        """Data a closing layer still delivered, passed through the layers above it."""
        for layer in self.layers[index:]:
            if not data:
                break
            data = layer.feed(data).data
        return data

    async def read(self, n: int = 65536) -> bytes:
        while not self._app:
            if self._ended or self.closed:
                return b""
            raw = await self.inner.read(n)
            if not raw:
                self._ended = True
                return b""
            self._process(raw)
        out = bytes(self._app[:n])
        del self._app[:n]
        return out

    # -- output ----------------------------------------------------------------------------

    def _send_below(self, index: int, payload: bytes) -> None:
        """Send ``payload`` produced by layer ``index`` through the layers below it."""
        for layer in reversed(self.layers[:index]):
            if not payload:
                return
            payload = layer.encode(payload)
        if payload:
            self.inner.write(payload)

    def write(self, data: bytes) -> None:
        if self.closed or self._ended:
            return
        if self._on_write is not None:
            self._on_write(data)
        self._send_below(len(self.layers), data)

    async def drain(self) -> None:
        await self.inner.drain()

    def buffered(self) -> int:
        return self.inner.buffered()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._ended:
            for index in reversed(range(len(self.layers))):
                with contextlib.suppress(Exception):
                    self._send_below(index, self.layers[index].close())
        self._ended = True
        self.inner.close()
