"""The compiled forwarding core against the Python reference, driven by the same scripts.

Both paths run in this one process: ``netstack.net._fastnet`` is imported explicitly and
:func:`netstack.net.fastcore.use` installs it (or the pure-Python path) for one world at a
time. A world is a repeater hub with three clients, a learning switch with two, and a
pair of directly peered clients; hypothesis writes scripts of sends (single frames and
batches, with and without completion callbacks, with and without vnet headers), link
changes on clients and hub ports, receivers that take only a prefix or raise, re-entrant
receivers (a receive that sends), queue flushes and purges, small queue bounds, deleted
clients, NIC rx filters and net filters attached and detached. Every observable is
recorded: what each receive was handed, what each send returned (or raised), every
completion callback, every counter, queue depths and drops. The two records must be
identical.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netstack.net import fastcore
from netstack.net.hub import Hub
from netstack.net.rxfilter import RxFilter
from tests.property.fastcore_scripts import BCAST, MAC_A, MAC_B, REENTER, Probe, World, run

pytestmark = pytest.mark.compiled


def _fastnet() -> ModuleType:
    try:
        return importlib.import_module(fastcore.EXTENSION)
    except ImportError:
        pytest.skip("netstack.net._fastnet is not built")


def frame_st(vnet: bool) -> st.SearchStrategy[bytes]:
    dst = st.sampled_from([MAC_A, MAC_B, BCAST])
    src = st.sampled_from([MAC_A, MAC_B])
    tail = st.binary(min_size=0, max_size=3).map(lambda b: b + b"\x00")
    last = st.sampled_from([0, 1, 2, REENTER])
    body = st.tuples(dst, src, tail, last).map(lambda t: t[0] + t[1] + b"\x08\x00" + t[2])
    short = st.binary(min_size=0, max_size=8)
    one = st.one_of(body, body, body, short)
    ends = st.tuples(one, last).map(lambda t: t[0] + bytes([t[1]]))
    if vnet:
        return ends.map(lambda f: bytes(12) + f)
    return ends


@st.composite
def op_st(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(
        st.sampled_from(
            ["send"] * 6
            + ["send1"] * 4
            + ["link"] * 3
            + ["take"] * 2
            + ["flush"] * 2
            + ["purge", "maxlen", "fail", "delete", "filter", "unfilter", "rxfilter"]
        )
    )
    who = draw(st.integers(0, 6))
    if kind in ("send", "send1"):
        vnet = draw(st.sampled_from([False, False, False, True]))
        n = 1 if kind == "send1" else draw(st.integers(0, 4))
        frames = draw(st.lists(frame_st(vnet), min_size=n, max_size=n))
        as_tuple = draw(st.booleans())
        return ("send", who, tuple(frames) if as_tuple else frames, vnet, draw(st.booleans()))
    if kind == "link":
        return ("link", draw(st.integers(0, 11)), draw(st.booleans()))
    if kind == "take":
        return ("take", who, draw(st.one_of(st.none(), st.integers(0, 3))))
    if kind == "maxlen":
        return ("maxlen", draw(st.integers(0, 11)), draw(st.integers(0, 4)))
    if kind == "filter":
        return ("filter", who, draw(st.sampled_from(["all", "rx", "tx"])))
    if kind == "rxfilter":
        return ("rxfilter", draw(st.integers(0, 1)), draw(st.booleans()))
    if kind == "fail":
        return ("fail", who, draw(st.sampled_from([False, False, True])))
    return (kind, who)


SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@SETTINGS
@given(st.lists(op_st(), min_size=1, max_size=40))
def test_compiled_core_matches_python(script: list[tuple[Any, ...]]) -> None:
    mod = _fastnet()
    assert run(mod, script) == run(None, script)


def test_compiled_path_is_taken() -> None:
    """The plain cases take the C path (not a Python fallback) for every hop."""
    mod = _fastnet()
    with fastcore.use(mod):
        w = World()
        flags = mod.type_flags(Probe)
        port_flags = mod.type_flags(type(w.ports[0]))
        assert flags & 1 and flags & 2  # NetClient layout, compiled send
        assert port_flags & (1 << 5) and port_flags & (1 << 6)  # hub port hooks in C
        assert mod.type_flags(Hub) & (1 << 12)
        assert mod.type_flags(type(w.clients[0].incoming)) & (1 << 11)


def test_a_class_changed_at_run_time_is_rechecked() -> None:
    """Monkeypatching a hook on a class is seen by the compiled path at once."""
    mod = _fastnet()
    with fastcore.use(mod):
        log: list[Any] = []

        class Leaf(Probe):
            pass

        a, b = Leaf("a", log), Leaf("b", log)
        a.connect(b)
        assert a.send([b"x"]) == 1
        Leaf.can_receive = lambda self: False  # type: ignore[method-assign]
        assert a.send([b"y"]) == 0
        assert len(b.incoming) == 1
        del Leaf.can_receive
        b.flush_queued()
        assert [e[2] for e in log if e[0] == "rx"] == [[b"x"], [b"y"]]


def test_a_receive_changed_on_the_class_is_seen() -> None:
    """The cached receive function follows the class (its version tag), on both paths."""
    mod = _fastnet()
    for path in (mod, None):
        with fastcore.use(path):
            log: list[Any] = []

            class Leaf(Probe):
                pass

            a, b = Leaf("a", log), Leaf("b", log)
            a.connect(b)
            assert a.send([b"x"]) == 1
            Leaf.receive = lambda self, frames, vnet: 0  # type: ignore[method-assign]
            assert a.send([b"y"]) == 0
            assert b.receive_disabled and len(b.incoming) == 1
            del Leaf.receive
            b.flush_queued()
            assert [e[2] for e in log if e[0] == "rx"] == [[b"x"], [b"y"]]


def test_a_getattribute_override_is_honoured_for_receive() -> None:
    """A class with its own ``__getattribute__`` gets ``self.receive`` through it on both
    paths (the compiled core calls the class's function only under the generic lookup)."""
    mod = _fastnet()
    for path in (mod, None):
        with fastcore.use(path):
            log: list[Any] = []

            class Leaf(Probe):
                def __getattribute__(self, name: str) -> Any:
                    if name == "receive":
                        return lambda frames, vnet: 0  # takes nothing: the queue holds it
                    return super().__getattribute__(name)

            a, b = Probe("a", log), Leaf("b", log)
            a.connect(b)
            assert a.send([b"x"]) == 0
            assert len(b.incoming) == 1
            assert not [e for e in log if e[0] == "rx"]


def _python_calls(fn: Any) -> set[str]:
    """The Python functions run while ``fn()`` runs (``sys.setprofile``)."""
    names: set[str] = set()

    def prof(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            names.add(f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_code.co_name}")

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return names


def test_vnet_headers_and_rx_filters_stay_on_the_compiled_path() -> None:
    """Stripping vnet headers for a plain peer and a NIC's rx filter are called from C:
    the Python send, queue and deliver do not run (their helpers do)."""
    mod = _fastnet()
    core = {"client.py:send", "client.py:deliver", "queue.py:send", "client.py:can_send"}
    with fastcore.use(mod):
        w = World()
        frame = MAC_A + MAC_B + b"\x08\x00" + b"abcd"
        calls = _python_calls(lambda: w.clients[0].send([bytes(12) + frame], True))
        assert "vnet.py:to_plain" in calls and not calls & core
        rx = RxFilter(MAC_B)
        rx.program(rx_modes={"promisc": False})
        w.nics[1].rx_filter = rx  # the switch floods MAC_A (unknown) to it
        calls = _python_calls(lambda: w.clients[3].send([frame, BCAST + frame[6:]]))
        assert "rxbatch.py:accepted" in calls and not calls & core
        assert w.nics[1].stats.rx_filtered == 1 and w.nics[1].stats.rx_frames == 1


_HUB_LOOP = """
import importlib, sys
from netstack.net import fastcore
from netstack.net.client import NetClient
from netstack.net.hub import Hub
mod = importlib.import_module(fastcore.EXTENSION) if sys.argv[1] == "c" else None
with fastcore.use(mod):
    a, b = Hub(0), Hub(1)
    c = NetClient("c")
    a.add_port().connect(c)
    for _ in range(2):
        a.add_port().connect(b.add_port())
    try:
        print(c.send([b"x" * 20]))
    except RecursionError:
        print("RecursionError")
    print(c.stats.as_dict(), a.counters.as_dict(), b.counters.as_dict())
"""


def test_a_loop_of_hubs_raises_recursion_error_on_both_paths() -> None:
    """Two hubs joined port to port twice: asking whether a port can forward goes round
    the loop for ever; both paths raise RecursionError (the C path once bounded its own
    depth of hub calls, not by running out of C stack) with the same counters."""
    _fastnet()
    out = {}
    for path in ("c", "py"):
        done = subprocess.run(
            [sys.executable, "-c", _HUB_LOOP, path], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        out[path] = done.stdout
    assert out["c"] == out["py"]
    assert out["c"].startswith("RecursionError\n")
