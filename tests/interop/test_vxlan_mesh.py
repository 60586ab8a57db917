"""Three hosts, one Ethernet segment: a VXLAN full mesh of two netstackd processes and the
Linux kernel's vxlan device with a Linux bridge, each host with a guest.

Topology (namespaces made and deleted here; underlay 192.0.2.0/24 on a bridge in ns U)::

    host A: netstackd (vxlan vx -> B, C; learning hub 0 = {vx, tap -> guest GA, user NAT})
    host B: netstackd (vxlan vx -> A, C; learning hub 0 = {vx, tap -> guest GB})
    host C: kernel vx0 (vni 42, fdb 00:00:00:00:00:00 -> A, B) + bridge br1 + veth -> GC

    guests GA 10.42.0.11, GB .12, GC .13 (IPv6 off: no background chatter);
    the user NAT on A has its host address at 10.42.0.254 (-> 127.0.0.1 of host A)

Checked: every guest reaches every other one (ping) and the NAT (TCP through it to a
server on host A's loopback); a broadcast from GA reaches each other host exactly once
(no loop, no storm: split horizon keeps overlay frames off the overlay); daemon B is
killed with SIGKILL (A and C keep talking meanwhile), restarted, and GB reaches GA and
GC within :data:`RECOVERY_BOUND` of the daemon's start; afterwards the same exactly-once
check holds; then daemon A (the one with the NAT) is killed and restarted the same way,
and the NAT serves all three guests again. The daemons are real ``netstackd`` processes
driven over QMP (qemu.qmp).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from tests.interop.test_vxlan_kernel import csum_off
from tests.kit.netns import ip, netns, require_root, run_in

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
RECOVERY_BOUND = 1.0
UNDER = {"a": "192.0.2.1", "b": "192.0.2.2", "c": "192.0.2.3"}
GUEST = {"a": "10.42.0.11", "b": "10.42.0.12", "c": "10.42.0.13"}
GMAC = {"a": "02:42:00:00:00:01", "b": "02:42:00:00:00:02", "c": "02:42:00:00:00:03"}
NAT_HOST, NAT_PORT = "10.42.0.254", 7007


class Netstackd:
    """One netstackd process in a namespace, with a QMP connection."""

    def __init__(self, name: str, netns: str, specs: list[str], tmp: Path) -> None:
        self.name, self.netns, self.specs = name, netns, specs
        self.sock = tmp / f"qmp-{name}.sock"
        self.log = tmp / f"netstackd-{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp: QMPClient | None = None

    async def start(self, timeout: float = 20) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()
        argv = [arg for spec in self.specs for arg in ("-netdev", spec)]
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", self.netns, sys.executable, "-m", "netstack", *argv,
                "-qmp", f"unix:{self.sock},server=on,wait=off",
                stdout=log, stderr=log, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self.sock.exists():
            if self.proc.returncode is not None or loop.time() > end:
                raise AssertionError(f"netstackd {self.name} did not start:\n{self.output()}")
            await asyncio.sleep(0.02)
        while True:  # the socket file appears just before listen()
            self.qmp = QMPClient(f"netstackd-{self.name}")
            try:
                await self.qmp.connect(str(self.sock))
                return
            except Exception:
                if loop.time() > end:
                    raise
                await asyncio.sleep(0.02)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def cmd(self, command: str, **args: Any) -> Any:
        assert self.qmp is not None
        return await self.qmp.execute(command, args or None)

    async def counters(self, netdev: str) -> dict[str, int]:
        info = await self.cmd("query-netdev", name=netdev)
        return dict(info[0]["counters"])

    async def _end(self, sig: int) -> None:
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                await self.qmp.disconnect()
            self.qmp = None
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()

    async def kill(self) -> None:
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        await self._end(signal.SIGTERM)


def build(stack: contextlib.ExitStack) -> dict[str, str]:
    """The namespaces: underlay switch u, hosts a b c, guests ga gb gc."""
    ns = {n: stack.enter_context(netns(f"vxm{n}")) for n in ("u", "a", "b", "c")}
    for g in ("ga", "gb", "gc"):
        ns[g] = stack.enter_context(netns(f"vxm{g}", ipv6=False))
    ip("-n", ns["u"], "link", "add", "br0", "type", "bridge")
    ip("-n", ns["u"], "link", "set", "br0", "up")
    for h in "abc":
        ip("-n", ns[h], "link", "add", "eth0", "type", "veth", "peer", "name", f"u{h}",
           "netns", ns["u"])  # fmt: skip
        ip("-n", ns["u"], "link", "set", f"u{h}", "master", "br0", "up")
        csum_off(ns[h], "eth0")
        ip("-n", ns[h], "addr", "add", f"{UNDER[h]}/24", "dev", "eth0")
        ip("-n", ns[h], "link", "set", "eth0", "up")
    c = ns["c"]
    ip("-n", c, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", UNDER["c"],
       "dstport", "4789")  # fmt: skip
    for h in "ab":
        subprocess.run(
            ["bridge", "-n", c, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0",
             "dst", UNDER[h]],
            check=True, capture_output=True, timeout=20,
        )  # fmt: skip
    ip("-n", c, "link", "add", "br1", "type", "bridge")
    ip("-n", c, "link", "set", "vx0", "master", "br1", "mtu", "1450", "up")
    ip("-n", c, "link", "add", "gc0", "type", "veth", "peer", "name", "eth0", "netns", ns["gc"])
    ip("-n", c, "link", "set", "gc0", "master", "br1", "up")
    csum_off(ns["gc"], "eth0")  # see csum_off: the guest's veth is the first hop here
    ip("-n", c, "link", "set", "br1", "up")
    guest_up(ns["gc"], "eth0", "c")
    return ns


def guest_up(gns: str, ifname: str, h: str) -> None:
    ip("-n", gns, "link", "set", ifname, "address", GMAC[h], "mtu", "1450")
    ip("-n", gns, "addr", "replace", f"{GUEST[h]}/24", "dev", ifname)
    ip("-n", gns, "link", "set", ifname, "up")


def daemon_specs(h: str, ns: dict[str, str]) -> list[str]:
    remotes = ",".join(f"remote={UNDER[o]}" for o in "abc" if o != h)
    specs = [
        f"vxlan,id=vx,vni=42,local={UNDER[h]},{remotes}",
        "hubport,id=hvx,hubid=0,netdev=vx,x-learning=on",
        f"tap,id=t,ifname=eth0,script=no,downscript=no,x-netns={ns['g' + h]}",
        "hubport,id=ht,hubid=0,netdev=t",
    ]
    if h == "a":
        specs += [
            f"user,id=nat,net=10.42.0.0/24,host={NAT_HOST},dns=10.42.0.253,dhcpstart=10.42.0.100",
            "hubport,id=hnat,hubid=0,netdev=nat",
        ]
    return specs


async def reach(gns: str, addr: str, timeout: float = 10.0) -> float:
    """Ping until one answer arrives; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    out = ""
    while loop.time() - start < timeout:
        rc, out = await run_in(gns, "ping", "-c", "1", "-W", "0.3", addr)
        if rc == 0:
            return loop.time() - start
    raise AssertionError(f"{gns} -> {addr}: no answer in {timeout}s\n{out}")


