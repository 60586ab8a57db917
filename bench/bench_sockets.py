"""Socket netdevs as an L2 switch: QEMU 7.2 vs netstackd, frames/s and Gbit/s side by side.

Both switches get the same two ports on hub 0 and the same load:

* ``stream`` - two ``-netdev stream`` servers (inet, 127.0.0.1); a sender process writes a
  pre-built buffer of length-prefixed frames into port A as fast as the socket takes it
  (``sendfile`` of a 4 MiB file), a receiver reads port B (4 MiB ``MSG_TRUNC`` reads,
  which discard in the kernel) and counts bytes;
* ``dgram-inet`` / ``dgram-unix`` - two ``-netdev dgram`` netdevs; a sender process
  blasts datagrams at A's local address, the receiver counts datagrams arriving from B.

QEMU runs as ``qemu-system-x86_64 -machine none -nodefaults -display none -netdev ...
-netdev hubport,id=hX,hubid=0,netdev=X``; netstackd runs as a child Python process with
the same netdevs (``--serve``). Each case warms up for 0.5 s and measures ``--duration``
seconds (default 4); every process started is stopped by PID.

Columns: frames/s out of port B, Gbit/s of frame payload, the switch's CPU use (cores)
and its CPU time per frame in microseconds (the steadier figure on a loaded machine), and
netstackd's frame rate over QEMU's. With two or more CPUs the switch is pinned to the last
one and the load generator to the others (``--no-pin`` to disable).

    python bench/bench_sockets.py [--duration S] [--repeat N] [--sizes 64,1500]
                                  [--cases stream,dgram-inet,dgram-unix] [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

WARMUP = 0.5
#: With two or more CPUs the switch gets the last one to itself, the load the others.
PIN_SWITCH: list[str] = []
CASES = ("stream", "dgram-inet", "dgram-unix")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Setup:
    """The netdev options of a case and how the load reaches them."""

    netdevs: list[str]
    target: str | tuple[str, int]  # where the sender writes / sends
    sink: socket.socket  # the receiver's datagram socket (unused for stream)
    connect_b: tuple[str, int] | None = None  # stream: port B to read from
    frames_file: Path = Path("/nonexistent")  # stream: the sender's pre-built buffer


def setup_case(case: str, tmp: Path) -> Setup:
    if case == "stream":
        pa, pb = free_port(), free_port()
        return Setup(
            [
                f"stream,id=a,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={pa}",
                f"stream,id=b,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={pb}",
            ],
            ("127.0.0.1", pa),
            socket.socket(),
            ("127.0.0.1", pb),
            tmp / "frames",
        )
    if case == "dgram-inet":
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sport = sink.getsockname()[1]
        pa, pb, unused = (free_port(socket.SOCK_DGRAM) for _ in range(3))

        def inet(nid: str, local: int, remote: int) -> str:
            return (
                f"dgram,id={nid},local.type=inet,local.host=127.0.0.1,local.port={local},"
                f"remote.type=inet,remote.host=127.0.0.1,remote.port={remote}"
            )

        return Setup(
            [inet("a", pa, unused), inet("b", pb, sport)],
            ("127.0.0.1", pa),
            sink,
        )
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(tmp / "sink"))
    return Setup(
        [
            f"dgram,id=a,local.type=unix,local.path={tmp}/a,remote.type=unix,remote.path={tmp}/x",
            f"dgram,id=b,local.type=unix,local.path={tmp}/b,remote.type=unix,"
            f"remote.path={tmp}/sink",
        ],
        str(tmp / "a"),
        sink,
    )


# -- the switches ---------------------------------------------------------------------------


def start_qemu(netdevs: list[str]) -> subprocess.Popen[bytes]:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise SystemExit("qemu-system-x86_64 not found")
    argv = [*PIN_SWITCH, qemu, "-machine", "none", "-nodefaults", "-display", "none"]
    for spec in netdevs:
        nid = spec.split("id=", 1)[1].split(",", 1)[0]
        argv += ["-netdev", spec, "-netdev", f"hubport,id=h{nid},hubid=0,netdev={nid}"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_netstackd(netdevs: list[str]) -> subprocess.Popen[bytes]:
    argv = [*PIN_SWITCH, sys.executable, __file__, "--serve", *netdevs]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(b"READY"):
        proc.kill()
        proc.wait()
        raise SystemExit(f"netstackd did not start: {line!r}")
    return proc


async def _serve(netdevs: list[str]) -> None:
    from drivers import dgram, hubport, stream
    from drivers import socket as socket_driver
    from netstack.daemon import Netstack
    from netstack.qapi import parse_netdev_cli

    specs = (hubport.SPEC, stream.SPEC, dgram.SPEC, socket_driver.SPEC)
    ns = Netstack({spec.type: spec for spec in specs})
    for spec in netdevs:
        made = await ns.netdev_add(parse_netdev_cli(spec))
        await ns.netdev_add(
            parse_netdev_cli(f"hubport,id=h{made[0].name},hubid=0,netdev={made[0].name}")
        )
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await ns.close()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the load ------------------------------------------------------------------------------


def _stream_sender(target: tuple[str, int], size: int, seconds: float, path: str) -> None:
    """Write the pre-built framed buffer in ``path`` over and over (``sendfile``: no copy
    through user space, so the load generator stays cheap)."""
    with socket.create_connection(target) as sock, open(path, "rb") as src:
        length = os.fstat(src.fileno()).st_size
        end = time.monotonic() + seconds
        with contextlib.suppress(OSError):
            while time.monotonic() < end:
                sock.sendfile(src, 0, length)


def _dgram_sender(
    target: str | tuple[str, int], size: int, seconds: float, sent: Synchronized[int]
) -> None:
    family = socket.AF_UNIX if isinstance(target, str) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    frame = bytes(size)
    send = sock.sendto
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(1000):
            try:  # noqa: SIM105 - a context manager per datagram costs more than the send
                send(frame, target)
            except OSError:
                pass
        count += 1000
    sent.value = count
    sock.close()


@dataclass
class Result:
    fps: float  # frames/s out of port B
    sent: float  # the datagram sender's attempts/s (0 for stream)
    cpu: float  # the switch's CPU use, in cores (1.0: one core busy)

    @property
    def cpu_us_per_frame(self) -> float:
        return self.cpu / self.fps * 1e6 if self.fps else float("inf")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect_retry(addr: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """Connect once the switch listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(addr)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def measure(setup: Setup, size: int, duration: float, pid: int) -> Result:
    """Run the load through the switch ``pid`` and measure port B."""
    ctx = mp.get_context("fork")
    seconds = WARMUP + duration + 0.5
    if setup.connect_b is not None:
        reader = connect_retry(setup.connect_b)
        time.sleep(0.2)  # port B's link comes up before traffic starts
        assert isinstance(setup.target, tuple)
        frame = size.to_bytes(4, "big") + bytes(size)
        setup.frames_file.write_bytes(frame * max(1, (4 << 20) // len(frame)))
        sender = ctx.Process(
            target=_stream_sender, args=(setup.target, size, seconds, str(setup.frames_file))
        )
        per_unit: Callable[[int], float] = lambda n: n / (size + 4)  # noqa: E731
        sent_value = None
    else:
        reader = setup.sink
        sent_value = ctx.Value("q", 0)
        sender = ctx.Process(target=_dgram_sender, args=(setup.target, size, seconds, sent_value))
        per_unit = lambda n: n  # noqa: E731
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    # A kernel receive timeout: no poll() before every recv, as settimeout() would add.
    reader.settimeout(None)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 250_000))
    buf = bytearray(4 << 20)
    datagram = setup.connect_b is None
    sender.start()
    try:
        start = time.monotonic()
        warm_end = start + WARMUP
        end = warm_end + duration
        counted = 0
        t0 = None
        cpu0 = 0.0
        now = start
        while now < end:
            try:
                # MSG_TRUNC on TCP discards the bytes in the kernel (no copy to user space).
                n = reader.recv_into(buf, len(buf), socket.MSG_TRUNC if not datagram else 0)
            except BlockingIOError:
                n = 0
            now = time.monotonic()
            if t0 is None:
                if now >= warm_end:
                    t0, counted, cpu0 = now, 0, cpu_seconds(pid)
                continue
            counted += (1 if n else 0) if datagram else n
        elapsed = now - (t0 or now)
        cpu = (cpu_seconds(pid) - cpu0) / elapsed if elapsed > 0 else 0.0
    finally:
        sender.join(timeout=seconds + 5)
        if sender.is_alive():
            sender.kill()
        reader.close()
    rate = per_unit(counted) / elapsed if elapsed > 0 else 0.0
    sent_rate = (sent_value.value / seconds) if sent_value is not None else 0.0
    return Result(rate, sent_rate, cpu)


