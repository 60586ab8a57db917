"""The splicer on a real asyncio loop with real host sockets on 127.0.0.1, no root: the
"guest" is another TCP endpoint in this process whose frames go straight into the
splicer and back."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from drivers.user.tcp import (
    Event,
    Segment,
    TcpConfig,
    TcpEndpoint,
    TcpSplicer,
    ethernet_header,
    parse_frame,
)
from netstack.proto.tcp import ACK, RST
from tests.kit.polling import until

GUEST, FAR = bytes([10, 0, 2, 15]), bytes([10, 0, 2, 2])
MAC_GW, MAC_GUEST = bytes.fromhex("52550a000202"), bytes.fromhex("525400123456")


class GuestSide:
    """A guest TCP stack made of one endpoint; the splicer is its network."""

    def __init__(self, loop: asyncio.AbstractEventLoop, splicer_kw: dict[str, Any]) -> None:
        self.loop = loop
        self.frames: list[bytes] = []  # what the splicer sent to the guest
        self.cfg = splicer_kw.pop("config", TcpConfig(time_wait=0.1))
        self.splicer = TcpSplicer(
            loop, self.cfg, send=self.receive, l2_for=self.l2_for, **splicer_kw
        )
        self.ep: TcpEndpoint | None = None
        self.out: list[bytes] = []
        self.got = bytearray()
        self.ticker = loop.create_task(self.tick())

    @staticmethod
    def l2_for(seg: Segment) -> bytes:
        return ethernet_header(seg.mac, MAC_GW, seg.v6)

    def connect(self, port: int, sport: int = 40000) -> TcpEndpoint:
        l2 = ethernet_header(MAC_GW, MAC_GUEST, False)
        self.ep = TcpEndpoint.connect(GUEST, FAR, sport, port, self.loop.time(), config=self.cfg,
                                      l2=l2, out=self.out)  # fmt: skip
        self.pump()
        return self.ep

    def pump(self) -> None:
        if self.out:
            frames = self.out[:]
            self.out.clear()
            self.splicer.guest_frames(frames)

    def receive(self, frames: Sequence[bytes]) -> None:
        self.frames.extend(frames)
        now = self.loop.time()
        for f in frames:
            seg = parse_frame(f)
            if isinstance(seg, Segment) and self.ep is not None and not self.ep.done:
                self.ep.segment_from_guest(seg, now)
        if self.ep is not None:
            self.ep.flush(now)
            n = self.ep.host_pending
            if n:
                self.got += b"".join(bytes(c) for c in self.ep.host_chunks(10_000))
                self.ep.host_written(n, now)
        self.loop.call_soon(self.pump)

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            if self.ep is not None and not self.ep.done:
                self.ep.timer(self.loop.time())
                self.pump()

    def close(self) -> None:
        self.ticker.cancel()
        self.splicer.close()


def to_loopback(seg: Segment) -> tuple[int, tuple[Any, ...]] | int:
    return socket.AF_INET, ("127.0.0.1", seg.dport)


async def test_echo_through_the_splicer() -> None:
    loop = asyncio.get_running_loop()
    received = hashlib.md5()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.update(data)
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    g = GuestSide(loop, {"resolve": to_loopback})
    try:
        ep = g.connect(port)
        payload = os.urandom(3 << 20)
        await until(lambda: ep.state.name == "ESTABLISHED")
        fed = 0
        while fed < len(payload):
            room = ep.host_read_room
            if room:
                n = min(room, len(payload) - fed)
                ep.host_data(payload[fed : fed + n], loop.time())
                fed += n
                g.pump()
            await asyncio.sleep(0.001)
        ep.host_eof(loop.time())
        g.pump()
        await until(lambda: len(g.got) == len(payload))
        assert bytes(g.got) == payload
        assert received.hexdigest() == hashlib.md5(payload).hexdigest()
        await until(lambda: ep.done)
        await until(lambda: not g.splicer.flows)
        assert g.splicer.stats["event-closed"] == 1
    finally:
        g.close()
        server.close()
        await server.wait_closed()


async def test_refused_connect_is_answered_with_rst() -> None:
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    g = GuestSide(loop, {"resolve": to_loopback})
    try:
        ep = g.connect(port)
        await until(lambda: ep.done)
        assert ep.events[-1][0] is Event.REFUSED
        assert g.splicer.stats["event-connect-failed"] == 1
    finally:
        g.close()


async def test_resolver_rejection_and_unknown_flows() -> None:
    loop = asyncio.get_running_loop()
    g = GuestSide(loop, {"resolve": lambda seg: errno.EHOSTUNREACH})
    try:
        g.connect(80)
        assert g.frames and g.frames[-1][23] == 1  # ICMP host unreachable
        assert g.splicer.stats["rejected"] == 1 and not g.splicer.flows
        stray = TcpEndpoint(GUEST, FAR, 40001, 81, 0.0, config=g.cfg,
                            l2=ethernet_header(MAC_GW, MAC_GUEST, False))  # fmt: skip
        frame = stray.b.frame(123, 456, ACK, 100, b"data")
        g.splicer.guest_frames([frame])
        rst = parse_frame(g.frames[-1])
        assert isinstance(rst, Segment) and rst.flags == RST and rst.seq == 456
        assert g.splicer.stats["no-flow"] == 1
        g.splicer.guest_frames([b"garbage"])
        assert g.splicer.stats["eth-short"] == 1
    finally:
        g.close()


async def test_flow_limit_and_close_resets_everyone() -> None:
    loop = asyncio.get_running_loop()
    resets: list[str] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        except ConnectionResetError:
            resets.append("rst")  # the guest's end reached the host peer as a reset

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    g = GuestSide(loop, {"resolve": to_loopback, "max_flows": 1})
    try:
        ep = g.connect(port)
        await until(lambda: ep.state.name == "ESTABLISHED")
        second = TcpEndpoint.connect(GUEST, FAR, 40002, port, loop.time(), config=g.cfg,
                                     l2=ethernet_header(MAC_GW, MAC_GUEST, False))  # fmt: skip
        g.splicer.guest_frames(second.out)
        assert g.splicer.stats["flow-limit"] == 1
        g.splicer.close()
        assert ep.done and ep.events[-1][0] is Event.GUEST_RESET
        await until(lambda: bool(resets))
    finally:
        g.ticker.cancel()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("size", [0, 1, 100_000])
async def test_host_closes_first(size: int) -> None:
    loop = asyncio.get_running_loop()

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"g" * size)
        writer.write_eof()
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    g = GuestSide(loop, {"resolve": to_loopback})
    try:
        ep = g.connect(port)
        await until(lambda: ep.rx.fin_rcvd)
        assert bytes(g.got) == b"g" * size
        ep.host_eof(loop.time())
        g.pump()
        await until(lambda: not g.splicer.flows)
    finally:
        g.close()
        server.close()
        await server.wait_closed()
