"""Isolation: one guest floods 64-byte frames, another's request/response rate is measured.

One netstackd serves two network namespaces through taps (``vnet_hdr=on``, opened inside
each namespace with ``x-netns=``) joined with a user netdev on hub 0::

    -netdev user,id=nat0
    -netdev tap,id=tv,ifname=isv0,vnet_hdr=on,x-netns=NS_VICTIM,...
    -netdev tap,id=tf,ifname=isf0,vnet_hdr=on,x-netns=NS_FLOODER,...
    -netdev hubport,...  (all three on hub 0)

* the victim (10.0.2.100, route via 10.0.2.2) runs ``bench_user_stacks``' request/response
  client: one TCP connection, 1-byte messages echoed by a Python server on host
  127.0.0.1, TCP_NODELAY both ends;
* the flooder (10.0.2.101, :mod:`tests.kit.flood`) sends 64-byte Ethernet frames
  (IPv4/UDP to an address and MAC nobody owns, so the hub repeats every one to the user
  netdev, which drops it, and to the victim's tap, whose kernel drops it) from an
  ``AF_PACKET`` socket as fast as one process can. ``--flood-to gateway`` sends them to
  the gateway's MAC as UDP datagrams to a discarding host port instead (each then crosses
  the user netdev's UDP NAT). ``--flood-nice`` runs it niced: on a 2-CPU machine a flooder
  at nice 0 takes one CPU from the daemon, the RR client and the echo server, so the
  figure then measures the machine's scheduler as much as the daemon's loop.

Per daemon, the victim's RR rate is measured idle and then under flood (``--seconds``
each); the ratio is flood/idle. Also: frames the flooder handed to its kernel per second,
frames the daemon took from the flooder's port per second (its ``tx-frames``), the guest
side's drops (``g-drop``: for the tap, frames the flooder's kernel dropped because the
daemon did not read them in time, ``tx_dropped`` of the tap in the flooder's namespace;
for testpmd, its ``TX-dropped``, i.e. enqueue attempts into a full ring, retried, so not
distinct frames), frames the daemon dropped itself (``d-drop``: ``queue-dropped``,
``tx-dropped`` and ``rx-dropped`` of every client) and the daemon's CPU use (1.0 = one
CPU, from ``/proc/PID/stat``) and its CPU per flood frame taken.

Flooders (``--flooders``): ``tap`` (above) and ``vhost-user``: DPDK testpmd's virtio-user
(``--forward-mode=txonly --txpkts=64``, busy-polling the last CPU, as in
``bench/bench_vhost_user.py``) on a vhost-user netdev that takes the flooder tap's place
on the hub (testpmd's frames go to a MAC nobody here owns).

Daemons (``--paths``): ``compiled`` (the C twins, as built), ``pure``
(``NETSTACK_PURE_PYTHON=1``) and ``qemu``: QEMU's own hub for comparison, a
``qemu-system-x86_64 -machine none`` with the same user netdev, two taps and hub ports and
no guest. A QEMU opens its taps in the namespace it runs in, so for it both taps and the
echo server share one namespace (the flooder's tap has no address; slirp reaches that
namespace's loopback). For QEMU, "read" is what the flooder's tap handed to QEMU's fd
(the kernel's ``tx_packets``) and its own drops are not visible. slirp4netns serves one
namespace per process, so it has no second port to flood from; QEMU is not run with the
vhost-user flooder.

Rounds (``--rounds``, >= 3 for figures) interleave the paths; medians are printed with
the per-round ratio. The machine is shared: only same-round ratios mean anything. Needs
root; only loopback and the namespaces made here are used; every process is stopped by
PID and every namespace deleted.

    python -m bench.bench_isolation [--rounds 3] [--seconds 3] [--paths compiled,pure]
                                       [--flooders tap,vhost-user] [--flood-to other|gateway]
                                       [--flood-nice N]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bench_user_stacks import (
    ECHO_SERVER,
    GATEWAY,
    RR_CLIENT,
    cpu_seconds,
    namespace,
    say,
    sh,
    stop,
    wait_until,
)
from tests.interop.test_vhost_user_dpdk import DpdkTestpmd
from tests.kit.flood import FLOODER_ADDR, flooder_argv

REPO = Path(__file__).resolve().parents[1]
VICTIM_ADDR = "10.0.2.100"
VICTIM_IF = "isv0"
FLOODER_IF = "isf0"
PATHS = ("compiled", "pure", "qemu")
FLOODERS = ("tap", "vhost-user")

#: A host UDP port that discards what it gets (the ``gateway`` flood's destination).
DISCARD = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
print(s.getsockname()[1], flush=True)
while True:
    s.recv(65536)
"""


