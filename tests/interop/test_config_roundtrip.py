"""``-writeconfig`` / QMP ``write-config`` round trip with a real netstackd process and
qemu.qmp's client: build a network at run time over QMP, write it, restart the daemon
with ``-readconfig`` and get the same ``query-netdev``, ``info network`` and chardevs."""

from __future__ import annotations

import contextlib
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from tests.daemon_proc import running_daemon

pytestmark = pytest.mark.timeout(120)


def _netdevs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """query-netdev without counters; forwarding rules are compared as they are now
    (``query-user-forwards``), the options show them as given at creation."""
    keep = ("id", "type", "options", "peer", "hub", "netdev", "queue-index")
    out = [{k: e[k] for k in keep if k in e} for e in entries]
    for entry in out:
        entry.get("options", {}).pop("hostfwd", None)
    return out


async def _snapshot(client: QMPClient) -> tuple[Any, Any, Any, Any]:
    netdevs = _netdevs(await client.execute("query-netdev"))
    info = await client.execute("human-monitor-command", {"command-line": "info network"})
    chardevs = await client.execute("query-chardev")
    labels = sorted(c["label"] for c in chardevs if not c["label"].startswith("compat_monitor"))
    rows = await client.execute("query-user-forwards")
    forwards = sorted((f["netdev"], f["type"], f["rule"]) for f in rows)
    return netdevs, info, labels, forwards


def _wait_for(path: Path) -> None:
    """-writeconfig writes once every option is up, the QMP socket included."""
    end = time.monotonic() + 15
    while not path.exists():
        assert time.monotonic() < end, f"{path} never written"
        time.sleep(0.05)


async def _connect(path: Path) -> QMPClient:
    client = QMPClient("roundtrip")
    await client.connect(str(path))
    return client


async def test_runtime_configuration_survives_a_restart(tmp_path: Path) -> None:
    base = tmp_path / "base.cfg"
    base.write_text(
        '[netdev "n0"]\n  type = "user"\n  net = "10.9.0.0/24"\n'
        '[netdev "h0"]\n  type = "hubport"\n  hubid = "0"\n  netdev = "n0"\n'
    )
    saved = tmp_path / "saved.cfg"
    args = ["-readconfig", str(base), "-writeconfig", str(saved)]
    with running_daemon(tmp_path, args) as daemon:
        _wait_for(saved)
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert '[netdev "h0"]' in saved.read_text()
        client = await _connect(daemon.qmp)
        try:
            sock = {"type": "unix", "data": {"path": str(tmp_path / "vu0.sock")}}
            backend = {"type": "socket", "data": {"addr": sock, "server": True, "wait": False}}
            await client.execute("chardev-add", {"id": "vu0", "backend": backend})
            ring = {"type": "ringbuf", "data": {"size": 4096}}
            await client.execute("chardev-add", {"id": "rb0", "backend": ring})
            await client.execute(
                "netdev_add", {"id": "vm0", "type": "vhost-user", "chardev": "vu0"}
            )
            user = {
                "id": "u1",
                "type": "user",
                "net": "10.7.0.0/24",
                "hostname": "a,b c",
                "hostfwd": [{"str": "tcp:127.0.0.1:0-:22"}, {"str": "udp:127.0.0.1:0-:53"}],
                "dnssearch": [{"str": "example.org"}, {"str": "example.net"}],
            }
            await client.execute("netdev_add", user)
            await client.execute("netdev_add", {"id": "hp1", "type": "hubport", "hubid": 1,
                                                "netdev": "u1"})  # fmt: skip
            stream = {"type": "unix", "path": str(tmp_path / "s1.sock")}
            await client.execute(
                "netdev_add", {"id": "s1", "type": "stream", "server": True, "addr": stream}
            )
            await client.execute("netdev_add", {"id": "gone", "type": "user"})
            dump = {"qom-type": "filter-dump", "id": "fd1", "netdev": "u1",
                    "file": str(tmp_path / "u1.pcap"), "maxlen": 128}  # fmt: skip
            await client.execute("object-add", dump)
            mirror = {"qom-type": "filter-mirror", "id": "fm1", "netdev": "u1",
                      "outdev": "rb0", "queue": "rx", "position": "id=fd1",
                      "insert": "before"}  # fmt: skip
            await client.execute("object-add", mirror)
            await client.execute("netdev_del", {"id": "gone"})
            rule = "tcp:127.0.0.1:0-:80"
            await client.execute("user-forward-add", {"netdev": "u1", "rule": rule})
            forwards = await client.execute("query-user-forwards")
            udp = next(f["host-port"] for f in forwards if f["protocol"] == "udp")
            hmp = f"hostfwd_remove u1 udp:127.0.0.1:{udp}"
            reply = await client.execute("human-monitor-command", {"command-line": hmp})
            assert "removed" in str(reply)
            await client.execute("write-config")
            before = await _snapshot(client)

            other = tmp_path / "other.cfg"
            await client.execute("write-config", {"filename": str(other)})
            assert other.read_text() == saved.read_text()

            for bad in ("-", ""):
                with pytest.raises(ExecuteError) as err:
                    await client.execute("write-config", {"filename": bad})
                assert "no file to write" in err.value.error.error.desc

            schema = await client.execute("query-qmp-schema")
            cmd = next(e for e in schema if e["name"] == "write-config")
            arg = next(e for e in schema if e["name"] == cmd["arg-type"])
            assert arg["members"] == [{"name": "filename", "type": "str", "default": None}]

            # a value the format cannot hold: a clear error, the file left as it was
            await client.execute("netdev_add", {"id": "q", "type": "user", "hostname": 'a"b'})
            text = saved.read_text()
            with pytest.raises(ExecuteError) as err:
                await client.execute("write-config")
            assert err.value.error.error.desc == (
                "cannot write netdev 'q': the value of 'hostname' holds a '\"', a newline"
                " or a NUL, which config files cannot represent"
            )
            assert saved.read_text() == text
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()
        assert daemon.stop() == 0

    text = saved.read_text()
    assert '  hostfwd = "tcp:127.0.0.1:0-:80"' in text and "udp:" not in text
    assert text.count('  hostfwd = "') == 2 and '[netdev "gone"]' not in text
    assert "compat_monitor" not in text  # monitors stay on the command line

    with running_daemon(tmp_path, ["-readconfig", str(saved)]) as daemon:
        client = await _connect(daemon.qmp)
        try:
            after = await _snapshot(client)
        finally:
            await client.disconnect()
        assert daemon.stop() == 0
    assert after == before
    again = tmp_path / "again.cfg"
    with running_daemon(tmp_path, ["-readconfig", str(saved), "-writeconfig", str(again)]):
        _wait_for(again)
    assert again.read_text() == saved.read_text()  # written, read, written: the same file


