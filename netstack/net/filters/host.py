"""What a filter needs from the daemon while it is set up: chardevs, the loop, the log.

:class:`FilterHost` is the narrow view (``netstack.daemon.Netstack`` satisfies it) handed to
each filter's ``setup``; :class:`Scheduler` is the part of an event loop a timed filter
uses (``asyncio`` loops satisfy it; tests pass a manual clock).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """``time()`` in seconds and ``call_at(when, callback)``, as on an asyncio loop."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable: ...


class FilterHost(Protocol):
    """The daemon as filters see it."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def log(self) -> logging.Logger: ...

    def chardev(self, chardev_id: str) -> Any:
        """The chardev with this id (a :class:`netstack.chardev.base.Chardev`), or None."""
        ...
