"""The contract of a sans-IO byte-stream layer (WebSocket, telnet) under a chardev.

A layer sits between a connection's wire bytes and the front end's application bytes.
:class:`Layer` is what the chardev adapter (:mod:`netstack.chardev.layers`) drives:
``begin()`` gives the bytes to send when the layer starts (telnet's option negotiation),
``feed(wire)`` returns a :class:`Step` (application bytes, bytes to send back, whether the
connection is over, whether the layer's handshake just completed), ``encode(app)`` frames
output and ``close()`` gives the bytes that end the connection politely.

Invariants every layer keeps: ``feed`` never raises on any input; once ``closed`` it
returns empty steps; ``error`` names the reason for an abnormal end (hostile or broken
input), None otherwise; ``opened`` is True once application data may flow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Step:
    """What one ``feed`` produced."""

    data: bytes = b""
    reply: bytes = b""
    closed: bool = False
    #: The layer's handshake completed during this step.
    opened: bool = False


class Layer(Protocol):
    opened: bool
    closed: bool
    error: str | None

    def begin(self) -> bytes: ...

    def feed(self, data: bytes) -> Step: ...

    def encode(self, data: bytes) -> bytes: ...

    def close(self) -> bytes: ...
