"""tap switching throughput: netstackd next to a Linux bridge and QEMU's hub, in one run.

Two network namespaces A (10.77.0.1) and B (10.77.0.2); iperf3 TCP from A to B for
``--seconds`` (5 by default) per case, at MTU 1500 and 65520. The switches:

* ``bridge``: veth pairs from A and B into a Linux bridge in a third namespace - the
  kernel's own forwarding, the physical limit of this machine;
* ``qemu``: ``qemu-system-x86_64 -machine none`` with two ``-netdev tap`` joined by two
  ``-netdev hubport`` on hub 0 (run inside A, the second tap then moved to B);
* ``netstack vnet=on|off``: a netstack daemon process (tap and hubport drivers) with
  two ``tap,...,x-netns=`` netdevs joined on hub 0. With
  ``vnet=on`` both taps carry virtio-net headers, so TSO super-frames from A's kernel
  cross as one frame each (offloads on); with ``vnet=off`` the kernel segments.

Printed per case: Gbit/s (iperf3 receiver), the forwarder's CPU use (1.0 = one CPU; the
bridge has none of its own), frames read per second by netstack and their mean size,
how busy the whole machine was during the run (iperf3 itself needs most of two CPUs
here, so "busy" near 100% means the box, not the forwarder, was the limit), and the
ratios to QEMU and to the bridge. ``--repeat N`` runs N interleaved rounds and keeps each
case's best (machines shared with other work are noisy). Everything runs in namespaces made here and
deleted at the end; every process is started and stopped by PID.

    python bench/bench_tap.py [--seconds S] [--mtus 1500,65520] [--repeat N]
                              [--kinds bridge,qemu,netstack-vnet,netstack-plain]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"
QEMU = "qemu-system-x86_64"
TICK = os.sysconf("SC_CLK_TCK")
SUFFIX = str(os.getpid())  # namespace names of this run

RUNNER = r"""
import asyncio, json, signal, sys

async def main(specs):
    from drivers import hubport, tap
    from netstack import qapi
    from netstack.daemon import Netstack

    ns = Netstack({"tap": tap.SPEC, "hubport": hubport.SPEC})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def control():
        while await reader.readline():
            out = {f"{nc.name}/{nc.queue_index}": {**nc.counters(), **nc.stats.as_dict()}
                   for nc in ns.clients if hasattr(nc, "counters")}
            print("STATS " + json.dumps(out), flush=True)
        stop.set()

    try:
        for spec in specs:
            await ns.netdev_add(qapi.parse_netdev_cli(spec))
        print("READY", flush=True)
        task = asyncio.ensure_future(control())
        await stop.wait()
        task.cancel()
    finally:
        await ns.close()

asyncio.run(main(sys.argv[1:]))
"""


def sh(*args: str, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[None]:
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        yield
    finally:
        for name in names:
            sh("ip", "netns", "del", name, check=False)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def configure(ns: str, ifname: str, addr: str, mtu: int) -> None:
    sh("ip", "-n", ns, "link", "set", ifname, "mtu", str(mtu))
    sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
    sh("ip", "-n", ns, "link", "set", ifname, "up")


def iperf(ns_a: str, ns_b: str, seconds: float) -> tuple[float, float]:
    """(Gbit/s received by an iperf3 server in B from a client in A, machine busy share)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", ns_b, "iperf3", "-s", "-1", "-B", ADDR_B],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # wait until the server listens
            if f"{ADDR_B}:5201" in sh("ip", "netns", "exec", ns_b, "ss", "-ltnH", check=False):
                break
            time.sleep(0.05)
        for _ in range(5):
            busy0, total0 = machine_ticks()
            done = subprocess.run(
                ["ip", "netns", "exec", ns_a, "iperf3", "-c", ADDR_B, "-t", str(seconds), "-J"],
                capture_output=True,
                text=True,
                timeout=seconds + 30,
            )
            report = json.loads(done.stdout or "{}")
            if done.returncode == 0 and "error" not in report:
                busy1, total1 = machine_ticks()
                share = (busy1 - busy0) / max(1, total1 - total0)
                return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9, share
            print(f"iperf3 attempt failed: {report.get('error')}", file=sys.stderr)
            time.sleep(0.2)
        raise RuntimeError("iperf3 failed")
    finally:
        server.kill()
        server.wait()


@dataclass
class Result:
    kind: str
    mtu: int
    gbps: float
    cpu: float | None = None
    fps: float | None = None
    mean: float | None = None
    #: Share of all CPUs busy during the run (everything on the machine, 1.0 = all).
    busy: float | None = None


def run_bridge(mtu: int, seconds: float) -> Result:
    a, b, br = (f"bt{x}{SUFFIX}" for x in "abr")
    with namespaces(a, b, br):
        sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", br, "link", "set", "br0", "mtu", str(mtu), "up")
        for ns, addr in ((a, ADDR_A), (b, ADDR_B)):
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "p" + ns)
            sh("ip", "-n", ns, "link", "set", "p" + ns, "netns", br)
            sh("ip", "-n", br, "link", "set", "p" + ns, "mtu", str(mtu), "master", "br0", "up")
            configure(ns, "eth0", addr, mtu)
        gbps, busy = iperf(a, b, seconds)
        return Result("linux bridge", mtu, gbps, busy=busy)


