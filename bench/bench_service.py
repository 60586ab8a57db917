"""What the service features cost: faithful captures of offloaded frames, and a scrape.

Capture (in-process, filter-dump pcapng to ``/dev/shm``): batches of 16 TSO super-frames
(64 KiB of TCP payload each, ``NEEDS_CSUM``, gso_size 1448, as the user netdev sends them)
written by filter-dump

* ``raw`` - as QEMU's ``net/dump.c`` writes them (header stripped, partial checksums and
  super-frames kept; the frames Wireshark flags);
* ``completed`` - netstack's default (checksums completed, super-frame kept);
* ``segmented`` - ``segment=on`` (the wire's 1448-byte segments).

Scrape: one ``GET /metrics`` rendering (``generate_latest`` over the collector) of a daemon
with one user netdev and ``--hubports`` hub ports, against rendering the same state as
``query-netdev`` JSON (what a QMP poller pays). Rounds are interleaved; medians printed
with the CPU time per operation from ``/proc/self/stat``.

    python bench/bench_service.py [--rounds 3] [--duration 1] [--hubports 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import generate_latest

import drivers
from netstack.daemon import Netstack
from netstack.net.client import NetClient
from netstack.net.filters import FilterDump
from netstack.proto import vnet
from netstack.proto.checksum import finish, fold, ones_sum
from netstack.qapi import parse_netdev_cli
from netstack.service.metrics_http import Endpoint, MetricsServer

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> float:
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def super_frame(payload: int = 65535 - 40, mss: int = 1448) -> bytes:
    """A TSO super-frame as the user netdev builds it (pseudo-header sum in the field)."""
    eth = bytes(6) + bytes.fromhex("020000000001") + b"\x08\x00"
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + payload, 0, 0x4000, 64, 6, 0,
                               bytes([10, 0, 2, 2]), bytes([10, 0, 2, 15])))  # fmt: skip
    struct.pack_into("!H", ip, 10, finish(ones_sum(ip)))
    tcp_len = 20 + payload
    pseudo = fold(ones_sum(ip[12:20]) + 6 + tcp_len)
    tcp = struct.pack("!HHIIHHHH", 80, 40000, 1, 1, 0x5018, 65535, pseudo, 0)
    hdr = vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 54, mss, 34, 16)
    return hdr + eth + bytes(ip) + tcp + os.urandom(payload)


class Sink(NetClient):
    type = "socket"


def measure(op: Callable[[], int], duration: float) -> tuple[float, float]:
    """(operations per second, CPU seconds per operation)."""
    done = 0
    cpu0, start = cpu_seconds(), time.perf_counter()
    while time.perf_counter() - start < duration:
        done += op()
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    return done / wall, cpu / max(done, 1)


def capture_cases(tmp: Path) -> dict[str, Callable[[], int]]:
    a, b = Sink("a"), Sink("b")
    a.connect(b)
    frames = [super_frame() for _ in range(16)]
    stripped = [f[vnet.HDR_LEN :] for f in frames]
    cases: dict[str, Callable[[], int]] = {}
    for name, segment in (("raw", False), ("completed", False), ("segmented", True)):
        nf = FilterDump(name, a, file=str(tmp / f"{name}.pcapng"), fmt="pcapng", segment=segment)
        nf.setup(_Host())
        if name == "raw":
            cases[name] = lambda nf=nf: len(nf.receive(a, "tx", stripped, False))
        else:
            cases[name] = lambda nf=nf: len(nf.receive(a, "tx", frames, True))
    return cases


class _Host:
    def __init__(self) -> None:
        import logging

        self.log = logging.getLogger("bench")
        self.chardevs: dict[str, object] = {}

    def chardev(self, chardev_id: str) -> object:
        return None


async def scrape_cases(hubports: int, tmp: Path) -> tuple[Netstack, dict[str, Callable[[], int]]]:
    ns = Netstack(drivers.registry(), runtime_dir=tmp)
    await ns.netdev_add(parse_netdev_cli("user,id=u0"))
    await ns.netdev_add(parse_netdev_cli("hubport,id=h0,hubid=0,netdev=u0"))
    for i in range(1, hubports):
        await ns.netdev_add(parse_netdev_cli(f"hubport,id=h{i},hubid={i % 8}"))
    server = MetricsServer(ns, Endpoint("unix", path=str(tmp / "m.sock")))

    def metrics() -> int:
        generate_latest(server.registry)
        return 1

    def qmp_json() -> int:
        json.dumps({"return": ns.query_netdev()})
        return 1

    return ns, {"metrics scrape": metrics, "query-netdev JSON": qmp_json}


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=1.0)
    p.add_argument("--hubports", type=int, default=100)
    args = p.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    tmp = Path(tempfile.mkdtemp(prefix="bench-service-", dir=base))
    try:
        capture = capture_cases(tmp)
        ns, scrape = await scrape_cases(args.hubports, tmp)
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in [*capture, *scrape]}
        for _ in range(args.rounds):
            for name, op in [*capture.items(), *scrape.items()]:
                results[name].append(measure(op, args.duration))
        await ns.close()
        print("capture of 64 KiB TSO super-frames (16 per batch), pcapng to", tmp.parent)
        raw = statistics.median(r for r, _ in results["raw"])
        for name in capture:
            rate = statistics.median(r for r, _ in results[name]) * 16
            cpu = statistics.median(c for _, c in results[name]) / 16
            gbps = rate * 65495 * 8 / 1e9
            print(
                f"  {name:10} {rate:9.0f} super-frames/s  {gbps:6.2f} Gbit/s"
                f"  {cpu * 1e6:7.1f} us CPU each  x{rate / 16 / raw:.2f} of raw"
            )
        print(f"rendering the state of 1 user netdev + {args.hubports} hub ports")
        for name in scrape:
            rate = statistics.median(r for r, _ in results[name])
            cpu = statistics.median(c for _, c in results[name])
            print(f"  {name:18} {rate:8.0f}/s  {cpu * 1e3:6.2f} ms CPU each")
        ratio = statistics.median(r for r, _ in results["query-netdev JSON"]) / statistics.median(
            r for r, _ in results["metrics scrape"]
        )
        print(f"  a scrape costs {ratio:.2f}x a query-netdev")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
