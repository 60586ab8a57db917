"""What confinement costs: netstackd serving a namespace through a tap and a user netdev,
plain beside ``-run-with user=nobody -sandbox on`` (the seccomp allow-list), interleaved.

Per case, for ``--duration`` seconds: iperf3 TCP namespace -> host (``up``) and host ->
namespace (``down``) against ``iperf3 -s`` on host 127.0.0.1 through 10.0.2.2, with
netstackd's CPU use (1.0 = one CPU) and CPU seconds per GB moved; and the time to open
and hold ``--flows`` concurrent connections (connection setup is syscall-heavy: socket,
connect, epoll_ctl per flow). ``--repeat`` rounds, medians, ratio sandboxed / plain.
slirp4netns publishes the same comparison for its ``--enable-sandbox --enable-seccomp``
(0-5 %). Needs root; only loopback and the namespaces made here are used.

    python -m bench.bench_sandbox [--duration 3] [--repeat 3] [--flows 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.bench_user_stacks import (
    GATEWAY,
    GUEST_ADDR,
    HostServers,
    cpu_seconds,
    iperf,
    namespace,
    say,
    sh,
    stop,
    wait_until,
)
from tests.interop.daemon_ns import CLIENT, SERVER

VARIANTS = {"plain": [], "sandboxed": ["-run-with", "user=nobody", "-sandbox", "on"]}


@dataclass
class Served:
    """netstackd serving namespace ``ns`` (what ``bench_user_stacks.iperf`` needs)."""

    ns: str
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid


def start(ns: str, extra: list[str], logdir: Path) -> Served:
    argv = [
        sys.executable, "-m", "netstack",
        "-netdev", "user,id=nat0",
        "-netdev", f"tap,id=t0,ifname=ns0,script=no,downscript=no,vnet_hdr=on,x-netns={ns}",
        "-netdev", "hubport,id=h0,hubid=0,netdev=nat0",
        "-netdev", "hubport,id=h1,hubid=0,netdev=t0",
        *extra,
    ]  # fmt: skip
    with open(logdir / f"netstackd-{ns}.log", "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    served = Served(ns, proc)

    def seccomp_ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("netstackd exited early")
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return not extra or "Seccomp:\t2" in status

    wait_until("the tap", lambda: sh("ip", "-n", ns, "link", "show", "ns0", check=False) != "")
    sh("ip", "-n", ns, "addr", "add", f"{GUEST_ADDR}/24", "dev", "ns0")
    sh("ip", "-n", ns, "link", "set", "ns0", "up")
    sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)
    wait_until("confinement", seccomp_ready)
    return served


def open_flows(served: Served, port: int, flows: int) -> float:
    """Seconds to open and echo on ``flows`` concurrent connections."""
    t0 = time.monotonic()
    client = subprocess.Popen(
        ["ip", "netns", "exec", served.ns, sys.executable, "-c", CLIENT, GATEWAY, str(port),
         str(flows)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert client.stdout is not None
        out = json.loads(client.stdout.readline() or "{}")
        elapsed = time.monotonic() - t0
    finally:
        stop(client)  # type: ignore[arg-type]
    if out.get("ok") != flows:
        raise RuntimeError(f"connections failed: {out}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--flows", type=int, default=1000)
    args = ap.parse_args()
    rows: dict[str, dict[str, list[float]]] = {
        v: {"up": [], "down": [], "cpu_up": [], "cpu_down": [], "s_gb_up": [], "s_gb_down": [],
            "flows_s": []}
        for v in VARIANTS
    }  # fmt: skip
    echo = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        echo_port = int(echo.stdout.readline())
        with HostServers() as hosts, tempfile.TemporaryDirectory() as logdir:
            for rnd in range(args.repeat):
                for variant, extra in VARIANTS.items():
                    with namespace() as ns:
                        served = start(ns, extra, Path(logdir))
                        try:
                            r = rows[variant]
                            for direction, reverse in (("up", False), ("down", True)):
                                hosts.check()
                                s = iperf(served, hosts.iperf_port, args.duration, reverse)  # type: ignore[arg-type]
                                r[direction].append(s.gbps)
                                r[f"cpu_{direction}"].append(s.cpu)
                                r[f"s_gb_{direction}"].append(s.cpu * 8 / s.gbps)
                            cpu0 = cpu_seconds(served.pid)
                            took = open_flows(served, echo_port, args.flows)
                            r["flows_s"].append(args.flows / took)
                            say(f"round {rnd + 1} {variant}: up {r['up'][-1]:.2f} "
                                f"down {r['down'][-1]:.2f} Gbit/s, {args.flows / took:.0f} "
                                f"conn/s ({cpu_seconds(served.pid) - cpu0:.2f} CPU s)")  # fmt: skip
                        finally:
                            stop(served.proc)
    finally:
        stop(echo)  # type: ignore[arg-type]
    med = {v: {k: statistics.median(xs) for k, xs in r.items()} for v, r in rows.items()}
    print(f"\nnetstackd plain vs -run-with user=nobody -sandbox on, medians of {args.repeat}")
    print("| variant | up Gbit/s | CPU up | CPU s/GB up | down Gbit/s | CPU down | CPU s/GB down "
          "| connections/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for v, m in med.items():
        print(f"| {v} | {m['up']:.2f} | {m['cpu_up']:.2f} | {m['s_gb_up']:.2f} | "
              f"{m['down']:.2f} | {m['cpu_down']:.2f} | {m['s_gb_down']:.2f} | "
              f"{m['flows_s']:.0f} |")  # fmt: skip
    p, s = med["plain"], med["sandboxed"]
    print(f"| sandboxed / plain | {s['up'] / p['up']:.2f}x | | {s['s_gb_up'] / p['s_gb_up']:.2f}x"
          f" | {s['down'] / p['down']:.2f}x | | {s['s_gb_down'] / p['s_gb_down']:.2f}x | "
          f"{s['flows_s'] / p['flows_s']:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
