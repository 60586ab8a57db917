"""Conformance case: l2tpv3 (UDP, IPv4) with a plain UDP socket as the far tunnel end."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from drivers import hubport, l2tpv3
from netstack.daemon import Netstack
from netstack.qapi import parse_netdev_cli
from tests.conformance.harness import DriverCase, Outside

TX_SESSION, RX_SESSION = 0x1111, 0x2222


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UdpTunnelEnd(Outside):
    can_pause = False

    def __init__(self, sock: socket.socket, dut_port: int) -> None:
        self.sock = sock
        self.dut = ("127.0.0.1", dut_port)

    async def send(self, frame: bytes) -> None:
        self.sock.sendto(struct.pack("!II", 0x00030000, RX_SESSION) + frame, self.dut)

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 70000), timeout)
        except TimeoutError:
            return None
        flags, session = struct.unpack_from("!II", data)
        assert flags == 0x00030000 and session == TX_SESSION
        return data[8:]

    async def close(self) -> None:
        self.sock.close()


class L2tpv3Case(DriverCase):
    id = "l2tpv3-udp"
    type = "l2tpv3"

    def registry(self) -> dict[str, object]:
        return {"l2tpv3": l2tpv3.SPEC, "hubport": hubport.SPEC}

    @asynccontextmanager
    async def start(self, ns: Netstack) -> AsyncIterator[Outside]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        far = sock.getsockname()[1]
        near = _free_udp_port()
        await ns.netdev_add(
            parse_netdev_cli(
                f"l2tpv3,id={self.name},src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={near},"
                f"dstport={far},txsession={TX_SESSION},rxsession={RX_SESSION}"
            )
        )
        yield UdpTunnelEnd(sock, near)
