"""Real QEMU 7.2 guests attach to netstack's vhost-user back end.

The daemon runs in-process on the test's loop. Guests are the tiny test guest
(:mod:`tools.guest`) with shared memfd RAM and ``-netdev vhost-user`` (``vectors=0``: QEMU
7.2 under TCG crashes with vhost-user and MSI-X). Covered:

* two guests on one hub ping each other; guest A is a QEMU *client* of a daemon server
  socket with two queue pairs (``queues=2``, ``mq=on``: QEMU 7.2 then sends the memory
  table once per pair), guest B a QEMU *server* the daemon connects to (``reconnect-ms``);
  a Python peer
  on a ``stream`` port of the same hub sends a crafted ARP request to A and checks the
  reply; A then pushes 256 KiB of TCP to B: with offloads negotiated on both sides, TSO
  super-frames cross the hub as single frames with their virtio-net header (seen by a
  recorder that accepts offloads) while a plain recorder gets wire-sized segments; B
  counts every byte; A's MAC is learned (``query-rx-filter``); B's NIC has ``host_mtu=``,
  which reaches the back end as ``NET_SET_MTU``;
* VM restarts: A is killed and a new A attaches to the same socket; then B (QEMU server)
  is killed and restarted and the daemon reconnects; each time pings work again, the link
  is down while nothing is attached, and the NETDEV_VHOST_USER_* events tell the story.

Every QEMU is stopped by PID (``tools.guest``); only loopback and temporary paths are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dpkt
import pytest

import drivers.vhost_user as vu
from drivers import hubport, stream
from netstack.daemon import Netstack
from netstack.proto.vnet import HDR_LEN
from netstack.qapi import parse_chardev_cli, parse_netdev_cli
from tests.kit.guests import ping_until, stream_arp
from tests.kit.polling import until
from tests.support import Recorder
from tools.guest import (
    Guest,
    GuestImage,
    shared_memory_args,
    virtio_nic_args,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(300)]

REGISTRY = {s.type: s for s in (hubport.SPEC, stream.SPEC, vu.SPEC)}
MAC_A, MAC_B = "52:54:00:0b:00:01", "52:54:00:0b:00:02"
IP_A, IP_B = "10.9.1.1", "10.9.1.2"
GUEST_TIMEOUT = 150.0
MTU_B = 1500
MEMORY_MB = 256


class Rig:
    def __init__(self, ns: Netstack, tmp: Path, image: GuestImage) -> None:
        self.ns = ns
        self.image = image
        self.tmp = tmp
        self.events: list[tuple[str, Any]] = []
        ns.add_listener(lambda name, data: self.events.append((name, data)))
        self.sock_a = tmp / "a.sock"  # daemon listens, QEMU connects
        self.sock_b = tmp / "b.sock"  # QEMU listens, the daemon connects

    async def setup(self) -> None:
        add_chardev = self.ns.chardev_add
        await add_chardev(
            parse_chardev_cli(f"socket,id=ca,path={self.sock_a},server=on,wait=off"),
            from_cli=True,
        )
        await add_chardev(
            parse_chardev_cli(f"socket,id=cb,path={self.sock_b},reconnect-ms=100"), from_cli=True
        )
        for spec in (
            "vhost-user,id=a,chardev=ca,queues=2",
            "vhost-user,id=b,chardev=cb",
            "hubport,id=ha,hubid=0,netdev=a",
            "hubport,id=hb,hubid=0,netdev=b",
        ):
            await self.ns.netdev_add(parse_netdev_cli(spec))

    def guest(self, name: str, script: str, *, server: bool, mac: str) -> Guest:
        path = self.sock_b if server else self.sock_a
        chardev = f"socket,id=c0,path={path}" + (",server=on,wait=off" if server else "")
        # A (QEMU client) is multiqueue: two queue pairs, the guest driver uses one.
        # B (QEMU server) has host_mtu=: QEMU sends NET_SET_MTU with it.
        queues, nic_extra = ("", f"host_mtu={MTU_B}") if server else (",queues=2", "mq=on")
        return Guest(
            self.image,
            script,
            [
                *shared_memory_args(MEMORY_MB),
                "-chardev",
                chardev,
                "-netdev",
                f"vhost-user,id=n0,chardev=c0{queues}",
                *virtio_nic_args("n0", mac, msix=False, extra=nic_extra),
            ],
            name=name,
            memory_mb=MEMORY_MB,
            timeout=GUEST_TIMEOUT,
            log_path=self.tmp / f"console-{name}.log",
        )

    def names(self, event: str) -> list[str]:
        return [d["netdev-id"] for e, d in self.events if e == event]


@pytest.fixture
async def rig(image: GuestImage, tmp_path: Path) -> AsyncIterator[Rig]:
    ns = Netstack(REGISTRY, runtime_dir=tmp_path)
    r = Rig(ns, tmp_path, image)
    try:
        await r.setup()
        yield r
    finally:
        await ns.close()


def setup_ip(me: str) -> str:
    return f"ip link set eth0 up\nip addr add {me}/24 dev eth0\n"


async def test_two_guests_ping_and_tcp_with_offloads(rig: Rig) -> None:
    peer_path = rig.tmp / "peer.sock"
    await rig.ns.netdev_add(
        parse_netdev_cli(f"stream,id=sp,server=on,addr.type=unix,addr.path={peer_path}")
    )
    await rig.ns.netdev_add(parse_netdev_cli("hubport,id=hsp,hubid=0,netdev=sp"))
    plain = Recorder("plain")
    offl = Recorder("offl", accepts_vnet=True)
    rig.ns.hub(0).add_port("hplain").connect(plain)
    rig.ns.hub(0).add_port("hoffl").connect(offl)
    script_a = (
        setup_ip(IP_A)
        + ping_until(IP_B)
        + f"""
