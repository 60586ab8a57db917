"""The fd side of a driver: reader/writer registrations on the loop and the two directions
of back-pressure, written once for every driver that owns a non-blocking fd.

What it owns
    * :class:`FdWatch` - one fd's ``add_reader``/``add_writer`` registrations. Reading is
      registered exactly when the owner wants it (:meth:`FdWatch.set_reading`), the flow
      control does not hold it (:meth:`FdWatch.hold`) and the watch is open; toggling is
      idempotent, so callers never track registrations themselves. When the loop refuses
      the fd (``add_reader`` raises for a file the selector cannot poll) the error reaches
      the caller and the watch stays not reading. Writing is a one-shot
      wait: :meth:`FdWatch.wait_writable` registers a writer that removes itself before
      calling the owner back. :meth:`FdWatch.close` removes both (the owner closes the fd
      afterwards) and makes every later call a no-op.
    * :class:`PeerFlow` - the receive side of QEMU's delivery contract
      (``qemu_send_packet_async`` in ``net/net.c`` and the drivers' ``*_send_completed``):
      a batch read from the fd goes to the peer with a completion callback; when the peer
      queues part of it, reading is held until that callback fires. The callback may fire
      inside ``send`` (the queue flushes older entries first), in which case nothing is held.
      :meth:`PeerFlow.reset` forgets a batch in flight (a new connection), so a callback
      from an earlier connection never releases the hold of a later one. The completion
      callback is made once per generation (at creation and at each reset), not per batch:
      a wake-up's Python is the send call and two flag writes.

The transmit side (the fd is full: ``EAGAIN``/``ENOBUFS``) is the driver's ``receive``
returning the prefix it wrote, which makes the core queue the rest and disable reception;
the driver then calls :meth:`FdWatch.wait_writable` with
:meth:`~netstack.net.client.NetClient.flush_queued` (or its own flush) as the writable
callback, which is what QEMU's ``qemu_flush_queued_packets`` from the fd's write handler
does (``tap_writable``, ``net_socket_writable``).

Invariants
    * At most one reader and one writer are registered per watch, and none after
      :meth:`FdWatch.close`.
    * Reader callbacks are registered as given: the read path adds no call per wake-up.
    * Nothing here reads, writes, blocks or closes the fd.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from netstack.net.client import NetClient

__all__ = ["FdWatch", "PeerFlow"]


class FdWatch:
    """The reader and writer registrations of one fd (see the module docstring)."""

    __slots__ = (
        "_held",
        "_loop",
        "_on_readable",
        "_on_writable",
        "_reading",
        "_want_read",
        "_writing",
        "closed",
        "fd",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        on_readable: Callable[[], object] | None = None,
        on_writable: Callable[[], object] | None = None,
    ) -> None:
        self._loop = loop
        self.fd = fd
        self._on_readable = on_readable
        self._on_writable = on_writable
        self._want_read = False
        self._held = False
        self._reading = False
        self._writing = False
        self.closed = False

    @property
    def reading(self) -> bool:
        """Whether a reader is registered now."""
        return self._reading

    @property
    def writing(self) -> bool:
        """Whether a writable wait is pending."""
        return self._writing

    @property
    def held(self) -> bool:
        """Whether the flow control holds reading (:meth:`hold`)."""
        return self._held

    def set_reading(self, on: bool) -> None:
        """The owner wants readable callbacks (True) or not (False)."""
        self._want_read = on
        self._sync()

    def hold(self, on: bool) -> None:
        """Hold reading while the peer has a batch queued (:class:`PeerFlow`)."""
        self._held = on
        self._sync()

    def _sync(self) -> None:
        want = self._want_read and not self._held and not self.closed
        if want == self._reading or self._on_readable is None:
            return
        if want:
            self._loop.add_reader(self.fd, self._on_readable)
        else:
            self._loop.remove_reader(self.fd)
        self._reading = want

    def wait_writable(self) -> None:
        """Call the writable callback once, when the fd can take data again."""
        if self._writing or self.closed:
            return
        self._writing = True
        self._loop.add_writer(self.fd, self._writable)

    def stop_writing(self) -> None:
        """Cancel a pending :meth:`wait_writable`."""
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self.fd)

    def _writable(self) -> None:
        self.stop_writing()
        if self._on_writable is not None:
            self._on_writable()

    def close(self) -> None:
        """Remove both registrations; later calls do nothing. The fd stays open."""
        if self.closed:
            return
        self.stop_writing()
        self.closed = True
        self._sync()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"r={self._reading} w={self._writing} h={self._held}"
        return f"<FdWatch fd={self.fd} {state}>"


class PeerFlow:
    """Batches from an fd to the peer, holding reading while the peer queues part of one.

    ``hold`` is called with True when reading must pause and with False when it may go on
    (usually :meth:`FdWatch.hold`, or a function holding several watches).
    """

    __slots__ = ("_fired", "_generation", "_hold", "_in_send", "_sent_cb", "paused")

    def __init__(self, hold: Callable[[bool], None]) -> None:
        self._hold = hold
        self._generation = 0
        #: The completion callback of this generation's batches.
        self._sent_cb: Callable[[int], None] = functools.partial(self._on_sent, 0)
        self._in_send = False
        self._fired = False
        #: True while reading is held for a queued batch.
        self.paused = False

    def send(self, sender: NetClient, frames: Sequence[bytes], vnet: bool = False) -> int:
        """``sender.send(frames)``; holds reading when part of the batch stays queued."""
        generation = self._generation
        self._in_send = True
        self._fired = False
        try:
            sent = sender.send(frames, vnet, self._sent_cb)
        finally:
            self._in_send = False
        if sent < len(frames) and not self._fired and generation == self._generation:
            self.paused = True
            self._hold(True)
        return sent

    def _on_sent(self, generation: int, _delivered: int) -> None:
        if generation != self._generation:
            return
        self._fired = True
        if self.paused and not self._in_send:
            self.paused = False
            self._hold(False)

    def reset(self) -> None:
        """Forget any batch in flight (its callback will be ignored) and the pause."""
        self._generation += 1
        self._sent_cb = functools.partial(self._on_sent, self._generation)
        self.paused = False