# -- QMP (one synchronous client; the daemon's QMP socket) -----------------------------------


class Qmp:
    """A blocking QMP client on a unix socket: enough for ``query-netdev``."""

    def __init__(self, path: Path) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(20)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        self._file.readline()  # greeting
        self.call("qmp_capabilities")

    def call(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg).encode() + b"\n")
        self._file.flush()
        for _ in range(1000):
            reply = json.loads(self._file.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"{command}: {reply['error']}")
        raise RuntimeError(f"{command}: no reply")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


@dataclass
class Totals:
    """What the daemon reported at one moment: flood frames read and its own drops."""

    flood_read: int
    dropped: int


def daemon_totals(qmp: Qmp) -> Totals:
    read = dropped = 0
    for row in qmp.call("query-netdev"):
        stats = row.get("statistics", {})
        dropped += int(row.get("queue-dropped", 0))
        dropped += int(stats.get("tx-dropped", 0)) + int(stats.get("rx-dropped", 0))
        if row["id"] == "tf":
            read += int(stats.get("tx-frames", 0))
    return Totals(read, dropped)


def kernel_tx_dropped(ns: str, ifname: str) -> int:
    """``tx_dropped`` of ``ifname`` in ``ns``: frames the tap's queue had no room for."""
    rows = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", ifname))
    return int(rows[0]["stats64"]["tx"]["dropped"])


# -- one daemon --------------------------------------------------------------------------


@dataclass
class Sample:
    path: str
    idle_rr: float
    flood_rr: float
    idle_cpu: float
    flood_cpu: float
    sent_pps: float
    read_pps: float
    guest_dropped: int
    daemon_dropped: int

    @property
    def ratio(self) -> float:
        return self.flood_rr / self.idle_rr if self.idle_rr else 0.0

    @property
    def cpu_ns_per_frame(self) -> float:
        return 1e9 * self.flood_cpu / self.read_pps if self.read_pps else 0.0


def daemon_argv(victim_ns: str, flooder: str, flooder_ns: str, sock: Path | str) -> list[str]:
    tap = "script=no,downscript=no,vnet_hdr=on"
    if flooder == "vhost-user":
        flood = ["-chardev", f"socket,id=cf,path={sock},server=on,wait=off",
                 "-netdev", "vhost-user,id=tf,chardev=cf"]  # fmt: skip
    else:
        flood = ["-netdev", f"tap,id=tf,ifname={FLOODER_IF},{tap},x-netns={flooder_ns}"]
    return [
        sys.executable, "-m", "netstack",
        "-netdev", "user,id=nat0",
        "-netdev", f"tap,id=tv,ifname={VICTIM_IF},{tap},x-netns={victim_ns}",
        *flood,
        "-netdev", "hubport,id=h0,hubid=0,netdev=nat0",
        "-netdev", "hubport,id=h1,hubid=0,netdev=tv",
        "-netdev", "hubport,id=h2,hubid=0,netdev=tf",
    ]  # fmt: skip


@dataclass
class Setup:
    """A running daemon with its two guests: what a measurement needs."""

    pid: int
    victim_ns: str
    flooder_ns: str
    echo_port: int
    totals: Callable[[], Totals]


def configure(ns: str, ifname: str, addr: str | None) -> None:
    if addr is not None:
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
    sh("ip", "-n", ns, "link", "set", ifname, "up")
    if addr is not None:
        sh("ip", "-n", ns, "route", "add", "default", "via", GATEWAY)


