"""The user netdev's QMP forward and connection commands against a real ``netstackd``
process, driven by real QMP clients (qemu.qmp's ``QMPClient``, ``qmp-shell``).

With a QEMU 7.2 guest (vhost-user, joined on hub 0 with the user netdev; busybox httpd on
port 8080 after udhcpc): a hostfwd added at run time with host port 0 reports the kernel's
port and reaches httpd through 127.0.0.1, ``query-user-forwards`` lists it, a held
connection through it and the guest's own connection to a host server show up in
``query-user-connections`` (and in ``info usernet``), ``query-netdev`` carries the drivers'
counters, and after ``user-forward-remove`` the port is refused. Without a guest:
``qmp-shell`` calls the new commands."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from tests.daemon_proc import running_daemon
from tests.kit.guests import http_get, user_over_vhost_user_argv, vhost_user_qemu_args
from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
)

MAC = "52:54:00:12:34:56"
BODY = b"hello from the guest via a QMP hostfwd\n"


async def poll(
    client: QMPClient, command: str, args: dict[str, Any], ok: Callable[[Any], bool]
) -> Any:
    """Run ``command`` until ``ok(result)`` (at most 10 s)."""
    for _ in range(100):
        result = await client.execute(command, args)
        if ok(result):
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"{command}: never as expected, last {result!r}")


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_runtime_hostfwd_and_connections_over_qmp(image: GuestImage, tmp_path: Path) -> None:
    vhost = tmp_path / "vhost.sock"
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # the guest's connection stays open until the test ends

    host_server = await asyncio.start_server(hold, "127.0.0.1", 0)
    host_port = host_server.sockets[0].getsockname()[1]
    args = user_over_vhost_user_argv(vhost, mac=MAC)
    script = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
mkdir -p /www && printf '{BODY.decode().rstrip()}\\n' > /www/f
httpd -p 8080 -h /www && echo HTTPD-UP
sleep 100 | nc 10.0.2.2 {host_port} &
sleep 100
"""
    qemu_args = vhost_user_qemu_args(vhost, MAC)
    try:
        with running_daemon(tmp_path, args) as daemon:
            client = QMPClient("forwards")
            await client.connect(str(daemon.qmp))
            try:
                async with Guest(image, script, qemu_args, name="qmpfwd", timeout=130) as g:
                    await g.wait_for("HTTPD-UP", 60)
                    await check_forwards_and_connections(client, host_port)
            finally:
                await client.disconnect()
            assert daemon.stop() == 0, daemon.output()
    finally:
        for w in held:
            w.close()
        host_server.close()


async def check_forwards_and_connections(client: QMPClient, host_port: int) -> None:
    added: Any = await client.execute(
        "user-forward-add", {"netdev": "nat0", "rule": "tcp:127.0.0.1:0-:8080"}
    )
    port = added["host-port"]
    assert port > 0 and added["guest-addr"] == "10.0.2.15" and added["guest-port"] == 8080
    assert await client.execute("query-user-forwards", {"netdev": "nat0"}) == [added]
    assert await http_get(port) == BODY

    # the guest's connection out to the host server, and a held one in through hostfwd
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:

        def both(conns: list[dict[str, Any]]) -> bool:
            est = [c for c in conns if c["protocol"] == "tcp" and c["state"] == "ESTABLISHED"]
            return {c["direction"] for c in est} >= {"outbound", "hostfwd"}

        conns = await poll(client, "query-user-connections", {"netdev": "nat0"}, both)
        out = next(c for c in conns if c["direction"] == "outbound" and c["protocol"] == "tcp")
        assert (out["remote-addr"], out["remote-port"]) == ("10.0.2.2", host_port)
        assert out["guest-addr"] == "10.0.2.15" and out["family"] == "ipv4"
        inbound = next(c for c in conns if c["direction"] == "hostfwd")
        assert (inbound["guest-addr"], inbound["guest-port"]) == ("10.0.2.15", 8080)
        assert inbound["remote-addr"] == "10.0.2.2" and isinstance(inbound["fd"], int)
        usernet: Any = await client.execute(
            "human-monitor-command", {"command-line": "info usernet"}
        )
        assert f"10.0.2.15  8080        10.0.2.2 {inbound['remote-port']:5d}" in usernet
        assert f"10.0.2.2 {host_port:5d}" in usernet
    finally:
        writer.close()

    # counters of every driver that has them
    netdev_list: Any = await client.execute("query-netdev")
    netdevs = {n["id"]: n for n in netdev_list}
    assert netdevs["nat0"]["counters"]["tcp-connects"] >= 1
    assert netdevs["nat0"]["statistics"]["rx-frames"] > 0
    assert "rings-running" in netdevs["vm0"]["counters"]
    assert "counters" not in netdevs["h0"]

    await client.execute(
        "user-forward-remove",
        {"netdev": "nat0", "type": "hostfwd", "host-addr": "127.0.0.1", "host-port": port},
    )
    assert await client.execute("query-user-forwards") == []
    with pytest.raises(OSError):
        await http_get(port, timeout=3)
    with pytest.raises(ExecuteError) as err:
        await client.execute(
            "user-forward-remove", {"netdev": "nat0", "type": "hostfwd", "host-port": port}
        )
    assert err.value.error.error.desc == f"host forwarding rule for tcp::{port} not found"
    with pytest.raises(ExecuteError) as err:
        await client.execute("query-user-connections", {"netdev": "h0"})
    assert err.value.error.error.desc == "Device 'h0' is not a user netdev"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    shutil.which("qmp-shell") is None and not Path(sys.executable).with_name("qmp-shell").exists(),
    reason="qmp-shell is installed with qemu.qmp",
)
def test_qmp_shell_calls_the_user_commands(tmp_path: Path) -> None:
    shell = str(Path(sys.executable).with_name("qmp-shell"))
    port = _free_port()
    with running_daemon(tmp_path, ["-netdev", "user,id=u0"]) as daemon:
        script = "\n".join(
            [
                f"user-forward-add netdev=u0 rule=tcp:127.0.0.1:{port}-:22",
                "query-user-forwards netdev=u0",
                "query-user-connections",
                f"user-forward-remove netdev=u0 type=hostfwd host-addr=127.0.0.1 host-port={port}",
                "query-user-forwards",
                "user-forward-add netdev=u0 rule=tcp:5555-:22",
                "user-forward-add netdev=u0 type=guestfwd rule=tcp:10.0.2.100:1234-cmd:cat",
                "user-forward-remove netdev=u0 type=guestfwd guest-addr=10.0.2.100 guest-port=1234",
                "",
            ]
        )
        out = subprocess.run(
            [shell, str(daemon.qmp)], input=script, capture_output=True, text=True, timeout=30
        )
        text = out.stdout
        assert f'"host-port": {port}' in text and '"rule": "tcp:127.0.0.1:' in text, text
        assert text.count('"return": []') == 2, text  # no connections; no forwards left
        assert "Invalid host forwarding rule 'tcp:5555-:22' (Bad host address)" in text
        assert '"target": "cmd:cat"' in text and text.count('"return": {}') == 2, text
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        assert daemon.stop() == 0
