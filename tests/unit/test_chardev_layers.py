"""Socket chardevs with protocol layers, in process: filenames, option rules that QEMU
applies (telnet only for servers, raw-socket front ends refused), handshake timeouts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from netstack.chardev import ChardevTable, Connection
from netstack.chardev import sockets as chardev_sockets
from netstack.errors import GenericError
from netstack.qapi import chardev_from_qmp


class Sink:
    multi_connection = False
    raw_socket = False

    def __init__(self) -> None:
        self.got = b""

    async def serve(self, conn: Connection) -> None:
        while data := await conn.read():
            self.got += data


class Raw(Sink):
    raw_socket = True


@pytest.fixture
async def table() -> AsyncIterator[ChardevTable]:
    t = ChardevTable()
    try:
        yield t
    finally:
        await t.close_all()


def inet(**extra: Any) -> Any:
    data = {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}},
            "wait": False, **extra}  # fmt: skip
    return {"type": "socket", "data": data}


@pytest.mark.parametrize(
    ("extra", "scheme"),
    [({"telnet": True}, "telnet"), ({"websocket": True}, "websocket"),
     ({"tn3270": True}, "tcp"), ({"telnet": True, "websocket": True}, "telnet")],
)  # fmt: skip
async def test_filename_scheme(table: ChardevTable, extra: dict[str, Any], scheme: str) -> None:
    await table.add(chardev_from_qmp("c", inet(**extra)))
    dev = table.get("c")
    assert dev is not None
    assert dev.filename().startswith(f"disconnected:{scheme}:127.0.0.1:")


async def test_raw_socket_front_end_refused(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "v.sock")
    spec = {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": path}},
                                       "wait": False, "telnet": True}}  # fmt: skip
    await table.add(chardev_from_qmp("v", spec))
    dev = table.get("v")
    assert dev is not None
    with pytest.raises(GenericError) as err:
        dev.attach(Raw())
    assert err.value.desc == (
        "'telnet' option is incompatible with waiting for connection completion"
    )


async def test_telnet_client_negotiates_nothing(table: ChardevTable) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    loop = asyncio.get_running_loop()
    accept = loop.create_task(loop.sock_accept(server))
    spec = {"type": "socket", "data": {
        "addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}},
        "server": False, "telnet": True}}  # fmt: skip
    await table.add(chardev_from_qmp("c", spec))
    dev = table.get("c")
    assert dev is not None
    dev.attach(Sink())
    peer, _ = await asyncio.wait_for(accept, 5)
    peer.setblocking(False)
    await asyncio.sleep(0.3)
    with pytest.raises(BlockingIOError):
        peer.recv(100)  # QEMU's telnet client mode sends no negotiation
    assert dev.filename() == f"telnet:127.0.0.1:{peer.getpeername()[1]} <-> 127.0.0.1:{port}"
    peer.close()
    server.close()


async def test_websocket_handshake_timeout_is_counted(
    table: ChardevTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chardev_sockets, "HANDSHAKE_TIMEOUT", 0.3)
    await table.add(chardev_from_qmp("w", inet(websocket=True)))
    dev = table.get("w")
    assert isinstance(dev, chardev_sockets.SocketChardev)
    front = Sink()
    dev.attach(front)
    port = int(dev.filename().split(":")[3].split(",")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\n")  # ... and never finishes
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert dev.errors == 1 and dev.last_error == "handshake timed out"
    writer.close()
