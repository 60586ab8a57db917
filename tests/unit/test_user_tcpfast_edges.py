"""The TCP fast path's edges: callbacks that re-enter or fail, hostile attribute values.

Both implementations (``_tcpfast`` and its twin ``fastflow``) on one or two lent
connections to socket-pair host peers, each case compared between them where both run:
a batch changed by ``on_slow`` while it is taken; a partial host write whose hand-back
has not happened yet (the next segment must not overtake the bytes left over); an
``on_deadline`` that raises after a partial write; ``leftover`` refusing deletion and
non-bytes; frames that are not buffers; an ACK while the send buffer is exported; a zero
congestion window; a flush that fails half-way; a reclaim from inside a read wake-up's
``send``; the splicer's deadline hook after the flow is gone. The compiled cache alone:
made by ``__new__`` without ``__init__``, and window-scale shifts and burst sizes out of
range (clamped to what the machine can have).
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from drivers.user.tcp import fastflow
from drivers.user.tcp.lending import flow_key, lend, reclaim, template
from netstack import fastpath
from tests.property.tcpfast_rig import GUEST_PORT, Sink, cache, established, guest_frame

_compiled = fastpath.load("drivers.user.tcp._tcpfast")
IMPLS = [pytest.param(fastflow, id="python")]
if _compiled is not None:
    IMPLS.append(pytest.param(_compiled, id="compiled", marks=pytest.mark.compiled))
needs_compiled = pytest.mark.skipif(_compiled is None, reason="_tcpfast not built")
PSH_ACK = 0x18
BIG = 40000  # more than the host socket takes at once (SO_SNDBUF 4096)


def _nothing() -> None:
    return None


class Lent:
    """Lent connections of one cache, each to its own socket pair."""

    def __init__(self, impl: ModuleType) -> None:
        self.sink = Sink()
        self.c = cache(impl, self.sink)
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.ms: list[Any] = []
        self.fs: list[Any] = []

    def add(
        self, on_slow: Callable[[], object] = _nothing,
        on_deadline: Callable[[], object] = _nothing,
    ) -> Any:  # fmt: skip
        port = GUEST_PORT + len(self.fs)
        m = established(wscale=2, port=port)
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        f = self.c.flow(flow_key(m), a, template(m), m.tx.fromhost.buf, on_slow, on_deadline)
        lend(m, f, self.c)
        self.pairs.append((a, b))
        self.ms.append(m)
        self.fs.append(f)
        return f

    def frame(self, k: int, payload: bytes, seq_off: int = 0) -> bytes:
        f = self.fs[k]
        return guest_frame(f.rcv_nxt + seq_off, f.snd_una, PSH_ACK, 65535, payload,
                           sport=GUEST_PORT + k)  # fmt: skip

    def peer(self, k: int) -> bytes:
        got = bytearray()
        try:
            while chunk := self.pairs[k][1].recv(1 << 20):
                got += chunk
        except BlockingIOError:
            pass
        return bytes(got)

    def close(self) -> None:
        for a, b in self.pairs:
            a.close()
            b.close()


@pytest.fixture
def lent() -> Iterator[Callable[[ModuleType], Lent]]:
    made: list[Lent] = []

    def make(impl: ModuleType) -> Lent:
        made.append(Lent(impl))
        return made[-1]

    yield make
    for one in made:
        one.close()


def both(case: Callable[[ModuleType], Any]) -> Any:
    """``case`` run on the twin and, when built, on the compiled cache: the same result."""
    want = case(fastflow)
    if _compiled is not None:
        assert case(_compiled) == want
    return want


def payload(n: int, salt: int = 0) -> bytes:
    return bytes((i * 7 + salt) & 0xFF for i in range(n))


# -- a batch changed while it is taken (on_slow re-entering) ---------------------------------


@pytest.mark.parametrize("change", ["clear", "pop", "extend"])
def test_a_batch_changed_by_on_slow_is_read_anew(
    change: str, lent: Callable[[ModuleType], Lent]
) -> None:
    def case(impl: ModuleType) -> Any:
        r = lent(impl)
        frames: list[bytes] = []

        def slow() -> None:
            f = r.fs[0]
            if f.lent:
                reclaim(r.ms[0], f, r.c)
            if change == "clear":
                frames.clear()
            elif change == "pop":
                frames.pop()
            else:
                frames.append(r.frame(1, b"later"))

        r.add(slow)
        r.add()
        frames += [r.frame(0, payload(BIG))] + [r.frame(1, b"y" * 10)] * 3
        took = r.c.guest_frames(frames, 0, 1.0, True)
        return took, len(frames), r.fs[1].rcv_nxt - r.ms[1].rx.rcv_nxt, r.peer(1)

    took, n, moved, peer = both(case)
    assert took <= n
    if change == "clear":
        assert (took, moved, peer) == (0, 0, b"")
    else:
        assert moved == 10 and peer == b"y" * 10  # the next frame repeats the same seq


# -- a hand-back not done yet: nothing overtakes the bytes left over --------------------------


def test_a_segment_after_an_unhanded_partial_write_is_declined(
    lent: Callable[[ModuleType], Lent],
) -> None:
    def case(impl: ModuleType) -> Any:
        r = lent(impl)
        calls: list[str] = []
        f = r.add(lambda: calls.append("slow"))  # hands nothing back: the flow stays lent
        first = payload(BIG)
        assert r.c.guest_frames([r.frame(0, first)], 0, 1.0, True) == 1
        leftover = bytes(f.leftover)
        assert f.lent and leftover and calls == ["slow"]
        before = (f.rcv_nxt, f.ack_pending, f.held, f.snd_wnd)
        took = r.c.guest_frames([r.frame(0, b"B" * 100)], 0, 1.0, True)
        assert (f.rcv_nxt, f.ack_pending, f.held, f.snd_wnd) == before
        assert f.leftover == leftover  # not overwritten by a second partial write
        got = r.peer(0)
        assert got == first[: len(got)]  # in order, nothing of the second segment
        return took, len(leftover), calls

    took, _, calls = both(case)
    assert took == 0 and calls == ["slow"]


def test_a_raising_on_deadline_comes_after_the_hand_back(
    lent: Callable[[ModuleType], Lent],
) -> None:
    def case(impl: ModuleType) -> Any:
        r = lent(impl)
        calls: list[str] = []

        def slow() -> None:
            calls.append("slow")
            if r.fs[0].lent:
                reclaim(r.ms[0], r.fs[0], r.c)

        def deadline() -> None:
            calls.append("deadline")
            raise RuntimeError("on_deadline failed")

        f = r.add(slow, deadline)
        f.reported = math.inf
        took = r.c.guest_frames([r.frame(0, payload(BIG))], 0, 1.0, True)
        return took, calls, f.lent, bytes(f.leftover), r.ms[0].rx.tohost.size

    took, calls, is_lent, leftover, queued = both(case)
    # handed back (the machine holds the rest) and, no longer lent, no deadline report
    assert (took, calls, is_lent, leftover) == (1, ["slow"], False, b"")
    assert queued > 0


def test_a_raising_on_deadline_leaves_the_flow_consistent(
    lent: Callable[[ModuleType], Lent],
) -> None:
    def case(impl: ModuleType) -> Any:
        r = lent(impl)

        def deadline() -> None:
            raise RuntimeError("on_deadline failed")

        f = r.add(_nothing, deadline)
        f.reported = math.inf
        with pytest.raises(RuntimeError):
            r.c.guest_frames([r.frame(0, b"A" * 10)], 0, 1.0, True)
        took = r.c.guest_frames([r.frame(0, b"B" * 10)], 0, 1.0, True)
        return took, f.rcv_nxt - r.ms[0].rx.rcv_nxt, r.peer(0)

    assert both(case) == (1, 20, b"A" * 10 + b"B" * 10)


# -- leftover, non-buffer frames -------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_leftover_takes_bytes_only_and_is_not_deleted(
    impl: ModuleType, lent: Callable[[ModuleType], Lent]
) -> None:
    r = lent(impl)
    f = r.add()
    with pytest.raises(AttributeError, match="cannot delete leftover"):
        del f.leftover
    with pytest.raises(TypeError, match="leftover must be bytes"):
        f.leftover = bytearray(b"x")
    with pytest.raises(TypeError, match="leftover must be bytes"):
        f.leftover = None
    assert f.leftover == b""
    assert r.c.guest_frames([r.frame(0, b"abc")], 0, 1.0, True) == 1
    assert r.peer(0) == b"abc"


def test_a_frame_that_is_not_a_buffer_is_declined(lent: Callable[[ModuleType], Lent]) -> None:
    def case(impl: ModuleType) -> Any:
        r = lent(impl)
        f = r.add()
        frames: list[Any] = [r.frame(0, b"abc"), 12345, r.frame(0, b"def", 3), "text"]
        return (r.c.guest_frames(frames, 0, 1.0, True), r.c.guest_frames(frames, 2, 1.0, True),
                f.rcv_nxt - r.ms[0].rx.rcv_nxt)  # fmt: skip

    assert both(case) == (1, 3, 6)


# -- ACKs: the send buffer, the congestion window ---------------------------------------------


def _in_flight(r: Lent, f: Any, n: int) -> None:
    r.pairs[0][1].send(payload(n, 3))
    f.readable(1.0)
    r.sink.drain()
    assert f.snd_nxt - f.snd_una == n


def test_an_ack_while_the_send_buffer_is_exported_moves_nothing(
    lent: Callable[[ModuleType], Lent],
) -> None:
    def case(impl: ModuleType) -> Any:
        r = lent(impl)
        f = r.add()
        _in_flight(r, f, 1000)
        una = f.snd_una
        frame = guest_frame(f.rcv_nxt, una + 600, 0x10, 65535)
        with memoryview(f.buf), pytest.raises(BufferError):
            r.c.guest_frames([frame], 0, 1.0, True)
        assert f.snd_una == una and len(f.buf) == 1000  # snd_una == start of the buffer
        return r.c.guest_frames([frame], 0, 1.1, True), f.snd_una - una, len(f.buf)

    assert both(case) == (1, 600, 400)


def test_a_zero_congestion_window_grows_by_one_byte(lent: Callable[[ModuleType], Lent]) -> None:
    def case(impl: ModuleType) -> Any:
        r = lent(impl)
        f = r.add()
        _in_flight(r, f, 1000)
        f.cwnd = 0
        f.ssthresh = 0
        took = r.c.guest_frames([guest_frame(f.rcv_nxt, f.snd_una + 500, 0x10, 65535)], 0,
                                1.0, True)  # fmt: skip
        return took, f.cwnd

    assert both(case) == (1, 1)


# -- a flush that fails half-way --------------------------------------------------------------


class _FailingOut(list[bytes]):
    """An outbox whose next append fails (the twin's ``out.append``)."""

    fail = True

    def append(self, item: bytes) -> None:
        if self.fail:
            self.fail = False
            raise MemoryError
        super().append(item)


def _owing(impl: ModuleType, r: Lent) -> list[Any]:
    fs = [r.add() for _ in range(3)]
    frames = [r.frame(k, b"x" * 10) for k in range(3)]
    assert r.c.guest_frames(frames, 0, 1.0, True) == 3
    for f in fs:
        f.delack_at = math.inf  # each owes an ACK at the end of the batch
    return fs


def test_a_failed_flush_leaves_the_rest_for_the_next(lent: Callable[[ModuleType], Lent]) -> None:
    r = lent(fastflow)
    fs = _owing(fastflow, r)
    r.c.out = out = _FailingOut()
    with pytest.raises(MemoryError):
        r.c.flush(1.0)
    assert [bool(f.touched) for f in fs] == [False, True, True]
    assert r.c.touched == fs[1:]
    r.c.flush(1.0)
    assert len(out) == 2 and not any(f.touched for f in fs)
    assert [f.ack_pending for f in fs] == [0, 0, 0]


@needs_compiled
@pytest.mark.compiled
def test_a_failed_compiled_flush_leaves_the_rest_for_the_next(
    lent: Callable[[ModuleType], Lent],
) -> None:
    testcapi = pytest.importorskip("_testcapi")
    assert _compiled is not None
    r = lent(_compiled)
    fs = _owing(_compiled, r)
    flush = r.c.flush
    failed = False
    testcapi.set_nomemory(0, 1)  # the first allocation fails: the first ACK frame
    try:
        flush(1.0)
    except MemoryError:
        failed = True
    finally:
        testcapi.remove_mem_hooks()
    assert failed
    assert [bool(f.touched) for f in fs] == [False, True, True]
    r.c.flush(1.0)
    assert len(r.sink.drain()) == 2 and not any(f.touched for f in fs)
    assert [f.ack_pending for f in fs] == [0, 0, 0]


# -- deadlines of flows no longer lent --------------------------------------------------------


def test_no_deadline_report_after_a_reclaim_from_send(
    lent: Callable[[ModuleType], Lent],
) -> None:
    def case(impl: ModuleType) -> Any:
        calls: list[str] = []
        sink_send = Sink.send

        class Reclaiming(Sink):
            def send(self, frames: list[bytes], vnet: bool) -> None:
                sink_send(self, frames, vnet)
                if r.fs[0].lent:  # a re-entrant netdev reclaims the connection
                    calls.append("reclaim")
                    reclaim(r.ms[0], r.fs[0], r.c)

        r = lent(impl)
        r.sink = Reclaiming()
        r.c = cache(impl, r.sink)
        f = r.add(on_deadline=lambda: calls.append("deadline"))
        f.reported = math.inf
        r.pairs[0][1].send(b"hello")
        f.readable(1.0)
        return calls, len(r.sink.frames), f.lent

    assert both(case) == (["reclaim"], 1, False)


def test_the_splicer_ignores_a_deadline_report_of_a_closed_connection() -> None:
    from drivers.user.tcp.splice import TcpSplicer

    class Sp:
        fast: Any = None

    class Deadlines:
        def set(self, sp: Any, when: float) -> None:
            raise AssertionError("no deadline for a closed connection")

    splicer: Any = TcpSplicer.__new__(TcpSplicer)
    splicer._deadlines = Deadlines()
    sp = Sp()
    splicer._fast_deadline(sp)  # closed: sp.fast is None
    sp.fast = type("F", (), {"lent": False, "reported": 1.0})()
    splicer._fast_deadline(sp)  # reclaimed: the machine's deadline counts


# -- the compiled cache alone ------------------------------------------------------------------


@needs_compiled
@pytest.mark.compiled
def test_a_compiled_cache_without_init_is_refused(lent: Callable[[ModuleType], Lent]) -> None:
    assert _compiled is not None
    c = _compiled.FlowCache.__new__(_compiled.FlowCache)
    r = lent(_compiled)
    r.add()
    frame = r.frame(0, b"abc")
    calls: tuple[Callable[[], object], ...] = (
        lambda: c.guest_frames([frame], 0, 1.0, True),
        lambda: c.flush(1.0),
        lambda: c.flow(bytes(12), r.pairs[0][0], bytes(66), bytearray(), _nothing, _nothing),
    )
    for call in calls:
        with pytest.raises(RuntimeError, match="__init__ was not called"):
            call()
    assert c.counters()["fast-frames-in"] == 0


@needs_compiled
@pytest.mark.compiled
def test_compiled_shifts_and_bursts_out_of_range_are_clamped(
    lent: Callable[[ModuleType], Lent],
) -> None:
    """What the twin does with the largest valid values (14, 65495), the compiled cache
    does with any larger one, and with negative shifts what it does with 0."""

    def run(impl: ModuleType, snd_ws: int, rcv_ws: int, burst: int) -> Any:
        r = lent(impl)
        f = r.add()
        f.snd_ws, f.rcv_ws, f.max_burst, f.cwnd = snd_ws, rcv_ws, burst, 1 << 40
        f.snd_wnd = 1 << 40
        took = r.c.guest_frames([r.frame(0, b"abc")], 0, 1.0, True)
        r.c.flush(1.0)
        r.pairs[0][1].send(payload(70000))
        f.readable(1.0)
        return took, f.snd_wnd, bool(f.unsent), f.snd_nxt - f.snd_una, r.sink.drain()

    assert _compiled is not None
    assert run(_compiled, 70, 99, 1 << 40) == run(fastflow, 14, 14, 65495)
    assert run(_compiled, -5, -1, 1 << 40) == run(fastflow, 0, 0, 65495)
