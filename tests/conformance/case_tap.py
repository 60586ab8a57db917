"""Conformance case: tap, with the kernel of a network namespace as the far side.

The netdev is made with ``x-netns`` straight inside a namespace the case creates; the
outside is an ``AF_PACKET`` socket bound to the tap in that namespace (created on a
thread that entered it). Frames the outside sends leave the kernel through the tap into
the daemon; frames the daemon writes to the tap are seen by the packet socket as incoming.
IPv6 is disabled in the namespace so that the kernel sends nothing of its own.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from drivers import hubport, tap
from drivers.tap.netns import call_in_netns, open_netns
from netstack.daemon import Netstack
from netstack.qapi import parse_netdev_cli
from tests.conformance.harness import DriverCase, Outside
from tests.kit.netns import ip, netns, require_root

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def packet_socket(ns: str, ifname: str) -> socket.socket:
    """A non-blocking AF_PACKET socket bound to ``ifname`` inside namespace ``ns``."""
    nsfd = open_netns(ns)
    try:

        def make() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind((ifname, 0))
            return sock

        sock = call_in_netns(nsfd, make)
    finally:
        os.close(nsfd)
    sock.setblocking(False)
    return sock


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class PacketOutside(Outside):
    """The namespace's side of the tap."""

    can_pause = False  # the kernel takes every frame a tap is given, or drops it

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            left = end - loop.time()
            if left <= 0:
                return None
            try:
                data, addr = self.sock.recvfrom(70000)
            except BlockingIOError:
                ready: asyncio.Future[None] = loop.create_future()
                loop.add_reader(self.sock.fileno(), _wake, ready)
                try:
                    await asyncio.wait_for(ready, left)
                except TimeoutError:
                    return None
                finally:
                    loop.remove_reader(self.sock.fileno())
                continue
            if addr[2] != PACKET_OUTGOING:
                return data

    async def close(self) -> None:
        self.sock.close()


class TapCase(DriverCase):
    id = "tap-netns"
    type = "tap"
    #: vnet_hdr value of the netdev under test.
    vnet_hdr = "on"

    def registry(self) -> dict[str, object]:
        return {"tap": tap.SPEC, "hubport": hubport.SPEC}

    @asynccontextmanager
    async def start(self, ns: Netstack) -> AsyncIterator[Outside]:
        require_root()
        with netns("nsc", ipv6=False) as name:
            await ns.netdev_add(
                parse_netdev_cli(
                    f"tap,id={self.name},ifname=ct0,script=no,downscript=no,"
                    f"vnet_hdr={self.vnet_hdr},x-netns={name}"
                )
            )
            ip("-n", name, "link", "set", "ct0", "up")
            outside = PacketOutside(packet_socket(name, "ct0"))
            try:
                yield outside
            finally:
                await outside.close()
                if ns.find_netdev(self.name) is not None:
                    ns.netdev_del(self.name)


class TapPlainCase(TapCase):
    id = "tap-netns-novnet"
    vnet_hdr = "off"
