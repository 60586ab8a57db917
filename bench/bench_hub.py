"""Forwarding-core throughput: frames/s between in-process ports, direct and through hubs.

Prints frames/s for 64-byte frames, batched (lists of BATCH frames) and one by one, for
two directly peered clients and for hubs with 2 and 16 ports (one sender, every other
port receiving: a 16-port hub delivers each frame 15 times; both "frames in" and
"deliveries" are printed). Runs a bounded number of frames per case (~1-2 s each).

    python bench/bench_hub.py [--frames N] [--batch B]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from netstack.net.client import NetClient
from netstack.net.hub import Hub


class Sink(NetClient):
    type = "socket"

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        return len(frames)


def _run(sender: NetClient, frames: list[bytes], batch: int, total: int) -> float:
    chunks = [frames[i : i + batch] for i in range(0, len(frames), batch)]
    sent = 0
    t0 = time.perf_counter()
    if batch == 1:
        one = [[f] for f in frames]
        while sent < total:
            for f in one:
                sender.send(f)
            sent += len(one)
    else:
        while sent < total:
            for c in chunks:
                sender.send(c)
            sent += len(frames)
    return sent / (time.perf_counter() - t0)


def direct(frames: list[bytes], batch: int, total: int) -> float:
    a, b = Sink("a"), Sink("b")
    a.connect(b)
    return _run(a, frames, batch, total)


def through_hub(ports: int, frames: list[bytes], batch: int, total: int) -> float:
    hub = Hub(0)
    clients = []
    for i in range(ports):
        c = Sink(f"c{i}")
        hub.add_port().connect(c)
        clients.append(c)
    return _run(clients[0], frames, batch, total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    frames = [bytes(64) for _ in range(args.batch * 16)]
    print(f"{'case':34} {'frames in/s':>14} {'deliveries/s':>14}")
    for batch in (args.batch, 1):
        label = f"batch {batch}" if batch > 1 else "one by one"
        total = args.frames if batch > 1 else args.frames // 10
        fps = direct(frames, batch, total)
        print(f"{'direct peers, ' + label:34} {fps:14,.0f} {fps:14,.0f}")
        for ports in (2, 16):
            fps = through_hub(ports, frames, batch, total // (ports // 2))
            print(f"{f'hub {ports} ports, ' + label:34} {fps:14,.0f} {fps * (ports - 1):14,.0f}")


if __name__ == "__main__":
    main()
