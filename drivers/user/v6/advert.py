"""When the router sends Router Advertisements.

Follows libslirp (unsolicited RAs at a random interval of 200-600 s, and
an RA for every Router Solicitation) within RFC 4861 §6.2.4-§6.2.6: the first
:data:`INITIAL_COUNT` unsolicited RAs after start (or after :meth:`Advertiser.restart`,
which the adapter calls when the link comes up) are at most :data:`INITIAL_INTERVAL` (16 s)
apart, the first one at once; solicited RAs go out at once (no random delay: the link is
virtual and collision-free) but never closer than :data:`MIN_GAP` (3 s,
MIN_DELAY_BETWEEN_RAS) to the previous multicast RA - a solicitation inside the gap is
answered at its end, once, however many arrive, unless the router answers it at once by
unicast (RFC 4861 §6.2.6 allows that; the router does it for solicitations from an address
and then calls :meth:`Advertiser.answered`). A solicited RA sent when an unsolicited one is
due anyway (the adapter's timer had not run yet) stands for it: no second RA follows at
once. Multicast RAs go to all-nodes (one RA serves every guest on a hub).

Sans-IO: :meth:`Advertiser.solicited` and :meth:`Advertiser.due` say whether to send now;
:meth:`Advertiser.next_deadline` says when :meth:`Advertiser.due` next wants to be asked.
The random source is injected (tests use a seeded :class:`random.Random`).
"""

from __future__ import annotations

import random
from typing import Final

MIN_INTERVAL: Final = 200.0
MAX_INTERVAL: Final = 600.0
INITIAL_COUNT: Final = 3
INITIAL_INTERVAL: Final = 16.0
MIN_GAP: Final = 3.0


class Advertiser:
    """The RA schedule of one router."""

    def __init__(
        self, now: float, rng: random.Random | None = None, *,
        min_interval: float = MIN_INTERVAL, max_interval: float = MAX_INTERVAL,
        min_gap: float = MIN_GAP,
    ) -> None:  # fmt: skip
        self.rng = rng if rng is not None else random.Random()
        self.min_interval = min_interval
        self.max_interval = max_interval
        self.min_gap = min_gap
        self.sent = 0
        self._last: float | None = None
        self._answer: float | None = None
        self._initial = 0
        self._next = now
        self.restart(now)

    def restart(self, now: float) -> None:
        """Begin again with the initial burst (first RA at once)."""
        self._initial = INITIAL_COUNT
        self._next = now

    def _interval(self) -> float:
        value = self.rng.uniform(self.min_interval, self.max_interval)
        if self._initial > 0:
            value = min(value, INITIAL_INTERVAL)
        return value

    def _mark(self, now: float) -> None:
        self._last = now
        self.sent += 1

    def solicited(self, now: float) -> bool:
        """A Router Solicitation arrived: True to send an RA now, else it is scheduled."""
        if self._last is None or now - self._last >= self.min_gap:
            self._mark(now)
            self._answer = None
            if now >= self._next:  # an unsolicited RA is due too: this one stands for it
                if self._initial > 0:
                    self._initial -= 1
                self._next = now + self._interval()
            return True
        if self._answer is None:
            self._answer = self._last + self.min_gap
        return False

    def answered(self) -> None:
        """The pending solicitation was answered otherwise (by unicast): drop it."""
        self._answer = None

    def due(self, now: float) -> bool:
        """True when an RA is due at ``now`` (solicited-late or unsolicited); reschedules."""
        send = False
        if self._answer is not None and now >= self._answer:
            self._answer = None
            send = True
        if now >= self._next:
            if self._initial > 0:
                self._initial -= 1
            self._next = now + self._interval()
            send = True
        if send:
            self._mark(now)
        return send

    def next_deadline(self) -> float:
        if self._answer is not None and self._answer < self._next:
            return self._answer
        return self._next