@contextlib.contextmanager
def netstackd(path: str, tmp: Path, flooder: str, echo_port: int) -> Iterator[Setup]:
    qmp_path = tmp / f"qmp-{path}.sock"
    qmp_path.unlink(missing_ok=True)
    (tmp / "flood.sock").unlink(missing_ok=True)
    env = dict(os.environ)
    env.pop("NETSTACK_PURE_PYTHON", None)
    if path == "pure":
        env["NETSTACK_PURE_PYTHON"] = "1"
    log = tmp / f"netstackd-{path}.log"
    with namespace() as victim_ns, namespace() as flooder_ns:
        argv = [*daemon_argv(victim_ns, flooder, flooder_ns, tmp / "flood.sock"),
                "-qmp", f"unix:{qmp_path},server=on,wait=off"]  # fmt: skip
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    cwd=REPO, stdin=subprocess.DEVNULL)  # fmt: skip
        qmp: Qmp | None = None
        try:
            wait_until("netstackd's QMP socket", qmp_path.exists, timeout=60)
            qmp = Qmp(qmp_path)
            configure(victim_ns, VICTIM_IF, VICTIM_ADDR)
            if flooder == "tap":
                configure(flooder_ns, FLOODER_IF, FLOODER_ADDR)
            yield Setup(proc.pid, victim_ns, flooder_ns, echo_port,
                        functools.partial(daemon_totals, qmp))  # fmt: skip
            if proc.poll() is not None:
                raise RuntimeError(f"netstackd ({path}) died:\n{log.read_text()[-2000:]}")
        finally:
            if qmp is not None:
                qmp.close()
            stop(proc)


def qemu_argv() -> list[str]:
    tap = "script=no,downscript=no,vnet_hdr=on"
    return [
        "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
        "-netdev", "user,id=nat0",
        "-netdev", f"tap,id=tv,ifname={VICTIM_IF},{tap}",
        "-netdev", f"tap,id=tf,ifname={FLOODER_IF},{tap}",
        "-netdev", "hubport,id=h0,hubid=0,netdev=nat0",
        "-netdev", "hubport,id=h1,hubid=0,netdev=tv",
        "-netdev", "hubport,id=h2,hubid=0,netdev=tf",
    ]  # fmt: skip


def kernel_tx_packets(ns: str, ifname: str) -> int:
    rows = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", ifname))
    return int(rows[0]["stats64"]["tx"]["packets"])


@contextlib.contextmanager
def qemu_hub(tmp: Path) -> Iterator[Setup]:
    """QEMU's own hub: one QEMU (no machine) in one namespace holding both taps (a QEMU
    opens its taps where it runs) and the echo server (slirp reaches the loopback of the
    namespace it runs in)."""
    log = tmp / "qemu.log"
    with namespace() as ns, host_server(ECHO_SERVER, ns) as echo_port:
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *qemu_argv()], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_until("QEMU's taps", lambda: FLOODER_IF in sh("ip", "-n", ns, "link"), 60)
            configure(ns, VICTIM_IF, VICTIM_ADDR)
            configure(ns, FLOODER_IF, None)

            def totals() -> Totals:
                return Totals(kernel_tx_packets(ns, FLOODER_IF), 0)

            yield Setup(proc.pid, ns, ns, echo_port, totals)
            if proc.poll() is not None:
                raise RuntimeError(f"QEMU died:\n{log.read_text()[-2000:]}")
        finally:
            stop(proc)


