"""The contract between the daemon and its drivers.

A driver is described by a :class:`DriverSpec` keyed by the ``Netdev`` type discriminator
(``qapi/net.json``). The composition root builds the registry from ``drivers`` and hands it
to the daemon; nothing in ``netstack`` imports ``drivers``.

``create`` receives the validated :class:`~netstack.qapi.Netdev` and a :class:`DriverHost`,
the narrow view of the daemon a driver may use, and returns the net clients it made (one,
or N for ``queues=N``), all named after the netdev id. It raises
:class:`~netstack.errors.NetstackError` with QEMU's text on failure and leaves nothing
behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.net.hub import Hub
    from netstack.qapi import Netdev


class DriverHost(Protocol):
    """What the daemon offers to drivers."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def runtime_dir(self) -> Path: ...

    @property
    def log(self) -> logging.Logger: ...

    def hub(self, hub_id: int) -> Hub:
        """The hub with this id, created on first use."""
        ...

    def find_netdev(self, name: str) -> NetClient | None:
        """The first non-NIC client with this name (QEMU's ``qemu_find_netdev``)."""
        ...

    def emit_event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Send a QMP event to every negotiated monitor."""
        ...

    def chardev(self, chardev_id: str) -> Any:
        """The chardev with this id, or None."""
        ...


CreateFn = Callable[["DriverHost", "Netdev"], Awaitable[list["NetClient"]]]


@dataclass(frozen=True)
class DriverSpec:
    """A driver: its ``Netdev`` type name and how to create its clients."""

    type: str
    create: CreateFn
    summary: str = ""
