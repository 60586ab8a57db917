"""The traffic of ``bench/bench_user_workloads.py``: the servers on host loopback, the clients
in the namespace, and what one measurement yields.

* nginx (``nginx -c CONF -p DIR -g 'daemon off;'``, one worker, access log off, keep-alive
  without a request limit) serves :data:`BODY` (1 KiB) at :data:`BODY_PATH` from a temporary
  directory on 127.0.0.1; :func:`wrk` drives it with ``wrk -t2`` and :data:`WRK_SCRIPT`,
  which checks every response (status 200 and exactly :data:`BODY`) and prints wrk's
  request count, errors and p50/p99 latency as one JSON line;
* a UDP echo server (Python, one socket) on 127.0.0.1; :func:`udp` runs
  :data:`UDP_CLIENT` in the namespace: one connected socket keeps a window of datagrams in
  flight, each carrying its sequence number and a fixed pattern that the echo must match;
* iperf3 -s and the request/response echo server come from
  :class:`bench.bench_user_stacks.HostServers`.

Each client reads the stack's CPU time (user and system, /proc/PID/stat) around its run.
Every server is started and stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import bench_user_stacks as stacks

BODY_PATH = "/1k.bin"
BODY = b"0123456789abcdef" * 64  # what nginx serves and the wrk script expects
TICK = os.sysconf("SC_CLK_TCK")

#: Checks every response (status 200 and exactly BODY) and prints one JSON line at the end.
WRK_SCRIPT = r"""
local want = string.rep("0123456789abcdef", 64)
good = 0
bad = 0
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function response(status, headers, body)
  if status == 200 and body == want then good = good + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local g, b = 0, 0
  for _, t in ipairs(threads) do
    g = g + t:get("good")
    b = b + t:get("bad")
  end
  local e, f = summary.errors, math.floor
  io.write(string.format(
    'WRK-JSON {"requests": %d, "duration_us": %d, "good": %d, "bad": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    f(summary.requests), f(summary.duration), g, b, e.connect, e.read, e.write, e.status,
    e.timeout, f(latency:percentile(50)), f(latency:percentile(99))))
end
"""

NGINX_CONF = """\
worker_processes 1;
worker_rlimit_nofile 16384;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
    }}
}}
"""

#: Host side of the udp case: echo every datagram to its sender. Prints the port.
UDP_ECHO = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
recvfrom, sendto = s.recvfrom, s.sendto
while True:
    data, peer = recvfrom(65536)
    sendto(data, peer)
"""

