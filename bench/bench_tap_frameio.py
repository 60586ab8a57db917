"""The tap's per-frame read/write loops, compiled against Python, side by side.

Runs :func:`drivers.tap.frameio.read_batch` and ``write_frames`` (the Python reference and
``drivers.tap._fasttap``) on a unix datagram socketpair, which keeps frame boundaries as
a tap fd does: each read round has the far end queue 50 frames of 64 bytes and reads
them as one batch (QEMU's ``tap_send`` size), each write round writes 50 frames and the
far end drains them. The far end's work (Python ``send``/``recv``) is the same for both
and counted in. Interleaved rounds (3), each bounded in time; printed: medians of
frames/s, the ratio and the CPU per frame (``/proc/self/stat``).

    python bench/bench_tap_frameio.py [--rounds 3] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import statistics
import time
from collections.abc import Callable
from types import ModuleType

from drivers.tap import frameio
from drivers.tap.client import READ_SIZE

BATCH = 50
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def reads(io: ModuleType, seconds: float) -> tuple[float, float]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    frame = bytes(64)
    done = 0
    c0, t0 = cpu_seconds(), time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            for _ in range(BATCH):
                b.send(frame)
            got, err = io.read_batch(a.fileno(), BATCH, READ_SIZE, 60)
            assert len(got) == BATCH and not err
            done += BATCH
    finally:
        a.close()
        b.close()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return done / wall, cpu / done


def writes(io: ModuleType, seconds: float) -> tuple[float, float]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    frames = [bytes(64)] * BATCH
    done = 0
    c0, t0 = cpu_seconds(), time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            n, err = io.write_frames(a.fileno(), frames, 0, frameio.AS_IS, b"", 0)
            assert n == BATCH and not err
            for _ in range(BATCH):
                b.recv(2048)
            done += BATCH
    finally:
        a.close()
        b.close()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return done / wall, cpu / done


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.5)
    args = ap.parse_args()
    compiled = importlib.import_module(frameio.EXTENSION)
    paths = [("compiled", compiled), ("python", frameio)]
    cases: list[tuple[str, Callable[[ModuleType, float], tuple[float, float]]]] = [
        ("read 50 x 64 B", reads),
        ("write 50 x 64 B", writes),
    ]
    res: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for rnd in range(args.rounds):
        for name, case in cases:
            for path, io in paths if rnd % 2 == 0 else paths[::-1]:
                res.setdefault((name, path), []).append(case(io, args.seconds))
    print(f"medians of {args.rounds} interleaved rounds; CPU from /proc/self/stat")
    print(
        f"{'case':18} {'compiled fr/s':>14} {'python fr/s':>12} {'ratio':>6} {'ns CPU/fr c/py':>16}"
    )
    for name, _case in cases:
        c, p = res[(name, "compiled")], res[(name, "python")]
        cf, pf = statistics.median(x[0] for x in c), statistics.median(x[0] for x in p)
        cc, pc = statistics.median(x[1] for x in c), statistics.median(x[1] for x in p)
        print(f"{name:18} {cf:14,.0f} {pf:12,.0f} {cf / pf:5.2f}x {cc * 1e9:7,.0f}/{pc * 1e9:,.0f}")


if __name__ == "__main__":
    main()
