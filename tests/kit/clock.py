"""Manual clocks for timer-driven code under test: time moves only when the test says, so
tests of timeouts, intervals and back-offs run without sleeping.

* :class:`ManualClock` has the ``time()`` / ``call_at()`` shape of an event loop's clock
  (what :class:`netstack.net.filters.host.Scheduler` asks for) for sans-IO code;
  :meth:`ManualClock.advance` runs what fell due, in order.
* :class:`ManualLoop` is a real selector event loop (fds, sockets and tasks work as usual)
  whose ``time()`` is virtual: ``call_later``/``call_at`` timers, ``asyncio.sleep`` and
  ``wait_for`` deadlines fall due only when the test calls :meth:`ManualLoop.advance`,
  which moves time from one due timer to the next and lets the loop run everything that
  became ready (I/O included) at each step. :func:`run_manual` runs a test body on one.
  Adapter tests use it: a 30 s log interval or a 2 s reconnect back-off costs nothing,
  and "nothing happens before the deadline" is exact instead of a guess about sleeping.

A test body running on a :class:`ManualLoop` must not wait for a timer itself (time stands
still): it awaits I/O, :meth:`ManualLoop.settle` or :meth:`ManualLoop.advance`.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import selectors
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple, Unpack

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

#: Loop iterations :meth:`ManualLoop.settle` allows before it gives up (a busy loop).
SETTLE_LIMIT = 10_000


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


class ManualLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock moves only through :meth:`advance`."""

    def __init__(self, now: float = 1000.0) -> None:
        super().__init__(selectors.DefaultSelector())
        self._now = now
        self._timers: list[tuple[float, int, asyncio.TimerHandle]] = []
        self._timer_seq = itertools.count()

    def time(self) -> float:
        return self._now

    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: *_Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        heapq.heappush(self._timers, (when, next(self._timer_seq), handle))
        return handle

    @property
    def pending(self) -> list[float]:
        """When the timers not yet run nor cancelled fall due, in order."""
        return sorted(w for w, _, h in self._timers if not h.cancelled() and w > self._now)

    def _next_due(self, limit: float) -> float | None:
        timers = self._timers
        while timers and (timers[0][2].cancelled() or timers[0][0] <= self._now):
            heapq.heappop(timers)
        if timers and timers[0][0] <= limit:
            return timers[0][0]
        return None

    async def settle(self) -> None:
        """Let the loop run until nothing but the caller is ready (I/O polled each turn)."""
        ready = vars(self)["_ready"]  # the loop's run queue (asyncio.BaseEventLoop)
        for _ in range(SETTLE_LIMIT):
            await asyncio.sleep(0)
            if not ready:
                return
        raise RuntimeError("the loop never settled (a callback reschedules itself forever?)")

    async def wait_io(self, seconds: float) -> None:
        """Serve fds for up to ``seconds`` of real time without moving the loop's time
        (a helper thread sleeps and wakes the loop), then :meth:`settle`."""
        await self.run_in_executor(None, time.sleep, seconds)
        await self.settle()

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, stopping at every due timer to run it and
        whatever it makes ready."""
        if seconds < 0:
            raise ValueError("time does not go back")
        target = self._now + seconds
        await self.settle()
        for _ in range(SETTLE_LIMIT):
            when = self._next_due(target)
            if when is None:
                break
            self._now = when
            await self.settle()
        self._now = target
        await self.settle()


async def accept_after_retry(server: socket.socket, delay: float) -> socket.socket:
    """The connection a client retries ``delay`` seconds of loop time from now, checking
    that none comes before (``server`` is a listening non-blocking socket)."""
    loop = running()
    accept = loop.create_task(loop.sock_accept(server))
    await loop.advance(delay * 0.9)
    if accept.done():
        raise AssertionError("retried before the delay")
    await loop.advance(delay * 0.1)
    end = time.monotonic() + 10
    while not accept.done():
        if time.monotonic() > end:
            accept.cancel()
            raise AssertionError("no connection within 10 s of the retry")
        await loop.wait_io(0.01)
    conn, _ = accept.result()
    return conn


def running() -> ManualLoop:
    """The running loop, which must be a :class:`ManualLoop`."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, ManualLoop), "not running on a ManualLoop"
    return loop


def run_manual(
    main: Callable[[ManualLoop], Awaitable[_T]], *, now: float = 1000.0, timeout: float = 60.0
) -> _T:
    """Run ``main(loop)`` to completion on a fresh :class:`ManualLoop`, then close it.

    ``timeout`` is in real seconds (the loop's own time stands still): past it the body is
    cancelled and :class:`TimeoutError` raised.
    """
    loop = ManualLoop(now)
    expired = threading.Event()
    try:
        asyncio.set_event_loop(loop)
        task = loop.create_task(_call(main, loop))

        def expire() -> None:
            expired.set()
            loop.call_soon_threadsafe(task.cancel)

        watchdog = threading.Timer(timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if expired.is_set():
                raise TimeoutError(f"the test body ran for more than {timeout:g} s") from None
            raise
        finally:
            watchdog.cancel()
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _call(main: Callable[[ManualLoop], Awaitable[_T]], loop: ManualLoop) -> _T:
    return await main(loop)
