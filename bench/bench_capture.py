"""What capturing costs the data path: frames/s through one client pair, in-process.

Cases, each for 64- and 1500-byte frames in batches of 1 and 32:

* ``none`` - no filter (the cost every uncaptured netdev pays: nothing extra);
* ``dump-pcap`` - QEMU's filter-dump to a regular file (``/dev/shm`` when present);
* ``dump-pcapng`` - the same in pcapng (direction flags, ns timestamps);
* ``dump-fifo`` - pcapng into a FIFO drained by a reader thread (the ``netstack-capture``
  transport; records the FIFO could not take are dropped, counted in the last column);
* ``mirror`` - filter-mirror into a socket chardev drained by a reader.

Frames/s is measured for ``--duration`` seconds after a short warm-up; the daemon's data
path is a tight loop of ``send`` calls here, so the figures are upper bounds of the
filter's own cost, not of a whole switch.

    python bench/bench_capture.py [--duration S] [--sizes 64,1500] [--batches 1,32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from netstack.chardev.sockets import SocketChardev
from netstack.net.client import NetClient
from netstack.net.filter import NetFilter
from netstack.net.filters import FilterDump, FilterMirror
from netstack.qapi import chardev_from_qmp


class Sink(NetClient):
    type = "socket"


class Host:
    def __init__(self, chardevs: dict[str, object] | None = None) -> None:
        import logging

        self.chardevs = chardevs or {}
        self.log = logging.getLogger("bench")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def chardev(self, chardev_id: str) -> object:
        return self.chardevs.get(chardev_id)


def drain_fd(fd: int, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            try:
                if not os.read(fd, 1 << 20):
                    return
            except BlockingIOError:
                time.sleep(0.0005)
            except OSError:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


async def measure(send: Callable[[], int], duration: float) -> float:
    end = time.perf_counter() + 0.2
    while time.perf_counter() < end:
        send()
    frames = 0
    start = time.perf_counter()
    end = start + duration
    while True:
        for _ in range(64):
            frames += send()
        now = time.perf_counter()
        if now >= end:
            break
        await asyncio.sleep(0)  # let writers/readers on the loop run
    return frames / (now - start)


async def run_case(case: str, size: int, batch: int, duration: float, tmp: Path) -> str:
    a, b = Sink("a"), Sink("b")
    a.connect(b)
    frames = [bytes(size)] * batch
    nf: NetFilter | None = None
    stop = threading.Event()
    cleanup: list[Callable[[], object]] = []
    if case.startswith("dump"):
        fmt = "pcap" if case == "dump-pcap" else "pcapng"
        path = tmp / f"{case}-{size}-{batch}"
        if case == "dump-fifo":
            os.mkfifo(path)
            rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            drain_fd(rfd, stop)
            cleanup.append(lambda: os.close(rfd))
        nf = FilterDump("d", a, file=str(path), fmt=fmt)
        nf.setup(Host())
    elif case == "mirror":
        sock = str(tmp / f"m-{size}-{batch}.sock")
        spec = chardev_from_qmp(
            "c", {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": sock}}}}
        )
        chardev = SocketChardev("c", spec.options)  # type: ignore[arg-type]
        await chardev.start()
        reader, writer = await asyncio.open_unix_connection(sock, limit=1 << 22)

        async def drain() -> None:
            while await reader.read(1 << 20):
                pass

        task = asyncio.get_running_loop().create_task(drain())
        nf = FilterMirror("m", a, outdev="c")
        nf.setup(Host({"c": chardev}))
        for _ in range(200):
            if nf.out_link is not None and nf.out_link.connections:
                break
            await asyncio.sleep(0.005)
        cleanup += [task.cancel, writer.close]
        cleanup.append(lambda: asyncio.get_running_loop().create_task(chardev.close()))
    if nf is not None:
        a.filters.append(nf)
    rate = await measure(lambda: a.send(frames), duration)
    dropped = getattr(nf, "dropped", 0) if nf is not None else 0
    if nf is not None:
        nf.cleanup()
    stop.set()
    for fn in cleanup:
        with contextlib.suppress(Exception):
            fn()
    return f"{case:12} {size:5} {batch:5} {rate / 1e6:9.3f} Mfr/s {dropped:9}"


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=float, default=1.0)
    p.add_argument("--sizes", default="64,1500")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--cases", default="none,dump-pcap,dump-pcapng,dump-fifo,mirror")
    args = p.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tmp = Path(tempfile.mkdtemp(prefix="bench-capture-", dir=base))
    try:
        print(f"{'case':12} {'size':>5} {'batch':>5} {'rate':>15} {'dropped':>9}")
        for case in args.cases.split(","):
            for size in map(int, args.sizes.split(",")):
                for batch in map(int, args.batches.split(",")):
                    print(await run_case(case, size, batch, args.duration, tmp), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
