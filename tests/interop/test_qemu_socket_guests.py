"""Two QEMU 7.2 guests joined only by a netstack daemon ping each other.

Each guest is the tiny test guest (:mod:`tools.guest`) with a virtio-net NIC on one of
QEMU's own socket-family netdevs; the daemon runs in-process on the test's event loop with
the matching netdevs joined on hub 0. The guests take 10.9.0.1/24 and 10.9.0.2/24 and
each pings the other, so traffic crosses the daemon in both directions:

* QEMU ``-netdev socket,connect=`` to our ``socket,listen=`` / QEMU ``-netdev stream``
  (unix, QEMU as client) to our ``stream`` server; a Python peer on a third port sends a
  crafted ARP request and checks the guest's reply field by field;
* QEMU ``-netdev dgram`` (inet) with our ``dgram`` / QEMU ``-netdev stream`` server
  (inet) with our ``stream`` client, which retries until QEMU listens;
* QEMU ``-netdev socket,mcast=`` (on 127.0.0.1) with our ``socket,mcast`` / QEMU
  ``-netdev dgram`` (unix) with our ``dgram``.

Every QEMU is stopped by PID (``tools.guest``); only loopback and temporary paths are used.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import dpkt
import pytest

from netstack.daemon import Netstack
from netstack.net.client import NetClient
from netstack.qapi import parse_netdev_cli
from tests.kit.guests import ping_until, stream_arp
from tools.guest import Guest, GuestImage, virtio_nic_args

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(240)]

MAC_A, MAC_B = "52:54:00:0a:00:01", "52:54:00:0a:00:02"
GUEST_TIMEOUT = 120.0


def ping_script(me: str, other: str, linger: int = 5) -> str:
    setup = f"ip link set eth0 up\nip addr add {me}/24 dev eth0\n"
    return setup + ping_until(other) + f"sleep {linger}\n"


async def add(ns: Netstack, text: str) -> NetClient:
    nc = (await ns.netdev_add(parse_netdev_cli(text)))[0]
    await ns.netdev_add(parse_netdev_cli(f"hubport,id=h{nc.name},hubid=0,netdev={nc.name}"))
    return nc


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def guest(image: GuestImage, name: str, me: str, other: str, netdev: str, mac: str,
          tmp: Path, linger: int = 5) -> Guest:  # fmt: skip
    return Guest(
        image,
        ping_script(me, other, linger),
        ["-netdev", netdev, *virtio_nic_args("n0", mac)],
        name=name,
        timeout=GUEST_TIMEOUT,
        log_path=tmp / f"console-{name}.log",
    )


async def both_ping(a: Guest, b: Guest) -> None:
    async with a, b:
        ra, rb = await asyncio.gather(a.wait(), b.wait())
    for result in (ra, rb):
        result.check()
        assert "PING-OK" in result.output, result.output
        assert " 0% packet loss" in result.output or "3 packets received" in result.output


async def test_socket_connect_and_stream_unix_guests(
    ns: Netstack, image: GuestImage, tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "b.sock"
    peer_path = tmp_path / "peer.sock"
    lsn = await add(ns, f"socket,id=sa,listen=127.0.0.1:{port}")
    srv = await add(ns, f"stream,id=sb,server=on,addr.type=unix,addr.path={path}")
    await add(ns, f"stream,id=tp,server=on,addr.type=unix,addr.path={peer_path}")
    a = guest(image, "a", "10.9.0.1", "10.9.0.2",
              f"socket,id=n0,connect=127.0.0.1:{port}", MAC_A, tmp_path, linger=20)  # fmt: skip
    b = guest(image, "b", "10.9.0.2", "10.9.0.1",
              f"stream,id=n0,addr.type=unix,addr.path={path}", MAC_B, tmp_path)  # fmt: skip

    async def crafted_arp() -> bytes:
        await a.wait_for("PING-OK", timeout=GUEST_TIMEOUT)
        mine = bytes.fromhex("020000000099")
        return await stream_arp(peer_path, "10.9.0.1", 15, sender="10.9.0.99", mac=mine)

    async with a, b:
        reply_task = asyncio.create_task(crafted_arp())
        ra, rb = await asyncio.gather(a.wait(), b.wait())
        reply = await reply_task
    for result in (ra, rb):
        result.check()
        assert "PING-OK" in result.output, result.output
    assert lsn.info_str.startswith("socket: connection from 127.0.0.1:") or lsn.info_str == ""
    assert srv.stats.rx_frames > 0 and lsn.stats.rx_frames > 0
    eth = dpkt.ethernet.Ethernet(reply)
    assert eth.type == 0x0806 and eth.src == bytes.fromhex(MAC_A.replace(":", ""))
    assert eth.data.op == dpkt.arp.ARP_OP_REPLY
    assert eth.data.spa == socket.inet_aton("10.9.0.1")
    assert eth.data.tpa == socket.inet_aton("10.9.0.99")


async def test_dgram_inet_and_stream_server_guests(
    ns: Netstack, image: GuestImage, tmp_path: Path
) -> None:
    ours, theirs = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    qport = free_port()
    inet = "type=inet,{0}.host=127.0.0.1,{0}.port={1}"
    await add(
        ns,
        f"dgram,id=da,local.{inet.format('local', ours)},remote.{inet.format('remote', theirs)}",
    )
    cli = await add(
        ns, f"stream,id=sb,addr.type=inet,addr.host=127.0.0.1,addr.port={qport},reconnect-ms=200"
    )
    a = guest(image, "a", "10.9.0.1", "10.9.0.2",
              f"dgram,id=n0,local.{inet.format('local', theirs)},"
              f"remote.{inet.format('remote', ours)}", MAC_A, tmp_path)  # fmt: skip
    b = guest(image, "b", "10.9.0.2", "10.9.0.1",
              f"stream,id=n0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={qport}",
              MAC_B, tmp_path)  # fmt: skip
    await both_ping(a, b)
    assert cli.stats.rx_frames > 0 and cli.stats.tx_frames > 0


async def test_mcast_and_dgram_unix_guests(ns: Netstack, image: GuestImage, tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    group = f"230.0.5.{port % 200 + 10}:{port}"
    ours, theirs = tmp_path / "ours.dg", tmp_path / "theirs.dg"
    await add(ns, f"socket,id=ma,mcast={group},localaddr=127.0.0.1")
    await add(
        ns, f"dgram,id=db,local.type=unix,local.path={ours},remote.type=unix,remote.path={theirs}"
    )
    a = guest(image, "a", "10.9.0.1", "10.9.0.2",
              f"socket,id=n0,mcast={group},localaddr=127.0.0.1", MAC_A, tmp_path)  # fmt: skip
    b = guest(image, "b", "10.9.0.2", "10.9.0.1",
              f"dgram,id=n0,local.type=unix,local.path={theirs},"
              f"remote.type=unix,remote.path={ours}", MAC_B, tmp_path)  # fmt: skip
    await both_ping(a, b)
