"""Conformance case: vxlan (IPv4 loopback) with a plain UDP socket as the far VTEP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from drivers import hubport, vxlan
from netstack.daemon import Netstack
from netstack.proto.vxlan import header
from netstack.qapi import parse_netdev_cli
from tests.conformance.harness import DriverCase, Outside

VNI = 4242


class FarVtep(Outside):
    can_pause = False

    def __init__(self, sock: socket.socket, dut_port: int) -> None:
        self.sock = sock
        self.dut = ("127.0.0.1", dut_port)

    async def send(self, frame: bytes) -> None:
        self.sock.sendto(header(VNI) + frame, self.dut)

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        loop = asyncio.get_running_loop()
        try:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 70000), timeout)
        except TimeoutError:
            return None
        assert data[:8] == header(VNI)
        return data[8:]

    async def close(self) -> None:
        self.sock.close()


class VxlanCase(DriverCase):
    id = "vxlan-udp"
    type = "vxlan"

    def registry(self) -> dict[str, object]:
        return {"vxlan": vxlan.SPEC, "hubport": hubport.SPEC}

    @asynccontextmanager
    async def start(self, ns: Netstack) -> AsyncIterator[Outside]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        far = sock.getsockname()[1]
        (nc,) = await ns.netdev_add(
            parse_netdev_cli(
                f"vxlan,id={self.name},vni={VNI},local=127.0.0.1,localport=0,"
                f"remote=127.0.0.1,dstport={far},srcports=0"
            )
        )
        assert isinstance(nc, vxlan.VxlanClient)
        yield FarVtep(sock, nc.local_port)
