"""Metrics, faithful captures and the Wireshark extcap plugin on real offloaded traffic.

Topology (in-process daemon, as in ``test_user_tap_netns``)::

    ns: ut0 (iperf3 client, busybox udhcpc)
        <- tap t0 (vnet_hdr=on|off, in ns) -> hub 0 <- user nat0 -> host 127.0.0.1 iperf3 -s

With ``vnet_hdr=on`` the namespace's kernel sends TSO super-frames with partial checksums
into t0, and nat0 sends its own super-frames (NEEDS_CSUM) towards the hub; with
``vnet_hdr=off`` the hub cuts nat0's super-frames for the tap, but nat0's filters still see
them whole. Checked against real programs:

* filter-dumps of nat0 and t0 read back by ``tshark`` with IP/TCP/UDP checksum validation
  on: not one bad checksum, super-frames present (offloads were exercised) and, with
  ``segment=on``, no frame longer than the MTU;
* the metrics endpoint scraped with ``curl`` while iperf3 runs, parsed by
  ``prometheus_client.parser``: byte counters grow between scrapes, the NAT's TCP flows
  show, the DHCP lease ``udhcpc`` took is counted, hub queues are exported;
* ``netstack-capture --segment`` live: TCP frames no longer than the MTU, checksums good;
* the extcap plugin installed with ``netstack-extcap --install`` into a directory that a
  private mount namespace puts at Wireshark's extcap path (tshark ignores
  ``WIRESHARK_EXTCAP_DIR`` when run as root): ``tshark -D`` lists every netdev and hub,
  ``tshark -i netstack:nat0 -f tcp -c N`` captures live, and the capture has no bad
  checksum either.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import drivers
from netstack.daemon import Netstack
from netstack.qapi import parse_netdev_cli, parse_object_cli
from netstack.qmp.server import monitor_add
from netstack.service.metrics_http import Endpoint, MetricsServer
from tests.interop.test_user_tap_netns import (
    GATEWAY,
    GUEST_ADDR,
    IFNAME,
    free_port,
    iperf3,
    iperf3_server,
)
from tests.kit.netns import ip, netns, require_root, run_in

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("tshark") is None, reason="no tshark"),
]

#: Ethernet header + a 1500-byte IP packet: the largest frame on the tap's wire.
WIRE_MAX = 1514
CHECKS = ("-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
          "-o", "udp.check_checksum:TRUE")  # fmt: skip


@dataclass
class Rig:
    daemon: Netstack
    ns: str
    tmp: Path
    qmp: Path


@contextlib.asynccontextmanager
async def rig(tmp: Path, vnet_hdr: str) -> AsyncIterator[Rig]:
    require_root()
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 not installed (tools/setup-deps.sh)")
    with netns("nss", ipv6=False) as ns:
        daemon = Netstack(drivers.registry(), runtime_dir=tmp)
        try:
            for spec in (
                "user,id=nat0",
                f"tap,id=t0,ifname={IFNAME},script=no,downscript=no,vnet_hdr={vnet_hdr},"
                f"x-netns={ns}",
                "hubport,id=h0,hubid=0,netdev=nat0",
                "hubport,id=h1,hubid=0,netdev=t0",
            ):
                await daemon.netdev_add(parse_netdev_cli(spec))
            qmp = tmp / "qmp.sock"
            await monitor_add(daemon, "qmp", f"unix:{qmp},server=on,wait=off", False, 0)
            ip("-n", ns, "link", "set", IFNAME, "up")
            yield Rig(daemon, ns, tmp, qmp)
        finally:
            await daemon.close()


def address(r: Rig) -> None:
    ip("-n", r.ns, "addr", "add", f"{GUEST_ADDR}/24", "dev", IFNAME)
    ip("-n", r.ns, "route", "add", "default", "via", GATEWAY)


async def dump(r: Rig, obj_id: str, netdev: str, extra: str = "") -> Path:
    path = r.tmp / f"{obj_id}.pcapng"
    spec = f"filter-dump,id={obj_id},netdev={netdev},file={path},format=pcapng{extra}"
    await r.daemon.object_add(parse_object_cli(spec))
    return path


def checksum_report(path: Path | str) -> tuple[Counter[str], int, int]:
    """(checksum statuses seen: 'bad'/'good' per protocol, TCP frames, longest frame).

    A TCP checksum of 0xFFFF where 0x0000 is due counts as good: the two are the same
    number in ones' complement and every receiver accepts either, but Wireshark flags
    0xFFFF (RFC 1624). The guest's Linux writes it when it completes a checksum in
    software (``skb_checksum_help`` stores ``CSUM_MANGLED_0`` for a zero result), about
    once in 65,536 frames, so a tap capture of a few thousand guest frames meets one
    now and then; netstackd itself never remaps a TCP checksum
    (``netstack/proto/checksum.py``)."""
    argv = ["tshark", "-r", str(path), *CHECKS, "-T", "fields", "-E", "occurrence=a",
            "-e", "frame.len", "-e", "ip.checksum.status", "-e", "tcp.checksum.status",
            "-e", "udp.checksum.status", "-e", "tcp.srcport", "-e", "tcp.checksum",
            "-e", "tcp.checksum_calculated"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    seen: Counter[str] = Counter()
    tcp = longest = 0
    for line in out.splitlines():
        length, *statuses, sport, tcp_sum, tcp_calc = line.split("\t")
        longest = max(longest, int(length))
        tcp += bool(sport)
        mangled_zero = tcp_sum.split(",")[:1] == ["0xffff"] and tcp_calc.startswith("0x0000")
        for proto, status in zip(("ip", "tcp", "udp"), statuses, strict=True):
            for one in filter(None, status.split(",")):
                # Wireshark's proto_checksum_vals: 0 Bad, 1 Good, 2 Unverified, ...
                if proto == "tcp" and one == "0" and mangled_zero:
                    one = "1"
                seen[f"{proto}-{ {'0': 'bad', '1': 'good'}.get(one, 'other') }"] += 1
    return seen, tcp, longest


@pytest.mark.parametrize("vnet_hdr", ["on", "off"])
async def test_captures_of_offloaded_traffic_have_good_checksums(
    tmp_path: Path, vnet_hdr: str
) -> None:
    async with rig(tmp_path, vnet_hdr) as r, iperf3_server() as port:
        address(r)
        whole = await dump(r, "d-nat", "nat0")
        segmented = await dump(r, "d-seg", "nat0", ",segment=on")
        tap = await dump(r, "d-tap", "t0")
        # ~6 MB each way: enough for super-frames, small enough for tshark to read back
        # three captures in time on a loaded machine in the pure-Python pass.
        await iperf3(r.ns, port, "-b", "50M", seconds=1)
        await iperf3(r.ns, port, "-R", "-b", "50M", seconds=1)
        for obj in ("d-nat", "d-seg", "d-tap"):
            r.daemon.object_del(obj)
    for path in (whole, segmented, tap):
        seen, tcp, longest = checksum_report(path)
        assert tcp > 100, (path.name, seen)
        assert not any(k.endswith("-bad") for k in seen), (path.name, seen)
        assert seen["tcp-good"] > 100 and seen["ip-good"] > 100, (path.name, seen)
        if path is whole:
            assert longest > WIRE_MAX, "no super-frame: offloads were not exercised"
        if path is segmented:
            assert longest <= WIRE_MAX, longest


async def scrape(port: int) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "20", f"http://127.0.0.1:{port}/metrics",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(out.decode()):
        for s in family.samples:
            values[s.name + "".join(f",{k}={v}" for k, v in sorted(s.labels.items()))] = s.value
    return values


async def test_metrics_while_traffic_flows(tmp_path: Path) -> None:
    if shutil.which("curl") is None or shutil.which("busybox") is None:
        pytest.skip("needs curl and busybox")
    async with rig(tmp_path, "on") as r, iperf3_server() as iport:
        rc, out = await run_in(
            r.ns, "busybox", "udhcpc", "-i", IFNAME, "-n", "-q", "-f", "-t", "5", "-T", "2",
            "-s", "/bin/true",
        )  # fmt: skip
        assert rc == 0, out
        address(r)
        server = MetricsServer(r.daemon, Endpoint("tcp", host="127.0.0.1", port=free_port()))
        await server.start()
        try:
            before = await scrape(server.endpoint.port)
            client = asyncio.create_task(iperf3(r.ns, iport, "-P", "4", seconds=3))
            during: list[dict[str, float]] = []
            for _ in range(40):
                await asyncio.sleep(0.25)
                during.append(await scrape(server.endpoint.port))
                if client.done():
                    break
            await client
            after = await scrape(server.endpoint.port)
        finally:
            await server.close()
    tx = "netstack_netdev_tx_bytes_total,netdev=nat0,queue=0,type=user"
    rx = "netstack_netdev_rx_frames_total,netdev=nat0,queue=0,type=user"
    assert before[tx] < during[-1][tx] <= after[tx]
    assert before[rx] < after[rx]
    tcp_flows = "netstack_nat_flows,family=ipv4,netdev=nat0,protocol=tcp"
    assert max(d[tcp_flows] for d in during) >= 5  # iperf3's control + 4 data connections
    assert after["netstack_dhcp_leases,netdev=nat0"] == 1
    assert after["netstack_user_tcp_connects_total,netdev=nat0,queue=0"] >= 5
    assert "netstack_hub_queue_frames,hub=0,port=h0" in after
    assert after["netstack_hub_ports,hub=0"] == 2
    assert after["netstack_metrics_requests_total,code=200"] >= 3
    assert after["netstack_metrics_collect_errors_total"] == 0
    assert not any(k.startswith("netstack_errors_total") and v for k, v in after.items() if
                   "internal" in k), after  # fmt: skip


def extcap_dir() -> str:
    out = subprocess.run(["tshark", "-G", "folders"], capture_output=True, text=True, timeout=60)
    for line in out.stdout.splitlines():
        if line.startswith("Extcap path:"):
            return line.split("\t")[-1].strip()
    pytest.skip("tshark names no extcap path")


async def tshark_with_plugin(r: Rig, plugin: Path, *args: str, timeout: float = 90) -> str:
    """tshark run where the plugin directory is Wireshark's extcap path (private mount
    namespace: nothing outside this process tree sees it)."""
    script = 'mount --bind "$1" "$2" && shift 2 && exec tshark "$@"'
    proc = await asyncio.create_subprocess_exec(
        "unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
        str(plugin), extcap_dir(), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=dict(os.environ, NETSTACK_QMP=str(r.qmp)),
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


async def capture_tool(r: Rig, *args: str) -> str:
    """``netstack-capture ARGS`` against the rig's daemon."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.capture", "-q", "-s", str(r.qmp), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


