"""Where a TFTP block's time goes: QEMU's slirp against netstackd's user netdev, per hop.

TFTP is lock-step: one DATA block in flight, the next sent when its ACK arrives, so a
transfer runs at blksize / (the time of one DATA-ACK round). Each run boots one busybox
guest (TCG) that fetches ``--size`` MB with ``tftp -g -b 1468`` from 10.0.2.2 as
``bench/bench_tftp.py`` does (the same guest script, the same daemon and l2tpv3 link; md5
checked). Around the transfer (between the guest's ``TFTP-START`` and ``TFTP-TIME`` lines)
it reads, per block:

* the wall time;
* the CPU time of QEMU's vCPU thread (the guest: kernel, virtio-net driver, busybox tftp,
  all under TCG), of QEMU's other threads (the main loop: virtio-net's back end, plus
  libslirp in the ``slirp`` case or the l2tpv3 netdev in the ``netstack`` case), and of
  the daemon (user and system) - from /proc/PID/task/*/stat;
* with ``--capture`` (``netstack`` case, a separate run): a capture on ``lo`` of the
  l2tpv3 datagrams (``dumpcap -s 128``; headers only) splits each round in two wall-time
  hops: *guest side* = DATA leaves the daemon's socket -> its ACK reaches the daemon's port
  (loopback, QEMU's main loop, virtio-net, the guest) and *daemon side* = that ACK -> the
  next DATA (the daemon: l2tpv3, hub, user netdev, TFTP server). Capturing on ``lo``
  costs the senders a little; the split, not the rate, is what that run is for.

libslirp answers blksize 1468 with its maximum 1428, netstackd with 1468: per-block
figures use each case's own block count. ``--profile DIR`` samples the daemon with py-spy
during the transfer (raw collapsed stacks in DIR; top frames printed as
``bench/bench_user_workloads.py`` prints them).

    python bench/bench_tftp_hops.py [--size MB] [--runs N] [--capture] [--profile DIR]

Every process is started and stopped here by PID; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_tftp import SCRIPT  # noqa: E402
from bench.bench_user_workloads import pyspy, summarize  # noqa: E402
from tests.interop.test_user_guest import (  # noqa: E402
    MAC,
    RUNNER,
    Proc,
    free_port,
    guest_link_args,
    user_daemon_specs,
)
from tools.guest import UDHCPC_SCRIPT_PATH, Guest, build, ensure_qemu, virtio_nic_args  # noqa: E402

BLKSIZE = {"slirp": 1428, "netstack": 1468}  # what each server grants a 1468 request
TICK = os.sysconf("SC_CLK_TCK")
GUEST_SCRIPT = SCRIPT.replace("read t0", "echo TFTP-START\nread t0", 1)


def thread_cpu(pid: int) -> dict[str, tuple[float, float]]:
    """Per thread group (``vcpu`` = QEMU's ``CPU n/...`` threads, ``other``): (user, sys)."""
    out = {"vcpu": (0.0, 0.0), "other": (0.0, 0.0)}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            group = "vcpu" if name.startswith("CPU ") else "other"
            user, system = out[group]
            out[group] = (user + int(fields[11]) / TICK, system + int(fields[12]) / TICK)
    return out


@dataclass
class Run:
    """One transfer: per-block µs (wall, CPU by place) and the capture's hop times."""

    case: str
    mbps: float
    blocks: int
    wall: float
    cpu: dict[str, float] = field(default_factory=dict)
    guest_side: list[float] = field(default_factory=list)
    daemon_side: list[float] = field(default_factory=list)


def hops(pcap: Path, daemon_port: int) -> tuple[list[float], list[float]]:
    """(guest side, daemon side) µs of each DATA-ACK round in a capture of the l2tpv3 link:
    DATA = a large datagram from the daemon's port, ACK = a small one to it."""
    guest, daemon = [], []
    data_at: float | None = None
    ack_at: float | None = None
    with open(pcap, "rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            udp = getattr(ip, "data", None)
            if not isinstance(udp, dpkt.udp.UDP):
                continue
            if udp.sport == daemon_port and udp.ulen > 1000:
                if ack_at is not None:
                    daemon.append(1e6 * (ts - ack_at))
                data_at, ack_at = ts, None
            elif udp.dport == daemon_port and udp.ulen < 200 and data_at is not None:
                guest.append(1e6 * (ts - data_at))
                data_at, ack_at = None, ts
    return guest, daemon


@contextlib.contextmanager
def capture(port: int, path: Path) -> Iterator[None]:
    """dumpcap on lo for the l2tpv3 link's datagrams, stopped by PID."""
    proc = subprocess.Popen(
        ["dumpcap", "-q", "-i", "lo", "-P", "-s", "128", "-f", f"udp port {port}", "-w",
         str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(100):  # the file exists once dumpcap captures
            if path.exists():
                break
            if proc.poll() is not None:
                why = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"dumpcap failed: {why}")
            time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def one_run(
    image: object, case: str, tftp_dir: Path, size: int, want: str, tmp: Path,
    profile: Path | None,
) -> Run:  # fmt: skip
    kind, _, extra = case.partition("+")
    daemon = None
    qport = dport = 0
    if kind == "netstack":
        qport, dport = free_port(), free_port()
        specs = user_daemon_specs(f"tftp={tftp_dir}", qport, dport)
        daemon = Proc([sys.executable, "-c", RUNNER, *specs], "daemon")
        qemu_args = guest_link_args(qport, dport)
    else:
        qemu_args = ["-netdev", f"user,id=n0,tftp={tftp_dir}", *virtio_nic_args("n0", MAC)]
    script = GUEST_SCRIPT.format(blksize=1468, udhcpc_script=UDHCPC_SCRIPT_PATH)
    # debug-threads=on names QEMU's threads ("CPU 0/TCG" for the vCPU)
    name = f"hops-{kind},debug-threads=on"
    guest = Guest(image, script, qemu_args, name=name, timeout=900, memory_mb=512)  # type: ignore[arg-type]
    pcap = tmp / f"{case}.pcap"
    spy: subprocess.Popen[bytes] | None = None
    try:
        if daemon is not None:
            await daemon.start()
        with capture(dport, pcap) if extra == "capture" else contextlib.nullcontext():
            await guest.start()
            assert guest.pid is not None
            start = await guest.wait_for(r"TFTP-START\n", timeout=600)
            t0, q0 = asyncio.get_running_loop().time(), thread_cpu(guest.pid)
            d0 = thread_cpu(daemon.proc.pid)["other"] if daemon and daemon.proc else (0, 0)
            if profile is not None and daemon is not None and daemon.proc is not None:
                spy = subprocess.Popen(
                    [pyspy(), "record", "-p", str(daemon.proc.pid), "-r", "200",
                     "--nonblocking", "-f", "raw", "-o", str(profile / f"{case}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            await guest.wait_for(r"TFTP-TIME \d+ [\d.]+ [\d.]+", timeout=880, since=start.end())
            wall, q1 = asyncio.get_running_loop().time() - t0, thread_cpu(guest.pid)
            d1 = thread_cpu(daemon.proc.pid)["other"] if daemon and daemon.proc else (0, 0)
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            await guest.wait_for(r"TFTP-MD5 [0-9a-f]{32}", timeout=120)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait(5)
        await guest.stop()
        if daemon is not None:
            await daemon.stop()
    text = guest.console
    timing = re.search(r"TFTP-TIME (\d+) ([\d.]+) ([\d.]+)", text)
    digest = re.search(r"TFTP-MD5 ([0-9a-f]{32})", text)
    if timing is None or digest is None or timing.group(1) != "0" or digest.group(1) != want:
        raise RuntimeError(f"{case}: tftp failed or md5 differs\n{text[-2000:]}")
    blocks = size // BLKSIZE[kind] + 1
    per = 1e6 / blocks

    def delta(a: tuple[float, float], b: tuple[float, float], i: int) -> float:
        return per * (b[i] - a[i])

    cpu = {
        "guest vCPU": delta(q0["vcpu"], q1["vcpu"], 0) + delta(q0["vcpu"], q1["vcpu"], 1),
        "QEMU other user": delta(q0["other"], q1["other"], 0),
        "QEMU other sys": delta(q0["other"], q1["other"], 1),
        "daemon user": delta(d0, d1, 0),
        "daemon sys": delta(d0, d1, 1),
    }
    seconds = float(timing.group(3)) - float(timing.group(2))
    run = Run(case, size / seconds / 1e6, blocks, per * wall, cpu)
    if extra == "capture":
        run.guest_side, run.daemon_side = hops(pcap, dport)
    return run


def med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else 0.0


def report(runs: list[Run]) -> None:
    cases = list(dict.fromkeys(r.case for r in runs))
    places = list(runs[0].cpu)
    print(f"\n{'case':<18} {'MB/s':>6} {'blocks':>6} {'wall µs/blk':>11} "
          + " ".join(f"{p:>16}" for p in places))  # fmt: skip
    for case in cases:
        rs = [r for r in runs if r.case == case]
        print(f"{case:<18} {med([r.mbps for r in rs]):6.2f} {rs[0].blocks:6d} "
              f"{med([r.wall for r in rs]):11.0f} "
              + " ".join(f"{med([r.cpu[p] for r in rs]):16.1f}" for p in places))  # fmt: skip
    print("(CPU columns: µs of CPU per block, medians over runs)")
    for r in runs:
        if r.guest_side:
            g, d = r.guest_side, r.daemon_side
            print(f"\n{r.case}: {len(g)} rounds captured; guest side (DATA out -> ACK in) "
                  f"median {med(g):.0f} µs, mean {statistics.fmean(g):.0f}; daemon side "
                  f"(ACK in -> next DATA out) median {med(d):.0f} µs, mean "
                  f"{statistics.fmean(d) if d else 0:.0f}")  # fmt: skip


async def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--size", type=int, default=20, help="file size in MB (default 20)")
    ap.add_argument("--runs", type=int, default=2, help="runs per case (medians)")
    ap.add_argument("--capture", action="store_true", help="also a netstack run captured on lo")
    ap.add_argument("--profile", type=Path, help="py-spy the daemon during transfers into DIR")
    args = ap.parse_args()
    ensure_qemu(install=False)
    image = build()
    cases = ["slirp", "netstack"] + (["netstack+capture"] if args.capture else [])
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-tftp-hops-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        data = os.urandom(args.size * 1_000_000)
        (root / "big.bin").write_bytes(data)
        want = hashlib.md5(data).hexdigest()
        for n in range(args.runs):
            for case in cases:
                if case.endswith("capture") and n:
                    continue
                prof = args.profile if args.profile and case == "netstack" and not n else None
                run = await one_run(image, case, root, len(data), want, Path(tmp), prof)
                runs.append(run)
                cpu = ", ".join(f"{k} {v:.1f}" for k, v in run.cpu.items())
                print(f"run {n + 1} {case:>16}: {run.mbps:6.2f} MB/s, {run.wall:.0f} µs/block; "
                      f"CPU µs/block: {cpu}", flush=True)  # fmt: skip
    report(runs)
    if args.profile and (args.profile / "netstack.txt").exists():
        print(f"\nprofile of the daemon during a netstack transfer ({args.profile}/netstack.txt):")
        print("\n".join(summarize((args.profile / "netstack.txt").read_text())))


if __name__ == "__main__":
    asyncio.run(main())
