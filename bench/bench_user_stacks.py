"""User-mode stacks serving a network namespace (the rootlesskit topology), side by side.

Each case gets a fresh namespace whose only interface is served by one user-mode stack,
configured as 10.0.2.100/24 with the default route via 10.0.2.2, which each stack maps to
the host's 127.0.0.1:

* ``slirp4netns`` (libslirp): ``slirp4netns --configure --mtu=M --netns-type=path
  /var/run/netns/NS tap0`` (10.0.2.2 reaches host loopback unless
  ``--disable-host-loopback``);
* ``pasta`` (passt): ``pasta --runas 0:0 --netns-only --config-net --netns
  /var/run/netns/NS -a 10.0.2.100 -n 24 -g 10.0.2.2 -m M -f -q`` (Debian 12's pasta maps
  the gateway address to the host's loopback unless ``--no-map-gw``; newer versions call
  this ``--map-host-loopback``);
* ``netstackd``: ``python -m netstack`` with a tap (``vnet_hdr=on``, opened inside the
  namespace with ``x-netns=``) and a user netdev (``x-mtu=M``) on hub 0; the bench sets
  the tap's MTU to M and the address and route.

Per case, for ``--duration`` seconds each: iperf3 TCP throughput namespace -> host
(``up``) and host -> namespace (``down``, ``-R``) against ``iperf3 -s`` on host
127.0.0.1, and TCP request/response transactions per second (``rr``: one connection, a
``--rr-size`` byte message echoed back, TCP_NODELAY both ends; a Python client in the
namespace against a Python echo server on host loopback; the same client straight over
host loopback is printed first as the floor). Also the stack's CPU use (1.0 = one CPU)
during each run and how busy the whole machine was during the throughput runs (iperf3
itself needs most of two CPUs here: ``busy`` near 100 % means the box was the limit).

Cases are interleaved (every stack once per MTU per round) and ``--repeat`` rounds give
the median (single runs are noisy on 2 CPUs: Debian 12's pasta, for one, stalls for whole
seconds namespace -> host, with retransmissions and empty iperf3 intervals, so its ``up``
figure is bimodal). Prints every command line used, per-run figures on stderr, then a
table with the ratios netstackd/slirp4netns and netstackd/pasta. Needs root; only loopback and the
namespaces made here are used; every process is stopped by PID and every namespace deleted.

    python bench/bench_user_stacks.py [--mtu 1500,65520] [--duration 3] [--repeat 1]
                                      [--stacks slirp4netns,pasta,netstackd] [--rr-size 1]
                                      [--rr-only]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUEST_ADDR = "10.0.2.100"
GATEWAY = "10.0.2.2"
STACKS = ("slirp4netns", "pasta", "netstackd")
TICK = os.sysconf("SC_CLK_TCK")
_names = itertools.count()

#: Host side of the RR test: echo every byte back, one thread per connection.
ECHO_SERVER = r"""
import socket, sys, threading
ls = socket.create_server(("127.0.0.1", 0), backlog=64)
print(ls.getsockname()[1], flush=True)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with c:
        while data := c.recv(65536):
            c.sendall(data)
while True:
    conn, _ = ls.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

#: Namespace side of the RR test: send SIZE bytes, read SIZE bytes back, repeat for
#: SECONDS; prints {"transactions": N, "seconds": S}.
RR_CLIENT = r"""
import json, socket, sys, time
host, port, size, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((host, port), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b"r" * size
buf = bytearray(size)
view = memoryview(buf)
n = 0
clock = time.perf_counter
t0 = clock()
end = t0 + seconds
while True:
    s.sendall(msg)
    got = 0
    while got < size:
        k = s.recv_into(view[got:])
        if not k:
            raise SystemExit("echo server closed the connection")
        got += k
    n += 1
    now = clock()
    if now >= end:
        break
s.close()
print(json.dumps({"transactions": n, "seconds": now - t0}))
"""


# -- helpers ---------------------------------------------------------------------------------


