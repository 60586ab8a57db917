"""The vde netdev: frames/s through a real ``vde_switch``, netstackd vs QEMU 7.2 side by side.

Both subjects get the same two netdevs on hub 0: ``-netdev vde`` on the switch and
``-netdev dgram`` (unix) to the load generator:

* ``to-switch`` - a sender process blasts datagrams (blocking ``sendto``, so the subject
  paces it) into the dgram netdev; the subject forwards them to its switch port; a sink
  plugged into the same switch (:mod:`drivers.vde.plug`, the same for both subjects) counts
  what the switch delivers;
* ``from-switch`` - a source plugged into the switch sends (blocking: the switch's queue
  paces it); the switch floods to the subject's port; the subject forwards to the dgram
  netdev, whose remote address is the counting sink.

Frames are broadcasts of ``--sizes`` bytes. Rounds are interleaved (netstackd then QEMU,
then the other order), each subject a fresh process per round: QEMU as ``qemu-system-x86_64
-machine none -nodefaults -display none``, netstackd as ``python -m netstack`` with the same
``-netdev`` options. Each measurement warms up 0.5 s and counts for ``--duration`` seconds.
Reported: median frames/s at the sink, the subject's CPU time per frame (µs, from
``/proc/PID/stat``), and netstackd's rate over QEMU's within each round (median of those
ratios). Every process started is stopped by PID; the switch runs in a temporary directory.

    python bench/bench_vde.py [--duration S] [--rounds N] [--sizes 64,1400]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drivers.vde.plug import open_plug  # noqa: E402
from drivers.vde.protocol import target  # noqa: E402
from tests.vde_peers import VdeSwitch, plug_ports  # noqa: E402

WARMUP = 0.5
SUBJECTS = ("netstackd", "qemu")
DIRECTIONS = ("to-switch", "from-switch")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frame(size: int) -> bytes:
    head = b"\xff" * 6 + b"\x02\x00\x00\x00\xbe\x01" + b"\x88\xb5"
    return (head + bytes(range(256)) * 8)[:size]


def _plug(sw: str) -> socket.socket:
    plug = asyncio.run(open_plug(target(sw, None, None, None), b"bench"))
    plug.data.setblocking(True)
    # The control stream must stay open for the port to live: keep it with the process.
    _plug.keep = plug  # type: ignore[attr-defined]
    return plug.data


def _count(sock: socket.socket, counter: Synchronized[int], stop: float) -> None:
    sock.settimeout(0.2)
    buf = bytearray(2048)
    n = 0
    while time.monotonic() < stop:
        try:
            for _ in range(256):
                sock.recv_into(buf)
                n += 1
        except TimeoutError:
            pass
        counter.value = n
    counter.value = n


def _sink_plug(sw: str, counter: Synchronized[int], ready: Synchronized[int], stop: float) -> None:
    sock = _plug(sw)
    ready.value = 1
    _count(sock, counter, stop)


def _sink_path(
    path: str, counter: Synchronized[int], ready: Synchronized[int], stop: float
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    ready.value = 1
    _count(sock, counter, stop)


def _send_loop(send: Callable[[bytes], object], size: int, stop: float) -> None:
    data = frame(size)
    while time.monotonic() < stop:
        for _ in range(256):
            try:
                send(data)
            except OSError:
                time.sleep(0.001)


def _source_plug(sw: str, size: int, stop: float) -> None:
    sock = _plug(sw)
    _send_loop(sock.send, size, stop)


def _source_path(path: str, size: int, stop: float) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    _send_loop(lambda d: sock.sendto(d, path), size, stop)


def netdevs(sw: Path, tmp: Path) -> list[str]:
    return [
        f"vde,id=v,sock={sw}",
        "hubport,id=hv,hubid=0,netdev=v",
        f"dgram,id=d,local.type=unix,local.path={tmp}/near,remote.type=unix,remote.path={tmp}/far",
        "hubport,id=hd,hubid=0,netdev=d",
    ]


def start_subject(kind: str, sw: Path, tmp: Path) -> subprocess.Popen[bytes]:
    before = len(plug_ports(sw))
    args = [a for spec in netdevs(sw, tmp) for a in ("-netdev", spec)]
    if kind == "qemu":
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            raise SystemExit("qemu-system-x86_64 not found")
        argv = [qemu, "-machine", "none", "-nodefaults", "-display", "none", *args]
    else:
        argv = [sys.executable, "-m", "netstack", *args]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while len(plug_ports(sw)) <= before or not (tmp / "near").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise SystemExit(f"{kind} did not plug into the switch")
        time.sleep(0.05)
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(
    pid: int, direction: str, sw: Path, tmp: Path, size: int, duration: float
) -> tuple[float, float]:
    """(frames/s at the sink, subject CPU µs per frame)."""
    ctx = mp.get_context("fork")
    counter = ctx.Value("q", 0, lock=False)
    ready = ctx.Value("q", 0, lock=False)
    stop = time.monotonic() + WARMUP + duration + 3
    far = str(tmp / "far")
    if direction == "to-switch":
        sink = ctx.Process(target=_sink_plug, args=(str(sw), counter, ready, stop))
        source = ctx.Process(target=_source_path, args=(str(tmp / "near"), size, stop))
    else:
        sink = ctx.Process(target=_sink_path, args=(far, counter, ready, stop))
        source = ctx.Process(target=_source_plug, args=(str(sw), size, stop))
    sink.start()
    try:
        deadline = time.monotonic() + 10
        while not ready.value and time.monotonic() < deadline:
            time.sleep(0.01)
        source.start()
        time.sleep(WARMUP)
        n0, c0, t0 = counter.value, cpu_seconds(pid), time.monotonic()
        time.sleep(duration)
        n1, c1, t1 = counter.value, cpu_seconds(pid), time.monotonic()
    finally:
        for p in (source, sink):
            if p.pid is not None:
                p.kill()
                p.join(5)
        if os.path.exists(far):
            os.unlink(far)
    frames = n1 - n0
    fps = frames / (t1 - t0)
    return fps, ((c1 - c0) / frames * 1e6 if frames else float("inf"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="64,1400")
    opts = ap.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]
    results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-vde-") as tmpdir:
        tmp = Path(tmpdir)
        with VdeSwitch(tmp / "sw") as switch:
            for r in range(opts.rounds):
                order = SUBJECTS if r % 2 == 0 else tuple(reversed(SUBJECTS))
                round_fps: dict[tuple[str, str, int], float] = {}
                for kind in order:
                    proc = start_subject(kind, switch.directory, tmp)
                    try:
                        for direction in DIRECTIONS:
                            for size in sizes:
                                fps, cpu = measure(
                                    proc.pid, direction, switch.directory, tmp, size, opts.duration
                                )
                                results.setdefault((kind, direction, size), []).append((fps, cpu))
                                round_fps[(kind, direction, size)] = fps
                                print(
                                    f"round {r + 1} {kind:9} {direction:11} {size:5} B "
                                    f"{fps:10.0f} frames/s {cpu:7.2f} us/frame",
                                    flush=True,
                                )
                    finally:
                        stop_process(proc)
                for direction in DIRECTIONS:
                    for size in sizes:
                        q = round_fps[("qemu", direction, size)]
                        n = round_fps[("netstackd", direction, size)]
                        ratios.setdefault((direction, size), []).append(n / q if q else 0.0)
    print()
    print(f"medians of {opts.rounds} interleaved rounds, {opts.duration:g} s each")
    print(f"{'direction':11} {'size':>5}  {'netstackd f/s':>13} {'us/f':>6}  "
          f"{'QEMU f/s':>10} {'us/f':>6}  {'ratio':>5} (range)")  # fmt: skip
    for direction in DIRECTIONS:
        for size in sizes:
            row = []
            for kind in SUBJECTS:
                runs = results[(kind, direction, size)]
                row.append(statistics.median(f for f, _ in runs))
                row.append(statistics.median(c for _, c in runs))
            rs = ratios[(direction, size)]
            print(
                f"{direction:11} {size:5}  {row[0]:13.0f} {row[1]:6.2f}  {row[2]:10.0f} "
                f"{row[3]:6.2f}  {statistics.median(rs):5.2f} ({min(rs):.2f}-{max(rs):.2f})"
            )


if __name__ == "__main__":
    main()
