"""A manual clock for timer-driven code under test: time moves only when the test says, so
tests of timeouts and intervals run without sleeping.

:class:`ManualClock` has the ``time()`` / ``call_at()`` shape of an event loop's clock (what
:class:`netstack.net.filters.host.Scheduler` asks for); :meth:`ManualClock.advance` runs
what fell due, in order.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


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
