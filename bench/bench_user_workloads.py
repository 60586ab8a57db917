"""Everyday workloads through a user-mode stack, netstackd against slirp4netns in the same rounds.

The topology and the stacks are :mod:`bench.bench_user_stacks`'s: a fresh network namespace
per measurement whose only interface is served by the stack, 10.0.2.100/24 via 10.0.2.2,
which each stack maps to the host's 127.0.0.1. slirp4netns runs as
``slirp4netns --configure --mtu=1500``; netstackd as a tap (opened in the namespace with
``x-netns=``) and a ``user`` netdev (``x-mtu=1500``) on hub 0, its data path compiled, or
pure Python (``NETSTACK_PURE_PYTHON=1``) for the ``netstackd-pure`` variant (``--pure``).

Cases (``--cases``; each stack in a fresh namespace, every stack once per case per round,
the order rotated from round to round):

* ``keepalive``: ``wrk -t2 -c200`` (``--connections``) over keep-alive connections to nginx
  serving a 1 KiB file on host 127.0.0.1; requests/s, p50/p99 latency;
* ``conn``: the same with ``Connection: close``, ``-c50`` (``--conn-connections``): one new
  TCP connection per request, so requests/s is connections/s (the namespace allows
  ``tcp_tw_reuse`` and the full ephemeral port range so TIME_WAIT does not cap it);
* ``udp``: DNS-sized datagrams (``--udp-size``, 64 B) echoed by a UDP echo server on host
  127.0.0.1, 64 in flight (``--window``), from one socket in the namespace;
  datagrams echoed per second, round-trip p50/p99;
* ``bulk-plain``: ``iperf3 -c 10.0.2.2`` up (namespace -> host) and down (``-R``), netstackd's
  tap with ``vnet_hdr=off`` (every 1500-byte frame crosses the tap alone);
* ``bulk-offload``: the same with ``vnet_hdr=on`` (the tap passes 64 KiB TSO frames).
  slirp4netns has no such switch: one slirp4netns measurement per round serves both.

The servers and clients are :mod:`bench.workload_traffic`'s. Every HTTP response is
checked by a wrk Lua script (status 200 and the exact 1 KiB body) and every UDP echo by the
client (sequence number, length, content); wrk's own errors
(connect, read, write, status, timeout), wrong bodies, corrupt or unknown echoes count as
errors, UDP datagrams never echoed as lost. For each measurement the stack's CPU time is
read from /proc/PID/stat before and after: CPU per request, per connection, per echoed
datagram, or per GB moved, and the share of it spent in the kernel (for bulk also how busy
the whole machine was: iperf3 itself needs most of two CPUs here). Before the rounds the
wrk and UDP clients run once straight over host loopback (the "floor": what the clients and
servers themselves allow). Printed: per-round figures on stderr, then per case the medians,
netstackd/slirp4netns ratios (the median of same-round ratios, which is what counts on a
shared machine, and each round's), and whether the per-packet speed target is met (the
targets are recorded with the figures in docs/performance.md).

``--profile DIR`` then runs each selected case once more with py-spy sampling the compiled
netstackd (``--nonblocking``, 200 Hz, its raw collapsed stacks saved in DIR) and prints
the top self and inclusive frames and the self time per source file, as shares of the
daemon's sampled (non-idle) time. py-spy sees Python frames only: a system call's time
(a tap write, a sendto on loopback) shows as the Python function that made it, and so does
the time the daemon waits, runnable, for a CPU after waking its peer. With
``--profiler perf`` the extra runs are sampled by ``perf record -F 499 -g`` instead, for
netstackd and for slirp4netns, and the CPU split by shared object (kernel, interpreter, the
C extensions, libslirp) is printed.

    python bench/bench_user_workloads.py [--cases keepalive,conn,udp,bulk-plain,bulk-offload]
        [--duration 5] [--rounds 3] [--pure] [--profile DIR] [--json FILE]

Needs root, wrk, nginx and iperf3 (tools/setup-deps.sh). Only loopback and the namespaces
made here are used; nginx, the echo server and every stack are started and stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import bench_user_stacks as stacks  # noqa: E402
from bench.workload_traffic import (  # noqa: E402
    BODY,
    BODY_PATH,
    WRK_SCRIPT,
    CpuMeter,
    HostServers,
    Sample,
    udp,
    wrk,
)

MTU = 1500
CASES = ("keepalive", "conn", "udp", "bulk-plain", "bulk-offload")
PEER = "slirp4netns"

# -- the stacks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One stack configuration: ``name`` is what the tables show."""

    name: str
    kind: str
    pure: bool = False
    vnet_hdr: bool = True


