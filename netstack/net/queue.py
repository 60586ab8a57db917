"""A receiver's incoming queue, with QEMU's deliver / queue / flush / purge contract.

Follows ``net/queue.c``. Each net client owns one queue of frames that other clients sent
it but it could not take yet. The queue is bounded in frames (``nq_maxlen``, 10,000 by
default): past the bound a frame without a completion callback is dropped and counted,
while a frame with a callback is always kept, because its sender has stopped reading its
own input until the callback fires.

Batches are the unit: ``send`` takes a list of frames from one sender. A receiver may
take a prefix of a batch; the rest is queued and the receiver's ``receive_disabled`` flag
is set until someone flushes it (QEMU's ``qemu_flush_queued_packets``).

Deviation from QEMU: a batch arriving while older frames wait in the queue is appended
behind them and the queue is flushed, where QEMU delivers the new frame first; frames from
one receiver's point of view never overtake each other.

``NetQueue.send`` has a compiled twin in ``netstack/net/_fastnet.c`` (see
:mod:`netstack.net.fastcore`); both must change together.

Invariants: ``count`` equals the number of frames held; entries keep arrival order;
``delivering`` is true only while a delivery runs, so a frame sent from inside a delivery
is appended instead of re-entering the receiver.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from netstack.net.client import NetClient

#: QEMU's ``NET_BUFSIZE``: the largest frame the net core carries (4096 + 65536).
NET_BUFSIZE = 69632

#: QEMU's default bound of a client's incoming queue, in frames.
QUEUE_MAXLEN = 10000

SentCallback = Callable[[int], None]
"""Called with the number of frames finally delivered (0 when purged)."""


class Receiver(Protocol):
    """What a queue needs of its owner."""

    def deliver(self, sender: NetClient, frames: Sequence[bytes], vnet: bool) -> Sequence[bytes]:
        """Try to hand ``frames`` to the receiver; return the frames it could not take."""
        ...

    def can_receive_from(self, sender: NetClient) -> bool: ...


class _Entry:
    __slots__ = ("frames", "sender", "sent_cb", "vnet")

    def __init__(
        self,
        sender: NetClient,
        frames: Sequence[bytes],
        sent_cb: SentCallback | None,
        vnet: bool,
    ) -> None:
        self.sender = sender
        self.frames = frames
        self.sent_cb = sent_cb
        self.vnet = vnet


class NetQueue:
    """The incoming queue of one receiver."""

    __slots__ = ("_entries", "_owner", "count", "delivering", "dropped", "maxlen")

    def __init__(self, owner: Receiver, maxlen: int = QUEUE_MAXLEN) -> None:
        self._owner = owner
        self._entries: deque[_Entry] = deque()
        self.maxlen = maxlen
        self.count = 0
        self.dropped = 0
        self.delivering = False

    def __len__(self) -> int:
        return self.count

    def send(
        self,
        sender: NetClient,
        frames: Sequence[bytes],
        sent_cb: SentCallback | None = None,
        vnet: bool = False,
    ) -> int:
        """Deliver ``frames`` now if possible; queue what is left.

        Returns the number of frames delivered now. When it is less than ``len(frames)``,
        the rest is queued (or, past the bound and without ``sent_cb``, dropped) and
        ``sent_cb`` is called once they have been delivered or purged.
        """
        if self.delivering or not self._owner.can_receive_from(sender):
            self._append(sender, frames, sent_cb, vnet)
            return 0
        if self._entries:
            # Keep arrival order: QEMU would let this batch overtake the queued frames.
            self._append(sender, frames, sent_cb, vnet)
            self.flush()
            return 0
        self.delivering = True
        try:
            left = self._owner.deliver(sender, frames, vnet)
        finally:
            self.delivering = False
        if left:
            self._append(sender, left, sent_cb, vnet)
            return len(frames) - len(left)
        return len(frames)

    def _append(
        self,
        sender: NetClient,
        frames: Sequence[bytes],
        sent_cb: SentCallback | None,
        vnet: bool,
    ) -> None:
        if sent_cb is None:
            room = self.maxlen - self.count
            if room <= 0:
                self.dropped += len(frames)
                return
            if len(frames) > room:
                self.dropped += len(frames) - room
                frames = frames[:room]
        self._entries.append(_Entry(sender, frames, sent_cb, vnet))
        self.count += len(frames)

    def flush(self) -> bool:
        """Deliver queued frames in order until the receiver refuses one.

        Returns True when the queue is empty afterwards.
        """
        entries = self._entries
        while entries:
            entry = entries[0]
            self.delivering = True
            try:
                left = self._owner.deliver(entry.sender, entry.frames, entry.vnet)
            finally:
                self.delivering = False
            taken = len(entry.frames) - len(left)
            self.count -= taken
            if left:
                entry.frames = left
                return False
            entries.popleft()
            if entry.sent_cb is not None:
                entry.sent_cb(taken)
        return True

    def purge(self, sender: NetClient) -> int:
        """Remove every frame that ``sender`` queued here; their callbacks get 0."""
        kept: deque[_Entry] = deque()
        removed = 0
        for entry in self._entries:
            if entry.sender is sender:
                removed += len(entry.frames)
                if entry.sent_cb is not None:
                    entry.sent_cb(0)
            else:
                kept.append(entry)
        self._entries = kept
        self.count -= removed
        return removed

    def purge_all(self) -> int:
        """Drop everything queued (the owner is going away); callbacks get 0, so senders
        that paused waiting for them resume. (QEMU frees these without callbacks, which can
        leave a sender paused for ever.)"""
        entries, self._entries = self._entries, deque()
        removed = self.count
        self.count = 0
        for entry in entries:
            if entry.sent_cb is not None:
                entry.sent_cb(0)
        return removed
