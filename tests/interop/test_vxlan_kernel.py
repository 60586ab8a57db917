"""vxlan against the Linux kernel's vxlan device, over an IPv4 and an IPv6 underlay.

Topology (in-process daemon; namespaces made and deleted here)::

    ns K: vx0 (kernel vxlan, vni 42) 10.42.0.1 -- eth0 U1 ==veth== eth0 U2 :ns N
    ns N: the daemon's vxlan netdev ``vx`` (sockets opened in N with x-netns)
    daemon: hub 0 (learning) = {vx, t}; tap t = ns G: vxg 10.42.0.2

Covered: ping both ways and SHA-256-checked TCP transfers both ways plus iperf3 across
(with UDP GSO sends, UDP GRO reads - GRO on the underlay veth - and received segments
merged into TSO super-frames for the tap); each side
learned the other's MAC behind the other's underlay address (the kernel's ``bridge fdb``
and our ``query-tunnel-fdb``); the learning hub knows both MACs; frames of the full MTU
1500 cross although outer packets exceed the 1500-byte underlay (fragmented underneath,
nothing dropped); with ``mtu=1400`` a DF ping of 1450 bytes gets ICMP "fragmentation
needed" (mtu 1400) back and is counted; deleting the netdev flushes the hub's entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from drivers import hubport, tap, vxlan
from drivers.vxlan import VxlanClient
from drivers.vxlan import control as vxlan_control
from netstack.daemon import Netstack
from netstack.qapi import parse_netdev_cli
from tests.interop.test_tap_netns import ping, tcp_transfer
from tests.kit.netns import ip, netns, require_root, run_in

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

INNER_K, INNER_G = "10.42.0.1", "10.42.0.2"
UNDERLAY = {4: ("192.0.2.1", "192.0.2.2", 24), 6: ("fd00:42::1", "fd00:42::2", 64)}


@dataclass
class Rig:
    daemon: Netstack
    ns_k: str
    ns_n: str
    ns_g: str
    under_k: str
    under_n: str

    @property
    def vx(self) -> VxlanClient:
        nc = self.daemon.find_netdev("vx")
        assert isinstance(nc, VxlanClient)
        return nc


def mac_of(ns: str, ifname: str) -> str:
    out = json.loads(ip("-n", ns, "-j", "link", "show", ifname))
    return str(out[0]["address"])


def bridge_fdb(ns: str, dev: str) -> str:
    done = subprocess.run(
        ["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    return done.stdout


def csum_off(ns: str, dev: str) -> None:
    """Checksum offload off on a veth: a veth hands the encapsulated frame on with its
    inner TCP/UDP checksum still to be filled in ("the NIC will do it"), which no NIC
    does when the receiver is a UDP socket, so a userspace VTEP would read frames with
    unfinished checksums. A physical underlay NIC computes them; here the kernel must."""
    subprocess.run(
        ["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"],
        capture_output=True, timeout=20, check=True,
    )  # fmt: skip


def underlay(ns_k: str, ns_n: str, family: int, mtu: int = 1500) -> tuple[str, str]:
    a, b, plen = UNDERLAY[family]
    ip("-n", ns_k, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", ns_n)
    for ns, addr in ((ns_k, a), (ns_n, b)):
        csum_off(ns, "eth0")
        ip("-n", ns, "link", "set", "eth0", "mtu", str(mtu), "up")
        extra = ["nodad"] if family == 6 else []
        ip("-n", ns, "addr", "add", f"{addr}/{plen}", "dev", "eth0", *extra)
    return a, b


@contextlib.asynccontextmanager
async def rig(
    family: int = 4, extra: str = "", vx_mtu: int = 1450, group: str | None = None
) -> AsyncIterator[Rig]:
    """``group``: both VTEPs flood to that multicast group instead of naming each other."""
    require_root()
    with netns("vxk") as ns_k, netns("vxn") as ns_n, netns("vxg") as ns_g:
        a, b = underlay(ns_k, ns_n, family)
        far = ["group", group, "dev", "eth0"] if group else ["remote", b]
        ip("-n", ns_k, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", a,
           *far, "dstport", "4789")  # fmt: skip
        ip("-n", ns_k, "link", "set", "vx0", "mtu", str(vx_mtu), "up")
        ip("-n", ns_k, "addr", "add", f"{INNER_K}/24", "dev", "vx0")
        daemon = Netstack({"tap": tap.SPEC, "hubport": hubport.SPEC, "vxlan": vxlan.SPEC})
        try:
            for spec in (
                f"vxlan,id=vx,vni=42,local={b},{f'group={group}' if group else f'remote={a}'},"
                f"x-netns={ns_n}{extra}",
                "hubport,id=hvx,hubid=0,netdev=vx,x-learning=on",
                f"tap,id=t,ifname=vxg,script=no,downscript=no,vnet_hdr=on,x-netns={ns_g}",
                "hubport,id=ht,hubid=0,netdev=t",
            ):
                await daemon.netdev_add(parse_netdev_cli(spec))
            ip("-n", ns_g, "addr", "add", f"{INNER_G}/24", "dev", "vxg")
            ip("-n", ns_g, "link", "set", "vxg", "mtu", str(vx_mtu), "up")
            yield Rig(daemon, ns_k, ns_n, ns_g, a, b)
        finally:
            await daemon.close()


async def iperf3(server_ns: str, client_ns: str, addr: str, seconds: int = 2) -> float:
    """An iperf3 TCP run; returns the receiver's bits per second."""
    server = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", server_ns, "iperf3", "-s", "-B", addr, "-p", "5211",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):  # until the server listens
            _rc, listening = await run_in(server_ns, "ss", "-ltnH")
            if f"{addr}:5211" in listening or f"[{addr}]:5211" in listening:
                break
            await asyncio.sleep(0.05)
        outs = []
        for _ in range(3):
            rc, out = await run_in(
                client_ns, "iperf3", "-c", addr, "-p", "5211", "-t", str(seconds), "-J",
                timeout=seconds + 30,
            )  # fmt: skip
            if rc == 0:
                result = json.loads(out)
                return float(result["end"]["sum_received"]["bits_per_second"])
            outs.append(out[-300:])
            await asyncio.sleep(0.3)
        raise AssertionError(f"iperf3 failed: {outs}")
    finally:
        if server.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                server.kill()
        await server.wait()