async def attached(r: Rig, capture: asyncio.Task[str]) -> None:
    """Wait until the plugin's filter-dumps exist (tshark and the plugin are started)."""
    for _ in range(600):
        if any(o.startswith("netstack-capture-") for o in r.daemon.objects):
            return
        assert not capture.done(), capture.result()
        await asyncio.sleep(0.1)
    raise AssertionError("the extcap plugin never attached")


async def test_extcap_lists_and_captures_live(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    plugin = tmp_path / "extcap"
    subprocess.run(
        [sys.executable, "-m", "tools.extcap", "--install", str(plugin)], check=True, timeout=60
    )
    async with rig(tmp_path, "on") as r, iperf3_server() as port:
        address(r)
        listing = await tshark_with_plugin(r, plugin, "-D")
        for name in ("netstack:nat0", "netstack:t0", "netstack:h0", "netstack:h1",
                     "netstack:hub:0"):  # fmt: skip
            assert f". {name} (" in listing, listing
        out = tmp_path / "live.pcapng"
        capture = asyncio.create_task(
            tshark_with_plugin(
                r, plugin, "-i", "netstack:nat0", "-f", "tcp", "-c", "300", "-w", str(out)
            )
        )
        await attached(r, capture)
        for _ in range(5):  # traffic until the capture has its packets
            await iperf3(r.ns, port, seconds=1)
            if capture.done():
                break
        await asyncio.wait_for(capture, 60)
        hub = tmp_path / "hub.pcapng"
        hub_capture = asyncio.create_task(
            tshark_with_plugin(r, plugin, "-i", "netstack:hub:0", "-c", "20", "-w", str(hub))
        )
        await attached(r, hub_capture)
        for _ in range(5):
            await iperf3(r.ns, port, "-R", seconds=1)
            if hub_capture.done():
                break
        await asyncio.wait_for(hub_capture, 60)
        segmented = tmp_path / "segmented.pcapng"
        tool = asyncio.create_task(capture_tool(r, "--segment", "-f", "tcp", "-c", "200",
                                                "-w", str(segmented), "nat0"))  # fmt: skip
        await attached(r, tool)
        for _ in range(5):
            await iperf3(r.ns, port, "-R", seconds=1)
            if tool.done():
                break
        await asyncio.wait_for(tool, 60)
        await asyncio.sleep(0.5)
        left = [o for o in r.daemon.objects if o.startswith("netstack-capture-")]
        assert not left, left  # the plugin removed its filters when tshark stopped it
    seen, tcp, _longest = checksum_report(out)
    assert tcp == 300, seen
    assert not any(k.endswith("-bad") for k in seen) and seen["tcp-good"] > 0, seen
    _seen, hub_tcp, _ = checksum_report(hub)
    assert hub_tcp > 0
    seen, tcp, longest = checksum_report(segmented)
    assert tcp == 200 and longest <= WIRE_MAX, (seen, longest)
    assert not any(k.endswith("-bad") for k in seen), seen