def run_qemu(mtu: int, seconds: float) -> Result:
    a, b = f"bqa{SUFFIX}", f"bqb{SUFFIX}"
    with namespaces(a, b):
        proc = subprocess.Popen(
            [
                "ip", "netns", "exec", a, QEMU, "-machine", "none", "-nodefaults",
                "-display", "none", "-monitor", "none", "-serial", "none",
                "-netdev", "tap,id=a,ifname=qa,script=no,downscript=no",
                "-netdev", "hubport,id=pa,hubid=0,netdev=a",
                "-netdev", "tap,id=b,ifname=qb,script=no,downscript=no",
                "-netdev", "hubport,id=pb,hubid=0,netdev=b",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            for _ in range(100):
                if "qb" in sh("ip", "-n", a, "-o", "link", "show", check=False):
                    break
                time.sleep(0.05)
            sh("ip", "-n", a, "link", "set", "qb", "netns", b)
            configure(a, "qa", ADDR_A, mtu)
            configure(b, "qb", ADDR_B, mtu)
            qemu_pid = proc.pid  # ip netns exec execs QEMU: same pid
            before = cpu_seconds(qemu_pid)
            start = time.monotonic()
            gbps, busy = iperf(a, b, seconds)
            cpu = (cpu_seconds(qemu_pid) - before) / (time.monotonic() - start)
            return Result("qemu hub", mtu, gbps, cpu, busy=busy)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_netstack(mtu: int, seconds: float, vnet: str) -> Result:
    a, b = f"bna{SUFFIX}", f"bnb{SUFFIX}"
    with namespaces(a, b):
        proc = subprocess.Popen(
            [
                sys.executable, "-c", RUNNER,
                f"tap,id=a,ifname=na,script=no,downscript=no,vnet_hdr={vnet},x-netns={a}",
                f"tap,id=b,ifname=nb,script=no,downscript=no,vnet_hdr={vnet},x-netns={b}",
                "hubport,id=pa,hubid=0,netdev=a",
                "hubport,id=pb,hubid=0,netdev=b",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        try:
            line = proc.stdout.readline()
            if "READY" not in line:
                raise RuntimeError(f"netstackd did not start: {line}")
            configure(a, "na", ADDR_A, mtu)
            configure(b, "nb", ADDR_B, mtu)
            stats0 = _stats(proc)
            before = cpu_seconds(proc.pid)
            start = time.monotonic()
            gbps, busy = iperf(a, b, seconds)
            elapsed = time.monotonic() - start
            cpu = (cpu_seconds(proc.pid) - before) / elapsed
            stats1 = _stats(proc)
            frames = stats1["a/0"]["frames-read"] - stats0["a/0"]["frames-read"]
            nbytes = stats1["a/0"]["tx-bytes"] - stats0["a/0"]["tx-bytes"]
            return Result(
                f"netstack vnet={vnet}",
                mtu,
                gbps,
                cpu,
                frames / elapsed,
                nbytes / frames if frames else 0.0,
                busy,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _stats(proc: subprocess.Popen[str]) -> dict[str, dict[str, int]]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("stats\n")
    proc.stdin.flush()
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("netstackd went away")
        if line.startswith("STATS "):
            return json.loads(line[6:])  # type: ignore[no-any-return]


def run_case(kind: str, mtu: int, seconds: float) -> Result:
    if kind == "bridge":
        return run_bridge(mtu, seconds)
    if kind == "qemu":
        return run_qemu(mtu, seconds)
    if kind == "netstack-vnet":
        return run_netstack(mtu, seconds, "on")
    if kind == "netstack-plain":
        return run_netstack(mtu, seconds, "off")
    raise SystemExit(f"unknown kind {kind}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--mtus", default="1500,65520")
    parser.add_argument("--kinds", default="bridge,qemu,netstack-vnet,netstack-plain")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over all cases; the best round counts"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, taps)", file=sys.stderr)
        return 2
    kinds = args.kinds.split(",")
    if "qemu" in kinds and shutil.which(QEMU) is None:
        kinds.remove("qemu")
    mtus = [int(m) for m in args.mtus.split(",")]
    best: dict[tuple[str, int], Result] = {}
    for _round in range(args.repeat):
        for mtu in mtus:
            for kind in kinds:  # interleaved, so machine noise spreads over every case
                r = run_case(kind, mtu, args.seconds)
                print(
                    f"  {r.kind:20} MTU {r.mtu:5}: {r.gbps:6.2f} Gbit/s "
                    f"(machine busy {r.busy or 0:.0%})",
                    file=sys.stderr,
                )
                key = (kind, mtu)
                if key not in best or r.gbps > best[key].gbps:
                    best[key] = r
    results = [best[(k, m)] for m in mtus for k in kinds]
    print(
        f"{'switch':20} {'MTU':>6} {'Gbit/s':>7} {'fwd CPU':>8} {'frames/s':>9} "
        f"{'mean B':>7} {'busy':>5} {'/qemu':>6} {'/bridge':>8}"
    )
    for r in results:
        ref_q = next((x for x in results if x.kind == "qemu hub" and x.mtu == r.mtu), None)
        ref_b = next((x for x in results if x.kind == "linux bridge" and x.mtu == r.mtu), None)
        cpu = f"{r.cpu:8.2f}" if r.cpu is not None else f"{'-':>8}"
        fps = f"{r.fps:9.0f}" if r.fps is not None else f"{'-':>9}"
        mean = f"{r.mean:7.0f}" if r.mean is not None else f"{'-':>7}"
        busy = f"{r.busy:5.0%}" if r.busy is not None else f"{'-':>5}"
        vq = f"{r.gbps / ref_q.gbps:6.2f}" if ref_q and ref_q.gbps else f"{'-':>6}"
        vb = f"{r.gbps / ref_b.gbps:8.2f}" if ref_b and ref_b.gbps else f"{'-':>8}"
        print(f"{r.kind:20} {r.mtu:6} {r.gbps:7.2f} {cpu} {fps} {mean} {busy} {vq} {vb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