@dataclass
class WorkloadStack(stacks.Stack):
    """:class:`bench.bench_user_stacks.Stack` with the tap's ``vnet_hdr`` and the data path
    (compiled or ``NETSTACK_PURE_PYTHON=1``) chosen; slirp4netns starts as it does there."""

    pure: bool = False
    vnet_hdr: bool = True

    def start(self, logdir: Path) -> None:
        if self.kind != "netstackd":
            super().start(logdir)
            return
        m, ns = str(self.mtu), self.ns
        self.argv = [
            sys.executable, "-m", "netstack",
            "-netdev", f"user,id=nat0,x-mtu={m}",
            "-netdev", "tap,id=t0,ifname=ns0,script=no,downscript=no,"
                       f"vnet_hdr={'on' if self.vnet_hdr else 'off'},x-netns={ns}",
            "-netdev", "hubport,id=h0,hubid=0,netdev=nat0",
            "-netdev", "hubport,id=h1,hubid=0,netdev=t0",
        ]  # fmt: skip
        self.log = logdir / f"netstackd-{ns}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO, env=netstackd_env(self.pure),
            )  # fmt: skip
        try:
            stacks.wait_until("netstackd's tap", self._tap_exists, timeout=60)
            stacks.sh("ip", "-n", ns, "link", "set", "ns0", "mtu", m)
            stacks.sh("ip", "-n", ns, "addr", "add", f"{stacks.GUEST_ADDR}/24", "dev", "ns0")
            stacks.sh("ip", "-n", ns, "link", "set", "ns0", "up")
            stacks.sh("ip", "-n", ns, "route", "add", "default", "via", stacks.GATEWAY)
        except BaseException:
            self.stop()
            raise


