"""DHCP DISCOVER-to-ACK time in a QEMU guest: QEMU's slirp vs netstackd's user netdev.

One busybox guest (TCG) runs ``udhcpc -q`` ``--rounds`` times (20 by default). QEMU's own
``filter-dump`` on the guest's netdev records every frame with its timestamp where the
guest's NIC meets the backend, so both cases are timed at the same point; per transaction
(xid) the time from the DISCOVER to the ACK is taken (it includes the guest's own work
between OFFER and REQUEST). Cases: ``slirp`` (``-netdev user``) and ``netstack`` (the NIC on
``-netdev l2tpv3`` over loopback to a netstackd whose hub 0 joins that link and ``user``).

Printed: median and 90th percentile in milliseconds per case and the ratio to slirp.

    python bench/bench_dhcp.py [--rounds N]

Every process is started and stopped here by PID; only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import dpkt

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
from tools.guest import UDHCPC_SCRIPT_PATH, Guest, build, ensure_qemu, virtio_nic_args  # noqa: E402

SCRIPT = """
ip link set eth0 up
i=0
while [ $i -lt {rounds} ]; do
    timeout 30 udhcpc -i eth0 -f -q -n -t 6 -T 2 -s {script} >/dev/null 2>&1
    i=$((i + 1))
done
echo DHCP-DONE
"""


def transactions(pcap: Path) -> list[float]:
    """DISCOVER-to-ACK seconds per xid, from a filter-dump pcap."""
    discover: dict[int, float] = {}
    out: list[float] = []
    with pcap.open("rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            try:
                eth = dpkt.ethernet.Ethernet(buf)
                udp = eth.data.data
                if not isinstance(udp, dpkt.udp.UDP) or 67 not in (udp.sport, udp.dport):
                    continue
                msg = dpkt.dhcp.DHCP(udp.data)
            except (dpkt.UnpackError, AttributeError):
                continue
            kind = next((d[0] for c, d in msg.opts if c == 53), None)
            if kind == 1 and msg.xid not in discover:
                discover[msg.xid] = ts
            elif kind == 5 and msg.xid in discover:
                out.append(ts - discover.pop(msg.xid))
    return out


async def one_case(image: object, kind: str, rounds: int, tmp: Path) -> list[float]:
    pcap = tmp / f"{kind}.pcap"
    daemon = None
    if kind == "netstack":
        qport, dport = free_port(), free_port()
        daemon = Proc(
            [sys.executable, "-c", RUNNER, *user_daemon_specs("restrict=off", qport, dport)],
            "daemon",
        )
        qemu_args = guest_link_args(qport, dport)
    else:
        qemu_args = ["-netdev", "user,id=n0", *virtio_nic_args("n0", MAC)]
    qemu_args += ["-object", f"filter-dump,id=f0,netdev=n0,file={pcap}"]
    script = SCRIPT.format(rounds=rounds, script=UDHCPC_SCRIPT_PATH)
    guest = Guest(image, script, qemu_args, name=f"dhcp-{kind}", timeout=600)  # type: ignore[arg-type]
    try:
        if daemon is not None:
            await daemon.start()
        await guest.start()
        await guest.wait_for("DHCP-DONE", timeout=580)
    finally:
        await guest.stop()
        if daemon is not None:
            await daemon.stop()
    times = transactions(pcap)
    if len(times) < rounds:
        raise RuntimeError(f"{kind}: {len(times)} of {rounds} transactions completed")
    return times


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    ensure_qemu(install=False)
    image = build()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dhcp-") as tmp:
        for kind in ("slirp", "netstack"):
            results[kind] = await one_case(image, kind, args.rounds, Path(tmp))
    base = statistics.median(results["slirp"])
    print(f"\nDHCP DISCOVER->ACK in a TCG guest, {args.rounds} rounds (ms):")
    print(f"{'case':>10} {'median':>8} {'p90':>8} {'vs slirp':>9}")
    for kind, times in results.items():
        ms = sorted(t * 1000 for t in times)
        med = statistics.median(ms)
        p90 = ms[int(0.9 * (len(ms) - 1))]
        print(f"{kind:>10} {med:8.2f} {p90:8.2f} {med / (base * 1000):8.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
