"""Log throttling and error accounting of one user netdev.

Owns what the netdev says in the log and how often: at most one line per topic every
:data:`LOG_INTERVAL` seconds (a guest or a host peer can cause the same failure at will);
unexpected exceptions (bugs) counted as ``internal-error`` and logged with their
traceback; host socket failures counted (``host-errors``); the flow budget
(``x-max-flows``) and malformed-input totals logged when they grew.

Nothing here raises; nothing here touches a socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final, Literal

from netstack.ratelog import RateLog

LOG_INTERVAL: Final = 30.0
_BAD_WORDS: Final = ("malformed", "bad-", "short", "mismatch", "unexpected")


def is_bad(name: str) -> bool:
    """Whether counter ``name`` counts malformed input."""
    return any(word in name for word in _BAD_WORDS)


#: What the reporter counts, in the gateway's table.
ReporterCounter = Literal["internal-error"]


class Reporter:
    """The rate-limited log and error counters of one user netdev."""

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        clock: Callable[[], float],
        count: Callable[[ReporterCounter], None],
    ) -> None:
        self.name = name
        self.log = log
        self._count = count
        self._rate = RateLog(log, interval=LOG_INTERVAL, clock=clock)
        self.host_errors = 0
        #: Malformed-input total and refused guest flows, as last logged.
        self.reported_bad = 0
        self.reported_refused = 0

    def may_log(self, topic: str) -> bool:
        """True at most once per :data:`LOG_INTERVAL` per topic (a shared RateLog)."""
        return self._rate.allow(topic)

    def internal_error(self, where: str) -> None:
        """An unexpected exception (call from an ``except`` block): counted, logged."""
        self._count("internal-error")
        if self.may_log("internal"):
            self.log.exception("user %s: unexpected error handling %s", self.name, where)

    def host_error(self, what: str, exc: OSError) -> None:
        self.host_errors += 1
        if self.may_log(what):
            self.log.warning("user %s: %s failed: %s", self.name, what, exc)

    def flow_budget(self, refused: int, tcp: int, udp: int, icmp: int) -> None:
        """Guest flows were refused for the budget (``refused`` so far)."""
        if refused > self.reported_refused and self.may_log("flow-budget"):
            self.log.warning(
                "user %s: flow budget reached (tcp %d, udp %d, icmp %d per family; "
                "x-max-flows) or descriptor reserve: %d new guest flows refused so far",
                self.name, tcp, udp, icmp, refused,
            )  # fmt: skip
            self.reported_refused = refused

    def bad_input(self, counters: Mapping[str, int]) -> int:
        """The malformed-input total of ``counters``, logged when it grew."""
        bad = sum(v for k, v in counters.items() if is_bad(k))
        if bad > self.reported_bad and self.may_log("bad-input"):
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(counters.items()) if is_bad(k) and v)
            self.log.warning("user %s: dropped bad input (totals: %s)", self.name, detail)
            self.reported_bad = bad
        return bad