#: Namespace side of the udp case. argv: host port size window seconds. Keeps WINDOW
#: datagrams in flight; a quiet 250 ms declares the window lost and refills it.
UDP_CLIENT = r"""
import json, socket, sys, time
host, port, size, window, seconds = (
    sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, port))
s.settimeout(0.25)
filler = bytes((i * 7 + 1) & 0xFF for i in range(size - 8))
clock, recv, out = time.perf_counter, s.recv, s.send
inflight, rtts = {}, []
nxt = ok = bad = late = lost = 0
def send():
    global nxt
    head = nxt.to_bytes(8, "big")
    nxt += 1
    inflight[head] = clock()
    out(head + filler)
t0 = clock()
end = now = t0 + seconds
for _ in range(window):
    send()
while True:
    try:
        data = recv(65536)
    except TimeoutError:
        now = clock()
        lost += len(inflight)
        inflight.clear()
        if now >= end:
            break
        for _ in range(window):
            send()
        continue
    now = clock()
    sent = inflight.pop(data[:8], None)
    if sent is None:
        late += 1
        continue
    if len(data) != size or not data.endswith(filler):
        bad += 1
    else:
        ok += 1
        rtts.append(now - sent)
    if now >= end:
        break
    send()
elapsed = now - t0
while inflight:
    try:
        data = recv(65536)
    except TimeoutError:
        break
    inflight.pop(data[:8], None)
lost += len(inflight)
rtts.sort()
pct = lambda p: 1e6 * rtts[min(len(rtts) - 1, int(p * len(rtts)))] if rtts else 0.0
print(json.dumps({"ok": ok, "seconds": elapsed, "bad": bad, "late": late, "lost": lost,
                  "p50_us": pct(0.50), "p99_us": pct(0.99)}))
"""


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` so far, every thread counted."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / TICK, int(fields[12]) / TICK


class CpuMeter:
    """The stack's CPU time from construction to :meth:`read` (nothing for ``pid=None``)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.start = cpu_split(pid) if pid else (0.0, 0.0)

    def read(self) -> tuple[float, float]:
        """(CPU seconds, the share of them spent in the kernel)."""
        if not self.pid:
            return 0.0, 0.0
        user, system = cpu_split(self.pid)
        user, system = user - self.start[0], system - self.start[1]
        total = user + system
        return total, system / total if total else 0.0


@dataclass
class Sample:
    """One measurement: ``rate`` in operations/s (Gbit/s for bulk), ``cpu`` the stack's CPU
    µs per operation (ms per GB for bulk), latencies in µs where the tool gives them."""

    rate: float
    cpu: float
    sys: float = 0.0  # share of the stack's CPU time spent in the kernel
    p50: float | None = None
    p99: float | None = None
    errors: int = 0
    lost: int = 0
    checked: int = 0
    busy: float = 0.0  # bulk: how busy the whole machine was (1.0 = every CPU)


def wrap(argv: Sequence[str], ns: str | None) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def wrk(pid: int | None, ns: str | None, host: str, port: int, seconds: float,
        connections: int, close: bool, script: Path) -> Sample:  # fmt: skip
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
            "-s", str(script)]  # fmt: skip
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{host}:{port}{BODY_PATH}")
    meter = CpuMeter(pid)
    done = subprocess.run(wrap(argv, ns), capture_output=True, text=True, timeout=seconds + 60)
    cpu, kernel = meter.read()
    found = re.search(r"^WRK-JSON (.*)$", done.stdout, re.M)
    if done.returncode or found is None:
        raise RuntimeError(f"wrk failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    r = json.loads(found.group(1))
    requests = int(r["requests"])
    errors = int(r["bad"]) + sum(int(r[k]) for k in ("connect", "read", "write", "status",
                                                      "timeout"))  # fmt: skip
    return Sample(requests / (r["duration_us"] / 1e6), 1e6 * cpu / max(1, requests), kernel,
                  float(r["p50_us"]), float(r["p99_us"]), errors, 0, int(r["good"]))  # fmt: skip


def udp(pid: int | None, ns: str | None, host: str, port: int, seconds: float, size: int,
        window: int) -> Sample:  # fmt: skip
    argv = [sys.executable, "-c", UDP_CLIENT, host, str(port), str(size), str(window),
            f"{seconds:g}"]  # fmt: skip
    meter = CpuMeter(pid)
    done = subprocess.run(wrap(argv, ns), capture_output=True, text=True, timeout=seconds + 60)
    cpu, kernel = meter.read()
    if done.returncode:
        raise RuntimeError(f"UDP client failed: {done.stderr.strip()[-500:]}")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    ok = int(r["ok"])
    errors = int(r["bad"]) + int(r["late"])
    return Sample(ok / float(r["seconds"]), 1e6 * cpu / max(1, ok), kernel, float(r["p50_us"]),
                  float(r["p99_us"]), errors, int(r["lost"]), ok)  # fmt: skip


class HostServers(stacks.HostServers):
    """iperf3 -s (and the RR echo server) from bench_user_stacks, plus nginx serving BODY
    and the UDP echo server, all on 127.0.0.1 for the whole run."""

    def __init__(self, tmp: Path) -> None:
        super().__init__()
        self.dir = tmp / "nginx"
        self.http_port = stacks.free_port()
        self.nginx_argv: list[str] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self.udp: subprocess.Popen[bytes] | None = None
        self.udp_port = 0

    def __enter__(self) -> HostServers:
        super().__enter__()
        try:
            (self.dir / "www").mkdir(parents=True)
            (self.dir / "www" / BODY_PATH.lstrip("/")).write_bytes(BODY)
            self.dir.parent.chmod(0o711)  # nginx's workers run as nobody
            for path in (self.dir, self.dir / "www"):
                path.chmod(0o755)
            conf = self.dir / "nginx.conf"
            conf.write_text(NGINX_CONF.format(dir=self.dir, port=self.http_port))
            self.nginx_argv = ["nginx", "-c", str(conf), "-p", str(self.dir), "-e",
                               str(self.dir / "error.log"), "-g", "daemon off;"]  # fmt: skip
            self.nginx = subprocess.Popen(self.nginx_argv, stdin=subprocess.DEVNULL)
            stacks.wait_until("nginx", lambda: stacks.listening(self.http_port))
            self.udp = subprocess.Popen([sys.executable, "-c", UDP_ECHO], stdout=subprocess.PIPE)
            assert self.udp.stdout is not None
            self.udp_port = int(self.udp.stdout.readline())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in (self.nginx, self.udp):
            if proc is not None:
                stacks.stop(proc)
        super().__exit__()
