"""``-chardev socket,telnet=on`` / ``tn3270=on`` against real peers: Debian's ``telnet``
client driven under a pty, QEMU 7.2's own telnet chardev (the negotiation bytes must be
the same), and scripted raw sockets (QMP through telnet, hostile IAC sequences)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netstack.chardev import ChardevTable, Connection
from netstack.qapi import chardev_from_qmp
from tests.interop.chardev_peers import chardev_port, daemon_with

pytestmark = pytest.mark.timeout(90)

QEMU = shutil.which("qemu-system-x86_64")
TELNET = shutil.which("telnet")
QEMU_TELNET = bytes.fromhex("fffb01fffb03fffb00fffd00")
QEMU_TN3270 = bytes.fromhex("fffd19fffb19fffd00fffb00fffd18fffa1801fff0")


class Upper:
    """A front end that answers in upper case and counts breaks."""

    multi_connection = False
    raw_socket = False

    def __init__(self) -> None:
        self.received = b""
        self.breaks = 0

    def on_break(self) -> None:
        self.breaks += 1

    async def serve(self, conn: Connection) -> None:
        while data := await conn.read():
            self.received += data
            conn.write(data.upper())
            await conn.drain()


async def telnet_chardev(table: ChardevTable, **extra: Any) -> tuple[Upper, int]:
    data = {"addr": {"type": "inet", "data": {"host": "127.0.0.1", "port": "0"}},
            "server": True, "wait": False, **extra}  # fmt: skip
    await table.add(chardev_from_qmp("t0", {"type": "socket", "data": data}))
    dev = table.get("t0")
    assert dev is not None
    front = Upper()
    dev.attach(front)
    port = int(dev.filename().split(":")[3].split(",")[0])
    return front, port


class PtyClient:
    """A program on a pseudo-terminal: what a user would type and see."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        os.set_blocking(self.master, False)
        self.seen = b""

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    async def expect(self, needle: bytes, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not seen in {self.seen!r}")
            with contextlib.suppress(BlockingIOError, OSError):
                self.seen += os.read(self.master, 4096)
            await asyncio.sleep(0.05)
        return self.seen

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        os.close(self.master)


@contextlib.contextmanager
def pty_client(argv: list[str]) -> Iterator[PtyClient]:
    client = PtyClient(argv)
    try:
        yield client
    finally:
        client.close()


@pytest.mark.skipif(TELNET is None, reason="telnet not installed")
async def test_debian_telnet_client_char_mode_iac_and_break(table: ChardevTable) -> None:
    front, port = await telnet_chardev(table, telnet=True)
    assert TELNET is not None
    with pty_client([TELNET, "-E", "127.0.0.1", str(port)]) as client:
        await client.expect(b"Connected to")
        # character mode (the server WILL ECHO and SUPPRESS-GO-AHEAD): each key goes at
        # once, the server's echo is the only echo
        client.type(b"hello")
        await client.expect(b"HELLO")
        assert front.received == b"hello"
        # 0xFF both ways: the client sends IAC IAC, the server doubles it back
        client.type(b"\xff")
        await client.expect(b"HELLO\xff")
        assert front.received == b"hello\xff"
    # a break, sent from the client's command mode
    front2 = Upper()
    dev = table.get("t0")
    assert dev is not None
    dev.detach()
    dev.attach(front2)
    with pty_client([TELNET, "-e", "^]", "127.0.0.1", str(port)]) as client:
        await client.expect(b"Connected to")
        client.type(b"a")
        await client.expect(b"A")
        client.type(b"\x1d")
        await client.expect(b"telnet>")
        client.type(b"send brk\r")
        deadline = time.monotonic() + 10
        while front2.breaks == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert front2.breaks == 1
        client.type(b"b")
        await client.expect(b"B")
        assert front2.received == b"ab"


def _raw(port: int, send: bytes, want: int, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < want and time.monotonic() < deadline:
            if send:
                sock.sendall(send)
                send = b""
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


async def test_hostile_iac_sequences_keep_the_daemon_serving(table: ChardevTable) -> None:
    front, port = await telnet_chardev(table, telnet=True)
    hostile = (
        bytes((255, 250, 1)) + b"z" * 20000 + bytes((255, 240))  # huge subnegotiation
        + bytes((255, 253, 31)) * 500  # a flood of DO NAWS: refused once
        + bytes((255, 7, 255, 255, 255))  # unknown command, escaped IAC, IAC dangling
    )  # fmt: skip
    data = await asyncio.to_thread(_raw, port, hostile + b"\xffok", len(QEMU_TELNET) + 3 + 6)
    assert data.startswith(QEMU_TELNET)
    # the dangling IAC and the next 0xFF make one data byte 0xFF: two of them, doubled
    assert data[len(QEMU_TELNET) :] == bytes((255, 252, 31)) + b"\xff" * 4 + b"OK"
    assert front.received.endswith(b"\xff\xffok")


async def test_qmp_through_telnet_in_netstackd(tmp_path: Path) -> None:
    args = [
        "-chardev", "socket,id=t0,host=127.0.0.1,port=0,server=on,wait=off,telnet=on",
        "-mon", "chardev=t0,mode=control",
    ]  # fmt: skip
    with daemon_with(tmp_path, args) as daemon:
        port = await chardev_port(daemon, "t0")
        cmd = b'\xff\xf1{"execute":"qmp_capabilities"}\r\n{"execute":"query-chardev"}\r\n'
        data = await asyncio.to_thread(_raw, port, cmd, 400)
        assert data.startswith(QEMU_TELNET)
        assert b'{"return": {}}' in data
        assert f"telnet:127.0.0.1:{port},server=on <-> 127.0.0.1:".encode() in data


@pytest.mark.qemu
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize(("option", "expected"), [("telnet", QEMU_TELNET),
                                                  ("tn3270", QEMU_TN3270)])  # fmt: skip
async def test_negotiation_bytes_match_qemu(tmp_path: Path, option: str, expected: bytes) -> None:
    assert QEMU is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        qport = probe.getsockname()[1]
    qemu = subprocess.Popen(
        [QEMU, "-machine", "none", "-nodefaults", "-display", "none",
         "-chardev", f"socket,id=t,host=127.0.0.1,port={qport},server=on,wait=off,{option}=on",
         "-mon", "chardev=t,mode=control"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        qemu_bytes = b""
        for _ in range(100):
            with contextlib.suppress(OSError):
                qemu_bytes = await asyncio.to_thread(_raw, qport, b"", 30)
                break
            await asyncio.sleep(0.1)
        args = [
            "-chardev", f"socket,id=t0,host=127.0.0.1,port=0,server=on,wait=off,{option}=on",
            "-mon", "chardev=t0,mode=control",
        ]  # fmt: skip
        with daemon_with(tmp_path, args) as daemon:
            port = await chardev_port(daemon, "t0")
            ours = await asyncio.to_thread(_raw, port, b"", 30)
    finally:
        qemu.terminate()
        qemu.wait(10)
    assert qemu_bytes[: len(expected)] == expected
    assert ours[: len(expected)] == expected
    # then both send the QMP greeting
    assert qemu_bytes[len(expected) :].startswith(b'{"QMP":')
    assert ours[len(expected) :].startswith(b'{"QMP":')
