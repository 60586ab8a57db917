"""Forwarding-core throughput, compiled core against the pure-Python reference, side by side.

Frames/s for 64-byte frames between in-process ports, batched (lists of BATCH frames) and
one by one (lists of one frame, each a separate ``send``), for two directly peered clients
and for hubs with 2 and 16 ports (one sender, every other port receiving: a 16-port hub
delivers each frame 15 times, so deliveries/s is 15x the frames in/s printed). Both paths
run in this one process (:func:`netstack.net.fastcore.use`), interleaved: each round runs
every case on both, the order of the two alternating between rounds. Each run is bounded
in time (``--seconds``) and in frames. Printed: the median over the rounds of frames in/s
on each path, their ratio, and the CPU time per frame in (user+system from
``/proc/self/stat``) on each path. ``--previous`` adds a third path, interleaved the same
way: another build of the extension (the ``.so`` of an earlier tree), loaded beside this
one under the same module name, with its compiled/previous ratio.

The one-by-one cases are what a driver does per wake-up with one frame: a Python caller
(a driver's read callback) calls ``NetClient.send`` with a one-frame list, and the frame
ends in a Python ``receive`` (the receiving driver's); the bench adds only its loop. The
``via PeerFlow`` case sends as the fd drivers do (tap, socket, l2tpv3, vxlan, vhost-user):
through :class:`netstack.net.fdio.PeerFlow`, with a completion callback.

    python bench/bench_hub.py [--rounds 3] [--seconds 0.5] [--batch 256] [--previous SO]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Sequence
from types import ModuleType

from netstack.net import fastcore
from netstack.net.client import NetClient
from netstack.net.fdio import PeerFlow
from netstack.net.hub import Hub

MAX_FRAMES = 200_000_000
_TICK = os.sysconf("SC_CLK_TCK")


class Sink(NetClient):
    type = "socket"

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        return len(frames)


def cpu_seconds() -> float:
    """This process's user + system CPU time, from /proc/self/stat."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _hold(on: bool) -> None:
    """A PeerFlow's hold: nothing to pause here (the sinks take everything)."""


def _run(
    sender: NetClient, frames: list[bytes], batch: int, seconds: float, flow: bool = False
) -> tuple[float, float]:
    """(frames/s, CPU seconds per frame) of sending ``frames`` for about ``seconds``."""
    units: list[list[bytes]] = (
        [[f] for f in frames]
        if batch == 1
        else [frames[i : i + batch] for i in range(0, len(frames), batch)]
    )
    send = sender.send
    flow_send = PeerFlow(_hold).send
    sent = 0
    c0, t0 = cpu_seconds(), time.perf_counter()
    end = t0 + seconds
    while sent < MAX_FRAMES:
        if flow:
            for u in units:
                flow_send(sender, u, False)
        else:
            for u in units:
                send(u)
        sent += len(frames)
        if time.perf_counter() >= end:
            break
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return sent / wall, cpu / sent


def load_build(path: str) -> ModuleType:
    """The extension built in another tree (its ``.so``), beside this tree's own."""
    loader = importlib.machinery.ExtensionFileLoader(fastcore.EXTENSION, path)
    spec = importlib.util.spec_from_file_location(fastcore.EXTENSION, path, loader=loader)
    if spec is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def direct(frames: list[bytes], batch: int, seconds: float) -> tuple[float, float]:
    a, b = Sink("a"), Sink("b")
    a.connect(b)
    return _run(a, frames, batch, seconds)


def through_hub(
    ports: int, flow: bool = False
) -> Callable[[list[bytes], int, float], tuple[float, float]]:
    def case(frames: list[bytes], batch: int, seconds: float) -> tuple[float, float]:
        hub = Hub(0)
        clients = []
        for i in range(ports):
            c = Sink(f"c{i}")
            hub.add_port().connect(c)
            clients.append(c)
        return _run(clients[0], frames, batch, seconds, flow)

    return case


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.5, help="per case, path and round")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--previous", help="the _fastnet .so of another tree, run as a third path")
    args = ap.parse_args()
    frames = [bytes(64) for _ in range(args.batch * 16)]
    try:
        compiled: ModuleType | None = importlib.import_module(fastcore.EXTENSION)
    except ImportError:
        compiled = None
        print("netstack.net._fastnet is not built: the pure-Python path only")
    paths: list[tuple[str, ModuleType | None]] = [("python", None)]
    if compiled is not None:
        paths.insert(0, ("compiled", compiled))
    if args.previous:
        paths.append(("previous", load_build(args.previous)))
    cases: list[tuple[str, int, Callable[[list[bytes], int, float], tuple[float, float]]]] = []
    for batch in (args.batch, 1):
        label = f"batch {batch}" if batch > 1 else "one by one"
        cases.append((f"direct peers, {label}", batch, direct))
        cases.append((f"hub 2 ports, {label}", batch, through_hub(2)))
        cases.append((f"hub 16 ports, {label}", batch, through_hub(16)))
    cases.append(("hub 2 ports, PeerFlow, 1 by 1", 1, through_hub(2, flow=True)))
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for rnd in range(args.rounds):
        order = paths[rnd % len(paths) :] + paths[: rnd % len(paths)]
        for name, batch, case in cases:
            for path, mod in order:
                with fastcore.use(mod):
                    results.setdefault((name, path), []).append(case(frames, batch, args.seconds))
    print(f"medians of {args.rounds} interleaved rounds; 64-byte frames; CPU from /proc/self/stat")
    head = f"{'case':30} {'compiled fr/s':>14} {'python fr/s':>13} {'ratio':>7}"
    head += f" {'compiled ns CPU/fr':>19} {'python ns CPU/fr':>17}"
    if args.previous:
        head += f" {'previous fr/s':>13} {'c/prev':>7} {'previous ns CPU/fr':>17}"
    print(head)
    for name, _batch, _case in cases:
        py = results[(name, "python")]
        py_fps = statistics.median(r[0] for r in py)
        py_cpu = statistics.median(r[1] for r in py) * 1e9
        if compiled is None:
            print(f"{name:30} {'-':>14} {py_fps:13,.0f} {'-':>7} {'-':>19} {py_cpu:17,.0f}")
            continue
        c = results[(name, "compiled")]
        c_fps = statistics.median(r[0] for r in c)
        c_cpu = statistics.median(r[1] for r in c) * 1e9
        line = (
            f"{name:30} {c_fps:14,.0f} {py_fps:13,.0f} {c_fps / py_fps:6.1f}x"
            f" {c_cpu:19,.1f} {py_cpu:17,.0f}"
        )
        if args.previous:
            prev = results[(name, "previous")]
            p_fps = statistics.median(r[0] for r in prev)
            p_cpu = statistics.median(r[1] for r in prev) * 1e9
            line += f" {p_fps:13,.0f} {c_fps / p_fps:6.2f}x {p_cpu:17,.1f}"
        print(line)


if __name__ == "__main__":
    main()