def rr(ns: str, port: int, seconds: float, daemon_pid: int) -> tuple[float, float]:
    """(transactions/s, daemon CPU) of one RR run from ``ns``."""
    cpu0, t0 = cpu_seconds(daemon_pid), time.monotonic()
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", RR_CLIENT, GATEWAY, str(port), "1",
         f"{seconds:g}"],
        capture_output=True, text=True, timeout=seconds + 60,
    )  # fmt: skip
    cpu = (cpu_seconds(daemon_pid) - cpu0) / (time.monotonic() - t0)
    if done.returncode:
        raise RuntimeError(f"RR client failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["transactions"]) / float(result["seconds"]), cpu


class Flooder:
    """The flooding guest: the AF_PACKET program in a namespace behind a tap, or DPDK
    testpmd's virtio-user in ``txonly`` mode on the vhost-user port."""

    def __init__(self, kind: str, ns: str, tmp: Path, args: argparse.Namespace,
                 discard_port: int) -> None:  # fmt: skip
        self.kind, self.ns, self.tmp = kind, ns, tmp
        if kind == "vhost-user":
            vdev = f"net_virtio_user0,path={tmp / 'flood.sock'},queues=1,queue_size=256"
            pmd = DpdkTestpmd([vdev], "txonly", cpu=(os.cpu_count() or 1) - 1, workdir=tmp)
            self.argv = ["nice", "-n", str(args.flood_nice), *pmd.argv]
        else:
            self.argv = flooder_argv(ns, FLOODER_IF, to=args.flood_to, port=discard_port,
                                     seconds=args.seconds + 60, nice=args.flood_nice)  # fmt: skip
        self.out = tmp / "flooder.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.t0 = 0.0
        self._dropped0 = 0

    def start(self) -> None:
        self._dropped0 = self._dropped()
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)  # fmt: skip
        self.t0 = time.monotonic()
        if self.kind == "vhost-user":
            wait_until("testpmd to forward", lambda: "Port statistics" in self.output(), 60)
            self.t0 = time.monotonic()

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def _dropped(self) -> int:
        return kernel_tx_dropped(self.ns, FLOODER_IF) if self.kind == "tap" else 0

    def stop(self) -> tuple[float, int]:
        """(frames/s the guest sent, frames it could not hand over: full queue or ring)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT if self.kind == "vhost-user" else signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        elapsed = time.monotonic() - self.t0
        text = self.output()
        if self.kind == "vhost-user":
            m = re.findall(r"TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)", text)
            if not m:
                raise RuntimeError(f"testpmd gave no statistics:\n{text[-2000:]}")
            sent, dropped = (int(x) for x in m[-1])
            return sent / elapsed, dropped
        if self.proc.returncode:
            raise RuntimeError(f"flooder failed: {text[-500:]}")
        report = json.loads(text.strip().splitlines()[-1])
        return report["sent"] / report["seconds"], self._dropped() - self._dropped0


def run_path(path: str, flood_kind: str, tmp: Path, echo_port: int, discard_port: int,
             args: argparse.Namespace) -> Sample:  # fmt: skip
    setup = qemu_hub(tmp) if path == "qemu" else netstackd(path, tmp, flood_kind, echo_port)
    with setup as st:
        victim, port, pid = st.victim_ns, st.echo_port, st.pid
        rr(victim, port, min(1.0, args.seconds), pid)  # warm-up: ARP, first flow
        idle, idle_cpu = rr(victim, port, args.seconds, pid)
        flooder = Flooder(flood_kind, st.flooder_ns, tmp, args, discard_port)
        flooder.start()
        try:
            time.sleep(1.0)
            before, t0 = st.totals(), time.monotonic()
            flooded, flood_cpu = rr(victim, port, args.seconds, pid)
            after, elapsed = st.totals(), time.monotonic() - t0
        finally:
            sent_pps, guest_dropped = flooder.stop()
        return Sample(
            f"{path}/{flood_kind}", idle, flooded, idle_cpu, flood_cpu,
            sent_pps=sent_pps,
            read_pps=(after.flood_read - before.flood_read) / elapsed,
            guest_dropped=guest_dropped,
            daemon_dropped=after.dropped - before.dropped,
        )  # fmt: skip


@contextlib.contextmanager
def host_server(code: str, ns: str | None = None) -> Iterator[int]:
    """A Python server on 127.0.0.1 (of ``ns`` when given); yields its port."""
    where = ["ip", "netns", "exec", ns] if ns else []
    proc = subprocess.Popen([*where, sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        stop(proc)


# -- report ------------------------------------------------------------------------------


def print_table(samples: dict[str, list[Sample]]) -> None:
    print(
        f"\n{'daemon/flooder':<20} {'idle RR/s':>10} {'flood RR/s':>11} {'ratio':>6} "
        f"{'per-round':>18} {'sent kpps':>10} {'read kpps':>10} {'g-drop':>9} {'d-drop':>7} "
        f"{'CPU idle':>9} {'CPU flood':>10} {'ns/frame':>9}"
    )

    def med(xs: Sequence[float]) -> float:
        return float(statistics.median(xs))

    for path, rs in samples.items():
        ratios = " ".join(f"{r.ratio:.2f}" for r in rs)
        print(
            f"{path:<20} {med([r.idle_rr for r in rs]):10.0f} "
            f"{med([r.flood_rr for r in rs]):11.0f} {med([r.ratio for r in rs]):5.2f}x "
            f"{ratios:>18} {med([r.sent_pps for r in rs]) / 1e3:10.1f} "
            f"{med([r.read_pps for r in rs]) / 1e3:10.1f} "
            f"{med([r.guest_dropped for r in rs]):9.0f} "
            f"{med([r.daemon_dropped for r in rs]):7.0f} {med([r.idle_cpu for r in rs]):9.2f} "
            f"{med([r.flood_cpu for r in rs]):10.2f} {med([r.cpu_ns_per_frame for r in rs]):9.0f}"
        )


def interrupted(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every namespace and process is cleaned up."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per RR run")
    parser.add_argument("--paths", default=",".join(PATHS), help="compiled,pure,qemu")
    parser.add_argument("--flooders", default="tap", help="tap,vhost-user")
    parser.add_argument("--flood-to", choices=("other", "gateway"), default="other",
                        help="where the tap flooder's frames go")  # fmt: skip
    parser.add_argument("--flood-nice", type=int, default=0, help="nice value of the flooder")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, taps)", file=sys.stderr)
        return 2
    paths = [p for p in args.paths.split(",") if p]
    for p in paths:
        if p not in PATHS:
            parser.error(f"unknown path {p} (choose from {', '.join(PATHS)})")
    flooders = [f for f in args.flooders.split(",") if f]
    for f in flooders:
        if f not in FLOODERS:
            parser.error(f"unknown flooder {f} (choose from {', '.join(FLOODERS)})")
    if "vhost-user" in flooders and not DpdkTestpmd.available():
        say("dpdk-testpmd not installed (Debian dpdk-dev): vhost-user flooder skipped")
        flooders.remove("vhost-user")
    signal.signal(signal.SIGTERM, interrupted)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    load = os.getloadavg()
    print(
        f"# {os.cpu_count()} CPUs, load average before the run {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; {args.seconds:g} s per RR run, {args.rounds} round(s), median; "
        f"flood to {args.flood_to}, flooder nice {args.flood_nice}"
    )
    for kind in flooders:
        argv = daemon_argv("NS_VICTIM", kind, "NS_FLOODER", "SOCK")
        print(f"# netstackd ({kind} flooder): {shlex.join(argv)}")
    samples: dict[str, list[Sample]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-isolation-") as tmp,
        host_server(ECHO_SERVER) as echo_port,
        host_server(DISCARD) as discard_port,
    ):
        for rnd in range(args.rounds):
            for path, kind in itertools.product(paths, flooders):
                if path == "qemu" and kind != "tap":
                    continue  # QEMU's hub with a vhost-user flooder: not measured
                try:
                    s = run_path(path, kind, Path(tmp), echo_port, discard_port, args)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                    say(f"  round {rnd + 1}: {path}/{kind} failed: {exc}")
                    continue
                samples.setdefault(s.path, []).append(s)
                say(
                    f"  round {rnd + 1}: {s.path:<20} RR idle {s.idle_rr:6.0f}/s flood "
                    f"{s.flood_rr:6.0f}/s ({s.ratio:.2f}x); flooder sent "
                    f"{s.sent_pps / 1e3:.0f} kpps, daemon read {s.read_pps / 1e3:.0f} kpps, "
                    f"guest-side drops {s.guest_dropped}, daemon dropped {s.daemon_dropped}; "
                    f"daemon CPU {s.idle_cpu:.2f}/{s.flood_cpu:.2f}"
                )
    print_table(samples)
    load = os.getloadavg()
    print(f"# load average after the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
