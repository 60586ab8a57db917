"""tap against the Linux kernel: two network namespaces joined through netstack.

Topology (in-process daemon, namespaces made and deleted here)::

    ns A: ta 10.66.0.1 <- tap a -> hub 0 <- tap b -> tb 10.66.0.2 :ns B

Both taps are created straight inside their namespaces with ``x-netns``. Covered: ping
and TCP (16 MiB, SHA-256 checked end to end) for every ``vnet_hdr`` on/off combination; a TSO
super-frame crossing as one frame (driver counters on both sides); the software
segmentation path (offloads forced on towards a tap without headers: the receiving
kernel checks every segment's checksums); a multiqueue tap whose queues all carry
traffic; deleting the netdev removes the interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from drivers import hubport, tap
from drivers.tap.client import TapClient
from netstack.daemon import Netstack
from netstack.qapi import parse_netdev_cli
from tests.kit.netns import ip, link_exists, netns, require_root, run_in

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

ADDR_A, ADDR_B = "10.66.0.1", "10.66.0.2"
TCP_BYTES = 16 << 20


@dataclass
class Pair:
    daemon: Netstack
    ns_a: str
    ns_b: str

    def queues(self, name: str) -> list[TapClient]:
        out = [c for c in self.daemon.clients if c.name == name]
        assert all(isinstance(c, TapClient) for c in out)
        return out  # type: ignore[return-value]

    def tap(self, name: str) -> TapClient:
        return self.queues(name)[0]


async def ping(ns: str, addr: str, count: int = 3) -> None:
    rc, out = await run_in(ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2", addr)
    assert rc == 0, out


SINK = """
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], 5201))
print("ready", flush=True)
conn, _ = srv.accept()
h, n = hashlib.sha256(), 0
while data := conn.recv(1 << 20):
    h.update(data)
    n += len(data)
print(n, h.hexdigest(), flush=True)
"""

SOURCE = """
import hashlib, random, socket, sys
n = int(sys.argv[2])
data = random.Random(7).randbytes(n)
with socket.create_connection((sys.argv[1], 5201), timeout=30) as s:
    s.sendall(data)
print(n, hashlib.sha256(data).hexdigest(), flush=True)
"""


async def tcp_transfer(server_ns: str, client_ns: str, addr: str, nbytes: int = TCP_BYTES) -> int:
    """Send ``nbytes`` over TCP from ``client_ns`` to ``server_ns``; the receiver's byte
    count and SHA-256 must match the sender's. Returns the bytes received."""
    server = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", server_ns, sys.executable, "-c", SINK, addr,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert (await asyncio.wait_for(server.stdout.readline(), 20)).startswith(b"ready")
        rc, sent = await run_in(client_ns, sys.executable, "-c", SOURCE, addr, str(nbytes))
        assert rc == 0, sent
        got = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
        assert got.split() == sent.split(), (got, sent)
        return int(got.split()[0])
    finally:
        if server.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                server.kill()
        await server.wait()


@contextlib.asynccontextmanager
async def pair(vnet_a: str = "on", vnet_b: str = "on", extra_a: str = "") -> AsyncIterator[Pair]:
    require_root()
    with netns("nsa") as ns_a, netns("nsb") as ns_b:
        daemon = Netstack({"tap": tap.SPEC, "hubport": hubport.SPEC})
        try:
            for name, ns, vnet, extra in (("a", ns_a, vnet_a, extra_a), ("b", ns_b, vnet_b, "")):
                await daemon.netdev_add(
                    parse_netdev_cli(
                        f"tap,id={name},ifname=t{name},script=no,downscript=no,"
                        f"vnet_hdr={vnet},x-netns={ns}{extra}"
                    )
                )
                await daemon.netdev_add(
                    parse_netdev_cli(f"hubport,id=p{name},hubid=0,netdev={name}")
                )
            for ns, ifname, addr in ((ns_a, "ta", ADDR_A), (ns_b, "tb", ADDR_B)):
                ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
                ip("-n", ns, "link", "set", ifname, "up")
            yield Pair(daemon, ns_a, ns_b)
        finally:
            await daemon.close()


@pytest.mark.parametrize(
    ("vnet_a", "vnet_b"), [("on", "on"), ("on", "off"), ("off", "on"), ("off", "off")]
)
async def test_ping_and_tcp_between_namespaces(vnet_a: str, vnet_b: str) -> None:
    async with pair(vnet_a, vnet_b) as p:
        a, b = p.tap("a"), p.tap("b")
        assert a.vnet_hdr_len == (12 if vnet_a == "on" else 0)
        assert b.vnet_hdr_len == (12 if vnet_b == "on" else 0)
        await ping(p.ns_a, ADDR_B)
        assert await tcp_transfer(p.ns_b, p.ns_a, ADDR_B) == TCP_BYTES
        # offloads are on exactly when the far side takes headers (policy "auto")
        both = vnet_a == vnet_b == "on"
        assert (a.offloads != 0) == both and (b.offloads != 0) == both
        assert a.write_errors == b.write_errors == 0
        assert "ifname=ta,script=no,downscript=no,x-netns=" in p.daemon.info_network()


