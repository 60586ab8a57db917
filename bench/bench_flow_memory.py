"""Memory and CPU per NAT'd TCP connection, and connections carried under a descriptor
limit: netstackd's user netdev beside slirp4netns (and optionally pasta).

Each case: a fresh namespace served by one stack (the topologies of
``bench_user_stacks.py``), started with ``RLIMIT_NOFILE`` = ``--nofile SOFT:HARD``
(default 1024:16384, the usual systemd soft limit under a higher hard one); a Python client
in the namespace opens ``--flows`` concurrent connections to an echo server on host
127.0.0.1 through 10.0.2.2, sends a byte on each and waits for its echo, and holds them.
Measured: connections that succeeded, the stack's RSS growth while they are held divided
by that number (bytes per flow), and its CPU time per connection (``/proc/PID/stat``).

Stacks are interleaved (each once per round); ``--repeat`` rounds give medians; ratios are
netstackd / peer of those medians. Needs root; only loopback and the namespaces made here
are used; processes are stopped by PID, namespaces deleted.

    python -m bench.bench_flow_memory [--flows 3000] [--repeat 3] [--nofile 1024:16384]
                                      [--stacks slirp4netns,netstackd]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.bench_user_stacks import GATEWAY, Stack, cpu_seconds, namespace, say, stop
from tests.interop.daemon_ns import CLIENT, SERVER


@dataclass
class Sample:
    ok: int
    bytes_per_flow: float
    cpu_ms_per_flow: float


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_case(kind: str, port: int, flows: int, logdir: Path) -> Sample:
    with namespace() as ns:
        stack = Stack(kind, ns, 1500)
        stack.start(logdir)
        try:
            rss0, cpu0 = rss_kib(stack.pid), cpu_seconds(stack.pid)
            client = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, GATEWAY, str(port),
                 str(flows)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                assert client.stdout is not None
                out = json.loads(client.stdout.readline() or "{}")
                rss1, cpu1 = rss_kib(stack.pid), cpu_seconds(stack.pid)
            finally:
                stop(client)  # type: ignore[arg-type]
            ok = int(out.get("ok", 0))
            say(f"{kind}: {out}  RSS {rss0} -> {rss1} KiB")
            return Sample(
                ok,
                (rss1 - rss0) * 1024 / ok if ok else 0.0,
                (cpu1 - cpu0) * 1000 / ok if ok else 0.0,
            )
        finally:
            stack.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--nofile", default="1024:16384")
    ap.add_argument("--stacks", default="slirp4netns,netstackd")
    args = ap.parse_args()
    soft, hard = (int(x) for x in args.nofile.split(":"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # the stacks inherit it
    stacks = args.stacks.split(",")
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True,
                              preexec_fn=lambda: resource.setrlimit(
                                  resource.RLIMIT_NOFILE, (hard, hard)))  # fmt: skip
    results: dict[str, list[Sample]] = {k: [] for k in stacks}
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        with tempfile.TemporaryDirectory() as logdir:
            for rnd in range(args.repeat):
                for kind in stacks:
                    say(f"round {rnd + 1}: {kind}")
                    results[kind].append(run_case(kind, port, args.flows, Path(logdir)))
    finally:
        stop(server)  # type: ignore[arg-type]
    print(f"\n{args.flows} concurrent connections, RLIMIT_NOFILE {soft}:{hard}, "
          f"medians of {args.repeat} rounds")  # fmt: skip
    print("| stack | connections ok | bytes RSS per flow | CPU ms per connection |")
    print("|---|---|---|---|")
    med: dict[str, tuple[float, float, float]] = {}
    for kind in stacks:
        rs = results[kind]
        med[kind] = (
            statistics.median(r.ok for r in rs),
            statistics.median(r.bytes_per_flow for r in rs),
            statistics.median(r.cpu_ms_per_flow for r in rs),
        )
        ok, mem, cpu = med[kind]
        print(f"| {kind} | {ok:.0f} | {mem:,.0f} | {cpu:.3f} |")
    if "netstackd" in med:
        for peer in (k for k in stacks if k != "netstackd"):
            n, p = med["netstackd"], med[peer]
            ratio = [f"{a / b:.2f}x" if b else "-" for a, b in zip(n, p, strict=True)]
            print(f"| netstackd / {peer} | {ratio[0]} | {ratio[1]} | {ratio[2]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
