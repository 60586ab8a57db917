"""Socket chardevs against an independent peer: socat (loopback and temp dirs only)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from netstack.chardev import ChardevTable, Connection
from netstack.qapi import chardev_from_qmp

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")


class Echo:
    multi_connection = False
    raw_socket = False

    def __init__(self) -> None:
        self.conns: list[Connection] = []

    async def serve(self, conn: Connection) -> None:
        self.conns.append(conn)
        while data := await conn.read():
            conn.write(data.upper())
            await conn.drain()


def spec(cid: str, **data: Any) -> Any:
    return chardev_from_qmp(cid, {"type": "socket", "data": data})


async def socat(*args: str, stdin: bytes) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        "socat", "-t", "2", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(10):
        out, _ = await proc.communicate(stdin)
    return out


async def test_socat_client_to_unix_server(table: ChardevTable, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    await table.add(spec("s", addr={"type": "unix", "data": {"path": str(path)}}))
    table.get("s").attach(Echo())  # type: ignore[union-attr]
    assert await socat("-", f"UNIX-CONNECT:{path}", stdin=b"hello socat\n") == b"HELLO SOCAT\n"


async def test_socat_client_to_abstract_server(table: ChardevTable) -> None:
    name = f"netstack-socat-{uuid.uuid4().hex}"
    await table.add(spec("a", addr={"type": "unix", "data": {"path": name, "abstract": True}}))
    table.get("a").attach(Echo())  # type: ignore[union-attr]
    assert await socat("-", f"ABSTRACT-CONNECT:{name}", stdin=b"abstract\n") == b"ABSTRACT\n"


async def test_socat_client_to_tcp_server(table: ChardevTable) -> None:
    await table.add(spec("t", addr={"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}}))
    dev = table.get("t")
    assert dev is not None
    dev.attach(Echo())
    port = dev.filename().split(":")[3].split(",")[0]
    assert await socat("-", f"TCP:127.0.0.1:{port}", stdin=b"tcp\n") == b"TCP\n"


async def test_reconnecting_client_to_socat_server(table: ChardevTable) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    await table.add(
        spec(
            "c",
            addr={"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}},
            server=False,
            **{"reconnect-ms": 50},
        )
    )
    assert table.get("c").filename() == f"disconnected:tcp:127.0.0.1:{port}"  # type: ignore[union-attr]

    class Greeter(Echo):
        async def serve(self, conn: Connection) -> None:
            conn.write(b"hi from netstack\n")
            await conn.drain()
            await super().serve(conn)

    table.get("c").attach(Greeter())  # type: ignore[union-attr]
    for _ in range(2):  # socat serves one client and exits; the chardev comes back
        out = await socat(f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", "-", stdin=b"")
        assert out.startswith(b"hi from netstack\n")
