"""l2tpv3 switching throughput: QEMU 7.2 vs netstackd, side by side.

The forwarder under test joins two l2tpv3 UDP netdevs ``a`` and ``b`` on hub 0 (QEMU:
``-machine none`` with two ``-netdev l2tpv3`` and two ``-netdev hubport``; netstack: a
daemon process with the same four netdevs, built from the l2tpv3 and hubport drivers).
A test client pushes L2TPv3-encapsulated Ethernet frames of 64 and 1500 bytes into ``a``
and counts what leaves ``b``, for ``--seconds`` (5 by default) per case. Two modes:

* ``window``: one client keeps at most ``--window`` frames in flight (sends more as
  frames come out). It measures what the forwarder can carry without loss.
* ``flood``: a sender sends as fast as it can, a separate receiver counts. Frames the
  forwarder's socket cannot hold are lost in the kernel; the loss column shows it.

Both clients use ``sendmmsg``/``recvmmsg`` through ctypes (batches of 256) so that they
cost little next to the forwarder. Printed per case: frames/s and Gbit/s (Ethernet bytes)
out of ``b``, frames/s offered, loss, the forwarder's CPU use (1.0 = one CPU), its CPU
time per forwarded frame, and the ratios to QEMU. ``netstack-plain`` is netstack with the
``recv_into``/``sendmsg`` path instead of ``recvmmsg``/``sendmmsg``.

Scheduling: every process is pinned to one CPU (``NETSTACK_BENCH_PIN=split`` puts the
forwarder alone on the last CPU instead) and runs SCHED_BATCH (``NETSTACK_BENCH_SCHED=other``
to keep the default), because on small VMs a cross-CPU wake-up costs ~150 us and wake-up
preemption makes forwarder and client ping-pong frame by frame; both would measure the
scheduler rather than the forwarder.

    python bench/bench_l2tpv3.py [--seconds S] [--sizes 64,1500] [--modes window,flood]
                                 [--kinds qemu,netstack,netstack-plain] [--window N]

Every process is started and stopped here by PID; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 256
#: Frames in flight in window mode (QEMU's socket buffer holds ~160 small datagrams).
WINDOW = 128
MSG_WAITFORONE = 0x10000
TX_SESSION_IN, RX_SESSION_OUT = 0x1001, 0x2002

RUNNER = r"""
import asyncio, signal, sys
async def main(io, specs):
    from drivers import hubport, l2tpv3
    from netstack import qapi
    from netstack.daemon import Netstack
    from netstack.driver import DriverSpec
    spec = l2tpv3.SPEC
    if io == "plain":  # the recv_into/sendmsg path instead of recvmmsg/sendmmsg
        async def create(host, netdev):
            return [await l2tpv3.open_client(
                netdev.id, netdev.options, host.loop, host.log, batch_io=False)]
        spec = DriverSpec("l2tpv3", create)
    ns = Netstack({"l2tpv3": spec, "hubport": hubport.SPEC})
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        for text in specs:
            netdev = qapi.parse_netdev_cli(text)
            qapi.check_id(netdev.id)
            await ns.netdev_add(netdev)
        print("READY", flush=True)
        await stop.wait()
    finally:
        await ns.close()
sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2:])))
"""


# -- sendmmsg / recvmmsg through ctypes (test clients only) -----------------------------------


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(IoVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _datagram(size: int) -> bytes:
    header = b"\x00\x03\x00\x00" + TX_SESSION_IN.to_bytes(4, "big")
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5"
    return header + eth + bytes(size - len(eth))


class MMsg:
    """``sendmmsg`` of one datagram repeated, or ``recvmmsg`` into 2 KiB buffers."""

    def __init__(self, fd: int, datagram: bytes | None = None) -> None:
        self.libc = _libc()
        self.fd = fd
        self.msgs = (MMsgHdr * BATCH)()
        self.iovs = (IoVec * BATCH)()
        self._keep: list[ctypes.Array[ctypes.c_char]] = []
        one = ctypes.create_string_buffer(datagram, len(datagram)) if datagram else None
        for i in range(BATCH):
            buf = one if one is not None else ctypes.create_string_buffer(2048)
            self._keep.append(buf)
            self.iovs[i].base = ctypes.cast(buf, ctypes.c_void_p)
            self.iovs[i].len = len(datagram) if datagram else 2048
            self.msgs[i].hdr.iov = ctypes.pointer(self.iovs[i])
            self.msgs[i].hdr.iovlen = 1

    def send(self, count: int) -> int:
        return int(self.libc.sendmmsg(self.fd, self.msgs, min(count, BATCH), 0))

    def recv(self, want_len: int) -> tuple[int, int]:
        """(datagrams received, how many had ``want_len`` bytes); waits for the first."""
        n = int(self.libc.recvmmsg(self.fd, self.msgs, BATCH, MSG_WAITFORONE, None))
        if n <= 0:
            return 0, 0
        return n, sum(1 for i in range(n) if self.msgs[i].len == want_len)


def _tx_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _rx_socket(port: int, timeout_us: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", port))
    timeval = bytes(8) + timeout_us.to_bytes(8, "little")  # struct timeval on x86_64
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    return sock


def run_sender(port: int, size: int, seconds: float) -> None:
    """Flood: send frames of ``size`` bytes to 127.0.0.1:port until time is up."""
    sock = _tx_socket(port)
    tx = MMsg(sock.fileno(), _datagram(size))
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent += max(0, tx.send(BATCH))
    print(json.dumps({"sent": sent}), flush=True)


def run_receiver(port: int, size: int, seconds: float) -> None:
    """Flood: count datagrams of the expected length on 127.0.0.1:port for ``seconds``."""
    sock = _rx_socket(port, 200_000)
    rx = MMsg(sock.fileno())
    got = 0
    print("READY", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got += rx.recv(8 + size)[1]
    print(json.dumps({"got": got}), flush=True)


def run_windowed(port_in: int, port_out: int, size: int, seconds: float, window: int) -> None:
    """Closed loop: keep at most ``window`` frames in flight through the forwarder."""
    tx_sock, rx_sock = _tx_socket(port_in), _rx_socket(port_out, 10_000)
    tx, rx = MMsg(tx_sock.fileno(), _datagram(size)), MMsg(rx_sock.fileno())
    sent = got = in_flight = 0
    now = time.monotonic()
    deadline = now + seconds
    progress = now
    while now < deadline:
        if in_flight < window:
            n = max(0, tx.send(window - in_flight))
            sent += n
            in_flight += n
        _, good = rx.recv(8 + size)
        now = time.monotonic()
        if good:
            got += good
            in_flight = max(0, in_flight - good)
            progress = now
        elif now - progress > 0.05:  # what is still in flight was dropped
            in_flight = 0
            progress = now
    print(json.dumps({"sent": sent, "got": got}), flush=True)


# -- forwarders -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def netdevs(pa: int, ps: int, pb: int, pr: int) -> list[str]:
    common = "src=127.0.0.1,dst=127.0.0.1,udp=on"
    return [
        f"l2tpv3,id=a,{common},srcport={pa},dstport={ps},txsession=1,rxsession={TX_SESSION_IN}",
        "hubport,id=ha,hubid=0,netdev=a",
        f"l2tpv3,id=b,{common},srcport={pb},dstport={pr},txsession={RX_SESSION_OUT},rxsession=2",
        "hubport,id=hb,hubid=0,netdev=b",
    ]


def cpu_sets() -> tuple[set[int], set[int]]:
    """CPUs for the forwarder and for the test clients, per ``NETSTACK_BENCH_PIN``.

    ``same`` (default): everything on the last CPU. Wake-ups across CPUs cost ~150 us on
    the small VMs this was measured on, which would otherwise dominate; on one CPU the
    forwarder and the clients share its time, and the forwarder's share is reported.
    ``split``: the forwarder alone on the last CPU, clients on the others.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if os.environ.get("NETSTACK_BENCH_PIN", "same") == "same" or len(cpus) < 2:
        return {cpus[-1]}, {cpus[-1]}
    return {cpus[-1]}, set(cpus[:-1])


def place(pid: int, cpus: set[int]) -> None:
    """Pin ``pid`` (every thread) to ``cpus``; SCHED_BATCH turns off wake-up preemption, so
    that a process finishes its batch before the one it woke runs (no ping-pong)."""
    for tid in (int(t) for t in os.listdir(f"/proc/{pid}/task")):
        os.sched_setaffinity(tid, cpus)
        if os.environ.get("NETSTACK_BENCH_SCHED", "batch") == "batch":
            os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))


def start_forwarder(kind: str, specs: list[str], pa: int) -> subprocess.Popen[bytes]:
    fwd_cpus, _ = cpu_sets()
    if kind == "qemu":
        argv = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none"]
        for spec in specs:
            argv += ["-netdev", spec]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        place(proc.pid, fwd_cpus)
        deadline = time.monotonic() + 10
        while not port_in_use(pa):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = stop(proc)
                raise RuntimeError(f"qemu did not start: {why}")
            time.sleep(0.05)
        return proc
    env = dict(os.environ, PYTHONPATH=str(REPO))
    io = "plain" if kind == "netstack-plain" else "auto"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, io, *specs],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=REPO, env=env,
    )  # fmt: skip
    place(proc.pid, fwd_cpus)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"READY":
        stop(proc)
        raise RuntimeError("netstack daemon did not start")
    return proc


def stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM (SIGKILL after 5 s) by PID; returns what the process wrote to stderr."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr is not None else ""
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return err


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    kind: str
    size: int
    sent: int
    got: int
    seconds: float
    cpu: float
    """The forwarder's CPU use over the run (1.0 = one CPU)."""

    @property
    def fps(self) -> float:
        return self.got / self.seconds

    @property
    def gbps(self) -> float:
        return self.fps * self.size * 8 / 1e9

    @property
    def loss(self) -> float:
        return 1 - self.got / self.sent if self.sent else 0.0

    @property
    def us_per_frame(self) -> float:
        """Forwarder CPU time per frame that came out."""
        return self.cpu * self.seconds / self.got * 1e6 if self.got else float("inf")


def run_case(kind: str, size: int, seconds: float, mode: str, window: int) -> Result:
    pa, ps, pb, pr = free_port(), free_port(), free_port(), free_port()
    me = [sys.executable, str(Path(__file__).resolve()), "--size", str(size)]
    fwd = start_forwarder(kind, netdevs(pa, ps, pb, pr), pa)
    procs: list[subprocess.Popen[bytes]] = [fwd]
    try:
        rx = None
        if mode == "flood":
            rx = subprocess.Popen(
                [*me, "--role", "receiver", "--port", str(pr), "--seconds", str(seconds + 1.5)],
                stdout=subprocess.PIPE,
            )
            procs.append(rx)
            assert rx.stdout is not None
            rx.stdout.readline()
            client = [*me, "--role", "sender", "--port", str(pa), "--seconds", str(seconds)]
        else:
            client = [*me, "--role", "client", "--port", str(pa), "--out-port", str(pr),
                      "--seconds", str(seconds), "--window", str(window)]  # fmt: skip
        cpu0 = cpu_seconds(fwd.pid)
        t0 = time.monotonic()
        tx = subprocess.Popen(client, stdout=subprocess.PIPE)
        procs.append(tx)
        tx_out, _ = tx.communicate(timeout=seconds + 20)
        cpu = (cpu_seconds(fwd.pid) - cpu0) / (time.monotonic() - t0)
        out = json.loads(tx_out)
        if rx is not None:
            rx_out, _ = rx.communicate(timeout=seconds + 20)
            out["got"] = json.loads(rx_out)["got"]
        return Result(kind, size, out["sent"], out["got"], seconds, cpu)
    finally:
        for p in reversed(procs):
            stop(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=("bench", "sender", "receiver", "client"), default="bench")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out-port", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--sizes", default="64,1500")
    ap.add_argument("--modes", default="window,flood")
    ap.add_argument("--window", type=int, default=WINDOW)
    ap.add_argument("--kinds", default="qemu,netstack", help="of qemu, netstack, netstack-plain")
    args = ap.parse_args()
    if args.role != "bench":
        # Clients share the CPUs the forwarder does not use; in flood mode the receiver
        # must not be starved by the sender (its losses would be charged to the forwarder).
        place(os.getpid(), cpu_sets()[1])
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, 19 if args.role == "sender" else -10)
    if args.role == "sender":
        run_sender(args.port, args.size, args.seconds)
        return
    if args.role == "receiver":
        run_receiver(args.port, args.size, args.seconds)
        return
    if args.role == "client":
        run_windowed(args.port, args.out_port, args.size, args.seconds, args.window)
        return
    kinds = args.kinds.split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        f"{'mode':7} {'forwarder':20} {'frame':>6} {'frames/s':>10} {'Gbit/s':>7} "
        f"{'offered/s':>10} {'loss':>6} {'cpu':>5} {'us/frame':>8}"
    )
    for mode in args.modes.split(","):
        for size in sizes:
            results: dict[str, Result] = {}
            for kind in kinds:
                r = results[kind] = run_case(kind, size, args.seconds, mode, args.window)
                print(
                    f"{mode:7} {kind:20} {size:6d} {r.fps:10,.0f} {r.gbps:7.3f} "
                    f"{r.sent / r.seconds:10,.0f} {r.loss:6.1%} {r.cpu:5.0%} "
                    f"{r.us_per_frame:8.1f}",
                    flush=True,
                )
            if "qemu" in results:
                q = results["qemu"]
                for kind, r in results.items():
                    if kind != "qemu":
                        print(
                            f"{mode:7} {'ratio ' + kind:20} {size:6d} "
                            f"{r.fps / max(q.fps, 1e-9):9.2f}x frames/s, "
                            f"{r.us_per_frame / q.us_per_frame:.2f}x CPU per frame"
                        )


if __name__ == "__main__":
    main()
