"""The shared fd adapter (:mod:`netstack.net.fdio`) on a manual-clock loop over real
socketpairs: registrations, the one-shot writable wait, closing, and the peer flow."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from netstack.net.client import NetClient
from netstack.net.fdio import FdWatch, PeerFlow
from tests.kit.clock import ManualLoop, run_manual
from tests.support import Recorder, frame


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def fill(sock: socket.socket) -> int:
    """Send until the socket is full; returns the datagrams sent."""
    for sent in range(100_000):
        try:
            sock.send(b"x" * 1024)
        except BlockingIOError:
            return sent
    raise AssertionError("never full")


def drain(sock: socket.socket) -> int:
    for got in range(100_000):
        try:
            sock.recv(65536)
        except BlockingIOError:
            return got
    raise AssertionError("never empty")


def test_reading_follows_want_hold_and_close(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair

    async def body(loop: ManualLoop) -> None:
        woke: list[int] = []

        def readable() -> None:
            woke.append(len(ours.recv(100)))

        w = FdWatch(loop, ours.fileno(), readable)
        theirs.send(b"one")
        await loop.settle()
        assert woke == [] and not w.reading  # not wanted yet
        w.set_reading(True)
        w.set_reading(True)  # idempotent
        await loop.settle()
        assert woke == [3] and w.reading
        w.hold(True)
        theirs.send(b"two!")
        await loop.settle()
        assert woke == [3] and not w.reading and w.held
        w.set_reading(True)  # wanting again does not override the hold
        await loop.settle()
        assert woke == [3]
        w.hold(False)
        await loop.settle()
        assert woke == [3, 4]
        w.close()
        theirs.send(b"three")
        w.set_reading(True)
        w.hold(False)
        await loop.settle()
        assert woke == [3, 4] and not w.reading and w.closed
        assert not loop.remove_reader(ours.fileno())  # nothing left registered

    run_manual(body)


def test_writable_wait_is_one_shot(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair

    async def body(loop: ManualLoop) -> None:
        calls: list[bool] = []
        w = FdWatch(loop, ours.fileno(), None, lambda: calls.append(w.writing))
        assert fill(ours) > 0
        w.wait_writable()
        w.wait_writable()  # one registration only
        await loop.settle()
        assert calls == [] and w.writing
        drain(theirs)
        await loop.settle()
        assert calls == [False]  # unregistered before the callback runs
        await loop.settle()
        assert calls == [False]  # and not called again while writable
        fill(ours)
        w.wait_writable()
        w.stop_writing()
        drain(theirs)
        await loop.settle()
        assert calls == [False]
        w.wait_writable()
        w.close()
        assert not w.writing and not loop.remove_writer(ours.fileno())
        w.wait_writable()  # closed: no-op
        assert not w.writing

    run_manual(body)


def test_a_refused_fd_leaves_the_watch_not_reading() -> None:
    async def body(loop: ManualLoop) -> None:
        with open(os.devnull, "rb") as f:  # epoll refuses regular files and /dev/null
            w = FdWatch(loop, f.fileno(), lambda: None)
            with pytest.raises(OSError):
                w.set_reading(True)
            assert not w.reading
            w.close()  # nothing to remove
            assert w.closed and not loop.remove_reader(f.fileno())

    run_manual(body)


class Source(NetClient):
    type = "socket"


def test_peer_flow_holds_until_the_queue_drains() -> None:
    async def body(loop: ManualLoop) -> None:
        holds: list[bool] = []
        src, rec = Source("src"), Recorder("rec", capacity=2)
        src.connect(rec)
        flow = PeerFlow(holds.append)
        assert flow.send(src, [frame(1), frame(2)]) == 2
        assert holds == [] and not flow.paused
        assert flow.send(src, [frame(3), frame(4)]) < 2  # the peer is full: queued
        assert holds == [True] and flow.paused
        rec.make_room(10)  # the queue delivers and calls back
        assert holds == [True, False] and not flow.paused
        assert len(rec.got) == 4

    run_manual(body)


def test_peer_flow_reset_ignores_the_old_batch() -> None:
    async def body(loop: ManualLoop) -> None:
        holds: list[bool] = []
        src, rec = Source("src"), Recorder("rec", capacity=0)
        src.connect(rec)
        flow = PeerFlow(holds.append)
        assert flow.send(src, [frame(1)]) == 0
        assert holds == [True]
        flow.reset()  # a new connection: the old batch's callback is ignored
        assert not flow.paused
        rec.make_room(5)
        assert holds == [True] and rec.got == [frame(1)]

    run_manual(body)
