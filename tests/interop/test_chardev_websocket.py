"""``-chardev socket,websocket=on`` against an independent WebSocket client: the
``websockets`` library (PyPI), driving QMP in a real netstackd; plus raw-socket hostile
frames that must drop only their own connection."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests.interop.chardev_peers import chardev_port, daemon_with, listening

pytestmark = pytest.mark.timeout(90)

WS_ARGS = [
    "-chardev", "socket,id=ws0,host=127.0.0.1,port=0,server=on,wait=off,websocket=on",
    "-mon", "chardev=ws0,mode=control",
]  # fmt: skip


async def qmp(ws: Any, cmd: str, args: dict[str, Any] | None = None, *, text: bool = True) -> Any:
    msg = {"execute": cmd, **({"arguments": args} if args else {})}
    await ws.send(json.dumps(msg) if text else json.dumps(msg).encode())
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if "event" not in reply:
            return reply


async def test_qmp_over_websocket_with_websockets_library(tmp_path: Path) -> None:
    with daemon_with(tmp_path, WS_ARGS) as daemon:
        port = await chardev_port(daemon, "ws0")
        async with websockets.connect(f"ws://127.0.0.1:{port}/", subprotocols=["binary"]) as ws:
            assert ws.subprotocol == "binary"
            greeting = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(greeting, bytes)  # QEMU sends binary frames
            assert "QMP" in json.loads(greeting)
            assert await qmp(ws, "qmp_capabilities") == {"return": {}}
            # text and binary frames both carry commands
            reply = await qmp(ws, "netdev_add", {"id": "p0", "type": "hubport", "hubid": 0})
            assert reply == {"return": {}}
            reply = await qmp(ws, "query-chardev", text=False)
            (entry,) = [e for e in reply["return"] if e["label"] == "ws0"]
            assert entry["filename"].startswith(f"websocket:127.0.0.1:{port},server=on <-> ")
            assert entry["frontend-open"] is True
            pong = await ws.ping(b"netstack")
            await asyncio.wait_for(pong, 10)
            # a command bigger than one 16-bit frame, fragmented by the library
            long_id = "x" * 70000
            await ws.send(json.dumps({"execute": "query-version", "id": long_id}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["id"] == long_id and reply["return"]["qemu"]["major"] >= 7
        # the library's close handshake completed normally
        assert ws.close_code == 1000
        # a second client, no subprotocol offered: works too
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
            assert ws.subprotocol is None
            await asyncio.wait_for(ws.recv(), 10)
            assert await qmp(ws, "qmp_capabilities") == {"return": {}}
            reply = await qmp(ws, "query-netdev", {"name": "p0"})
            assert reply["return"][0]["id"] == "p0"
        assert daemon.proc.poll() is None


async def test_handshake_refusals_seen_by_the_library(tmp_path: Path) -> None:
    with daemon_with(tmp_path, WS_ARGS) as daemon:
        port = await chardev_port(daemon, "ws0")
        with pytest.raises(InvalidStatus) as err:
            async with websockets.connect(f"ws://127.0.0.1:{port}/qmp"):
                pass
        assert err.value.response.status_code == 404
        assert err.value.response.headers["Server"] == "QEMU VNC"
        with pytest.raises(InvalidStatus) as err:
            async with websockets.connect(f"ws://127.0.0.1:{port}/", subprotocols=["chat"]):
                pass
        assert err.value.response.status_code == 400


def _masked(opcode: int, payload: bytes, *, mask: bool = True) -> bytes:
    head = bytes((0x80 | opcode, (0x80 if mask else 0) | len(payload)))
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _raw_open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 101 ")
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        if len(data) > 1 << 20:
            break
    return data


async def test_hostile_frames_drop_only_their_connection(tmp_path: Path) -> None:
    with daemon_with(tmp_path, WS_ARGS) as daemon:
        port = await chardev_port(daemon, "ws0")
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as good:
            await asyncio.wait_for(good.recv(), 10)
            assert await qmp(good, "qmp_capabilities") == {"return": {}}
            hostile = [
                _masked(0x2, b'{"execute":"qmp_capabilities"}', mask=False),  # unmasked
                _masked(0x3, b"x"),  # unknown opcode
                bytes((0x89, 0x80 | 126)) + struct.pack(">H", 200) + b"mask",  # big control
                bytes((0x82, 0xFF)) + struct.pack(">Q", 1 << 62) + b"mask",  # oversize
                _masked(0x1, b"\xff\xfe\xfd"),  # text that is not UTF-8
                b"\x00" * 64,  # continuation of nothing
            ]
            for raw in hostile:
                sock = await asyncio.to_thread(_raw_open, port)
                try:
                    await asyncio.to_thread(sock.sendall, raw)
                    data = await asyncio.to_thread(_read_until_closed, sock)
                finally:
                    sock.close()
                # the greeting (binary frame), then a close frame ends the connection
                assert b"\x88" in data, (raw, data)
                assert "return" in await qmp(good, "query-version")
            # an oversized message from a real client library: closed with 1009
            async with websockets.connect(f"ws://127.0.0.1:{port}/", max_size=None) as big:
                await asyncio.wait_for(big.recv(), 10)
                with pytest.raises(ConnectionClosedError):  # the close may cut the send short
                    await big.send(b" " * (2 << 20))
                    await asyncio.wait_for(big.recv(), 10)
                assert big.close_code == 1009
            assert "return" in await qmp(good, "query-version")
        assert daemon.proc.poll() is None
        log = daemon.output()
        assert "client websocket frames must be masked" in log
        assert "frame of 2097152 bytes exceeds 1048576" in log


QEMU = shutil.which("qemu-system-x86_64")
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def _request(**drop_or_set: str | None) -> bytes:
    headers = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Key": KEY, "Sec-WebSocket-Version": "13"}  # fmt: skip
    path = drop_or_set.pop("path", None) or "/"
    for name, value in drop_or_set.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    text = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (text + "\r\n").encode()


def _answer(port: int, request: bytes) -> list[str]:
    """The HTTP answer's lines, without the Date header (until the blank line, or until
    the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return [line for line in head.split("\r\n") if not line.startswith("Date: ")]


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
async def test_handshake_answers_match_qemu(tmp_path: Path) -> None:
    assert QEMU is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        qport = probe.getsockname()[1]
    qemu = subprocess.Popen(
        [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-chardev",
         f"socket,id=ws0,host=127.0.0.1,port={qport},server=on,wait=off,websocket=on",
         "-mon", "chardev=ws0,mode=control"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # refusals first: after an accepted upgrade QEMU 7.2 never notices the client left
    # (it does not read websocket input) and accepts no further client
    requests = [
        _request(Sec_WebSocket_Protocol="chat"),
        _request(Sec_WebSocket_Key=None),
        _request(Sec_WebSocket_Version="8"),
        _request(Connection="keep-alive"),
        _request(path="/other"),
        _request(Sec_WebSocket_Protocol="binary"),
    ]
    try:
        for _ in range(300):
            if listening(qport):
                break
            await asyncio.sleep(0.1)
        theirs = []
        for req in requests:
            theirs.append(await asyncio.to_thread(_answer, qport, req))
            await asyncio.sleep(0.3)  # QEMU takes one client at a time
    finally:
        qemu.terminate()
        qemu.wait(10)
    with daemon_with(tmp_path, WS_ARGS) as daemon:
        port = await chardev_port(daemon, "ws0")
        ours = [await asyncio.to_thread(_answer, port, req) for req in requests]
    # QEMU's 400 answer lacks the blank line that ends HTTP headers; ours has it
    assert [[x for x in a if x] for a in ours] == [[x for x in a if x] for a in theirs]
    assert theirs[0][0] == "HTTP/1.1 400 Bad Request"
    assert theirs[4][0] == "HTTP/1.1 404 Not Found"
    assert theirs[5][0] == "HTTP/1.1 101 Switching Protocols"
    assert "Sec-WebSocket-Protocol: binary" in theirs[5]
