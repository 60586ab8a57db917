"""Hostile byte streams against a socket chardev with every protocol layer QEMU stacks
without TLS (websocket, then telnet), over real loopback connections: mutated valid
traffic and random bytes, each connection on its own. The house rule as assertions: no
exception reaches the loop, connections end (never hang past the handshake timeout),
protocol errors are counted, and a well-behaved client is served afterwards."""

from __future__ import annotations

import asyncio
import os
import random
import struct
from typing import Any

import pytest

from netstack.chardev import ChardevTable, Connection
from netstack.chardev import sockets as chardev_sockets
from netstack.qapi import chardev_from_qmp

pytestmark = pytest.mark.timeout(180)

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class Echo:
    multi_connection = True
    raw_socket = False

    def __init__(self) -> None:
        self.breaks = 0

    def on_break(self) -> None:
        self.breaks += 1

    async def serve(self, conn: Connection) -> None:
        while data := await conn.read():
            conn.write(data)
            await conn.drain()


def frame(rng: random.Random) -> bytes:
    opcode = rng.choice([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xF])
    payload = rng.randbytes(rng.choice([0, 1, 5, 125, 126, 300, 70000]))
    if rng.random() < 0.5:  # telnet inside
        payload = rng.choice([b"\xff\xff", b"\xff\xf3", b"\xff\xfa\x18", b"\xff\xfd\x1f",
                              b"\xff\xf0", b"\xff"]) + payload  # fmt: skip
    b0 = (0x80 if rng.random() < 0.8 else 0) | opcode | (0x40 if rng.random() < 0.05 else 0)
    size = len(payload)
    masked = 0x80 if rng.random() < 0.95 else 0
    if size < 126:
        head = bytes((b0, masked | size))
    elif size < 65536:
        head = struct.pack(">BBH", b0, masked | 126, size)
    else:
        head = struct.pack(">BBQ", b0, masked | 127, size)
    key = rng.randbytes(4)
    if masked:
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(0, 4)):
        if not buf:
            break
        at = rng.randrange(len(buf))
        choice = rng.random()
        if choice < 0.4:
            buf[at] = rng.randrange(256)
        elif choice < 0.6:
            del buf[at:]
        elif choice < 0.8:
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        else:
            del buf[at : at + rng.randint(1, 16)]
    return bytes(buf)


def stream(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.1:
        return rng.randbytes(rng.randint(0, 6000))
    if kind < 0.3:
        return mutate(rng, HANDSHAKE) + rng.randbytes(rng.randint(0, 64))
    body = b"".join(frame(rng) for _ in range(rng.randint(1, 6)))
    return HANDSHAKE + (mutate(rng, body) if rng.random() < 0.7 else body)


async def exchange(port: int, data: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(chardev_sockets.HANDSHAKE_TIMEOUT + 5):
            while await reader.read(65536):
                pass
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def test_hostile_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chardev_sockets, "HANDSHAKE_TIMEOUT", 1.0)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    table = ChardevTable()
    try:
        data = {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}},
                "wait": False, "websocket": True, "telnet": True}  # fmt: skip
        await table.add(chardev_from_qmp("h", {"type": "socket", "data": data}))
        dev = table.get("h")
        assert isinstance(dev, chardev_sockets.SocketChardev)
        dev.attach(Echo())
        port = int(dev.filename().split(":")[3].split(",")[0])
        rng = random.Random(int(os.environ.get("NETSTACK_FUZZ_SEED", "13")))
        streams = [stream(rng) for _ in range(240)]
        for i in range(0, len(streams), 16):  # 16 hostile clients at a time
            await asyncio.gather(*(exchange(port, s) for s in streams[i : i + 16]))
        assert dev.errors > 20  # the broken ones were noticed and counted
        # a well-behaved client still gets the telnet negotiation and its echo
        import websockets

        async with websockets.connect(f"ws://127.0.0.1:{port}/") as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == bytes.fromhex("fffb01fffb03fffb00fffd00")
            await ws.send(b"still here \xff\xff")
            assert await asyncio.wait_for(ws.recv(), 5) == b"still here \xff\xff"
        await asyncio.sleep(0.2)
        assert not errors, errors
        assert not dev.connections or all(not c.closed for c in dev.connections)
    finally:
        await table.close_all()