sleep 2
dd if=/dev/zero bs=1024 count=256 2>/dev/null | nc -w 10 {IP_B} 5001 && echo SENT-OK
sleep 8
"""
    )
    script_b = (
        setup_ip(IP_B)
        + "(sleep 100 | nc -l -p 5001 | wc -c > /tmp/count) &\n"
        + ping_until(IP_A)
        + """
i=0
while [ ! -s /tmp/count ] || [ "$(cat /tmp/count)" -lt 262144 ]; do
    i=$((i + 1)); [ $i -ge 60 ] && break; sleep 1
done
echo "RECEIVED $(cat /tmp/count)"
"""
    )
    a = rig.guest("a", script_a, server=False, mac=MAC_A)
    b = rig.guest("b", script_b, server=True, mac=MAC_B)
    async with a, b:
        await a.wait_for("PING-OK", timeout=GUEST_TIMEOUT)
        b_nc = rig.ns.find_netdev("b")
        assert isinstance(b_nc, vu.VhostUserClient) and b_nc.netdev.device.mtu == MTU_B
        reply = await stream_arp(peer_path, IP_A)
        ra, rb = await asyncio.gather(a.wait(), b.wait())
    for result in (ra, rb):
        result.check()
        assert "PING-OK" in result.output, result.output
    assert "SENT-OK" in ra.output, ra.output
    assert "RECEIVED 262144" in rb.output, rb.output
    # the crafted ARP request got A's reply, byte-exact fields
    eth = dpkt.ethernet.Ethernet(reply)
    assert eth.src == bytes.fromhex(MAC_A.replace(":", "")) and eth.data.op == dpkt.arp.ARP_OP_REPLY
    assert eth.data.spa == socket.inet_aton(IP_A) and eth.data.tpa == socket.inet_aton("10.9.1.77")
    # TSO: one super-frame with its header for offload-capable peers, segments for the rest
    supers = [f for f in offl.got if len(f) - HDR_LEN > 1514]
    assert supers, "no TSO super-frame crossed the hub"
    assert all(flag for flag, f in zip(offl.vnet_flags, offl.got, strict=True) if f in supers)
    assert max(map(len, plain.got)) <= 1514
    assert sum(len(f) for f in plain.got) > 262144
    # connection events, learned MACs, counters
    assert sorted(rig.names("NETDEV_VHOST_USER_CONNECTED")) == ["a", "b"]
    assert rig.ns.query_rx_filter("a")[0]["main-mac"] == MAC_A
    assert rig.ns.query_rx_filter("b")[0]["main-mac"] == MAC_B
    a_nc = rig.ns.find_netdev("a")
    assert isinstance(a_nc, vu.VhostUserClient)
    assert a_nc.counters()["rings-broken"] == 0 and a_nc.counters()["requests-refused"] == 0


async def test_vm_restarts_reattach_in_client_and_server_mode(rig: Rig) -> None:
    stay = setup_ip(IP_B) + "echo UP\nsleep 600\n"
    pinger = setup_ip(IP_A) + ping_until(IP_B) + "sleep 600\n"
    a_nc = rig.ns.find_netdev("a")
    b_nc = rig.ns.find_netdev("b")
    assert a_nc is not None and b_nc is not None and a_nc.link_down and b_nc.link_down

    b1 = rig.guest("b1", stay, server=True, mac=MAC_B)
    async with b1:
        await b1.wait_for("UP", timeout=GUEST_TIMEOUT)
        for n in (1, 2):  # QEMU client mode: the VM is killed and a new one attaches
            a = rig.guest(f"a{n}", pinger, server=False, mac=MAC_A)
            async with a:
                await a.wait_for("PING-OK", timeout=GUEST_TIMEOUT)
                assert not a_nc.link_down
            await until(lambda: a_nc.link_down)
            assert rig.names("NETDEV_VHOST_USER_DISCONNECTED").count("a") == n
        assert rig.names("NETDEV_VHOST_USER_CONNECTED").count("a") == 2
    # QEMU server mode: B is killed; the daemon reconnects to its successor
    await until(lambda: b_nc.link_down)
    assert "b" in rig.names("NETDEV_VHOST_USER_DISCONNECTED")
    b2 = rig.guest("b2", stay, server=True, mac=MAC_B)
    a3 = rig.guest("a3", pinger, server=False, mac=MAC_A)
    async with b2, a3:
        await b2.wait_for("UP", timeout=GUEST_TIMEOUT)
        await a3.wait_for("PING-OK", timeout=GUEST_TIMEOUT)
    assert rig.names("NETDEV_VHOST_USER_CONNECTED").count("b") == 2
    assert isinstance(a_nc, vu.VhostUserClient)
    assert a_nc.counters()["connections"] == 3


async def test_embedded_default_attaches_a_vm(
    image: GuestImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``netstackd`` with no arguments (``netstack.cli.embedded_default``), with this driver
    and the user NAT in the registry: a VM attached with the printed command line (plus
    ``vectors=0`` for TCG) gets a DHCP lease and pings the gateway."""
    from netstack import cli

    try:
        from drivers import user
    except ImportError:
        pytest.skip("the user driver is not in this tree")
    from tools.guest import UDHCPC_SCRIPT_PATH

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    registry = {s.type: s for s in (hubport.SPEC, user.SPEC, vu.SPEC)}
    plan = cli.embedded_default(registry, cli.runtime_dir())
    banner = cli.attach_instructions(plan)
    assert not plan.missing and "memory-backend-memfd" in banner and "share=on" in banner
    assert f"path={plan.vhost_socket}" in banner
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    daemon = asyncio.create_task(cli.serve(plan.config, registry, ready=ready, banner=banner))
    await asyncio.wait_for(ready, 30)
    script = f"""
udhcpc -i eth0 -q -n -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
ping -c 2 -W 2 10.0.2.2 && echo PING-GW-OK
"""
    args = [
        *shared_memory_args(MEMORY_MB),
        "-chardev",
        f"socket,id=vhost0,path={plan.vhost_socket}",
        "-netdev",
        "vhost-user,id=net0,chardev=vhost0",
        *virtio_nic_args("net0", "52:54:00:12:34:56", msix=False),
    ]
    try:
        async with Guest(image, script, args, name="emb", timeout=GUEST_TIMEOUT) as g:
            result = await g.wait()
    finally:
        daemon.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon
    result.check()
    assert "DHCP-OK" in result.output and "PING-GW-OK" in result.output, result.output
