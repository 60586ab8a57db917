"""Live-migration downtime and total time of a vhost-user VM: netstackd vs DPDK's vhost PMD as
the back end, side by side in one run.

A QEMU 7.2 guest (TCG, 256 MiB, ``vectors=0``) boots attached to socket A of the back end; a
second QEMU waits with ``-incoming`` attached to socket B of the same back end; once the
guest runs its workload the source is told to ``migrate`` and the figures are what the
source's ``query-migrate`` reports (``downtime``, ``total-time``, in ms). Workload during
the move: the guest pings 10.0.2.2 every 20 ms (rings busy both ways) and writes to its
memory a little (a shell loop).

* ``dpdk``: ``dpdk-testpmd --vdev net_vhost0,iface=A --vdev net_vhost1,iface=B
  --forward-mode=macswap --port-topology=loop`` (each port bounces what it gets; the guest
  has a static neighbour entry);
* ``netstack``: a ``netstackd`` process with ``-netdev user`` and two vhost-user netdevs on
  hub 0 (the guest takes a DHCP lease and its pings are answered by the NAT).

Rounds interleave the back ends (``--rounds``, default 3); printed: per-round figures, the
medians, netstack/DPDK ratios, and the back end's CPU time during the migration (utime +
stime from /proc/PID/stat; testpmd busy-polls, so its figure is mostly wall time).

    python bench/bench_migration.py [--rounds N] [--kinds dpdk,netstack]

Every process is started and stopped here by PID; only unix sockets in a temporary
directory are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools.guest import UDHCPC_SCRIPT_PATH, Guest, build  # noqa: E402
from tools.migrate.qemu import MigrationResult, migrate, qmp_connect, vm_args  # noqa: E402
from tools.vhost_user_frontend import testpmd  # noqa: E402

MAC = "52:54:00:12:34:56"
KINDS = ("dpdk", "netstack")

SCRIPT = """
{net}
(ping -q -i 0.02 -c 100000 10.0.2.2 >/dev/null 2>&1) &
echo MIG-GO
n=0
while [ $n -lt 3000 ]; do echo "$n" > /tmp/tick; n=$((n+1)); sleep 0.05; done
"""
NET = {
    "dpdk": "ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up\n"
    "ip neigh replace 10.0.2.2 lladdr 52:54:00:12:34:02 dev eth0",
    "netstack": f"udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH}",
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not path.exists():
        if proc.poll() is not None or loop.time() > deadline:
            raise RuntimeError(f"back end did not create {path}")
        await asyncio.sleep(0.05)


async def one(kind: str, tmp: Path) -> tuple[MigrationResult, float]:
    a, b = tmp / "a.sock", tmp / "b.sock"
    for p in (a, b, tmp / "mig.sock"):
        p.unlink(missing_ok=True)
    pmd: testpmd.Testpmd | None = None
    daemon: subprocess.Popen[bytes] | None = None
    if kind == "dpdk":
        vdevs = [f"net_vhost{i},iface={s},queues=1" for i, s in enumerate((a, b))]
        pmd = testpmd.Testpmd(vdevs, "macswap", extra=["--port-topology=loop"], wait_for=(a, b))
        await pmd.start()
        assert pmd.proc is not None
        pid = pmd.proc.pid
    else:
        argv = [sys.executable, "-m", "netstack"]
        for name, sock in (("ca", a), ("cb", b)):
            argv += ["-chardev", f"socket,id={name},path={sock},server=on,wait=off"]
        argv += [
            "-netdev", "user,id=nat0",
            "-netdev", "vhost-user,id=vma,chardev=ca",
            "-netdev", "vhost-user,id=vmb,chardev=cb",
            "-netdev", "hubport,id=h0,hubid=0,netdev=nat0",
            "-netdev", "hubport,id=h1,hubid=0,netdev=vma",
            "-netdev", "hubport,id=h2,hubid=0,netdev=vmb",
        ]  # fmt: skip
        env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp))
        with open(tmp / "daemon.log", "wb") as out:
            daemon = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        await wait_socket(b, daemon)
        pid = daemon.pid
    script = SCRIPT.format(net=NET[kind])
    src = Guest(build(), script, vm_args(a, tmp / "q0.sock", MAC), name="bsrc", timeout=240)
    dst = Guest(
        build(),
        script,
        vm_args(b, tmp / "q1.sock", MAC, incoming=f"unix:{tmp / 'mig.sock'}"),
        name="bdst",
        timeout=240,
    )
    try:
        await src.start()
        await dst.start()
        await src.wait_for("MIG-GO", 120)
        await asyncio.sleep(2.0)
        client = await qmp_connect(tmp / "q0.sock")
        cpu0 = cpu_seconds(pid)
        try:
            result = await migrate(client, f"unix:{tmp / 'mig.sock'}")
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()
        cpu = cpu_seconds(pid) - cpu0
        return result, cpu
    finally:
        await src.stop()
        await dst.stop()
        if pmd is not None:
            await pmd.stop()
            pmd.cleanup()
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def bench(kinds: list[str], rounds: int) -> None:
    figures: dict[str, dict[str, list[float]]] = {
        k: {"down": [], "total": [], "cpu": []} for k in kinds
    }
    with tempfile.TemporaryDirectory(prefix="bench-mig-") as td:
        for r in range(rounds):
            for kind in kinds:
                tmp = Path(td) / f"{kind}{r}"
                tmp.mkdir()
                result, cpu = await one(kind, tmp)
                if not result.ok:
                    print(f"round {r + 1} {kind}: {result.status} {result.error}")
                    continue
                assert result.downtime_ms is not None and result.total_ms is not None
                figures[kind]["down"].append(result.downtime_ms)
                figures[kind]["total"].append(result.total_ms)
                figures[kind]["cpu"].append(cpu)
                print(
                    f"round {r + 1} {kind:9s} downtime {result.downtime_ms:5.0f} ms"
                    f"  total {result.total_ms:6.0f} ms  back-end CPU {cpu * 1000:6.0f} ms",
                    flush=True,
                )
    print()
    for kind in kinds:
        f = figures[kind]
        print(
            f"median {kind:9s} downtime {med(f['down']):5.0f} ms  total {med(f['total']):6.0f} ms"
            f"  back-end CPU per migration {med(f['cpu']) * 1000:6.0f} ms"
        )
    if "dpdk" in kinds and "netstack" in kinds:
        ns, dp = figures["netstack"], figures["dpdk"]
        print(
            f"ratio netstack/dpdk: downtime {med(ns['down']) / med(dp['down']):.2f}x,"
            f" total {med(ns['total']) / med(dp['total']):.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    for k in kinds:
        if k not in KINDS:
            parser.error(f"unknown kind {k}")
    asyncio.run(bench(kinds, args.rounds))


if __name__ == "__main__":
    main()