@pytest.mark.parametrize("family", [4, 6])
async def test_ping_tcp_iperf3_and_learning_with_the_kernel(family: int) -> None:
    async with rig(family, extra=",coalesce=on") as r:
        await ping(r.ns_g, INNER_K)
        await ping(r.ns_k, INNER_G)
        # GRO on netstackd's underlay device, as a NIC driver has it: UDP GRO coalesces
        subprocess.run(
            ["ip", "netns", "exec", r.ns_n, "ethtool", "-K", "eth0", "gro", "on"],
            capture_output=True, timeout=20, check=True,
        )  # fmt: skip
        assert await tcp_transfer(r.ns_k, r.ns_g, INNER_K, 4 << 20) == 4 << 20
        assert await tcp_transfer(r.ns_g, r.ns_k, INNER_G, 4 << 20) == 4 << 20
        bps = await iperf3(r.ns_g, r.ns_k, INNER_G)
        assert bps > 10e6
        # a TCP flow's datagrams left in UDP GSO sends, came in as coalesced reads, and
        # reached the tap (which takes offloads) merged into TSO super-frames
        c = r.vx.counters()
        assert c["gso-sends"] > 0 and c["gro-reads"] > 0 and c["coalesced"] > 0, c
        # the kernel learned the guest's MAC behind our underlay address, and we its
        mac_g, mac_k = mac_of(r.ns_g, "vxg"), mac_of(r.ns_k, "vx0")
        fdb = bridge_fdb(r.ns_k, "vx0")
        kernel = {(e["mac"], e.get("dst")) for e in json.loads(fdb)}
        assert (mac_g, r.under_n) in kernel, fdb
        ours = {
            (row["mac"], row["remote"], row["static"]) for row in vxlan_control.tunnel_fdb(r.daemon)
        }
        assert (mac_k, r.under_k, False) in ours
        assert ("00:00:00:00:00:00", r.under_k, True) in ours
        hub = {row["mac"]: row for row in r.daemon.query_hub_fdb(0)}
        assert hub[mac_k]["port"] == "hvx" and hub[mac_k]["isolated"]
        assert hub[mac_g]["port"] == "ht" and not hub[mac_g]["isolated"]
        info = r.daemon.info_fdb()
        assert f" {mac_k} dst {r.under_k} port 4789 vni 42 age " in info
        assert "hub 0: learning switch" in info
        c = r.vx.counters()
        assert c["drop-vni"] == c["drop-flags"] == c["drop-short"] == 0
        assert c["tx-errors"] == c["tx-too-big"] == 0
        # netdev_del flushes what the hub learned behind the tunnel
        r.daemon.netdev_del("vx")
        assert mac_k not in {row["mac"] for row in r.daemon.query_hub_fdb(0)}