def test_writeconfig_dash_prints_the_configuration_once_started(tmp_path: Path) -> None:
    args = ["-netdev", "hubport,id=h0,hubid=0", "-writeconfig", "-"]
    with running_daemon(tmp_path, args) as daemon:
        end = time.monotonic() + 15
        while '[netdev "h0"]' not in daemon.output():
            assert time.monotonic() < end, daemon.output()
            time.sleep(0.05)
        assert daemon.stop() == 0
    assert '[netdev "h0"]\n  type = "hubport"\n  hubid = "0"\n' in daemon.output()


def test_tls_objects_are_written_and_read_back(tmp_path: Path) -> None:
    """A TLS chardev's credentials and authorization objects are part of the written
    configuration, and the file starts a daemon that serves the same chardev (objects are
    created before chardevs, whatever their order in the file)."""
    from tests.interop.tls_pki import make_pki

    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    cfg = tmp_path / "tls.cfg"
    args = [
        "-object", f"tls-creds-x509,id=tls0,dir={pki.server},endpoint=server,verify-peer=on",
        "-object", "authz-simple,id=az0,identity=O=netstack,,CN=client",
        "-chardev", "socket,id=t0,host=127.0.0.1,port=0,server=on,wait=off,"
                    "tls-creds=tls0,tls-authz=az0",
        "-writeconfig", str(cfg),
    ]  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_daemon(tmp_path / "a", args) as daemon:
        _wait_for(cfg)
        assert daemon.stop() == 0
    text = cfg.read_text()
    assert '[object "tls0"]' in text and '[object "az0"]' in text, text
    assert 'qom-type = "tls-creds-x509"' in text and 'tls-creds = "tls0"' in text, text
    again = tmp_path / "again.cfg"
    with running_daemon(tmp_path / "b", ["-readconfig", str(cfg), "-writeconfig", str(again)]):
        _wait_for(again)
    assert again.read_text() == text