def netstackd_env(pure: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NETSTACK_PURE_PYTHON"}
    if pure:
        env["NETSTACK_PURE_PYTHON"] = "1"
    return env


def data_path(pure: bool) -> str:
    """The data-path line of ``netstackd -version`` under that environment."""
    done = subprocess.run(
        [sys.executable, "-m", "netstack", "-version"], capture_output=True, text=True,
        timeout=60, cwd=REPO, env=netstackd_env(pure),
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else done.stderr.strip()[-200:]


@contextlib.contextmanager
def running(variant: Variant, logdir: Path) -> Iterator[WorkloadStack]:
    """A fresh namespace served by ``variant``; everything stopped and deleted afterwards."""
    with stacks.namespace() as ns:
        stack = WorkloadStack(variant.kind, ns, MTU, pure=variant.pure, vnet_hdr=variant.vnet_hdr)
        stack.start(logdir)
        try:
            yield stack
            if stack.proc is not None and stack.proc.poll() is not None:
                raise RuntimeError(f"{variant.name} died:\n{stack.output()[-2000:]}")
        finally:
            stack.stop()
        trouble = stack.trouble()
        if trouble:
            stacks.say(f"WARNING: {variant.name} logged errors:\n{trouble}")


# -- the measurements ------------------------------------------------------------------------


def bulk(stack: WorkloadStack, servers: HostServers, seconds: float, reverse: bool) -> Sample:
    servers.check()
    meter = CpuMeter(stack.pid)
    got = stacks.iperf(stack, servers.iperf_port, seconds, reverse=reverse)
    gbytes_per_s = got.gbps / 8
    cpu = 1e3 * got.cpu / gbytes_per_s if gbytes_per_s else 0.0
    return Sample(got.gbps, cpu, meter.read()[1], busy=got.busy)


@dataclass(frozen=True)
class Case:
    """A case: its variants and what one run of it measures, as ``metric -> Sample``."""

    name: str
    variants: tuple[Variant, ...]
    workload: str  # variants with equal (name, workload) share one measurement per round


def cases_for(names: Sequence[str], pure: bool) -> list[Case]:
    slirp = Variant(PEER, PEER)
    plain = [Variant("netstackd", "netstackd")]
    off = [Variant("netstackd vnet_hdr=off", "netstackd", vnet_hdr=False)]
    on = [Variant("netstackd vnet_hdr=on", "netstackd")]
    if pure:
        plain.append(Variant("netstackd-pure", "netstackd", pure=True))
        off.append(Variant("netstackd-pure vnet_hdr=off", "netstackd", True, False))
        on.append(Variant("netstackd-pure vnet_hdr=on", "netstackd", True))
    table = {
        "keepalive": Case("keepalive", (slirp, *plain), "keepalive"),
        "conn": Case("conn", (slirp, *plain), "conn"),
        "udp": Case("udp", (slirp, *plain), "udp"),
        "bulk-plain": Case("bulk-plain", (slirp, *off), "bulk"),
        "bulk-offload": Case("bulk-offload", (slirp, *on), "bulk"),
    }
    return [table[n] for n in names]


def measure(
    workload: str, stack: WorkloadStack, servers: HostServers, args: argparse.Namespace,
    script: Path,
) -> dict[str, Sample]:  # fmt: skip
    host, seconds, pid, ns = stacks.GATEWAY, args.duration, stack.pid, stack.ns
    if workload == "keepalive":
        return {"": wrk(pid, ns, host, servers.http_port, seconds, args.connections, False,
                        script)}  # fmt: skip
    if workload == "conn":
        for knob in ("net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535"):
            stacks.in_ns(ns, "sysctl", "-qw", knob, timeout=10).check_returncode()
        return {"": wrk(pid, ns, host, servers.http_port, seconds, args.conn_connections, True,
                        script)}  # fmt: skip
    if workload == "udp":
        return {"": udp(pid, ns, host, servers.udp_port, seconds, args.udp_size, args.window)}
    return {
        "up": bulk(stack, servers, seconds, reverse=False),
        "down": bulk(stack, servers, seconds, reverse=True),
    }


# -- targets and the report ------------------------------------------------------------------

UNITS = {"keepalive": ("req/s", "µs/req"), "conn": ("conn/s", "µs/conn"),
         "udp": ("dgram/s", "µs/dgram"), "bulk": ("Gbit/s", "ms/GB")}  # fmt: skip


def target(case: str) -> tuple[float, float | None]:
    """(minimum rate ratio, maximum p99 ratio) netstackd is held to against slirp4netns:
    1.0x the rate everywhere (keep-alive also a p99 within 1.5x), 4x for offloaded bulk."""
    if case == "keepalive":
        return 1.0, 1.5
    if case == "bulk-offload":
        return 4.0, None
    return 1.0, None


def med(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


Samples = dict[tuple[str, str, str], list[Sample | None]]  # (case, metric, variant) -> rounds


def report(cases: Sequence[Case], samples: Samples, rounds: int) -> list[str]:
    """The table; returns a one-line verdict per (case, metric) for the compiled netstackd."""
    verdicts = []
    for case in cases:
        rate_unit, cpu_unit = UNITS[case.workload]
        metrics = list(dict.fromkeys(m for (c, m, _v) in samples if c == case.name))
        for metric in metrics:
            title = f"{case.name} {metric}".strip()
            print(f"\n{title}: medians of {rounds} round(s)")
            print(f"  {'stack':<30} {rate_unit:>10} {'p50 µs':>8} {'p99 µs':>8} {'errors':>6} "
                  f"{'lost':>5} {'checked':>9} {cpu_unit:>9} {'kernel':>6} "
                  f"{'busy':>5}")  # fmt: skip
            peer = samples.get((case.name, metric, PEER), [])
            for variant in case.variants:
                got = [s for s in samples.get((case.name, metric, variant.name), []) if s]
                if not got:
                    print(f"  {variant.name:<30} {'failed':>10}")
                    continue
                p50 = [s.p50 for s in got if s.p50 is not None]
                p99 = [s.p99 for s in got if s.p99 is not None]
                print(
                    f"  {variant.name:<30} {med([s.rate for s in got]):10.2f} "
                    f"{f'{med(p50):.0f}' if p50 else '-':>8} "
                    f"{f'{med(p99):.0f}' if p99 else '-':>8} "
                    f"{sum(s.errors for s in got):6d} {sum(s.lost for s in got):5d} "
                    f"{sum(s.checked for s in got):9d} {med([s.cpu for s in got]):9.1f} "
                    f"{med([s.sys for s in got]):6.0%} "
                    f"{f'{med([s.busy for s in got]):.0%}' if got[0].busy else '-':>5}"
                )
            for variant in case.variants[1:]:
                ours = samples.get((case.name, metric, variant.name), [])
                line = ratios(case.name, variant.name, ours, peer)
                print(f"  {line}")
                if not variant.pure:
                    verdicts.append(f"{title}: {line}")
    return verdicts


def ratios(case: str, name: str, ours: Sequence[Sample | None],
           peer: Sequence[Sample | None]) -> str:  # fmt: skip
    pairs = [(o, p) for o, p in zip(ours, peer, strict=False) if o and p and p.rate and p.cpu]
    if not pairs:
        return f"{name}/{PEER}: no same-round pair"
    rate = [o.rate / p.rate for o, p in pairs]
    cpu = [o.cpu / p.cpu for o, p in pairs]
    p99 = [o.p99 / p.p99 for o, p in pairs if o.p99 and p.p99]
    want_rate, want_p99 = target(case)
    errors = sum(o.errors for o, _p in pairs)
    met = med(rate) >= want_rate and errors == 0
    text = (f"{name}/{PEER}: rate {med(rate):.2f}x (rounds "
            f"{', '.join(f'{r:.2f}' for r in rate)}), CPU per op {med(cpu):.2f}x")  # fmt: skip
    if p99:
        text += f", p99 {med(p99):.2f}x"
        if want_p99 is not None:
            met = met and med(p99) <= want_p99
    goal = f">= {want_rate:g}x" + (f", p99 <= {want_p99:g}x" if want_p99 else "")
    return f"{text}; target {goal}, zero errors: {'MET' if met else 'NOT met'}"


# -- profiles --------------------------------------------------------------------------------

_LINE = re.compile(r":\d+\)$")
_FILE = re.compile(r"\((.*)\)$")
#: Frames every sample passes through (the event loop's run and the daemon's main).
OUTER = ("asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py", "<frozen runpy>",
         "netstack/__main__.py", "netstack/cli.py")  # fmt: skip


def summarize(raw: str, top: int = 14) -> list[str]:
    """Top self and inclusive frames, and self time per source file, of py-spy's raw
    (collapsed) output; line numbers dropped so that a function counts once per stack,
    the frames every sample shares (:data:`OUTER`) left out of the inclusive list."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_LINE.sub(")", f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        where = _FILE.search(frames[-1])
        files[where.group(1) if where else frames[-1]] += n
        for frame in set(frames):
            if not frame.endswith(tuple(f"{o})" for o in OUTER)):
                incl[frame] += n
    if not total:
        return ["  (no samples)"]
    out = [f"  {total} samples; self:"]
    for title, counts in (("self", own), ("inclusive", incl), ("self by file", files)):
        if title != "self":
            out.append(f"  {title}:")
        out += [f"    {100 * n / total:5.1f}%  {f}" for f, n in counts.most_common(top)]
    return out


def pyspy() -> str:
    """py-spy next to this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy") or "py-spy"


def profiler(tool: str, pid: int, out: Path) -> list[str]:
    if tool == "perf":
        return ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", str(out)]
    return [pyspy(), "record", "-p", str(pid), "-r", "200", "--nonblocking", "-f", "raw", "-o",
            str(out)]  # fmt: skip


def perf_dsos(data: Path, top: int = 8) -> list[str]:
    """The CPU split by shared object (kernel, interpreter, extensions) of a perf record."""
    done = subprocess.run(
        ["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio",
         "-g", "none"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [ln for ln in done.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
    return [f"  {ln.rstrip()}" for ln in lines[:top]] or [f"  (perf report: {done.stderr[-200:]})"]


def profile(case: Case, variant: Variant, servers: HostServers, args: argparse.Namespace,
            script: Path, logdir: Path) -> None:  # fmt: skip
    """One more run of ``case`` with ``variant`` sampled by py-spy or perf; prints the top."""
    tool, outdir = args.profiler, args.profile
    with running(variant, logdir) as stack:
        suffix = "perf.data" if tool == "perf" else "txt"
        out = outdir / f"{case.name}-{variant.name.replace(' ', '-')}.{suffix}"
        proc = subprocess.Popen(profiler(tool, stack.pid, out), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        try:
            time.sleep(1)
            got = measure(case.workload, stack, servers, args, script)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                stacks.stop(proc)
    figures = ", ".join(f"{m or 'rate'} {s.rate:.2f} at {s.cpu:.1f} CPU/op" for m, s in got.items())
    print(f"\nprofile of {variant.name} under {case.name} ({figures}; {tool}, {out}):")
    if tool == "perf":
        print("\n".join(perf_dsos(out)))
    else:
        print("\n".join(summarize(out.read_text() if out.exists() else "")))


# -- main ------------------------------------------------------------------------------------


def run_round(
    rnd: int, cases: Sequence[Case], servers: HostServers, args: argparse.Namespace,
    script: Path, logdir: Path, samples: Samples,
) -> None:  # fmt: skip
    done: dict[tuple[str, str], dict[str, Sample] | None] = {}
    for case in cases:
        shift = rnd % len(case.variants)
        for variant in case.variants[shift:] + case.variants[:shift]:
            key = (variant.name, case.workload)
            if key not in done:
                try:
                    with running(variant, logdir) as stack:
                        done[key] = measure(case.workload, stack, servers, args, script)
                except (RuntimeError, subprocess.SubprocessError, ValueError, KeyError) as exc:
                    stacks.say(f"  round {rnd + 1}: {case.name} {variant.name} failed: {exc}")
                    done[key] = None
            got = done[key]
            names = ("up", "down") if case.workload == "bulk" else ("",)
            for metric in names:
                sample = got.get(metric) if got else None
                samples.setdefault((case.name, metric, variant.name), []).append(sample)
                if sample is not None:
                    stacks.say(f"  round {rnd + 1}: {case.name} {metric} {variant.name}: "
                               f"{sample.rate:.2f}, CPU/op {sample.cpu:.1f} "
                               f"({sample.sys:.0%} kernel), p50/p99 {sample.p50 or 0:.0f}/"
                               f"{sample.p99 or 0:.0f} µs, errors {sample.errors}, "
                               f"lost {sample.lost}, machine busy {sample.busy:.0%}")  # fmt: skip


def floors(servers: HostServers, args: argparse.Namespace, script: Path) -> None:
    """The same clients straight over host loopback: the ceiling the clients allow."""
    loop, seconds = "127.0.0.1", args.duration
    for name, got in (
        ("keepalive", wrk(None, None, loop, servers.http_port, seconds, args.connections,
                          False, script)),
        ("udp", udp(None, None, loop, servers.udp_port, seconds, args.udp_size, args.window)),
    ):  # fmt: skip
        print(f"# floor, {name} on host loopback (no stack): {got.rate:.0f}/s, p50 {got.p50:.0f}"
              f" µs, p99 {got.p99:.0f} µs, errors {got.errors}")  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated cases (default %(default)s)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--pure", action="store_true", help="also NETSTACK_PURE_PYTHON=1")
    parser.add_argument("--connections", type=int, default=200, help="keepalive connections")
    parser.add_argument("--conn-connections", type=int, default=50, help="conn concurrency")
    parser.add_argument("--udp-size", type=int, default=64, help="UDP payload bytes (>= 8)")
    parser.add_argument("--window", type=int, default=64, help="UDP datagrams in flight")
    parser.add_argument("--profile", type=Path, help="py-spy each case's netstackd into DIR")
    parser.add_argument("--profiler", choices=("py-spy", "perf"), default="py-spy",
                        help="py-spy: Python frames of netstackd; perf: the CPU split by "
                        "shared object, netstackd and slirp4netns")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every sample to FILE")
    parser.add_argument("--no-floor", action="store_true", help="skip the loopback floors")
    args = parser.parse_args(argv)
    for name in args.cases.split(","):
        if name not in CASES:
            parser.error(f"unknown case {name} (choose from {', '.join(CASES)})")
    if args.udp_size < 8:
        parser.error("--udp-size must be at least 8")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, taps)", file=sys.stderr)
        return 2
    for tool in ("wrk", "nginx", "iperf3", PEER):
        if shutil.which(tool) is None:
            print(f"{tool} missing (tools/setup-deps.sh)", file=sys.stderr)
            return 2
    if args.profile and args.profiler == "py-spy" and not Path(pyspy()).exists():
        print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    if args.profile and args.profiler == "perf" and shutil.which("perf") is None:
        print("--profiler perf needs perf (Debian: linux-perf)", file=sys.stderr)
        return 2
    cases = cases_for(args.cases.split(","), args.pure)
    signal.signal(signal.SIGTERM, stacks.interrupted)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    load = os.getloadavg()
    print(
        f"# {os.cpu_count()} CPUs, load average before {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; {args.duration:g} s per measurement, {args.rounds} round(s)"
    )
    print(f"# netstackd: {data_path(False)}" + (f"; --pure: {data_path(True)}" if args.pure
                                                 else ""))  # fmt: skip
    samples: Samples = {}
    with tempfile.TemporaryDirectory(prefix="bench-user-workloads-") as tmp:
        script = Path(tmp) / "check.lua"
        script.write_text(WRK_SCRIPT)
        with HostServers(Path(tmp)) as servers:
            print(f"# host: {' '.join(servers.nginx_argv)} (1 worker, {len(BODY)} B at "
                  f"{BODY_PATH}); {' '.join(servers.iperf_argv)}; UDP echo (python) on "
                  f"127.0.0.1:{servers.udp_port}")  # fmt: skip
            print(f"# namespace: wrk -t2 -c{args.connections} [-c{args.conn_connections} "
                  f"-H 'Connection: close'] -d{args.duration:g}s --timeout 5s -s check.lua "
                  f"http://{stacks.GATEWAY}:{servers.http_port}{BODY_PATH}; python UDP client "
                  f"({args.udp_size} B, window {args.window}); iperf3 -c {stacks.GATEWAY} "
                  f"[-R]; netstackd tap MTU {MTU}, slirp4netns --mtu={MTU}")  # fmt: skip
            if not args.no_floor:
                floors(servers, args, script)
            for rnd in range(args.rounds):
                run_round(rnd, cases, servers, args, script, Path(tmp), samples)
            verdicts = report(cases, samples, args.rounds)
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                for case in cases:
                    # perf reads any process: slirp4netns too, for its CPU split
                    profiled = case.variants[:2] if args.profiler == "perf" else case.variants[1:2]
                    for variant in profiled:
                        profile(case, variant, servers, args, script, Path(tmp))
    print("\nverdicts (compiled netstackd, median of same-round ratios):")
    print("\n".join(f"  {v}" for v in verdicts))
    if args.json:
        args.json.write_text(json.dumps(
            {"|".join(k): [asdict(s) if s else None for s in v] for k, v in samples.items()},
            indent=1))  # fmt: skip
    load = os.getloadavg()
    print(f"# load average after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