@pytest.mark.parametrize(("family", "group"), [(4, "239.1.1.42"), (6, "ff05::42")])
async def test_multicast_group_with_the_kernel(family: int, group: str) -> None:
    """Flooding through a multicast group (the kernel's ``group G dev eth0``): ARP finds
    its way both ways, then unicast goes to the learned VTEP."""
    async with rig(family, group=group, vx_mtu=1450 if family == 4 else 1430) as r:
        await ping(r.ns_g, INNER_K)
        await ping(r.ns_k, INNER_G)
        assert await tcp_transfer(r.ns_k, r.ns_g, INNER_K, 1 << 20) == 1 << 20
        rows = vxlan_control.tunnel_fdb(r.daemon, "vx")
        assert ("00:00:00:00:00:00", group, True) in {
            (x["mac"], x["remote"], x["static"]) for x in rows
        }
        assert (mac_of(r.ns_k, "vx0"), r.under_k) in {
            (x["mac"], x["remote"]) for x in rows if not x["static"]
        }
        c = r.vx.counters()
        assert c["own-looped"] == 0 and c["tx-errors"] == 0


async def test_full_size_frames_cross_a_1500_underlay() -> None:
    """Inner MTU 1500 over a 1500 underlay: our outer packets of 1550 bytes are fragmented
    by the host kernel, not dropped, so DF pings of the full size reach the kernel's vxlan.
    (The kernel's own vxlan refuses to send them: it reports a path MTU of 1450 to its
    local stack, so the reverse direction is checked at that size.)"""
    async with rig(4, vx_mtu=1500) as r:
        await ping(r.ns_g, INNER_K, count=1)
        rc, out = await run_in(
            r.ns_g, "ping", "-c", "2", "-M", "do", "-s", "1472", "-W", "2", INNER_K
        )
        assert rc == 0, out
        rc, out = await run_in(
            r.ns_k, "ping", "-c", "2", "-M", "do", "-s", "1422", "-W", "2", INNER_G
        )
        assert rc == 0, out
        assert r.vx.counters()["tx-too-big"] == 0


async def test_mtu_option_answers_fragmentation_needed() -> None:
    async with rig(4, extra=",mtu=1400") as r:
        await ping(r.ns_g, INNER_K, count=1)
        rc, out = await run_in(
            r.ns_g, "ping", "-c", "1", "-M", "do", "-s", "1422", "-W", "2", INNER_K
        )
        assert rc != 0
        assert "mtu = 1400" in out, out
        assert r.vx.counters()["frag-needed"] >= 1
        # the guest's kernel cached the path MTU: the next pings fit
        route = ip("-n", r.ns_g, "route", "get", INNER_K)
        assert "mtu 1400" in route, route
        rc, out = await run_in(
            r.ns_g, "ping", "-c", "1", "-s", "1372", "-M", "do", "-W", "2", INNER_K
        )
        assert rc == 0, out
