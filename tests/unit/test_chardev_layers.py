"""Socket chardevs with protocol layers, in process: filenames, option rules that QEMU
applies (telnet only for servers, raw-socket front ends refused), handshake timeouts."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from netstack.chardev import ChardevTable, Connection
from netstack.chardev import sockets as chardev_sockets
from netstack.errors import GenericError
from netstack.qapi import chardev_from_qmp
from tests.kit.clock import running


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


@pytest.mark.manual_clock
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
    await running().advance(5)  # neither at once nor later
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


class Upper(Sink):
    async def serve(self, conn: Connection) -> None:
        while data := await conn.read():
            self.got += data
            conn.write(data.upper())
            await conn.drain()


async def test_websocket_serves_any_front_end_and_counts_bad_clients(table: ChardevTable) -> None:
    import websockets

    await table.add(chardev_from_qmp("w", inet(websocket=True)))
    dev = table.get("w")
    assert isinstance(dev, chardev_sockets.SocketChardev)
    front = Upper()
    dev.attach(front)
    port = int(dev.filename().split(":")[3].split(",")[0])
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send(b"\x00\xffbinary")
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\xffBINARY"
    assert front.got == b"\x00\xffbinary"
    assert dev.errors == 0
    # an unmasked frame after a good handshake: dropped, counted, the chardev serves on
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        b"\x82\x03abc"
    )
    data = await asyncio.wait_for(reader.read(), 5)
    assert data.startswith(b"HTTP/1.1 101 ") and data.endswith(
        b"\x88\x1e\x03\xeaclient frames must be masked"
    )
    assert dev.errors == 1 and dev.last_error == "client websocket frames must be masked"
    writer.close()
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        await ws.send("text too")
        assert await asyncio.wait_for(ws.recv(), 5) == b"TEXT TOO"


async def test_telnet_inside_websocket(table: ChardevTable) -> None:
    """QEMU's stacking: the telnet negotiation travels inside the websocket."""
    import websockets

    await table.add(chardev_from_qmp("wt", inet(websocket=True, telnet=True)))
    dev = table.get("wt")
    assert dev is not None
    front = Upper()
    dev.attach(front)
    port = int(dev.filename().split(":")[3].split(",")[0])
    async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
        assert await asyncio.wait_for(ws.recv(), 5) == bytes.fromhex("fffb01fffb03fffb00fffd00")
        await ws.send(b"\xff\xfd\x1fab\xff\xffc")  # DO NAWS (refused), data, escaped 0xFF
        assert await asyncio.wait_for(ws.recv(), 5) == b"\xff\xfc\x1f"
        assert await asyncio.wait_for(ws.recv(), 5) == b"AB\xff\xffC"
    assert front.got == b"ab\xffc"


async def test_tn3270_scripted_client(table: ChardevTable) -> None:
    front, port = Sink(), 0
    await table.add(chardev_from_qmp("t", inet(tn3270=True)))
    dev = table.get("t")
    assert dev is not None
    dev.attach(front)
    port = int(dev.filename().split(":")[3].split(",")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    init = await asyncio.wait_for(reader.readexactly(21), 5)
    assert init == bytes.fromhex("fffd19fffb19fffd00fffb00fffd18fffa1801fff0")
    # a 3270 emulator's answers: WILL/DO EOR, WILL/DO BINARY, WILL TTYPE, the type, a record
    answers = bytes.fromhex("fffb19fffd19fffb00fffd00fffb18")
    ttype = bytes.fromhex("fffa1800") + b"IBM-3278-2-E" + bytes.fromhex("fff0")
    record = b"\x7d\x40\x40" + bytes.fromhex("ffef")
    writer.write(answers + ttype + record)
    await writer.drain()
    for _ in range(50):
        if front.got.endswith(b"\xff\xef"):
            break
        await asyncio.sleep(0.05)
    assert front.got == ttype + record  # QEMU hands SB/SE/EOR to the 3270 front end
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.3)  # nothing refused: no answer
    writer.close()


async def test_ping_flood_without_reading_stays_bounded(table: ChardevTable) -> None:
    from netstack.chardev.layers import REPLY_HIGH_WATER

    await table.add(chardev_from_qmp("p", inet(websocket=True)))
    dev = table.get("p")
    assert dev is not None
    dev.attach(Sink())
    port = int(dev.filename().split(":")[3].split(",")[0])
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    ping = b"\x89\xfd" + b"\x00\x00\x00\x00" + b"p" * 125  # masked with a zero key
    sock.setblocking(False)
    flood = memoryview(ping * 20000)  # ~2.6 MB of pings, never reading the pongs
    deadline = asyncio.get_running_loop().time() + 20
    while flood and asyncio.get_running_loop().time() < deadline:
        try:
            flood = flood[sock.send(flood) :]
        except BlockingIOError:
            await asyncio.sleep(0.01)
    assert not flood
    await asyncio.sleep(0.2)
    (conn,) = dev.connections
    assert isinstance(dev, chardev_sockets.SocketChardev) and dev.errors == 0
    assert conn.buffered() <= REPLY_HIGH_WATER + 2 * len(ping)
    sock.close()
