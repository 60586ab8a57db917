"""Conformance cases: socket listen/connect/udp, stream server/client, dgram inet/unix."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import drivers.socket as socket_driver
from drivers import dgram, hubport, stream
from netstack.daemon import Netstack
from netstack.proto.streamframe import FrameDecoder, encode_frames
from netstack.qapi import parse_netdev_cli
from tests.conformance.harness import DriverCase, Outside
from tests.kit.polling import until

REG = {s.type: s for s in (hubport.SPEC, socket_driver.SPEC, stream.SPEC, dgram.SPEC)}


class StreamOutside(Outside):
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.frames: list[bytes] = []
        self.sock, self.dec, self.paused = sock, FrameDecoder(), False

    async def send(self, frame: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, encode_frames([frame]))

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while not self.frames:
                    data = await loop.sock_recv(self.sock, 65536)
                    self.frames += self.dec.feed(data)
        except TimeoutError:
            return None
        return self.frames.pop(0)

    async def close(self) -> None:
        self.sock.close()


class DgramOutside(Outside):
    can_pause = False

    def __init__(self, sock: socket.socket, dest) -> None:  # type: ignore[no-untyped-def]
        sock.setblocking(False)
        self.sock, self.dest = sock, dest

    async def send(self, frame: bytes) -> None:
        self.sock.sendto(frame, self.dest)

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        try:
            return await asyncio.wait_for(
                asyncio.get_running_loop().sock_recv(self.sock, 70000), timeout
            )
        except TimeoutError:
            return None

    async def close(self) -> None:
        self.sock.close()


class SocketListenCase(DriverCase):
    id = "socket-listen"
    type = "socket"

    def registry(self) -> dict[str, object]:
        return dict(REG)

    @asynccontextmanager
    async def start(self, ns: Netstack) -> AsyncIterator[Outside]:
        nc = (await ns.netdev_add(parse_netdev_cli(f"socket,id={self.name},listen=127.0.0.1:0")))[0]
        port = nc.listener.getsockname()[1]  # type: ignore[attr-defined]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 17)  # before connect
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        await until(lambda: not nc.link_down)
        yield StreamOutside(sock)


class StreamClientCase(DriverCase):
    id = "stream-client-unix"
    type = "stream"

    def registry(self) -> dict[str, object]:
        return dict(REG)

    @asynccontextmanager
    async def start(self, ns: Netstack) -> AsyncIterator[Outside]:
        path = tempfile.mktemp(prefix="conf-st-")
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(path)
        srv.listen(1)
        srv.setblocking(False)
        nc = (
            await ns.netdev_add(
                parse_netdev_cli(f"stream,id={self.name},addr.type=unix,addr.path={path}")
            )
        )[0]
        conn, _ = await asyncio.get_running_loop().sock_accept(srv)
        srv.close()
        Path(path).unlink()
        await until(lambda: not nc.link_down)
        yield StreamOutside(conn)


class DgramUnixCase(DriverCase):
    id = "dgram-unix"
    type = "dgram"

    def registry(self) -> dict[str, object]:
        return dict(REG)

    @asynccontextmanager
    async def start(self, ns: Netstack) -> AsyncIterator[Outside]:
        d = tempfile.mkdtemp(prefix="conf-dg-")
        far = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        far.bind(f"{d}/far")
        await ns.netdev_add(
            parse_netdev_cli(
                f"dgram,id={self.name},local.type=unix,local.path={d}/near,remote.type=unix,remote.path={d}/far"
            )
        )
        yield DgramOutside(far, f"{d}/near")


class SocketUdpCase(DriverCase):
    id = "socket-udp"
    type = "socket"

    def registry(self) -> dict[str, object]:
        return dict(REG)

    @asynccontextmanager
    async def start(self, ns: Netstack) -> AsyncIterator[Outside]:
        far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        far.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as t:
            t.bind(("127.0.0.1", 0))
            near = t.getsockname()[1]
        await ns.netdev_add(
            parse_netdev_cli(
                f"socket,id={self.name},udp=127.0.0.1:{far.getsockname()[1]},localaddr=127.0.0.1:{near}"
            )
        )
        yield DgramOutside(far, ("127.0.0.1", near))