def sh(*args: str, check: bool = True, timeout: float = 30) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode:
        raise RuntimeError(f"{shlex.join(args)}: {done.stderr.strip()}")
    return done.stdout


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def stop(proc: subprocess.Popen[bytes], grace: float = 5) -> None:
    """SIGTERM, then SIGKILL, by PID."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    name = f"nsbus{os.getpid() % 100000}x{next(_names)}"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def wait_until(what: str, ok: object, timeout: float = 10) -> None:
    assert callable(ok)
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def has_addr(ns: str) -> bool:
    return f"{GUEST_ADDR}/" in sh("ip", "-n", ns, "-4", "-o", "addr", check=False)


# -- the stacks ------------------------------------------------------------------------------


@dataclass
class Stack:
    """One stack process serving namespace ``ns``; ``argv`` is what was run."""

    kind: str
    ns: str
    mtu: int
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)
    log: Path | None = None

    def start(self, logdir: Path) -> None:
        path = f"/var/run/netns/{self.ns}"
        m = str(self.mtu)
        if self.kind == "slirp4netns":
            self.argv = ["slirp4netns", "--configure", f"--mtu={m}", "--netns-type=path", path,
                         "tap0"]  # fmt: skip
        elif self.kind == "pasta":
            self.argv = ["pasta", "--runas", "0:0", "--netns-only", "--config-net", "--netns",
                         path, "-a", GUEST_ADDR, "-n", "24", "-g", GATEWAY, "-m", m, "-f",
                         "-q"]  # fmt: skip
        elif self.kind == "netstackd":
            self.argv = [
                sys.executable, "-m", "netstack",
                "-netdev", f"user,id=nat0,x-mtu={m}",
                "-netdev", "tap,id=t0,ifname=ns0,script=no,downscript=no,vnet_hdr=on,"
                           f"x-netns={self.ns}",
                "-netdev", "hubport,id=h0,hubid=0,netdev=nat0",
                "-netdev", "hubport,id=h1,hubid=0,netdev=t0",
            ]  # fmt: skip
        else:
            raise SystemExit(f"unknown stack {self.kind}")
        self.log = logdir / f"{self.kind}-{self.mtu}-{self.ns}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO,
            )  # fmt: skip
        try:
            if self.kind == "netstackd":
                wait_until("netstackd's tap", self._tap_exists, timeout=60)
                ns = self.ns
                sh("ip", "-n", ns, "link", "set", "ns0", "mtu", m)
                sh("ip", "-n", ns, "addr", "add", f"{GUEST_ADDR}/24", "dev", "ns0")
                sh("ip", "-n", ns, "link", "set", "ns0", "up")
                sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)
            else:
                wait_until(f"{self.kind} to configure {self.ns}", self._configured)
        except BaseException:
            self.stop()
            raise

    def _tap_exists(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.kind} exited early:\n{self.output()[-2000:]}")
        done = subprocess.run(["ip", "-n", self.ns, "link", "show", "ns0"], capture_output=True)
        return done.returncode == 0

    def _configured(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.kind} exited early:\n{self.output()[-2000:]}")
        return has_addr(self.ns) and "default" in sh("ip", "-n", self.ns, "route", check=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def trouble(self) -> str:
        """Tracebacks or errors the stack logged (netstackd), for a warning."""
        if self.kind != "netstackd":
            return ""
        lines = [ln for ln in self.output().splitlines() if "Traceback" in ln or "ERROR" in ln]
        return "\n".join(lines[:5])


# -- the measurements ------------------------------------------------------------------------


def in_ns(ns: str, *argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Sample:
    gbps: float
    cpu: float
    busy: float


def iperf(stack: Stack, port: int, seconds: float, reverse: bool) -> Sample:
    argv = ["iperf3", "-c", GATEWAY, "-p", str(port), "-t", f"{seconds:g}", "-J"]
    if reverse:
        argv.append("-R")
    last = ""
    for _attempt in range(3):
        busy0, total0 = machine_ticks()
        cpu0, t0 = cpu_seconds(stack.pid), time.monotonic()
        done = in_ns(stack.ns, *argv, timeout=seconds + 30)
        elapsed = time.monotonic() - t0
        cpu = (cpu_seconds(stack.pid) - cpu0) / elapsed
        busy1, total1 = machine_ticks()
        try:
            report = json.loads(done.stdout)
        except ValueError:
            report = {"error": done.stdout[-300:] + done.stderr[-300:]}
        if done.returncode == 0 and "error" not in report:
            gbps = float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
            return Sample(gbps, cpu, (busy1 - busy0) / max(1, total1 - total0))
        last = str(report.get("error"))
        time.sleep(0.5)
    raise RuntimeError(f"iperf3 failed: {last}")


def request_response(stack: Stack, port: int, size: int, seconds: float) -> tuple[float, float]:
    """(transactions/s, the stack's CPU use) of one RR run from the namespace."""
    cpu0, t0 = cpu_seconds(stack.pid), time.monotonic()
    done = in_ns(
        stack.ns, sys.executable, "-c", RR_CLIENT, GATEWAY, str(port), str(size), f"{seconds:g}",
        timeout=seconds + 30,
    )  # fmt: skip
    cpu = (cpu_seconds(stack.pid) - cpu0) / (time.monotonic() - t0)
    if done.returncode:
        raise RuntimeError(f"RR client failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["transactions"]) / float(result["seconds"]), cpu


def rr_floor(port: int, size: int, seconds: float) -> float:
    """Transactions/s of the RR client straight to the echo server over host loopback."""
    done = subprocess.run(
        [sys.executable, "-c", RR_CLIENT, "127.0.0.1", str(port), str(size), f"{seconds:g}"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["transactions"]) / float(result["seconds"])


@dataclass
class Result:
    stack: str
    mtu: int
    up: Sample
    down: Sample
    rr: float
    rr_cpu: float


class HostServers:
    """iperf3 -s and the RR echo server on host 127.0.0.1, for the whole run."""

    def __init__(self) -> None:
        self.iperf_port = free_port()
        self.iperf_argv = ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(self.iperf_port)]
        self.iperf: subprocess.Popen[bytes] | None = None
        self.echo: subprocess.Popen[bytes] | None = None
        self.echo_port = 0

    def __enter__(self) -> HostServers:
        try:
            self.iperf = subprocess.Popen(
                self.iperf_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            wait_until("iperf3 -s", lambda: listening(self.iperf_port))
            self.echo = subprocess.Popen(
                [sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE
            )
            assert self.echo.stdout is not None
            self.echo_port = int(self.echo.stdout.readline())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in (self.iperf, self.echo):
            if proc is not None:
                stop(proc)

    def check(self) -> None:
        """Restart iperf3 -s if an aborted client left it wedged or dead."""
        assert self.iperf is not None
        if self.iperf.poll() is not None or not listening(self.iperf_port):
            stop(self.iperf)
            self.iperf = subprocess.Popen(
                self.iperf_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            wait_until("iperf3 -s", lambda: listening(self.iperf_port))


def run_case(
    kind: str, mtu: int, servers: HostServers, args: argparse.Namespace, logdir: Path,
    printed: set[str],
) -> Result:  # fmt: skip
    with namespace() as ns:
        stack = Stack(kind, ns, mtu)
        stack.start(logdir)
        try:
            key = f"{kind}/{mtu}"
            if key not in printed:
                printed.add(key)
                print(f"# {kind} MTU {mtu}: {shlex.join(stack.argv)}")
                if kind == "netstackd":
                    print(
                        f"#   then: ip -n NS link set ns0 mtu {mtu} up; ip -n NS addr add "
                        f"{GUEST_ADDR}/24 dev ns0; ip -n NS route add default via {GATEWAY}"
                    )
            up = down = Sample(0.0, 0.0, 0.0)
            if not args.rr_only:
                servers.check()
                up = iperf(stack, servers.iperf_port, args.duration, reverse=False)
                servers.check()
                down = iperf(stack, servers.iperf_port, args.duration, reverse=True)
            rr, rr_cpu = request_response(stack, servers.echo_port, args.rr_size, args.duration)
            if stack.proc is not None and stack.proc.poll() is not None:
                raise RuntimeError(f"{kind} died:\n{stack.output()[-2000:]}")
        finally:
            stack.stop()
        trouble = stack.trouble()
        if trouble:
            say(f"WARNING: {kind} logged errors:\n{trouble}")
        return Result(kind, mtu, up, down, rr, rr_cpu)


# -- report ----------------------------------------------------------------------------------


def median_result(results: Sequence[Result]) -> Result:
    def med(xs: Sequence[float]) -> float:
        return float(statistics.median(xs))

    def sample(xs: Sequence[Sample]) -> Sample:
        return Sample(med([x.gbps for x in xs]), med([x.cpu for x in xs]),
                      med([x.busy for x in xs]))  # fmt: skip

    first = results[0]
    return Result(first.stack, first.mtu, sample([r.up for r in results]),
                  sample([r.down for r in results]), med([r.rr for r in results]),
                  med([r.rr_cpu for r in results]))  # fmt: skip


def print_table(results: dict[tuple[str, int], Result], stacks: Sequence[str],
                mtus: Sequence[int], size: int) -> None:  # fmt: skip
    print(
        f"\n{'stack':<24} {'MTU':>5} {'up Gbit/s':>10} {'down Gbit/s':>12} "
        f"{f'RR/s ({size} B)':>13} {'us/RR':>7} {'CPU up':>7} {'CPU down':>9} {'CPU RR':>7} "
        f"{'busy':>5} {'CPU us/RR':>9}"
    )
    for mtu in mtus:
        for kind in stacks:
            r = results.get((kind, mtu))
            if r is None:
                print(f"{kind:<24} {mtu:>5} {'failed':>10}")
                continue
            print(
                f"{kind:<24} {mtu:>5} {r.up.gbps:10.2f} {r.down.gbps:12.2f} {r.rr:13.0f} "
                f"{1e6 / r.rr:7.0f} {r.up.cpu:7.2f} {r.down.cpu:9.2f} {r.rr_cpu:7.2f} "
                f"{max(r.up.busy, r.down.busy):5.0%} {1e6 * r.rr_cpu / r.rr:9.1f}"
            )
        ours = results.get(("netstackd", mtu))
        for peer in ("slirp4netns", "pasta"):
            ref = results.get((peer, mtu))
            if ours is None or ref is None:
                continue
            print(
                f"{'  netstackd/' + peer:<24} {mtu:>5} {_ratio(ours.up.gbps, ref.up.gbps):9.2f}x "
                f"{_ratio(ours.down.gbps, ref.down.gbps):11.2f}x {ours.rr / ref.rr:12.2f}x "
                f"CPU per RR {ours.rr_cpu * ref.rr / (ref.rr_cpu * ours.rr):.2f}x"
            )


def _ratio(ours: float, ref: float) -> float:
    return ours / ref if ref else 0.0


def interrupted(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every namespace and process is cleaned up."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mtu", default="1500,65520", help="comma-separated MTUs")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--stacks", default=",".join(STACKS), help="comma-separated stacks")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the median is shown")
    parser.add_argument("--rr-size", type=int, default=1, help="RR message size (bytes)")
    parser.add_argument("--rr-only", action="store_true", help="request/response only")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, taps)", file=sys.stderr)
        return 2
    if shutil.which("iperf3") is None:
        print("iperf3 missing (tools/setup-deps.sh)", file=sys.stderr)
        return 2
    mtus = [int(m) for m in args.mtu.split(",")]
    stacks = [s for s in args.stacks.split(",") if s]
    for kind in list(stacks):
        if kind not in STACKS:
            parser.error(f"unknown stack {kind} (choose from {', '.join(STACKS)})")
        if kind != "netstackd" and shutil.which(kind) is None:
            say(f"{kind} not installed (tools/setup-deps.sh): skipped")
            stacks.remove(kind)
    signal.signal(signal.SIGTERM, interrupted)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    load = os.getloadavg()
    print(
        f"# {os.cpu_count()} CPUs, load average before the run {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; {args.duration:g} s per measurement, {args.repeat} round(s), median"
    )
    samples: dict[tuple[str, int], list[Result]] = {}
    printed: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="bench-user-stacks-") as tmp, HostServers() as srv:
        print(f"# host: {shlex.join(srv.iperf_argv)}; RR echo server: python on "
              f"127.0.0.1:{srv.echo_port}")  # fmt: skip
        print(f"# namespace: ip netns exec NS iperf3 -c {GATEWAY} -p {srv.iperf_port} "
              f"-t {args.duration:g} -J [-R]; ip netns exec NS python RR client "
              f"({args.rr_size} B, TCP_NODELAY)")  # fmt: skip
        floor = rr_floor(srv.echo_port, args.rr_size, args.duration)
        print(f"# RR floor (the same client on host loopback, no stack): {floor:.0f}/s, "
              f"{1e6 / floor:.0f} us")  # fmt: skip
        for rnd in range(args.repeat):
            for mtu in mtus:
                for kind in stacks:
                    try:
                        r = run_case(kind, mtu, srv, args, Path(tmp), printed)
                    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                        say(f"  round {rnd + 1}: {kind} MTU {mtu} failed: {exc}")
                        continue
                    samples.setdefault((kind, mtu), []).append(r)
                    say(
                        f"  round {rnd + 1}: {kind:<11} MTU {mtu:>5}: up {r.up.gbps:6.2f} "
                        f"down {r.down.gbps:6.2f} Gbit/s, RR {r.rr:7.0f}/s "
                        f"(stack CPU {r.up.cpu:.2f}/{r.down.cpu:.2f}/{r.rr_cpu:.2f}, "
                        f"machine busy {r.up.busy:.0%}/{r.down.busy:.0%})"
                    )
    results = {key: median_result(rs) for key, rs in samples.items()}
    print_table(results, stacks, mtus, args.rr_size)
    load = os.getloadavg()
    print(f"# load average after the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
