"""IPv6 through a user-mode stack: iperf3 -6 from a network namespace to a server on the
host's ::1, netstackd (tap with vnet_hdr on a hub with a user netdev; the guest reaches
::1 as fec0::2) against slirp4netns ``--enable-ipv6`` (fd00::2), side by side in one run.

pasta is left out: it maps its IPv6 gateway to the host only when the host has an IPv6
default route, which these machines lack.

Run as root: ``python bench/bench_user_ipv6_stacks.py [--duration S] [--repeat N]``.
Prints up (namespace -> host) and down (-R) Gbit/s per stack, the medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORT = 5299


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60).stdout


def slaac_address(ns: str, prefix: str) -> str:
    for _ in range(150):
        out = sh("ip", "-n", ns, "-6", "-j", "addr", "show", "dev", "tap0", check=False)
        for dev in json.loads(out or "[]"):
            for a in dev.get("addr_info", []):
                if a["local"].startswith(prefix) and not a.get("tentative"):
                    return str(a["local"])
        time.sleep(0.1)
    raise SystemExit(f"no {prefix} address in {ns}")


def iperf(ns: str, dst: str, reverse: bool, seconds: float) -> float:
    argv = ["ip", "netns", "exec", ns, "iperf3", "-6", "-J", "-t", str(seconds), "-c", dst]
    out = sh(*argv, "-p", str(PORT), *(["-R"] if reverse else []))
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def start(stack: str, ns: str) -> tuple[subprocess.Popen[bytes], str]:
    if stack == "slirp4netns":
        argv = ["slirp4netns", "--configure", "--enable-ipv6", "--mtu=1500",
                "--netns-type=path", f"/var/run/netns/{ns}", "tap0"]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc, "fd00:"
    argv = [sys.executable, "-m", "netstack", "-netdev", "user,id=nat0",
            "-netdev", f"tap,id=t0,ifname=tap0,script=no,downscript=no,vnet_hdr=on,x-netns={ns}",
            "-netdev", "hubport,id=h0,hubid=0,netdev=nat0",
            "-netdev", "hubport,id=h1,hubid=0,netdev=t0"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if sh("ip", "-n", ns, "link", "show", "tap0", check=False):
            break
        time.sleep(0.1)
    sh("ip", "-n", ns, "link", "set", "tap0", "up")
    return proc, "fec0:"


def measure(stack: str, seconds: float) -> tuple[float, float]:
    ns = f"b6{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    proc: subprocess.Popen[bytes] | None = None
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw",
           "net.ipv6.conf.default.router_solicitation_delay=0")  # fmt: skip
        proc, prefix = start(stack, ns)
        slaac_address(ns, prefix)
        time.sleep(1)
        dst = prefix + ":2"
        return iperf(ns, dst, False, seconds), iperf(ns, dst, True, seconds)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        sh("ip", "netns", "del", ns, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    server = subprocess.Popen(["iperf3", "-s", "-B", "::1", "-p", str(PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    results: dict[str, list[tuple[float, float]]] = {"slirp4netns": [], "netstackd": []}
    try:
        time.sleep(0.5)
        for _ in range(args.repeat):
            for stack, runs in results.items():
                up, down = measure(stack, args.duration)
                runs.append((up, down))
                print(f"{stack:12} up {up:6.2f} Gbit/s  down {down:6.2f} Gbit/s", flush=True)
    finally:
        server.kill()
        server.wait()
    med = {s: (statistics.median(u for u, _ in r), statistics.median(d for _, d in r))
           for s, r in results.items()}  # fmt: skip
    ours, theirs = med["netstackd"], med["slirp4netns"]
    print(f"median: netstackd up {ours[0]:.2f} down {ours[1]:.2f}; slirp4netns up "
          f"{theirs[0]:.2f} down {theirs[1]:.2f}; ratio up {ours[0] / theirs[0]:.2f}x "
          f"down {ours[1] / theirs[1]:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
