"""Bounded waiting in tests: one :func:`until` for every "let the loop run until X holds",
and :func:`open_fds` for leak checks."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable

from tests.kit.clock import ManualLoop

#: How long :func:`until` waits unless told otherwise, in seconds.
DEFAULT_TIMEOUT = 10.0


async def until(
    cond: Callable[[], object],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Let the event loop run until ``cond()`` is true; :class:`AssertionError` once
    ``timeout`` seconds of loop time have passed without it (checked at least once).

    On a :class:`~tests.kit.clock.ManualLoop` the loop's time stands still: the wait is for
    I/O only (real seconds, in steps of ``interval`` during which fds are served), and
    timers fall due only through :meth:`~tests.kit.clock.ManualLoop.advance`.
    """
    loop = asyncio.get_running_loop()
    if isinstance(loop, ManualLoop):
        end = time.monotonic() + timeout
        await loop.settle()
        while not cond():
            if time.monotonic() > end:
                raise AssertionError(f"{what} not reached within {timeout:g} s")
            await loop.wait_io(interval)
        return
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s")
        await asyncio.sleep(interval)


def open_fds(*, collect: bool = True) -> int:
    """How many descriptors this process has open. With ``collect`` (the default) garbage
    is collected first, so that objects earlier tests left behind do not close their fds in
    the middle of a check; without it, an fd held only by garbage still counts (stricter
    leak checks, and the true count for setting an fd limit)."""
    if collect:
        gc.collect()
    return len(os.listdir("/proc/self/fd"))
