"""The endpoint contract of the user netdev: how its machines take input, give output and
keep time.

Every machine of a user netdev (the gateway and its services, the IPv6 router and NAT, the
guest TCP connections, the forwarders) follows one shape:

* **Input** is a method call carrying ``now`` (a guest frame, a host datagram, a connect
  result, ...) or :meth:`Timed.on_deadline` when its deadline came; neither returns
  anything.
* **Output** goes into the netdev's one :class:`Outbox`: guest-bound frames (plain, or
  behind a virtio-net header), host actions (a value naming the work: "send this datagram
  on flow socket X", "close flow X", "query upstream Y", ...) and QMP events. A machine
  appends; only the pump drains (:meth:`Outbox.drain`). The lists keep their identity for
  the life of the outbox, so a machine may hold a reference to one; nobody swaps them.
* **Time** is one :class:`Deadlines` structure per netdev: a heap keyed by deadline with
  lazy invalidation. A machine that changed pushes its new deadline
  (:meth:`Deadlines.set`); machines that did not change are not asked. Due machines get
  :meth:`Timed.on_deadline` and then push again. The adapter keeps one ``loop.call_at``
  for the whole netdev and moves it only when the earliest deadline moves earlier.

The pump (the client's, after each burst of input: a batch of guest frames, a host socket
wake-up, the timer) drains the outbox - frames to the peer in one batch, actions to the
host adapters that own the fds, events to QMP - and re-arms the timer.

Invariants:

* a machine never performs a system call: its host work leaves as an action;
* output order is preserved within each kind (frames in the order produced, actions in
  the order produced); plain frames of one drain leave before the virtio-net ones;
* a deadline is recomputed only for a machine that changed (or whose deadline came); a
  stale heap entry (the machine's deadline moved) is skipped, or pushed again at the
  later time, when it surfaces - so moving a deadline later costs no heap work;
* every deadline is honoured no later than it is due (the timer may fire early, after a
  deadline moved later; due work is then none and the timer is re-armed).

QEMU's libslirp polls every socket and timer of a Slirp instance from the main loop
(``slirp_pollfds_fill`` / ``slirp_pollfds_poll``, ``slirp_handle_timer``); here the loop
watches fds and one timer per netdev instead.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Final, Protocol

#: Timer slack: a re-arm is skipped when the armed time is at most this much later.
SLACK: Final = 0.001
_COMPACT_MIN: Final = 64

Event = tuple[str, dict[str, Any]]


class Timed(Protocol):
    """A machine with timers, kept in a :class:`Deadlines` structure."""

    def next_deadline(self) -> float | None:
        """When :meth:`on_deadline` is next due (None: no timer)."""

    def on_deadline(self, now: float) -> None:
        """Run what is due at ``now`` (output into the outbox; returns nothing)."""


class Part:
    """A :class:`Timed` view of a service whose timer methods have other names (the
    gateway's DHCP server, TFTP server, UDP NAT, ...)."""

    __slots__ = ("next_deadline", "on_deadline")

    def __init__(
        self, next_deadline: Callable[[], float | None], on_deadline: Callable[[float], None]
    ) -> None:
        self.next_deadline = next_deadline
        self.on_deadline = on_deadline


class Outbox:
    """What the machines of one netdev produced since the last drain, in order.

    ``frames``: guest-bound Ethernet frames; ``vnet_frames``: guest-bound frames behind a
    virtio-net header (guest TCP); ``actions``: host work for the adapters; ``events``:
    QMP events (name, data without the netdev name). Machines append to these lists;
    :meth:`drain` is the only way out."""

    __slots__ = ("actions", "events", "frames", "vnet_frames")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.vnet_frames: list[bytes] = []
        self.actions: list[Any] = []
        self.events: list[Event] = []

    def __bool__(self) -> bool:
        return bool(self.frames or self.vnet_frames or self.actions or self.events)

    def drain(self) -> tuple[list[bytes], list[bytes], list[Any], list[Event]]:
        """Everything produced since the last drain (frames, vnet frames, actions,
        events), leaving the outbox empty."""
        got = (self.frames[:], self.vnet_frames[:], self.actions[:], self.events[:])
        self.frames.clear()
        self.vnet_frames.clear()
        self.actions.clear()
        self.events.clear()
        return got


class Deadlines:
    """The timers of one netdev: each :class:`Timed` machine's next deadline, in a heap.

    Each machine has at most one entry that counts (its *queued* time; entries it left
    behind are skipped when they surface). :meth:`set` records the machine's deadline and
    pushes an entry only when the deadline is earlier than the queued one (or none is
    queued); a deadline that moved later is pushed again at the recorded time when the
    queued entry surfaces; a machine that was dropped or has no deadline is forgotten
    then. The heap is rebuilt when left-behind entries outnumber the queued ones.

    ``rearm(when)`` is called when the earliest deadline may have moved earlier (the
    adapter moves its one ``loop.call_at``)."""

    __slots__ = ("_heap", "_queued", "_rearm", "_seq", "_when")

    def __init__(self, rearm: Callable[[float], None] | None = None) -> None:
        self._when: dict[Timed, float] = {}
        self._queued: dict[Timed, float] = {}
        self._heap: list[tuple[float, int, Timed]] = []
        self._seq = itertools.count()
        self._rearm = rearm

    def __len__(self) -> int:
        return len(self._when)

    def set(self, machine: Timed, when: float | None) -> None:
        """``machine``'s next deadline is now ``when`` (None: no timer)."""
        if when is None:
            self._when.pop(machine, None)
            return
        self._when[machine] = when
        queued = self._queued.get(machine)
        if queued is not None and queued <= when:
            return  # the queued entry surfaces first and re-pushes
        self._queued[machine] = when
        heap = self._heap
        heapq.heappush(heap, (when, next(self._seq), machine))
        if len(heap) > _COMPACT_MIN and len(heap) > 4 * len(self._queued):
            self._compact()
        if self._rearm is not None and heap[0][2] is machine:
            self._rearm(when)

    def changed(self, machine: Timed) -> None:
        """``machine`` took input that may have moved its deadline: ask it."""
        self.set(machine, machine.next_deadline())

    def drop(self, machine: Timed) -> None:
        """Forget ``machine`` (closed); its entry is skipped when it surfaces."""
        self._when.pop(machine, None)

    def earliest(self) -> float | None:
        """The time of the earliest queued entry (never later than the earliest
        deadline); None when there is none."""
        heap, queued, when = self._heap, self._queued, self._when
        while heap:
            at, _, machine = heap[0]
            if queued.get(machine) == at:
                if machine in when:
                    return at
                del queued[machine]
            heapq.heappop(heap)
        return None

    def run(self, now: float) -> None:
        """Give every machine due at ``now`` its :meth:`Timed.on_deadline`, then record
        its next deadline."""
        heap, queued, recorded = self._heap, self._queued, self._when
        due: list[Timed] = []
        while heap and heap[0][0] <= now:
            at, _, machine = heapq.heappop(heap)
            if queued.get(machine) != at:
                continue  # left behind by an earlier deadline
            del queued[machine]
            when = recorded.get(machine)
            if when is None:
                continue  # dropped, or no deadline any more
            if when > at:  # moved later since this entry was pushed
                queued[machine] = when
                heapq.heappush(heap, (when, next(self._seq), machine))
                continue
            del recorded[machine]
            due.append(machine)
        for machine in due:
            machine.on_deadline(now)
            self.set(machine, machine.next_deadline())

    def _compact(self) -> None:
        seq = self._seq
        self._heap = [(at, next(seq), m) for m, at in self._queued.items()]
        heapq.heapify(self._heap)


class NetdevTimer:
    """One ``loop.call_at`` for a netdev's :class:`Deadlines`: armed at the earliest
    deadline, moved only when that moves earlier; ``fire(now)`` runs when it is due."""

    __slots__ = ("_at", "_closed", "_fire", "_handle", "_loop", "deadlines")

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0
        self._closed = False
        self.deadlines = Deadlines(self.arm)

    def arm(self, when: float) -> None:
        """Make sure the timer fires no later than ``when``."""
        if self._closed:
            return
        if self._handle is not None:
            if when >= self._at - SLACK:
                return
            self._handle.cancel()
        self._at = when
        self._handle = self._loop.call_at(when, self._on_timer)

    def rearm(self) -> None:
        """Arm for the earliest deadline (after the timer fired)."""
        when = self.deadlines.earliest()
        if when is not None:
            self.arm(when)

    def _on_timer(self) -> None:
        self._handle = None
        if not self._closed:
            self._fire()

    def close(self) -> None:
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
