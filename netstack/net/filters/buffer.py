"""filter-buffer: hold frames, release them every ``interval`` µs (``net/filter-buffer.c``).

Every frame the filter sees is taken (consumed for the sender) and appended to the
filter's own queue; a periodic timer, first armed at setup for ``now + interval`` and
re-armed for ``now + interval`` after each firing, releases everything held: each held
batch continues along the chain after this filter, in its direction, then reaches the
receiver (``qemu_netfilter_pass_to_next``). ``status=off`` stops the timer and releases at
once; ``status=on`` re-arms it; deleting the filter releases what it holds.

The queue is bounded like QEMU's (10,000 frames): past the bound frames are dropped and
counted. Setup check (unreachable through the schema, which rejects a zero ``interval``
earlier): ``Parameter 'interval' expects a non-zero interval``.

Timing is sans-IO: the filter talks to a :class:`~netstack.net.filters.host.Scheduler`
(``time()``/``call_at()``), the asyncio loop in the daemon, a manual clock in tests.
QEMU's virtual clock stops with the VM; the daemon has no VM, so the loop's monotonic
clock stands in for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from netstack.errors import GenericError
from netstack.net.filter import Direction, NetFilter, QueueSel
from netstack.net.queue import QUEUE_MAXLEN

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.net.filters.host import Cancellable, FilterHost, Scheduler

Held = tuple["NetClient", Direction, list[bytes], bool]


class FilterBuffer(NetFilter):
    """Hold frames; release them all every ``interval`` microseconds."""

    qom_type = "filter-buffer"

    def __init__(
        self,
        filter_id: str,
        netdev: NetClient,
        *,
        interval: int,
        scheduler: Scheduler | None = None,
        queue: QueueSel = "all",
        enabled: bool = True,
        position: str = "tail",
        insert: str = "behind",
    ) -> None:
        super().__init__(filter_id, netdev, queue, enabled, position, insert)
        self.interval = interval
        self.scheduler = scheduler
        self.held: list[Held] = []
        self.held_frames = 0
        self.dropped = 0
        self.released = 0
        self.deadline: float | None = None
        self._timer: Cancellable | None = None

    def setup(self, host: FilterHost | None = None) -> None:
        if not self.interval:
            raise GenericError("Parameter 'interval' expects a non-zero interval")
        if self.scheduler is None:
            if host is None:
                raise ValueError("filter-buffer needs a scheduler or a host")
            self.scheduler = host.loop
        self._arm()

    # -- timer ---------------------------------------------------------------------------

    def _arm(self) -> None:
        sched = self.scheduler
        if sched is None:
            return
        self._cancel()
        self.deadline = sched.time() + self.interval / 1e6
        self._timer = sched.call_at(self.deadline, self._fire)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self.deadline = None

    def _fire(self) -> None:
        self._timer = None
        self.release()
        self._arm()

    # -- frames --------------------------------------------------------------------------

    def receive(
        self, sender: NetClient, direction: Direction, frames: Sequence[bytes], vnet: bool
    ) -> Sequence[bytes]:
        room = QUEUE_MAXLEN - self.held_frames
        if room < len(frames):
            self.dropped += len(frames) - max(room, 0)
            frames = frames[: max(room, 0)]
        if frames:
            self.held.append((sender, direction, list(frames), vnet))
            self.held_frames += len(frames)
        return ()

    def release(self) -> int:
        """Send everything held on along the chain; returns the number of frames."""
        held, self.held = self.held, []
        count = self.held_frames
        self.held_frames = 0
        attached = self in self.netdev.filters
        for sender, direction, frames, vnet in held:
            if attached:
                self.pass_to_next(sender, direction, frames, vnet)
            else:  # already detached (deleted): straight to the receiver
                peer = sender.peer
                if peer is not None and not sender.deleted:
                    peer.incoming.send(sender, frames, None, vnet)
        self.released += count
        return count

    def status_changed(self) -> None:
        """``status`` was set: off stops the timer and flushes, on re-arms it."""
        if self.enabled:
            self._arm()
        else:
            self._cancel()
            self.release()

    def properties(self) -> list[tuple[str, str]]:
        return [("interval", str(self.interval)), *super().properties()]

    def cleanup(self) -> None:
        self._cancel()
        self.release()
