"""Guest-side TCP throughput: the sans-IO endpoint alone, and against the Linux kernel next
to libslirp (slirp4netns) and pasta in the same run.

Part 1, ``machine``: two endpoints back to back in this process (one opens actively, the
other accepts; every frame is parsed by the receiver, no loss), ``--size`` MB one way;
MSS-sized frames (MTU 1500, checksums summed in Python) against TSO super-frames
(``vnet``: checksum-partial 64 KiB frames) and MTU 65520 frames. This is the cost of the
machine and its codecs, both ends counted, nothing else.

Part 2, ``kernel``: a network namespace is the guest. For netstack, a tap whose fd this
process holds feeds a :class:`~drivers.user.tcp.TcpSplicer` (MSS frames, or TSO with
``IFF_VNET_HDR`` and the tap's offloads on); for the peers, ``slirp4netns --configure``
and ``pasta --config-net`` own the namespace's tap. In every case a client in the
namespace (``ip netns exec NS iperf3 -c 10.0.2.2 -n SIZE [-R]``; a Python client when
iperf3 is missing) connects to 10.0.2.2:PORT, which reaches ``iperf3 -s`` on host
127.0.0.1:PORT, and moves ``--size`` MB up (guest -> host) or down (host -> guest, -R).
MTU 1500 and 65520.

    python bench/bench_user_tcp.py [--size MB] [--part machine|kernel|all] [--runs N]

Needs root for part 2 (namespaces, taps). Only loopback and namespaces made here are used;
every process is killed by PID and every namespace deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drivers.user.tcp import (  # noqa: E402
    Segment,
    TcpConfig,
    TcpEndpoint,
    ethernet_header,
    parse_frame,
)
from tests.unit.test_user_tcp_kernel import (  # noqa: E402
    KernelGuest,
    TapPort,
    ip,
)

MAC_A, MAC_B = bytes.fromhex("52550a000202"), bytes.fromhex("525400123456")
IP_A, IP_B = bytes([10, 0, 2, 2]), bytes([10, 0, 2, 15])


# -- part 1: the machine alone ----------------------------------------------------------------


def machine_run(size: int, cfg: TcpConfig) -> float:
    """Seconds to move ``size`` bytes from A's host to B's host."""
    out_a: list[bytes] = []
    out_b: list[bytes] = []
    a = TcpEndpoint.connect(IP_A, IP_B, 80, 40000, 0.0, config=cfg,
                            l2=ethernet_header(MAC_B, MAC_A, False), out=out_a)  # fmt: skip
    b: TcpEndpoint | None = None
    chunk = os.urandom(256 * 1024)
    fed = got = 0
    now = 0.0
    t0 = time.perf_counter()
    for _ in range(10_000_000):
        if out_a:
            frames = out_a[:]
            out_a.clear()
            for f in frames:
                seg = parse_frame(f, cfg.vnet)
                assert isinstance(seg, Segment)
                if b is None:
                    b = TcpEndpoint.accept(seg, now, config=cfg, out=out_b,
                                           l2=ethernet_header(MAC_A, MAC_B, False))  # fmt: skip
                    b.host_connected(now)
                else:
                    b.segment_from_guest(seg, now)
        if b is not None:
            b.flush(now)
            n = b.host_pending
            if n:
                b.host_chunks(1024)
                b.host_written(n, now)
                got += n
            if out_b:
                frames = out_b[:]
                out_b.clear()
                for f in frames:
                    seg = parse_frame(f, cfg.vnet)
                    assert isinstance(seg, Segment)
                    a.segment_from_guest(seg, now)
        while fed < size and a.host_read_room >= len(chunk):
            a.host_data(chunk, now)
            fed += len(chunk)
        if got >= size:
            break
        now += 0.00001
    return time.perf_counter() - t0


def part_machine(size_mb: int, runs: int) -> None:
    size = size_mb << 20
    cases = [
        ("mss-1500", TcpConfig(mtu=1500)),
        ("tso-1500", TcpConfig(mtu=1500, vnet=True)),
        ("mss-65520", TcpConfig(mtu=65520)),
    ]
    print(f"# machine: {size_mb} MB one way, two endpoints back to back (both ends counted)")
    print(f"{'case':<12} {'MB/s':>9} {'Gbit/s':>8} {'vs mss-1500':>12}")
    base = None
    for name, cfg in cases:
        best = min(machine_run(size, cfg) for _ in range(runs))
        rate = size / best / 1e6
        base = base or rate
        print(f"{name:<12} {rate:9.1f} {rate * 8 / 1000:8.2f} {rate / base:11.2f}x")


# -- part 2: against the kernel, side by side with the peers ------------------------------------

SERVER = r"""
import socket, sys
mode, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ls = socket.create_server(("127.0.0.1", port))
print("READY", flush=True)
buf = bytearray(1 << 20)
view = memoryview(buf)
while True:
    s, _ = ls.accept()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    if mode == "sink":
        n = 0
        while (k := s.recv_into(view)):
            n += k
        s.sendall(n.to_bytes(8, "big"))
    else:
        left = size
        while left:
            k = s.send(view[: min(left, len(buf))])
            left -= k
    s.close()
"""

CLIENT = r"""
import json, socket, sys, time
way, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buf = bytearray(1 << 20)
view = memoryview(buf)
s = socket.socket()
s.settimeout(120)
t0 = time.perf_counter()
s.connect(("10.0.2.2", port))
n = 0
if way == "up":
    left = size
    while left:
        left -= s.send(view[: min(left, len(buf))])
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while (k := s.recv(8)):
        reply += k
    n = int.from_bytes(reply, "big")
else:
    while (k := s.recv_into(view)):
        n += k
