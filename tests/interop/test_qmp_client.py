"""Real QMP clients against a real netstackd process: qemu.qmp's QMPClient and qmp-shell."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient

from tests.daemon_proc import running_daemon

pytestmark = pytest.mark.timeout(60)


async def test_qmpclient_drives_netdevs_and_gets_events(tmp_path: Path) -> None:
    with running_daemon(tmp_path, ["-netdev", "hubport,id=p0,hubid=0"]) as daemon:
        client = QMPClient("test")
        await client.connect(str(daemon.qmp))
        try:
            version = await client.execute("query-version")
            assert version["qemu"]["major"] >= 7
            assert "oob" in client.greeting.QMP.capabilities
            await client.execute("netdev_add", {"id": "p1", "type": "hubport", "hubid": 0})
            info = await client.execute("human-monitor-command", {"command-line": "info network"})
            assert info == "hub 0\r\n \\ p1\r\n \\ p0\r\n"
            await client.execute("set_link", {"name": "p1", "up": False})
            (entry,) = await client.execute("query-netdev", {"name": "p1"})
            assert entry["link-up"] is False and entry["hub"] == 0
            assert await client.execute("query-rx-filter") == []
            with pytest.raises(ExecuteError) as err:
                await client.execute("netdev_del", {"id": "nope"})
            assert err.value.error.error.class_ == "DeviceNotFound"
            assert err.value.error.error.desc == "Device 'nope' not found"
            with pytest.raises(ExecuteError) as err:
                await client.execute("netdev_add", {"id": "p1", "type": "hubport", "hubid": 1})
            assert err.value.error.error.desc == "Duplicate ID 'p1'"
            await client.execute("netdev_del", {"id": "p1"})
            names = {c["name"] for c in await client.execute("query-commands")}
            assert {"netdev_add", "query-netdev", "set-rx-filter", "chardev-add"} <= names
            schema = await client.execute("query-qmp-schema")
            assert any(e["name"] == "query-netdev" for e in schema)
            listener = EventListener()
            with client.listen(listener):
                await client.execute("quit")
                event = await asyncio.wait_for(listener.get(), 5)
                assert event["event"] == "SHUTDOWN"
                assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}
        finally:
            with contextlib.suppress(EOFError):  # quit closes the connection, as QEMU does
                await client.disconnect()
        assert daemon.proc.wait(10) == 0
        assert not daemon.qmp.exists()


async def test_several_clients_at_once(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        clients = [QMPClient(f"c{i}") for i in range(4)]
        for c in clients:
            await c.connect(str(daemon.qmp))
        try:
            results = await asyncio.gather(*(c.execute("query-version") for c in clients))
            assert len(results) == 4
            await clients[0].execute("netdev_add", {"id": "x", "type": "hubport", "hubid": 5})
            seen = await clients[3].execute("query-netdev", {"name": "x"})
            assert seen[0]["id"] == "x"
        finally:
            for c in clients:
                await c.disconnect()
        assert daemon.stop() == 0


@pytest.mark.skipif(
    shutil.which("qmp-shell") is None and not Path(sys.executable).with_name("qmp-shell").exists(),
    reason="qmp-shell is installed with qemu.qmp",
)
def test_qmp_shell_scripted_session(tmp_path: Path) -> None:
    shell = str(Path(sys.executable).with_name("qmp-shell"))
    with running_daemon(tmp_path) as daemon:
        script = "\n".join(
            [
                "query-version",
                "netdev_add id=s1 type=hubport hubid=4",
                "set_link name=s1 up=false",
                "query-netdev name=s1",
                "netdev_del id=nope",
                "",
            ]
        )
        out = subprocess.run(
            [shell, str(daemon.qmp)], input=script, capture_output=True, text=True, timeout=30
        )
        text = out.stdout
        assert '"package": "netstack-' in text
        assert '"link-up": false' in text
        assert "Device 'nope' not found" in text
        # HMP mode of qmp-shell goes through human-monitor-command.
        out = subprocess.run(
            [shell, "-H", str(daemon.qmp)],
            input="info network\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "hub 4" in out.stdout and "s1" in out.stdout
        assert daemon.stop() == 0


def _free_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_qmp_over_tcp_and_mon_chardev(tmp_path: Path) -> None:
    port = _free_tcp_port()
    sock = tmp_path / "mon.sock"
    pretty = tmp_path / "pretty.sock"
    args = [
        "-qmp",
        f"tcp:127.0.0.1:{port},server=on,wait=off",
        "-chardev",
        f"socket,id=mon0,path={sock},server=on,wait=off",
        "-mon",
        "chardev=mon0,mode=control",
        "-chardev",
        f"socket,id=mon1,path={pretty},server=on,wait=off",
        "-mon",
        "chardev=mon1,mode=control,pretty=on",
    ]
    with running_daemon(tmp_path, args, qmp=False) as daemon:
        end = asyncio.get_running_loop().time() + 15
        while True:  # the monitors come up after the chardevs: wait for the last one
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                assert asyncio.get_running_loop().time() < end
                await asyncio.sleep(0.05)
        for address in (("127.0.0.1", port), str(sock)):
            client = QMPClient("t")
            await client.connect(address)
            try:
                assert (await client.execute("query-version"))["qemu"]["major"] >= 7
            finally:
                await client.disconnect()
        # The pretty monitor prints multi-line JSON, still CRLF-terminated (line-based
        # clients such as qemu.qmp cannot read it, with QEMU either).
        reader, writer = await asyncio.open_unix_connection(str(pretty))
        greeting = await reader.readuntil(b"}\r\n")
        assert greeting.startswith(b'{\r\n    "QMP": {\r\n')
        writer.close()
        assert daemon.stop() == 0


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is installed by setup-deps")
def test_socat_by_hand(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        typed = (
            '{"execute": "qmp_capabilities"}\n'
            "{'execute': 'netdev_add', 'arguments': {'id': 'h', 'type': 'hubport', 'hubid': 2}}\n"
            '{"execute": "human-monitor-command", "arguments": {"command-line": "info network"}}\n'
        )
        out = subprocess.run(
            ["socat", "-t", "2", "-", f"UNIX-CONNECT:{daemon.qmp}"],
            input=typed,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        lines = out.splitlines()
        assert lines[1:4] == [
            '{"return": {}}',
            '{"return": {}}',
            '{"return": "hub 2\\r\\n \\\\ h\\r\\n"}',
        ]
