"""Learning switch vs repeater hub: deliveries per input frame and forwarding cost.

In-process, no I/O: N ports (2, 8, 32), each with a sink client whose MAC is known to the
switch (every client sent one broadcast first). Traffic is known unicast: client i sends
batches of ``--batch`` 64-byte frames to client (i + 1) mod N, round robin over all
clients. The same frames go through a repeater hub (QEMU's, every frame to every other
port) and a learning switch (``hubport,...,x-learning=on``).

Printed per case: input frames/s, deliveries per input frame (N-1 for the repeater, 1
for the switch), CPU microseconds per input frame (utime+stime of this process from
/proc/self/stat) and per delivery; then the switch/repeater ratio of CPU per input frame.
``--rounds`` interleaved rounds (default 3), medians.

    python bench/bench_switch.py [--frames N] [--batch B] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from netstack.net.client import NetClient
from netstack.net.hub import Hub

TICK = 100.0


class Sink(NetClient):
    type = "socket"

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        return len(frames)


def cpu() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def mac(i: int) -> bytes:
    return bytes([2, 0, 0, 0, i >> 8, i & 0xFF])


def run(ports: int, learning: bool, frames: int, batch: int) -> dict[str, float]:
    hub = Hub(0)
    hub.set_learning(learning)
    clients = []
    for i in range(ports):
        c = Sink(f"c{i}")
        hub.add_port().connect(c)
        clients.append(c)
    for i, c in enumerate(clients):  # every station announces itself
        c.send([b"\xff" * 6 + mac(i) + b"\x88\xb5" + bytes(50)])
    batches = [
        [mac((i + 1) % ports) + mac(i) + b"\x88\xb5" + bytes(50)] * batch for i in range(ports)
    ]
    c0, d0 = hub.counters.frames_in, hub.counters.deliveries
    rounds = max(1, frames // (batch * ports))
    cpu0, t0 = cpu(), time.perf_counter()
    for _ in range(rounds):
        for c, b in zip(clients, batches, strict=True):
            c.send(b)
    elapsed, used = time.perf_counter() - t0, cpu() - cpu0
    n_in = hub.counters.frames_in - c0
    n_out = hub.counters.deliveries - d0
    return {
        "fps": n_in / elapsed,
        "per_frame": n_out / n_in,
        "us_in": used / n_in * 1e6,
        "us_out": used / n_out * 1e6,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=400_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cases = [(n, learning) for n in (2, 8, 32) for learning in (False, True)]
    res: dict[tuple[int, bool], list[dict[str, float]]] = {c: [] for c in cases}
    for _ in range(args.rounds):
        for n, learning in cases:
            # the repeater does N-1 times the work per frame: give it fewer frames
            frames = args.frames if learning else max(args.frames // max(1, n - 1), 10_000)
            res[(n, learning)].append(run(n, learning, frames, args.batch))
    med = statistics.median
    print(f"{'case':24} {'frames in/s':>12} {'deliv/frame':>12} {'us/frame in':>12} "
          f"{'us/delivery':>12}  switch/repeater CPU per frame")  # fmt: skip
    for n in (2, 8, 32):
        for learning in (False, True):
            r = res[(n, learning)]
            name = f"{n:2} ports {'switch' if learning else 'repeater'}"
            line = (f"{name:24} {med(x['fps'] for x in r):12,.0f} "
                    f"{med(x['per_frame'] for x in r):12.2f} {med(x['us_in'] for x in r):12.2f} "
                    f"{med(x['us_out'] for x in r):12.2f}")  # fmt: skip
            if learning:
                rep = res[(n, False)]
                ratios = [s["us_in"] / p["us_in"] for s, p in zip(r, rep, strict=True)]
                line += f"  {med(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
