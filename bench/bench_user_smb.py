"""``smb=`` read throughput in a QEMU guest: netstackd's user netdev vs QEMU's own.

One busybox guest (TCG, Debian's cloud kernel with cifs) mounts ``//10.0.2.4/qemu`` (SMB
3.0, guest) and times ``md5sum`` of a ``--size`` MiB file on the share with
``/proc/uptime`` (the first read after the mount: every byte crosses the network). Cases:

* ``qemu``: ``-netdev user,id=n0,smb=DIR`` (libslirp; QEMU runs smbd per connection);
* ``netstackd``: ``python -m netstack`` (a separate process) with ``user,smb=DIR`` and a
  vhost-user netdev on hub 0, the guest's NIC on ``-netdev vhost-user``.

Both run the same smbd (Debian's samba) on the same host file (in the page cache after
the first round). Cases are interleaved, the order alternating per round; ``--repeat``
rounds (3 by default) give the median. Also printed: netstackd's CPU seconds over the
whole guest run (boot, DHCP, mount, read) per MiB read, from ``/proc/PID/stat``; QEMU's
CPU cannot be split from its TCG guest, so it has no such figure.

    python bench/bench_user_smb.py [--size 32] [--repeat 3]

Every process is started and stopped here by PID; no network but the guests' own.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.guest import (  # noqa: E402
    UDHCPC_SCRIPT_PATH,
    Guest,
    build,
    ensure_qemu,
    shared_memory_args,
    virtio_nic_args,
)

MAC = "52:54:00:12:34:56"
CIFS_MODULES = ("sha512_generic", "cmac", "ctr", "ghash-generic", "ccm", "gcm", "ecb", "cifs")
SCRIPT = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} >/dev/null 2>&1 && echo DHCP-OK
mkdir -p /mnt/s
mount -t cifs //10.0.2.4/qemu /mnt/s -o username=guest,password=,vers=3.0 || echo MOUNT-FAILED
t0=$(cut -d' ' -f1 /proc/uptime)
sum=$(md5sum /mnt/s/big.bin | cut -d' ' -f1)
t1=$(cut -d' ' -f1 /proc/uptime)
echo "BIG $sum $t0 $t1"
umount /mnt/s
echo SCRIPT-DONE
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_case(
    image: object, kind: str, share: Path, digest: str, tmp: Path
) -> tuple[float, float]:
    """Seconds the guest took to read the file, and netstackd's CPU seconds (0 for qemu)."""
    daemon = None
    if kind == "netstackd":
        sock = tmp / "vhost.sock"
        qmp = tmp / "qmp.sock"
        for p in (sock, qmp):
            p.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "netstack",
            "-chardev", f"socket,id=c0,path={sock},server=on,wait=off",
            "-netdev", f"user,id=nat0,smb={share}",
            "-netdev", f"vhost-user,id=vm0,chardev=c0,mac={MAC}",
            "-netdev", "hubport,id=h0,hubid=0,netdev=nat0",
            "-netdev", "hubport,id=h1,hubid=0,netdev=vm0",
            "-qmp", f"unix:{qmp},server=on,wait=off",
        ]  # fmt: skip
        print("netstackd:", " ".join(argv), file=sys.stderr)
        daemon = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                                  env=dict(os.environ, XDG_RUNTIME_DIR=str(tmp)))  # fmt: skip
        deadline = time.monotonic() + 30
        while not qmp.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("netstackd did not start")
            await asyncio.sleep(0.05)
        qemu_args = [
            *shared_memory_args(256),
            "-chardev", f"socket,id=vhost0,path={sock}",
            "-netdev", "vhost-user,id=n0,chardev=vhost0",
            *virtio_nic_args("n0", MAC, msix=False),
        ]  # fmt: skip
    else:
        qemu_args = ["-netdev", f"user,id=n0,smb={share}", *virtio_nic_args("n0", MAC)]
    guest = Guest(image, SCRIPT, qemu_args, name=f"smb-{kind}", timeout=600)  # type: ignore[arg-type]
    try:
        cpu0 = cpu_seconds(daemon.pid) if daemon is not None else 0.0
        await guest.start()
        await guest.wait_for("SCRIPT-DONE", timeout=580)
        cpu1 = cpu_seconds(daemon.pid) if daemon is not None else 0.0
        console = guest.console
    finally:
        await guest.stop()
        if daemon is not None:
            daemon.terminate()
            daemon.wait(20)
    match = re.search(r"^BIG (\S+) (\S+) (\S+)$", console, re.M)
    if match is None or match.group(1) != digest:
        raise RuntimeError(f"{kind}: the read failed or gave other bytes:\n{console[-2000:]}")
    return float(match.group(3)) - float(match.group(2)), cpu1 - cpu0


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32, help="MiB")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ensure_qemu(install=False)
    image = build(extra_modules=CIFS_MODULES)
    kinds = ("qemu", "netstackd")
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-smb-") as tmpname:
        tmp = Path(tmpname)
        share = tmp / "share"
        share.mkdir()
        data = os.urandom(args.size << 20)
        (share / "big.bin").write_bytes(data)
        digest = hashlib.md5(data).hexdigest()
        for rnd in range(args.repeat):
            order = kinds if rnd % 2 == 0 else tuple(reversed(kinds))
            for kind in order:
                secs, used = await one_case(image, kind, share, digest, tmp)
                seconds[kind].append(secs)
                if kind == "netstackd":
                    cpu.append(used)
                print(f"round {rnd + 1} {kind}: {secs:.2f} s"
                      + (f", netstackd CPU {used:.2f} s" if kind == "netstackd" else ""),
                      file=sys.stderr)  # fmt: skip
    mib = args.size
    base = statistics.median(seconds["qemu"])
    print(f"\nsmb= read of {mib} MiB in a TCG guest (cifs, SMB 3.0), {args.repeat} rounds:")
    print(f"{'case':>10} {'median s':>9} {'MB/s':>7} {'vs qemu':>8} {'CPU ms/MiB':>11}")
    for kind in kinds:
        med = statistics.median(seconds[kind])
        per_mib = (
            f"{statistics.median(cpu) * 1000 / mib:11.1f}" if kind == "netstackd" else " " * 11
        )
        print(f"{kind:>10} {med:9.2f} {(mib << 20) / med / 1e6:7.1f} {base / med:7.2f}x {per_mib}")
    print("(vs qemu: throughput ratio, >1 is faster; CPU: netstackd over the whole guest run)")


if __name__ == "__main__":
    asyncio.run(main())
