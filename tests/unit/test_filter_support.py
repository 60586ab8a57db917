"""Helpers for the net filter tests: a filter host, socket chardevs (the manual clock is
:class:`tests.kit.clock.ManualClock`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from netstack.chardev.sockets import SocketChardev
from netstack.qapi import chardev_from_qmp


class SimpleHost:
    """A :class:`netstack.net.filters.host.FilterHost` with a chardev table."""

    def __init__(self, chardevs: dict[str, Any] | None = None) -> None:
        self.chardevs = chardevs or {}
        self.log = logging.getLogger("netstack.test.filters")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def chardev(self, chardev_id: str) -> Any:
        return self.chardevs.get(chardev_id)


async def unix_chardev(chardev_id: str, path: str) -> SocketChardev:
    """A started socket chardev listening on ``path`` (QMP defaults: server, no wait)."""
    spec = chardev_from_qmp(
        chardev_id, {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": path}}}}
    )
    chardev = SocketChardev(chardev_id, spec.options)  # type: ignore[arg-type]
    await chardev.start()
    return chardev


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), 5)
