"""User netdev state export/import over QMP: leases and forwards move between two daemons,
and hostile blobs are refused whole with nothing half-applied (a lease table, a bound port
or a flow table that changed would show)."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

import drivers
from drivers.user import control as user_control
from drivers.user.migration import StateError, import_state
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.qapi import check_id, parse_netdev_cli
from netstack.qmp.server import monitor_add

MAC = bytes.fromhex("525400123456")


async def daemon(tmp: Path, name: str, spec: str) -> tuple[Netstack, Any]:
    ns = Netstack(drivers.registry(), runtime_dir=tmp / name)
    (tmp / name).mkdir()
    netdev = parse_netdev_cli(spec)
    check_id(netdev.id)
    await ns.netdev_add(netdev)
    return ns, ns.find_netdev("u0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Netstack, Any, Netstack, Any]]:
    port = free_port()
    src, su = await daemon(tmp_path, "src", f"user,id=u0,hostfwd=tcp:127.0.0.1:{port}-:22")
    dst, du = await daemon(tmp_path, "dst", "user,id=u0")
    try:
        yield src, su, dst, du
    finally:
        await src.close()
        await dst.close()


def lease(client: Any, index: int, mac: bytes) -> None:
    slot = client.gw.dhcp.slots[index]
    slot.mac, slot.state = mac, "bound"
    slot.expires = client._loop.time() + 3600
    slot.hostname = "vm"


def snapshot(client: Any) -> tuple[Any, ...]:
    return (
        [vars(s).copy() for s in client.gw.dhcp.slots],
        user_control.forwards(client),
        sorted(client.tcp.flows),
    )


async def qmp(ns: Netstack, name: str, args: dict[str, Any]) -> Any:
    """One command through a real QMP session (qemu.qmp's client)."""
    path = ns._runtime_dir / "qmp.sock"
    if not path.exists():
        await monitor_add(ns, "qmp", f"unix:{path},server=on,wait=off", False, 0)
    client = QMPClient("test")
    await client.connect(str(path))
    try:
        return await client.execute(name, args)
    except ExecuteError as exc:
        raise GenericError(str(exc)) from None
    finally:
        await client.disconnect()


async def test_leases_and_forwards_move(pair: tuple[Netstack, Any, Netstack, Any]) -> None:
    src, su, dst, du = pair
    lease(su, 3, MAC)
    port = user_control.forwards(su)[0]["host-port"]
    out = await qmp(src, "x-user-state-export", {"netdev": "u0"})
    assert (out["leases"], out["forwards"], out["tcp"]) == (1, 1, 0)
    su.fwd.remove(su.fwd.forwards[0])  # the source host gives the port up
    got = await qmp(dst, "x-user-state-import", {"netdev": "u0", "data": out["data"]})
    assert got == {"leases": 1, "forwards": 1, "tcp": 0, "udp": 0}
    (entry,) = user_control.leases(du)
    assert entry["mac-address"] == "52:54:00:12:34:56"
    assert entry["ip-address"] == "10.0.2.18" and entry["hostname"] == "vm"
    assert 3590 <= entry["expires-in"] <= 3600
    assert [f["rule"] for f in user_control.forwards(du)] == [f"tcp:127.0.0.1:{port}-:22"]


def blob(**changes: Any) -> str:
    base: dict[str, Any] = {
        "version": 1,
        "net": [0x0A000200, 24, 0x0A000202, 0x0A00020F],
        "leases": [
            {
                "mac": MAC.hex(),
                "ip": "10.0.2.20",
                "state": "bound",
                "expires-in": 100,
                "hostname": None,
                "client-id": None,
            }
        ],
        "forwards": [],
        "tcp": [],
    }
    base.update(changes)
    return base64.b64encode(json.dumps(base).encode()).decode()


def good_lease(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "mac": "525400aabbcc",
        "ip": "10.0.2.21",
        "state": "bound",
        "expires-in": 5,
        "hostname": None,
        "client-id": None,
    }
    item.update(changes)
    return item


HOSTILE = {
    "not-base64": "@@@",
    "not-json": base64.b64encode(b"{nope").decode(),
    "not-object": base64.b64encode(b"[1,2]").decode(),
    "version": blob(version=2),
    "other-net": blob(net=[0x0A000300, 24, 0x0A000302, 0x0A00030F]),
    "lease-outside-pool": blob(leases=[good_lease(ip="10.0.2.200")]),
    "lease-bad-mac": blob(leases=[good_lease(mac="zz")]),
    "lease-short-mac": blob(leases=[good_lease(mac="5254")]),
    "lease-bad-state": blob(leases=[good_lease(state="declined")]),
    "lease-negative-time": blob(leases=[good_lease(**{"expires-in": -1})]),
    "lease-duplicate": blob(leases=[good_lease(), good_lease(mac="525400aabbcd")]),
    "leases-not-list": blob(leases={"a": 1}),
    "forward-bad-rule": blob(forwards=[{"type": "hostfwd", "rule": "tcp:nonsense"}]),
    "forward-bad-type": blob(forwards=[{"type": "portfwd", "rule": "tcp::1-:2"}]),
    "tcp-garbage": blob(tcp=[{"guest": ["10.0.2.15", 1]}]),
    "tcp-not-object": blob(tcp=[17]),
    "udp-bad-port": blob(
        udp=[
            {
                "guest": ["10.0.2.15", 0],
                "dst": ["10.0.2.2", 53],
                "bound": ["0.0.0.0", 1],
                "expires-in": 1,
            }
        ]
    ),
    "udp-duplicate": blob(
        udp=[
            {
                "guest": ["10.0.2.15", 9],
                "dst": ["10.0.2.2", 53],
                "bound": ["0.0.0.0", 0],
                "expires-in": 1,
            }
        ]
        * 2
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_blob_refused_whole(
    pair: tuple[Netstack, Any, Netstack, Any], case: str
) -> None:
    _src, _su, dst, du = pair
    lease(du, 0, bytes.fromhex("525400000001"))  # something already here
    before = snapshot(du)
    with pytest.raises(GenericError, match="Cannot import user state"):
        await qmp(dst, "x-user-state-import", {"netdev": "u0", "data": HOSTILE[case]})
    assert snapshot(du) == before


async def test_failure_while_applying_undoes_everything(
    pair: tuple[Netstack, Any, Netstack, Any],
) -> None:
    """Leases applied, then a hostfwd port that is taken here: all undone."""
    _src, _su, _dst, du = pair
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = blob(
            leases=[good_lease(), good_lease(mac="525400aabbcd", ip="10.0.2.22")],
            forwards=[
                {"type": "hostfwd", "rule": "tcp:127.0.0.1:0-:80"},
                {"type": "hostfwd", "rule": f"tcp:127.0.0.1:{port}-:22"},
            ],
        )
        before = snapshot(du)
        with pytest.raises(StateError):
            import_state(du, text)
        assert snapshot(du) == before
        assert du.fwd.forwards == []


async def test_lease_of_another_mac_here_is_refused(
    pair: tuple[Netstack, Any, Netstack, Any],
) -> None:
    _src, _su, _dst, du = pair
    lease(du, 5, bytes.fromhex("525400000009"))
    before = snapshot(du)
    with pytest.raises(StateError, match="another MAC"):
        import_state(du, blob())
    assert snapshot(du) == before


async def test_unknown_netdev(pair: tuple[Netstack, Any, Netstack, Any]) -> None:
    src, *_ = pair
    with pytest.raises(Exception, match="not found"):
        await qmp(src, "x-user-state-export", {"netdev": "nope"})


async def test_udp_flow_moves_with_its_port(pair: tuple[Netstack, Any, Netstack, Any]) -> None:
    """A guest UDP flow's host port is bound again at the destination, and an answer sent
    to it afterwards reaches the destination's flow."""
    import asyncio

    from drivers.user.udp_nat import UdpSend

    src, su, dst, du = pair
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    try:
        now = su._loop.time()
        guest = (bytes([10, 0, 2, 15]), 40000)
        send = su.gw.udp.outbound(*guest, bytes([10, 0, 2, 2]), peer.getsockname()[1],
                                  b"ping", 64, now)  # fmt: skip
        assert isinstance(send, UdpSend)
        su.host4.act(send, now)
        data, addr = peer.recvfrom(100)
        assert data == b"ping"
        out = await qmp(src, "x-user-state-export", {"netdev": "u0"})
        assert out["udp"] == 1 and not su.gw.udp.flows
        su.fwd.remove(su.fwd.forwards[0])  # the source host gives its hostfwd port up
        got = await qmp(dst, "x-user-state-import", {"netdev": "u0", "data": out["data"]})
        assert got["udp"] == 1
        assert du.host4.udp_bound(guest) == ("0.0.0.0", addr[1])
        peer.sendto(b"pong", addr)
        for _ in range(100):
            if du.gw.udp.flows[guest].rx:
                break
            await asyncio.sleep(0.02)
        assert du.gw.udp.flows[guest].rx == 1
    finally:
        peer.close()
