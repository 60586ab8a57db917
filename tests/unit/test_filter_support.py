"""Helpers for the net filter tests: a manual clock, a filter host, socket chardevs."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

from netstack.chardev.sockets import SocketChardev
from netstack.qapi import chardev_from_qmp


class ManualTimer:
    def __init__(self, clock: ManualClock, when: float) -> None:
        self.clock = clock
        self.when = when
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A :class:`netstack.net.filters.host.Scheduler` whose time moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._heap: list[tuple[float, int, ManualTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer(self, when)
        heapq.heappush(self._heap, (when, next(self._seq), timer, callback))
        return timer

    @property
    def pending(self) -> list[float]:
        return sorted(t.when for _, _, t, _ in self._heap if not t.cancelled)

    def advance(self, seconds: float) -> int:
        """Move time forward, running due callbacks in order; returns how many ran."""
        target = self.now + seconds
        ran = 0
        for _ in range(10_000):
            if not self._heap or self._heap[0][0] > target:
                break
            when, _, timer, callback = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            callback()
            ran += 1
        self.now = target
        return ran


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