def run_case(which: str, case: str, size: int, duration: float) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix="bench-sockets-"))
    setup = setup_case(case, tmp)
    proc = start_qemu(setup.netdevs) if which == "qemu" else start_netstackd(setup.netdevs)
    try:
        time.sleep(0.3)
        return measure(setup, size, duration, proc.pid)
    finally:
        stop_process(proc)
        setup.sink.close()
        shutil.rmtree(tmp, ignore_errors=True)


def compare(case: str, size: int, duration: float, repeat: int) -> tuple[Result, Result]:
    """QEMU and netstackd runs, alternating; the runs with the median frame rates."""
    runs: dict[str, list[Result]] = {"qemu": [], "netstackd": []}
    for _ in range(repeat):
        for which, results in runs.items():
            results.append(run_case(which, case, size, duration))
    for results in runs.values():
        results.sort(key=lambda r: r.fps)
    return runs["qemu"][repeat // 2], runs["netstackd"][repeat // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds measured per run")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case; the median is shown")
    ap.add_argument("--sizes", default="64,1500")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--verbose", action="store_true", help="also print the senders' rates")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the switch to a CPU")
    ap.add_argument("--serve", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve is not None:
        asyncio.run(_serve(args.serve))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2 and shutil.which("taskset") and not args.no_pin:
        PIN_SWITCH[:] = ["taskset", "-c", str(cpus[-1])]
        os.sched_setaffinity(0, set(cpus[:-1]))
        print(f"switch pinned to CPU {cpus[-1]}, load generator on CPUs {cpus[:-1]}")
    print(
        f"{'case':11} {'size':>5} | {'QEMU fps':>10} {'Gbit/s':>6} {'CPU':>5} {'us/fr':>6}"
        f" | {'netstackd':>10} {'Gbit/s':>6} {'CPU':>5} {'us/fr':>6} | {'ratio':>6}"
    )
    for case in args.cases.split(","):
        for size in sizes:
            q, n = compare(case, size, args.duration, args.repeat)
            ratio = n.fps / q.fps if q.fps else float("inf")
            cells = [
                f"{r.fps:10,.0f} {r.fps * size * 8 / 1e9:6.2f} {r.cpu:5.2f}"
                f" {r.cpu_us_per_frame:6.2f}"
                for r in (q, n)
            ]
            print(f"{case:11} {size:5} | {cells[0]} | {cells[1]} | {ratio:5.2f}x")
            if args.verbose and case != "stream":
                print(f"    sender attempts/s: QEMU {q.sent:,.0f}, netstackd {n.sent:,.0f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
