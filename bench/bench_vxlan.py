"""VXLAN throughput: netstackd's vxlan netdev against the Linux kernel's vxlan, side by side.

Two VTEPs joined by a veth underlay (MTU 1550, so the overlay carries MTU 1500 frames
without fragmentation), iperf3 TCP for ``--seconds`` per case, overlay MTU 1500:

* ``kernel``: kernel vxlan in ns A (10.77.0.1) <-> kernel vxlan in ns B (10.77.0.2) - the
  physical reference of this machine;
* ``netstack``: kernel vxlan in ns A <-> a netstackd process in ns N (``vxlan`` netdev on a
  learning hub with a ``tap`` whose other end is 10.77.0.2 in ns B). Both directions are
  measured: ``A->B`` (netstackd decapsulates) and ``B->A`` (netstackd encapsulates, the
  inner TCP segments are hashed to its source-port sockets).

``offloads on``: kernel defaults (TSO/GSO/GRO, checksum offload) plus GRO on the veths (as
a NIC driver has it) and, for netstackd, a tap with virtio-net headers (netstackd then
reads coalesced datagrams with UDP GRO and sends with UDP GSO); ``off``: ``ethtool -K ...
tx off tso off gso off gro off`` on every vxlan and veth device, and a tap without
headers. In the netstack cases A's veth always has checksum offload off (a veth hands
encapsulated frames to a UDP socket with their inner checksums unfinished; a physical NIC
would fill them in).

Printed per case: Gbit/s (iperf3 receiver), netstackd's CPU (1.0 = one CPU, from
/proc/PID/stat) and CPU-seconds per GB carried, and how busy the whole machine was. Rounds
run interleaved (``--rounds``, default 3); medians are printed, and the netstack/kernel
ratio per round (same direction sense, same offload setting) with its median.

    python bench/bench_vxlan.py [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_tap import cpu_seconds, machine_ticks, namespaces, sh

REPO = Path(__file__).resolve().parents[1]
ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"
UNDER_A, UNDER_B = "192.0.2.1", "192.0.2.2"
TAG = f"vxb{os.getpid()}"
OFF = ("tx", "off", "tso", "off", "gso", "off", "gro", "off")


def ethtool(ns: str, dev: str, *features: str) -> None:
    sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, *features, check=False)


def underlay(ns_a: str, ns_b: str, offloads: bool) -> None:
    """A veth pair; with offloads its ends do GRO as a NIC's driver would (a veth only does
    when asked), so UDP GRO can hand netstackd coalesced datagrams."""
    sh("ip", "-n", ns_a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
       "netns", ns_b)  # fmt: skip
    for ns, addr in ((ns_a, UNDER_A), (ns_b, UNDER_B)):
        sh("ip", "-n", ns, "link", "set", "eth0", "mtu", "1550", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        if offloads:
            ethtool(ns, "eth0", "gro", "on")


def kernel_vtep(ns: str, local: str, remote: str, addr: str, offloads: bool) -> None:
    sh("ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", local,
       "remote", remote, "dstport", "4789")  # fmt: skip
    sh("ip", "-n", ns, "link", "set", "vx0", "mtu", "1500", "up")
    sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "vx0")
    if not offloads:
        ethtool(ns, "vx0", *OFF)
        ethtool(ns, "eth0", *OFF)


def iperf(
    client_ns: str, server_ns: str, addr: str, seconds: float, reverse: bool
) -> tuple[float, float]:
    """(Gbit/s at the receiver, machine busy share) of one iperf3 run."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", addr],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            if f"{addr}:5201" in sh("ip", "netns", "exec", server_ns, "ss", "-ltnH", check=False):
                break
            time.sleep(0.05)
        for _ in range(3):
            busy0, total0 = machine_ticks()
            argv = ["iperf3", "-c", addr, "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
            done = subprocess.run(
                ["ip", "netns", "exec", client_ns, *argv],
                capture_output=True, text=True, timeout=seconds + 30,
            )  # fmt: skip
            report = json.loads(done.stdout or "{}")
            if done.returncode == 0 and "error" not in report:
                busy1, total1 = machine_ticks()
                share = (busy1 - busy0) / max(1, total1 - total0)
                return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9, share
            print(f"iperf3 attempt failed: {report.get('error')}", file=sys.stderr)
            time.sleep(0.3)
        raise RuntimeError("iperf3 failed")
    finally:
        server.kill()
        server.wait()


Result = dict[str, float]


def run_kernel(offloads: bool, seconds: float, reverse: bool) -> Result:
    a, b = f"{TAG}a", f"{TAG}b"
    with namespaces(a, b):
        underlay(a, b, offloads)
        kernel_vtep(a, UNDER_A, UNDER_B, ADDR_A, offloads)
        kernel_vtep(b, UNDER_B, UNDER_A, ADDR_B, offloads)
        gbps, busy = iperf(a, b, ADDR_B, seconds, reverse)
    return {"gbps": gbps, "busy": busy}


def run_netstack(offloads: bool, seconds: float, reverse: bool) -> Result:
    a, n, b = f"{TAG}a", f"{TAG}n", f"{TAG}b"
    with namespaces(a, n, b):
        underlay(a, n, offloads)
        kernel_vtep(a, UNDER_A, UNDER_B, ADDR_A, offloads)
        ethtool(a, "eth0", "tx", "off")
        ethtool(n, "eth0", "tx", "off")
        vnet = "on" if offloads else "off"
        specs = [
            f"vxlan,id=vx,vni=42,local={UNDER_B},remote={UNDER_A}",
            "hubport,id=h0,hubid=0,netdev=vx,x-learning=on",
            f"tap,id=t,ifname=vxb,script=no,downscript=no,vnet_hdr={vnet},x-netns={b}",
            "hubport,id=h1,hubid=0,netdev=t",
        ]
        argv = [x for s in specs for x in ("-netdev", s)]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", n, sys.executable, "-m", "netstack", *argv],
            cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            for _ in range(200):
                if "vxb" in sh("ip", "-n", b, "link", "show", check=False):
                    break
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"netstackd exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                    )
                time.sleep(0.05)
            sh("ip", "-n", b, "link", "set", "vxb", "mtu", "1500", "up")
            sh("ip", "-n", b, "addr", "add", f"{ADDR_B}/24", "dev", "vxb")
            if not offloads:
                ethtool(b, "vxb", *OFF)
            time.sleep(0.3)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            gbps, busy = iperf(a, b, ADDR_B, seconds, reverse)
            cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    gb = gbps * seconds / 8
    return {"gbps": gbps, "busy": busy, "cpu": cpu, "cpu_per_gb": cpu * seconds / gb if gb else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 1
    cases = [
        (kind, offloads, reverse)
        for offloads in (True, False)
        for reverse in (False, True)
        for kind in ("kernel", "netstack")
    ]
    results: dict[tuple[str, bool, bool], list[Result]] = {c: [] for c in cases}
    for r in range(args.rounds):
        for case in cases:
            kind, offloads, reverse = case
            run = run_kernel if kind == "kernel" else run_netstack
            res = run(offloads, args.seconds, reverse)
            results[case].append(res)
            sense = "B->A" if reverse else "A->B"
            flag = "on " if offloads else "off"
            print(f"round {r + 1} {kind:8} offloads={flag} {sense}: {res}", file=sys.stderr)
    print(f"{'case':40} {'Gbit/s':>7} {'nsd CPU':>8} {'CPU-s/GB':>9} {'busy':>5}  ratio/kernel")
    for offloads in (True, False):
        for reverse in (False, True):
            sense = "B->A (netstackd encapsulates)" if reverse else "A->B (netstackd decapsulates)"
            k = results[("kernel", offloads, reverse)]
            n = results[("netstack", offloads, reverse)]
            ratios = [x["gbps"] / y["gbps"] for x, y in zip(n, k, strict=True) if y["gbps"]]
            label = f"offloads {'on ' if offloads else 'off'} {sense}"
            med = statistics.median
            print(f"kernel   {label:31} {med(x['gbps'] for x in k):7.2f} {'-':>8} {'-':>9} "
                  f"{med(x['busy'] for x in k):5.0%}")  # fmt: skip
            print(f"netstack {label:31} {med(x['gbps'] for x in n):7.2f} "
                  f"{med(x['cpu'] for x in n):8.2f} {med(x['cpu_per_gb'] for x in n):9.2f} "
                  f"{med(x['busy'] for x in n):5.0%}  {med(ratios):.3f} "
                  f"(rounds {', '.join(f'{r:.3f}' for r in ratios)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