NAT_SERVER = f"""
import socket
srv = socket.create_server(("127.0.0.1", {NAT_PORT}))
print("ready", flush=True)
for _ in range(3):
    conn, _ = srv.accept()
    conn.sendall(b"hello from host a\\n")
    conn.close()
"""

NAT_CLIENT = f"""
import socket
with socket.create_connection(("{NAT_HOST}", {NAT_PORT}), timeout=5) as s:
    print(s.recv(100).decode().strip())
"""


async def through_nat(ns: dict[str, str]) -> None:
    server = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns["a"], sys.executable, "-c", NAT_SERVER,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert (await asyncio.wait_for(server.stdout.readline(), 20)).startswith(b"ready")
        for g in ("ga", "gb", "gc"):
            rc, out = await run_in(ns[g], sys.executable, "-c", NAT_CLIENT)
            assert rc == 0 and out.strip() == "hello from host a", (g, out)
    finally:
        if server.returncode is None:
            server.kill()
        await server.wait()


def kernel_rx(ns: dict[str, str]) -> int:
    out = json.loads(ip("-n", ns["c"], "-j", "-s", "link", "show", "vx0"))
    return int(out[0]["stats64"]["rx"]["packets"])


LISTEN = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
s.bind(("eth0", 0))
s.settimeout(0.1)
print("ready", flush=True)
n, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(2048)
    except TimeoutError:
        continue
    if addr[2] != socket.PACKET_OUTGOING and sys.argv[1].encode() in data:
        n += 1
print(n, flush=True)
"""

SEND = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
frame = b"\\xff" * 6 + bytes.fromhex(sys.argv[2].replace(":", "")) + b"\\x88\\xb5"
s.send(frame + sys.argv[1].encode().ljust(46, b"."))
"""


