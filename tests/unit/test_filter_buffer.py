"""filter-buffer with a manual clock: hold, periodic release, status, bound, cleanup."""

from __future__ import annotations

from pathlib import Path

import pytest

from netstack.errors import GenericError
from netstack.net.filter import NetFilter
from netstack.net.filters import FilterBuffer, FilterDump
from netstack.net.queue import QUEUE_MAXLEN
from netstack.objects import set_status
from tests.kit.clock import ManualClock
from tests.support import Recorder, frame
from tests.unit.test_filter_support import SimpleHost


def setup_buffer(
    interval: int = 1000, queue: str = "all", enabled: bool = True
) -> tuple[Recorder, Recorder, FilterBuffer, ManualClock]:
    a, b = Recorder("a"), Recorder("b")
    a.connect(b)
    clock = ManualClock()
    nf = FilterBuffer("b0", a, interval=interval, scheduler=clock, queue=queue, enabled=enabled)  # type: ignore[arg-type]
    nf.setup()
    a.filters.append(nf)
    return a, b, nf, clock


def test_holds_until_interval_then_releases_in_order() -> None:
    a, b, nf, clock = setup_buffer(interval=1000)
    assert clock.pending == [pytest.approx(1000.001)]
    a.send([frame(1), frame(2)])
    b.send([frame(3)])
    assert b.got == [] and a.got == []
    assert nf.held_frames == 3
    clock.advance(0.0009)
    assert b.got == []
    clock.advance(0.0001)
    assert b.got == [frame(1), frame(2)] and a.got == [frame(3)]
    # re-armed for now + interval
    assert clock.pending == [pytest.approx(1000.002)]
    a.send([frame(4)])
    clock.advance(0.001)
    assert b.got[-1] == frame(4)
    assert nf.released == 4


def test_release_continues_along_the_chain_after_the_buffer() -> None:
    a, b, _, clock = setup_buffer()
    seen: list[tuple[str, bytes]] = []

    class Tap(NetFilter):
        def receive(self, sender, direction, frames, vnet):  # type: ignore[no-untyped-def]
            seen.extend((direction, f) for f in frames)
            return frames

    before = Tap("t0", a)
    after = Tap("t1", a)
    a.filters.insert(0, before)
    a.filters.append(after)
    a.send([frame(1)])  # tx: t0, buffer (held) ...
    assert seen == [("tx", frame(1))]
    clock.advance(0.001)  # ... then t1 and the peer
    assert seen == [("tx", frame(1)), ("tx", frame(1))]
    assert b.got == [frame(1)]
    seen.clear()
    b.send([frame(2)])  # rx walks tail to head: t1, buffer (held) ...
    clock.advance(0.001)  # ... then t0 and a
    assert seen == [("rx", frame(2)), ("rx", frame(2))]
    assert a.got == [frame(2)]


def test_queue_selection() -> None:
    a, b, _, clock = setup_buffer(queue="rx")
    a.send([frame(1)])
    assert b.got == [frame(1)]
    b.send([frame(2)])
    assert a.got == []
    clock.advance(0.001)
    assert a.got == [frame(2)]


def test_status_off_flushes_and_stops_timer_on_rearms() -> None:
    a, b, nf, clock = setup_buffer()
    a.send([frame(1)])
    set_status(nf, "off")
    assert b.got == [frame(1)]
    assert clock.pending == []
    a.send([frame(2)])  # disabled filters are skipped
    assert b.got == [frame(1), frame(2)]
    set_status(nf, "on")
    assert clock.pending == [pytest.approx(clock.now + 0.001)]
    with pytest.raises(GenericError) as err:
        set_status(nf, "maybe")
    assert err.value.desc == "Invalid value for netfilter status, should be 'on' or 'off'"


def test_bounded_like_qemus_queue() -> None:
    a, b, nf, clock = setup_buffer()
    a.send([frame(i % 256) for i in range(QUEUE_MAXLEN + 5)])
    assert nf.held_frames == QUEUE_MAXLEN and nf.dropped == 5
    clock.advance(0.001)
    assert len(b.got) == QUEUE_MAXLEN


def test_cleanup_releases_and_cancels() -> None:
    a, b, nf, clock = setup_buffer()
    a.send([frame(1)])
    nf.cleanup()
    assert b.got == [frame(1)] and clock.pending == []
    # detached first (as netdev_del / object-del may do): still delivered
    a, b, nf, clock = setup_buffer()
    a.send([frame(2)])
    a.filters.remove(nf)
    nf.cleanup()
    assert b.got == [frame(2)]


def test_frames_of_a_deleted_sender_are_dropped() -> None:
    a, b, _, clock = setup_buffer()
    b.send([frame(9)])  # held on its way to a
    b.deleted = True
    clock.advance(0.001)
    assert a.got == []


def test_zero_interval_setup_text() -> None:
    a = Recorder("a")
    nf = FilterBuffer("b0", a, interval=0, scheduler=ManualClock())
    with pytest.raises(GenericError) as err:
        nf.setup()
    assert err.value.desc == "Parameter 'interval' expects a non-zero interval"


def test_with_a_dump_behind_it_sees_frames_at_release(tmp_path: Path) -> None:
    a, _, _, clock = setup_buffer()
    times = iter(range(1, 100))
    dump = FilterDump("d0", a, file=str(tmp_path / "x.pcap"), clock=lambda: next(times) * 10**9)
    dump.setup(SimpleHost())
    a.filters.append(dump)
    a.send([frame(1)])
    assert dump.captured == 0
    clock.advance(0.001)
    assert dump.captured == 1
    dump.cleanup()