async def test_tso_superframes_cross_as_one_frame() -> None:
    async with pair("on", "on") as p:
        a, b = p.tap("a"), p.tap("b")
        await ping(p.ns_a, ADDR_B, count=1)
        assert await tcp_transfer(p.ns_b, p.ns_a, ADDR_B) == TCP_BYTES
        # every frame A's kernel handed over was written to B as it was: no segmentation
        assert a.frames_read == b.frames_written
        assert b.frames_read == a.frames_written
        assert a.gso_read > 0
        assert a.stats.tx_bytes / a.stats.tx_frames > 10_000  # 16 MiB in 64 KiB-ish frames
        assert a.stats.tx_frames < TCP_BYTES // 1448 // 4


async def test_software_segmentation_towards_a_tap_without_headers() -> None:
    async with pair("on", "off") as p:
        a, b = p.tap("a"), p.tap("b")
        a.offload_policy = "on"  # make the kernel hand over super-frames anyway
        await ping(p.ns_a, ADDR_B, count=1)
        assert await tcp_transfer(p.ns_b, p.ns_a, ADDR_B) == TCP_BYTES
        assert a.offloads & 0x02  # TSO4
        assert a.gso_read > 0
        # cut in Python: B's kernel got many more (wire-sized) frames than A read
        assert b.frames_written > a.frames_read + a.gso_read
        assert b.write_errors == 0


async def test_multiqueue_queues_all_carry_traffic() -> None:
    async with pair("on", "on", extra_a=",queues=4") as p:
        queues = p.queues("a")
        assert [q.queue_index for q in queues] == [0, 1, 2, 3]
        assert {q.ifname for q in queues} == {"ta"}
        info = p.daemon.info_network()
        # queue 0 hangs off the hub port; the others have no peer of their own (QEMU's
        # listing), and their frames go out through queue 0's peer
        assert " \\ pa: a: index=0,type=tap,ifname=ta,script=no,downscript=no" in info
        assert "\na: index=3,type=tap,ifname=ta,script=no,downscript=no" in info
        assert "multi_queue" in ip("-n", p.ns_a, "-d", "link", "show", "ta")
        await ping(p.ns_a, ADDR_B, count=1)
        # 200 UDP flows (one source port each) are spread over the queues by flow hash
        sender = (
            "import socket\n"
            "for i in range(200):\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"    s.sendto(b'x' * 100, ('{ADDR_B}', 9))\n"
            "    s.close()\n"
        )
        before = p.tap("b").frames_written
        rc, out = await run_in(p.ns_a, "python3", "-c", sender)
        assert rc == 0, out
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while p.tap("b").frames_written - before < 200 and loop.time() < end:
            await asyncio.sleep(0.05)
        assert p.tap("b").frames_written - before >= 200
        busy = [q.queue_index for q in queues if q.frames_read > 0]
        assert len(busy) >= 2, [q.counters() for q in queues]
        assert await tcp_transfer(p.ns_b, p.ns_a, ADDR_B, 4 << 20) == 4 << 20


async def test_deleting_the_netdev_removes_the_tap() -> None:
    async with pair() as p:
        assert link_exists(p.ns_a, "ta")
        p.daemon.netdev_del("a")
        loop = asyncio.get_running_loop()
        end = loop.time() + 3
        while link_exists(p.ns_a, "ta") and loop.time() < end:
            await asyncio.sleep(0.05)
        assert not link_exists(p.ns_a, "ta")
        assert p.daemon.find_netdev("a") is None
        assert link_exists(p.ns_b, "tb")


async def test_mixed_hub_super_frames_to_one_peer_segments_to_the_other() -> None:
    """A third tap without headers joins the hub: A keeps its offloads, B still gets each
    super-frame as one frame, and only C's copies are cut in software."""
    async with pair("on", "on") as p:
        with netns("nsc") as ns_c:
            await p.daemon.netdev_add(
                parse_netdev_cli(
                    f"tap,id=c,ifname=tc,script=no,downscript=no,vnet_hdr=off,x-netns={ns_c}"
                )
            )
            await p.daemon.netdev_add(parse_netdev_cli("hubport,id=pc,hubid=0,netdev=c"))
            ip("-n", ns_c, "link", "set", "tc", "up", "promisc", "on")
            a, b, c = p.tap("a"), p.tap("b"), p.tap("c")
            await ping(p.ns_a, ADDR_B, count=1)
            assert await tcp_transfer(p.ns_b, p.ns_a, ADDR_B) == TCP_BYTES
            assert a.offloads & 0x02 and a.gso_read > 0
            # one frame each, untouched (C's kernel may say something on its own too)
            assert b.frames_written == a.frames_read + c.frames_read
            assert c.frames_written > a.frames_read + a.gso_read  # cut for C only
            assert c.write_errors == 0
            p.daemon.netdev_del("c")
