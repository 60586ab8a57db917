"""How many frames one port may take per wake-up of the event loop, shared by every port
on that loop, so a port that floods cannot starve the others.

What it owns
    :class:`FairShare`, one per event loop (:func:`for_loop`): the read budget per wake-up
    of each port that pulls frames from outside (a tap's fd, a vhost-user transmit ring).
    A port asks :meth:`FairShare.budget` before reading and reports a wake-up that found
    frames with :meth:`FairShare.active`. Sans-IO: times are given by the caller (the
    loop's clock); nothing here reads, schedules or logs.

The policy. The loop runs every ready callback once per iteration, so a port that is woken
gets one batch per iteration, and everyone else waits for that batch to be carried
through the hub before their next turn. A request/response exchange needs two or three
iterations (the guest's request read, the host's reply read, and so on), so a flooding
port's batch is paid two or three times per exchange of every other port. While only one
port has had work within :data:`WINDOW`, it gets the full budget (QEMU's ``tap_send``
limit of 50 frames, which amortises the cost of a wake-up; a vhost-user transmit ring
keeps its own pass budget); as soon as another port has
had work within that window, each port gets :data:`QUANTUM` frames per wake-up. An
exchange then waits for at most a few small batches instead of a few large ones; the
flooding port loses some of its rate (its wake-up cost is spread over fewer frames),
which is the price of the others' latency.

Deviation from QEMU: QEMU's tap reads up to 50 frames per wake-up whatever else is
waiting (``net/tap.c``, ``tap_send``), and its vhost-user transmit has no budget of its
own (the vhost back end runs in another process). Here one loop serves every port, so
the budget shrinks under contention.

Invariants: :meth:`FairShare.budget` is always :attr:`~FairShare.quantum` or the port's
full budget (:attr:`~FairShare.full` unless the port names its own), both >= 1; a
port's own activity never shrinks its own budget; the state is O(1) whatever the number of
ports (the latest activity, and the latest activity of any other port than the latest
one's).
"""

from __future__ import annotations

import itertools
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

__all__ = ["FULL", "QUANTUM", "WINDOW", "FairShare", "for_loop"]

#: Frames per wake-up while one port alone has work (QEMU's ``tap_send`` limit).
FULL = 50
#: Frames per wake-up while several ports have work.
QUANTUM = 8
#: Seconds another port's work counts as contention.
WINDOW = 0.02

_NEVER = float("-inf")


class FairShare:
    """The read budgets of the ports on one loop (see the module docstring)."""

    __slots__ = ("_ids", "_last_at", "_last_port", "_other_at", "full", "quantum", "window")

    def __init__(self, full: int = FULL, quantum: int = QUANTUM, window: float = WINDOW) -> None:
        if not 1 <= quantum <= full:
            raise ValueError(f"need 1 <= quantum ({quantum}) <= full ({full})")
        self.full = full
        self.quantum = quantum
        self.window = window
        self._ids = itertools.count(1)
        self._last_port = 0
        self._last_at = _NEVER
        self._other_at = _NEVER

    def port(self) -> int:
        """A new port's token (never 0, never reused by this share)."""
        return next(self._ids)

    def active(self, port: int, now: float) -> None:
        """``port`` found work at ``now``."""
        if port != self._last_port:
            self._other_at = self._last_at
            self._last_port = port
        self._last_at = now

    def contended(self, port: int, now: float) -> bool:
        """Whether another port than ``port`` had work within :attr:`window` of ``now``."""
        other = self._last_at if port != self._last_port else self._other_at
        return now - other < self.window

    def budget(
        self, port: int, now: float, full: int | None = None, quantum: int | None = None
    ) -> int:
        """Frames ``port`` may take at this wake-up: its quantum under contention (the
        port's own when it names one, default :attr:`quantum`), else ``full`` (the port's
        own limit when it has one, default :attr:`full`)."""
        if self.contended(port, now):
            return self.quantum if quantum is None else quantum
        return self.full if full is None else full


_shares: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FairShare] = (
    weakref.WeakKeyDictionary()
)


def for_loop(loop: asyncio.AbstractEventLoop) -> FairShare:
    """The share of ``loop`` (made on first use)."""
    share = _shares.get(loop)
    if share is None:
        share = _shares[loop] = FairShare()
    return share
