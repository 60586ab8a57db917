"""Conformance case: the vhost-user netdev, its outside a test front end (guest memory in a
memfd, split rings, kick/call eventfds) speaking over the daemon's unix socket.

The outside recycles its buffers: receive buffers are re-posted as soon as their frame is
read (none while paused, so the daemon runs out and pushes back), transmit buffers return
to a pool when the daemon has used them.
"""

from __future__ import annotations

import asyncio
import collections
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import drivers.vhost_user as vu
from drivers import hubport
from drivers.vhost_user.virtqueue import DESC_F_WRITE
from netstack.daemon import Netstack
from netstack.qapi import parse_chardev_cli, parse_netdev_cli
from tests.conformance.harness import DriverCase, Outside
from tests.kit.vhost_user import DESC, GuestSetup, SocketFrontend

NUM = 256
BUF = 2048


class VhostUserOutside(Outside):
    can_pause = True

    def __init__(self, guest: GuestSetup, fe: SocketFrontend) -> None:
        self.guest = guest
        self.fe = fe
        self.paused = False
        self._got: collections.deque[bytes] = collections.deque()
        self._held: list[int] = []  # receive buffers read while paused (not re-posted)
        ram = guest.ram
        rx = guest.rings[0]
        for _ in range(NUM):  # every receive buffer posted once, then recycled
            rx.publish(rx.add_chain([(ram.alloc(BUF, 64), BUF, DESC_F_WRITE)]))
        self._tx_pool = [ram.alloc(BUF, 64) for _ in range(64)]
        self._tx_busy: dict[int, int] = {}  # head -> buffer
        guest.kick(0)

    async def send(self, frame: bytes) -> None:
        guest = self.guest
        ring = guest.rings[1]
        for head, _n in ring.take_used():
            self._tx_pool.append(self._tx_busy.pop(head))
            ring.release(head)
        addr = self._tx_pool.pop()
        guest.ram.write(addr, bytes(12) + frame)
        head = ring.add_chain([(addr, 12 + len(frame), 0)])
        self._tx_busy[head] = addr
        ring.publish(head)
        guest.kick(1)

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self._got:
            self._drain()
            if self._got:
                break
            if loop.time() > end:
                return None
            await asyncio.sleep(0.005)
        return self._got.popleft()

    def _drain(self) -> None:
        guest = self.guest
        ring = guest.rings[0]
        used = ring.take_used()
        for head, length in used:
            addr = struct.unpack_from("<Q", guest.ram.read(ring.desc + 16 * head, DESC.size))[0]
            data = guest.ram.read(addr, length)
            assert struct.unpack_from("<H", data, 10)[0] == 1  # num_buffers
            self._got.append(data[12:])
            if self.paused:
                self._held.append(head)
            else:
                ring.publish(head)
        if used and not self.paused:
            guest.kick(0)

    async def pause(self) -> None:
        self.paused = True

    async def resume(self) -> None:
        self.paused = False
        ring = self.guest.rings[0]
        for head in self._held:
            ring.publish(head)
        self._held.clear()
        self.guest.kick(0)

    async def close(self) -> None:
        self.fe.close()
        self.guest.close()


class VhostUserCase(DriverCase):
    type = "vhost-user"
    id = "vhost-user"

    def registry(self) -> dict[str, object]:
        return {"vhost-user": vu.SPEC, "hubport": hubport.SPEC}

    @asynccontextmanager
    async def start(self, ns: Netstack) -> AsyncIterator[Outside]:
        path = ns.runtime_dir / "dut-vhost.sock"
        await ns.chardev_add(
            parse_chardev_cli(f"socket,id=cdut,path={path},server=on,wait=off"), from_cli=True
        )
        (nc,) = await ns.netdev_add(parse_netdev_cli(f"vhost-user,id={self.name},chardev=cdut"))
        assert isinstance(nc, vu.VhostUserClient)
        guest = GuestSetup(num=NUM, size=8 << 20)
        fe = await SocketFrontend.connect(str(path))
        await fe.start(guest)
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while not (nc.netdev.device.rx_ready(0) and nc.netdev.device.tx_queue(0).ready):
            assert loop.time() < end, "the vhost-user rings never started"
            await asyncio.sleep(0.01)
        yield VhostUserOutside(guest, fe)