print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": n}))
"""


IPERF = subprocess.run(["which", "iperf3"], capture_output=True).returncode == 0


class Server:
    """The host-side server process (sink for uploads, source for downloads): iperf3 -s
    when iperf3 is installed, else a small Python server."""

    def __init__(self, mode: str, port: int, size: int) -> None:
        if IPERF:
            self.proc = subprocess.Popen(
                ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            for _ in range(100):
                r = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True)
                if r.stdout.strip():
                    return
                time.sleep(0.02)
            raise RuntimeError("iperf3 -s did not start")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, mode, str(port), str(size)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == b"READY", line

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


async def client(ns: str, way: str, port: int, size: int) -> float:
    """Seconds the transfer took, timed by the client in the namespace."""
    if IPERF:
        return await iperf_client(ns, way, port, size)
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, way, str(port), str(size),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 300)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    import json

    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"client failed: {err.decode()[-500:]}")
    result = json.loads(lines[-1])
    if result["bytes"] != size:
        raise RuntimeError(f"moved {result['bytes']} of {size} bytes")
    return float(result["seconds"])


async def iperf_client(ns: str, way: str, port: int, size: int) -> float:
    argv = ["ip", "netns", "exec", ns, "iperf3", "-c", "10.0.2.2", "-p", str(port),
            "-n", str(size), "-J", *(["-R"] if way == "down" else [])]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, _err = await asyncio.wait_for(proc.communicate(), 300)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    import json

    try:
        end = json.loads(out)["end"]
        bps = float(end["sum_received"]["bits_per_second"])
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"iperf3 failed: {out.decode()[-300:]}") from exc
    return size * 8 / bps


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_netstack(way: str, size: int, mtu: int, vnet: bool) -> float:
    port = free_port()
    server = Server("sink" if way == "up" else "source", port, size)
    try:
        with KernelGuest(vnet, mtu) as guest:
            loop = asyncio.get_running_loop()
            tap = TapPort(loop, guest, TcpConfig(mtu=mtu, vnet=vnet))
            try:
                return await client(guest.ns, way, port, size)
            finally:
                tap.close()
    finally:
        server.close()


class PeerNs:
    """A namespace served by slirp4netns or pasta."""

    def __init__(self, peer: str, mtu: int) -> None:
        self.ns = f"nstcpb{os.getpid()}"
        self.peer = peer
        self.mtu = mtu
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PeerNs:
        ip("netns", "add", self.ns)
        path = f"/var/run/netns/{self.ns}"
        if self.peer == "slirp4netns":
            argv = ["slirp4netns", "--configure", f"--mtu={self.mtu}", "--netns-type=path",
                    path, "tap0"]  # fmt: skip
        else:
            argv = ["pasta", "--runas", "0:0", "--netns-only", "--config-net", "--netns", path,
                    "-a", "10.0.2.100", "-n", "24", "-g", "10.0.2.2", "-m", str(self.mtu),
                    "-f", "-q"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            r = subprocess.run(["ip", "-n", self.ns, "-4", "addr"], capture_output=True)
            if b"10.0.2." in r.stdout:
                break
            time.sleep(0.05)
        else:
            self.__exit__()
            raise RuntimeError(f"{self.peer} did not configure the namespace")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=20)


async def run_peer(peer: str, way: str, size: int, mtu: int) -> float:
    port = free_port()
    server = Server("sink" if way == "up" else "source", port, size)
    try:
        with PeerNs(peer, mtu) as ns:
            return await client(ns.ns, way, port, size)
    finally:
        server.close()


def have(tool: str) -> bool:
    return subprocess.run(["which", tool], capture_output=True).returncode == 0


async def part_kernel(size_mb: int, runs: int) -> None:
    size = size_mb << 20
    print(f"\n# kernel in a namespace: {size_mb} MB per transfer, best of {runs}")
    print(f"{'stack':<22} {'way':<5} {'MB/s':>8} {'Gbit/s':>7} {'vs slirp4netns':>15}")
    for mtu in (1500, 65520):
        for way in ("up", "down"):
            rows: list[tuple[str, float]] = []
            cases: list[tuple[str, object]] = []
            if have("slirp4netns"):
                cases.append((f"slirp4netns mtu {mtu}", ("slirp4netns",)))
            if have("pasta"):
                cases.append((f"pasta mtu {mtu}", ("pasta",)))
            cases.append((f"netstack mtu {mtu}", ("netstack", False)))
            if mtu == 1500:
                cases.append((f"netstack tso mtu {mtu}", ("netstack", True)))
            for name, spec in cases:
                times = []
                for _ in range(runs):
                    try:
                        if spec[0] == "netstack":  # type: ignore[index]
                            t = await run_netstack(way, size, mtu, bool(spec[1]))  # type: ignore[index]
                        else:
                            t = await run_peer(spec[0], way, size, mtu)  # type: ignore[index]
                    except (TimeoutError, RuntimeError, OSError) as exc:
                        print(f"{name:<22} {way:<5} failed: {exc}")
                        break
                    times.append(t)
                if times:
                    rows.append((name, size / min(times) / 1e6))
            base = next((r for n, r in rows if n.startswith("slirp4netns")), None)
            for name, rate in rows:
                ratio = f"{rate / base:14.2f}x" if base else "-"
                print(f"{name:<22} {way:<5} {rate:8.1f} {rate * 8 / 1000:7.2f} {ratio:>15}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=100, help="MB per transfer")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--part", choices=["machine", "kernel", "all"], default="all")
    args = ap.parse_args()
    if args.part in ("machine", "all"):
        part_machine(args.size, args.runs)
    if args.part in ("kernel", "all"):
        if os.geteuid() != 0:
            print("kernel part skipped: needs root")
            return
        asyncio.run(part_kernel(args.size, args.runs))


if __name__ == "__main__":
    main()
