"""TFTP download speed into a QEMU guest: QEMU's slirp vs netstackd's user netdev.

One busybox guest (TCG) fetches a ``--size`` MB random file (50 by default) with
``tftp -g -b BLKSIZE`` from 10.0.2.2, timed in the guest from ``/proc/uptime`` (10 ms
resolution) around the transfer; the file lands in the guest's tmpfs and its md5 is checked
against the host's afterwards (outside the timing). Cases, in one run:

* ``slirp-1468``: ``-netdev user,tftp=DIR`` in the guest's QEMU (libslirp answers blksize
  1468 with its maximum, 1428);
* ``netstack-1468``: the guest's NIC on ``-netdev l2tpv3`` (UDP over loopback) to a
  netstackd whose hub 0 joins that link and ``user,tftp=DIR``;
* ``netstack-65464``: the same with blksize 65464 - each DATA datagram is ~64 KB and reaches
  the guest as 45 IPv4 fragments of <= 1500 bytes (guest MTU 1500), which the guest kernel
  reassembles;
* ``slirp-65464`` (with ``--all``): what slirp does with the same request (it caps at 1428).

Printed: MB/s per case (``--runs`` runs each, the best and the median), the ratio to
``slirp-1468``, and the daemon's CPU seconds for the netstack cases. The guest runs under
TCG, whose per-packet cost dominates both paths; the netstack path also carries every
frame through QEMU's l2tpv3 netdev and a loopback UDP hop, which slirp does not.

    python bench/bench_tftp.py [--size MB] [--runs N] [--all]

Every process is started and stopped here by PID; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.interop.test_user_guest import (  # noqa: E402
    MAC,
    RUNNER,
    Proc,
    free_port,
    guest_link_args,
    user_daemon_specs,
)
from tools.guest import (  # noqa: E402
    UDHCPC_SCRIPT_PATH,
    Guest,
    build,
    ensure_qemu,
    virtio_nic_args,
)

SCRIPT = """
ip link set eth0 up
timeout 60 udhcpc -i eth0 -f -q -n -t 6 -T 2 -s {udhcpc_script} >/dev/null 2>&1
read t0 rest < /proc/uptime
tftp -g -b {blksize} -r big.bin -l /tmp/big.bin 10.0.2.2
status=$?
read t1 rest < /proc/uptime
echo "TFTP-TIME $status $t0 $t1"
echo "TFTP-MD5 $(md5sum < /tmp/big.bin)"
"""


def pin(pid: int, cpus: set[int], vcpus: set[int] | None = None) -> None:
    """Put every thread of ``pid`` on ``cpus``, QEMU's vCPU threads on ``vcpus`` if given."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text()
            vcpu = vcpus is not None and name.startswith("CPU ")
            os.sched_setaffinity(int(tid), vcpus if vcpu and vcpus is not None else cpus)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_run(
    image: object, case: str, tftp_dir: Path, size: int, cpus: set[int] | None, split: bool
) -> tuple[float, float | None, str]:
    kind, blksize = case.split("-")
    daemon = None
    if kind == "netstack":
        qport, dport = free_port(), free_port()
        daemon = Proc(
            [sys.executable, "-c", RUNNER, *user_daemon_specs(f"tftp={tftp_dir}", qport, dport)],
            "daemon",
        )
        qemu_args = guest_link_args(qport, dport)
    else:
        qemu_args = ["-netdev", f"user,id=n0,tftp={tftp_dir}", *virtio_nic_args("n0", MAC)]
    guest = Guest(
        image,
        SCRIPT.format(blksize=blksize, udhcpc_script=UDHCPC_SCRIPT_PATH),
        qemu_args,
        name=f"bench-{case},debug-threads=on",  # type: ignore[arg-type]  # names "CPU 0/TCG"
        timeout=900,
        memory_mb=512,
    )
    cpu = None
    try:
        if daemon is not None:
            await daemon.start()
            assert daemon.proc is not None
            cpu0 = _cpu_seconds(daemon.proc.pid)
        await guest.start()
        if cpus is not None:
            await asyncio.sleep(0.5)  # QEMU's vCPU thread exists by then
            all_cpus = set(os.sched_getaffinity(0))
            vcpus = (all_cpus - cpus or None) if split else None
            for pid in (guest.pid, daemon.proc.pid if daemon and daemon.proc else None):
                if pid is not None:
                    pin(pid, cpus, vcpus)
        await guest.wait_for(r"TFTP-MD5 [0-9a-f]{32}|TFTP-TIME [1-9]", timeout=880)
        if daemon is not None and daemon.proc is not None:
            cpu = _cpu_seconds(daemon.proc.pid) - cpu0
    finally:
        await guest.stop()
        if daemon is not None:
            await daemon.stop()
    text = guest.console
    timing = re.search(r"TFTP-TIME (\d+) ([\d.]+) ([\d.]+)", text)
    digest = re.search(r"TFTP-MD5 ([0-9a-f]{32})", text)
    if timing is None or digest is None or timing.group(1) != "0":
        raise RuntimeError(f"{case}: tftp failed\n{text[-2000:]}")
    md5 = digest.group(1)
    seconds = float(timing.group(3)) - float(timing.group(2))
    return size / seconds / 1e6, cpu, md5


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=50, help="file size in MB (default 50)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--all", action="store_true", help="also slirp with blksize 65464")
    ap.add_argument(
        "--pin",
        choices=("none", "same", "split"),
        default="none",
        help="same: QEMU (every thread) and the daemon share the first CPU; split: the same "
        "but QEMU's vCPU threads on the other CPUs",
    )
    args = ap.parse_args()
    ensure_qemu(install=False)
    image = build()
    cases = ["slirp-1468", "netstack-1468", "netstack-65464"]
    if args.all:
        cases.insert(1, "slirp-65464")
    with tempfile.TemporaryDirectory(prefix="bench-tftp-") as tmp:
        tftp_dir = Path(tmp)
        data = os.urandom(args.size * 1_000_000)
        (tftp_dir / "big.bin").write_bytes(data)
        want = hashlib.md5(data).hexdigest()
        results: dict[str, list[float]] = {c: [] for c in cases}
        cpus: dict[str, list[float]] = {c: [] for c in cases}
        for run in range(args.runs):
            for case in cases:
                pinned = {min(os.sched_getaffinity(0))} if args.pin != "none" else None
                mbps, cpu, md5 = await one_run(
                    image, case, tftp_dir, len(data), pinned, args.pin == "split"
                )
                if md5 != want:
                    raise RuntimeError(f"{case}: md5 mismatch ({md5} != {want})")
                results[case].append(mbps)
                if cpu is not None:
                    cpus[case].append(cpu)
                print(
                    f"run {run + 1} {case:>16}: {mbps:7.2f} MB/s"
                    + (f"  daemon cpu {cpu:.1f} s" if cpu is not None else ""),
                    flush=True,
                )
    base = max(results["slirp-1468"])
    print(f"\nTFTP {args.size} MB into a TCG guest, best of {args.runs} (median):")
    print(f"{'case':>16} {'MB/s':>8} {'median':>8} {'vs slirp-1468':>14} {'daemon cpu s':>13} "
          f"{'same-run ratios (median)':>26}")  # fmt: skip
    for case in cases:
        best, med = max(results[case]), statistics.median(results[case])
        cpu = f"{statistics.median(cpus[case]):.1f}" if cpus[case] else "-"
        # the machine's speed drifts between runs: the ratio within each run is what counts
        same = [r / s for r, s in zip(results[case], results["slirp-1468"], strict=True)]
        runs = " ".join(f"{r:.2f}" for r in same)
        print(f"{case:>16} {best:8.2f} {med:8.2f} {best / base:13.2f}x {cpu:>13} "
              f"{runs:>18} ({statistics.median(same):.2f})")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
