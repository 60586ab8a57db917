"""A counting, rate-limited logger: what every component that logs about remote input or
host trouble uses, so a guest or peer that misbehaves at line rate cannot flood the log.

What it owns
    :class:`RateLog` counts every occurrence of a topic (a short string naming a kind of
    trouble: ``"read"``, ``"protocol"``, ``"bad-input"``) and lets at most ``burst`` lines
    of that topic through per ``interval`` seconds. The first line let through after some
    were held back ends in ``" (K similar suppressed)"``. :attr:`RateLog.counts` has every
    occurrence per topic (logged or not), :attr:`RateLog.suppressed` the lines held back
    since the last one let through; drivers may show either in their counters.

QEMU has no common facility for this: most of its back ends print every error
(``error_report``), a few only the first one (``net/l2tpv3.c``); here every such place is
bounded the same way.

The clock is a callable (``loop.time`` in drivers, :func:`time.monotonic` by default), so
tests drive it without sleeping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["DEFAULT_INTERVAL", "RateLog"]

#: Seconds of the default window: one line per topic per window.
DEFAULT_INTERVAL = 30.0


class RateLog:
    """Counts occurrences per topic and logs at most ``burst`` of them per ``interval``."""

    __slots__ = ("_clock", "_sent", "_window", "burst", "counts", "interval", "log", "suppressed")

    def __init__(
        self,
        log: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.interval = interval
        self.burst = burst
        self._clock = clock
        #: Occurrences per topic, logged or not.
        self.counts: dict[str, int] = {}
        #: Lines held back per topic since the last one let through.
        self.suppressed: dict[str, int] = {}
        self._window: dict[str, float] = {}
        self._sent: dict[str, int] = {}

    def allow(self, topic: str) -> bool:
        """Count one occurrence; True when a line about it may be logged now.

        For callers that build an expensive message or log in their own way; the
        suppressed count is then theirs to report (:meth:`take_suppressed`).
        """
        self.counts[topic] = self.counts.get(topic, 0) + 1
        now = self._clock()
        start = self._window.get(topic)
        if start is None or now - start >= self.interval:
            self._window[topic] = now
            self._sent[topic] = 1
            return True
        sent = self._sent[topic]
        if sent < self.burst:
            self._sent[topic] = sent + 1
            return True
        self.suppressed[topic] = self.suppressed.get(topic, 0) + 1
        return False

    def take_suppressed(self, topic: str) -> int:
        """The lines held back since the last one let through, and reset that count."""
        return self.suppressed.pop(topic, 0)

    def emit(self, level: int, topic: str, fmt: str, *args: object, exc_info: bool = False) -> bool:
        """Count, and log ``fmt % args`` at ``level`` if the topic's budget allows;
        True when logged."""
        if not self.allow(topic):
            return False
        skipped = self.suppressed.pop(topic, 0)
        if skipped:
            fmt += " (%d similar suppressed)"
            args = (*args, skipped)
        self.log.log(level, fmt, *args, exc_info=exc_info)
        return True

    def warning(self, topic: str, fmt: str, *args: object) -> bool:
        """:meth:`emit` at WARNING."""
        return self.emit(logging.WARNING, topic, fmt, *args)

    def error(self, topic: str, fmt: str, *args: object) -> bool:
        """:meth:`emit` at ERROR."""
        return self.emit(logging.ERROR, topic, fmt, *args)

    def exception(self, topic: str, fmt: str, *args: object) -> bool:
        """:meth:`emit` at ERROR with the exception being handled."""
        return self.emit(logging.ERROR, topic, fmt, *args, exc_info=True)

    def reset(self, topic: str) -> None:
        """Forget the topic's window (not its count): its next occurrence logs at once."""
        self._window.pop(topic, None)
        self.suppressed.pop(topic, None)

    def count(self, topic: str) -> int:
        """Occurrences of ``topic`` so far."""
        return self.counts.get(topic, 0)

    def total(self) -> int:
        """Occurrences over all topics."""
        return sum(self.counts.values())
