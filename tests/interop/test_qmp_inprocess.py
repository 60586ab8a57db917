"""QMP against an in-process daemon that has NIC-class clients: rx-filter query and
programming with NIC_RX_FILTER_CHANGED, agent-style resync, guest-network-get-interfaces,
and the chardev commands — all through the real qemu.qmp client or raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient

import drivers
from netstack.daemon import Netstack
from netstack.net.nic import NicClient
from netstack.qmp.server import monitor_add

pytestmark = pytest.mark.timeout(60)
MAC = bytes.fromhex("525400123456")


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[Netstack, Path]]:
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    ns.add_client(NicClient("nic0", MAC))
    sock = tmp_path / "qmp.sock"
    await monitor_add(ns, "qmp", f"unix:{sock},server=on,wait=off", False, 0)
    try:
        yield ns, sock
    finally:
        await ns.close()


@pytest.fixture
async def client(daemon: tuple[Netstack, Path]) -> AsyncIterator[QMPClient]:
    c = QMPClient("t")
    await c.connect(str(daemon[1]))
    try:
        yield c
    finally:
        with contextlib.suppress(Exception):
            await c.disconnect()


def desc(err: pytest.ExceptionInfo[ExecuteError]) -> str:
    return str(err.value.error.error.desc)


async def test_rx_filter_query_program_and_event_gate(client: QMPClient) -> None:
    (info,) = await client.execute("query-rx-filter")
    assert info["name"] == "nic0" and info["main-mac"] == "52:54:00:12:34:56"
    assert info["promiscuous"] is True and info["vlan"] == "all"
    assert info["broadcast-allowed"] is True  # the truth (QEMU reports the inverse)
    assert len(info["vlan-table"]) == 4096 and info["vlan-table"][0] == 4095
    listener = EventListener()
    with client.listen(listener):
        await client.execute(
            "set-rx-filter",
            {
                "name": "nic0",
                "rx-modes": {"promiscuous": False},
                "multicast-table": ["01:00:5e:00:00:01"],
                "vlan-table": [5, 7],
            },
        )
        event = await asyncio.wait_for(listener.get(), 5)
        assert event["event"] == "NIC_RX_FILTER_CHANGED"
        assert event["data"] == {"name": "nic0", "path": "/machine/peripheral/nic0/virtio-backend"}
        # Further changes stay silent until a query re-arms the notification.
        await client.execute("set-rx-filter", {"name": "nic0", "rx-modes": {"allmulti": True}})
        await asyncio.sleep(0.2)
        assert listener.empty()
        (info,) = await client.execute("query-rx-filter", {"name": "nic0"})
        assert info["promiscuous"] is False and info["multicast"] == "all"
        assert info["vlan"] == "normal" and info["vlan-table"] == [7, 5]
        assert info["multicast-table"] == ["01:00:5e:00:00:01"]
        await client.execute("set-rx-filter", {"name": "nic0", "rx-modes": {"allmulti": False}})
        event = await asyncio.wait_for(listener.get(), 5)
        assert event["event"] == "NIC_RX_FILTER_CHANGED"
    with pytest.raises(ExecuteError) as err:
        await client.execute("set-rx-filter", {"name": "zz"})
    assert desc(err) == "invalid net client name: zz"
    with pytest.raises(ExecuteError) as err:
        await client.execute("set-rx-filter", {"name": "nic0", "main-mac": "01:00:00:00:00:01"})
    assert "unicast" in desc(err)


async def test_guest_network_get_interfaces(client: QMPClient) -> None:
    (iface,) = await client.execute("guest-network-get-interfaces")
    assert iface["name"] == "nic0" and iface["hardware-address"] == "52:54:00:12:34:56"
    assert iface["ip-addresses"] == []
    assert set(iface["statistics"]) >= {"rx-bytes", "tx-packets"}


async def test_agent_style_resync(daemon: tuple[Netstack, Path]) -> None:
    reader, writer = await asyncio.open_unix_connection(str(daemon[1]))
    try:
        await reader.readline()  # greeting
        # A dirty stream: half a request, then the resync dance of qemu-ga clients.
        writer.write(b'{"execute": "query-ver')
        writer.write(b"\xff")
        writer.write(b'{"execute": "guest-sync-delimited", "arguments": {"id": 4711}}\n')
        await writer.drain()
        # Skip everything up to the 0xFF delimiter, then read one reply.
        while True:
            b = await asyncio.wait_for(reader.readexactly(1), 5)
            if b == b"\xff":
                break
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert reply == {"return": 4711}
        writer.write(b'{"execute": "guest-sync", "arguments": {"id": 5}}\n')
        writer.write(b'{"execute": "guest-ping"}\n')
        await writer.drain()
        assert json.loads(await reader.readline()) == {"return": 5}
        assert json.loads(await reader.readline()) == {"return": {}}
    finally:
        writer.close()


async def test_chardev_commands(client: QMPClient) -> None:
    ret = await client.execute(
        "chardev-add",
        {"id": "rb", "backend": {"type": "ringbuf", "data": {"size": 8}}},
    )
    assert ret == {}
    await client.execute("ringbuf-write", {"device": "rb", "data": "hello world"})
    assert await client.execute("ringbuf-read", {"device": "rb", "size": 100}) == "lo world"
    with pytest.raises(ExecuteError) as err:
        await client.execute("chardev-add", {"id": "rb", "backend": {"type": "null", "data": {}}})
    assert desc(err) == "Chardev with id 'rb' already exists"
    with pytest.raises(ExecuteError) as err:
        await client.execute(
            "chardev-add", {"id": "bad", "backend": {"type": "ringbuf", "data": {"size": 3}}}
        )
    assert "power of two" in desc(err)
    labels = {c["label"]: c for c in await client.execute("query-chardev")}
    assert labels["compat_monitor0"]["frontend-open"] is True
    assert labels["rb"]["frontend-open"] is False
    names = {b["name"] for b in await client.execute("query-chardev-backends")}
    assert {"socket", "ringbuf", "file", "pty", "null", "udp"} <= names
    with pytest.raises(ExecuteError) as err:
        await client.execute("chardev-remove", {"id": "compat_monitor0"})
    assert desc(err) == "Chardev 'compat_monitor0' is busy"
    await client.execute("chardev-remove", {"id": "rb"})
    with pytest.raises(ExecuteError) as err:
        await client.execute("chardev-remove", {"id": "rb"})
    assert desc(err) == "Chardev 'rb' not found"
    pty = await client.execute("chardev-add", {"id": "p", "backend": {"type": "pty", "data": {}}})
    assert pty["pty"].startswith("/dev/pts/")
