"""Side by side: the IPv6 router machines (Python adapter on a tap) vs libslirp
(slirp4netns -6) - the Linux kernel in a namespace is the guest for both.

Measures: time from link up to a usable SLAAC address; ping -6 flood (local echo at the
gateway) round trips per second and average RTT; 3000-byte pings (fragments both ways).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.user.v6 import Ipv6Config
from tests.interop.test_user_ipv6_kernel import TAP, Namespace, running

COUNT = 2000


async def flood(ns_name: str, target: str, size: int = 56, count: int = COUNT) -> dict[str, float]:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        ns_name,
        "ping",
        "-6",
        "-n",
        "-q",
        "-f",
        "-c",
        str(count),
        "-s",
        str(size),
        target,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    elapsed = time.monotonic() - t0
    text = out.decode()
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)", text)
    loss = re.search(r"([\d.]+)% packet loss", text)
    return {
        "pps": count / elapsed,
        "avg_ms": float(m.group(2)) if m else -1,
        "loss": float(loss.group(1)) if loss else -1,
    }


async def wait_addr(ns_name: str, prefix: str, timeout: float = 30) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        out = subprocess.run(
            ["ip", "netns", "exec", ns_name, "ip", "-6", "addr"], capture_output=True, text=True
        ).stdout
        for line in out.splitlines():
            if f"inet6 {prefix}" in line and "tentative" not in line:
                return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise RuntimeError("no address")


async def ours() -> dict[str, object]:
    with Namespace() as ns:
        ns.sh("ip", "link", "set", TAP, "down")
        async with running(ns, Ipv6Config()):
            ns.sh("ip", "link", "set", TAP, "up")
            slaac = await wait_addr(ns.name, "fec0:")
            small = await flood(ns.name, "fec0::2")
            big = await flood(ns.name, "fec0::2", 3000, 500)
    return {"slaac_s": slaac, "flood": small, "flood3000": big}


async def slirp() -> dict[str, object]:
    name = f"nsv6s-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    proc = None
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                name,
                "sysctl",
                "-qw",
                "net.ipv6.conf.default.router_solicitation_delay=0",
            ],
            check=True,
        )
        proc = subprocess.Popen(
            [
                "slirp4netns",
                "--configure",
                "-6",
                "--mtu=1500",
                "--netns-type=path",
                f"/var/run/netns/{name}",
                "tap0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        slaac = await wait_addr(name, "fd00:")
        small = await flood(name, "fd00::2")
        big = await flood(name, "fd00::2", 3000, 500)
        return {"slaac_s": slaac, "flood": small, "flood3000": big}
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(5)
        subprocess.run(["ip", "netns", "del", name])


async def main() -> None:
    a = await ours()
    b = await slirp()
    print(f"{'':28}{'netstack (Python)':>20}{'libslirp (slirp4netns)':>26}{'ratio':>8}")
    print(
        f"{'link up -> SLAAC address s':28}{a['slaac_s']:>20.2f}{b['slaac_s']:>26.2f}"
        f"{b['slaac_s'] / a['slaac_s']:>8.2f}"
    )
    for key, label in (("flood", "ping -f 56 B"), ("flood3000", "ping -f 3000 B (frags)")):
        x, y = a[key], b[key]
        print(f"{label + ' rtt/s':28}{x['pps']:>20.0f}{y['pps']:>26.0f}{x['pps'] / y['pps']:>8.2f}")
        print(
            f"{label + ' avg ms':28}{x['avg_ms']:>20.3f}{y['avg_ms']:>26.3f}"
            f"{y['avg_ms'] / x['avg_ms']:>8.2f}"
        )
        print(f"{label + ' loss %':28}{x['loss']:>20.1f}{y['loss']:>26.1f}")


if __name__ == "__main__":
    asyncio.run(main())