async def broadcast_once(ns: dict[str, str], daemons: dict[str, Netstackd], tag: str) -> None:
    """One broadcast frame from GA reaches GB and GC exactly once and never comes back to
    GA; meanwhile the VTEPs carry only a handful of datagrams (no storm)."""
    before = [(await daemons[h].counters("vx"))["rx-datagrams"] for h in "ab"]
    before_c = kernel_rx(ns)
    listeners = {}
    for g in ("ga", "gb", "gc"):
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns[g], sys.executable, "-c", LISTEN, tag, "1.5",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).startswith(b"ready")
        listeners[g] = proc
    rc, out = await run_in(ns["ga"], sys.executable, "-c", SEND, tag, GMAC["a"])
    assert rc == 0, out
    counts = {}
    for g, proc in listeners.items():
        assert proc.stdout is not None
        counts[g] = int((await asyncio.wait_for(proc.stdout.readline(), 20)).decode())
        await proc.wait()
    assert counts == {"ga": 0, "gb": 1, "gc": 1}, counts
    after = [(await daemons[h].counters("vx"))["rx-datagrams"] for h in "ab"]
    carried = sum(after) - sum(before) + kernel_rx(ns) - before_c
    assert carried < 30, carried  # ARP refreshes at most; a loop would be thousands


def test_three_host_full_mesh_with_the_kernel_survives_a_restart(tmp_path: Path) -> None:
    require_root()
    with contextlib.ExitStack() as stack:
        ns = build(stack)
        asyncio.run(asyncio.wait_for(mesh(ns, tmp_path), 200))


async def mesh(ns: dict[str, str], tmp: Path) -> None:
    daemons = {h: Netstackd(h, ns[h], daemon_specs(h, ns), tmp) for h in "ab"}
    try:
        for h, d in daemons.items():
            await d.start()
            guest_up(ns["g" + h], "eth0", h)
        for src in "abc":
            for dst in "abc":
                if src != dst:
                    await reach(ns["g" + src], GUEST[dst])
        await through_nat(ns)
        await broadcast_once(ns, daemons, "first")
        fdb = await daemons["a"].cmd("query-hub-fdb", hubid=0)
        assert {r["mac"] for r in fdb} >= set(GMAC.values())
        tunnel = await daemons["a"].cmd("query-tunnel-fdb", netdev="vx")
        learned = {r["mac"]: r["remote"] for r in tunnel if not r["static"]}
        assert learned[GMAC["b"]] == UNDER["b"] and learned[GMAC["c"]] == UNDER["c"]

        # kill B: A and C keep talking; B's guest is cut off
        await daemons["b"].kill()
        await reach(ns["ga"], GUEST["c"], timeout=3)
        rc, _ = await run_in(ns["gc"], "ping", "-c", "1", "-W", "0.5", GUEST["b"])
        assert rc != 0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await daemons["b"].start()
        started = loop.time() - t0
        guest_up(ns["gb"], "eth0", "b")  # the tap went away with the process
        took_a = await reach(ns["gb"], GUEST["a"], timeout=5)
        took_c = await reach(ns["gb"], GUEST["c"], timeout=5)
        took_from_c = await reach(ns["gc"], GUEST["b"], timeout=5)
        since_start = loop.time() - t0 - started
        print(
            f"restart: daemon up in {started:.2f}s; GB->GA {took_a:.2f}s, GB->GC {took_c:.2f}s, "
            f"GC->GB {took_from_c:.2f}s; all within {since_start:.2f}s of its start"
        )
        assert since_start < RECOVERY_BOUND + 0.5 * 3, since_start  # three pings' own cost
        assert took_a < RECOVERY_BOUND and took_c < RECOVERY_BOUND
        await broadcast_once(ns, daemons, "after-restart")

        # kill A, which carries the NAT: B and C keep talking; after A's restart the NAT
        # is reachable from the kernel's side again
        await daemons["a"].kill()
        await reach(ns["gb"], GUEST["c"], timeout=3)
        t0 = loop.time()
        await daemons["a"].start()
        started = loop.time() - t0
        guest_up(ns["ga"], "eth0", "a")
        took = await reach(ns["gc"], GUEST["a"], timeout=5)
        took_nat = await reach(ns["gc"], NAT_HOST, timeout=5)
        print(f"restart of A: up in {started:.2f}s; GC->GA {took:.2f}s, GC->NAT {took_nat:.2f}s")
        assert took < RECOVERY_BOUND and took_nat < RECOVERY_BOUND
        await through_nat(ns)
        for h, d in daemons.items():
            c = await d.counters("vx")
            assert c["drop-vni"] == c["drop-flags"] == c["drop-short"] == 0, (h, c)
            assert c["tx-errors"] == 0, (h, c)
    finally:
        for d in daemons.values():
            await d.stop()
