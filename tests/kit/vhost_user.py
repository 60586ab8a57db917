"""A tiny vhost-user *front end* for tests: guest memory in a memfd, the driver side of
split rings, the message sequence a front end sends, and a socket client for it.

It is deliberately raw: tests use it to build exactly the rings they want, hostile ones
included (loops, addresses outside memory, wrong flags). The rig's own tests are in
``tests/unit/test_vhost_user_guest.py``; a full front end for tools and benches lives in
``tools/vhost_user_frontend``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import mmap
import os
import socket
import struct
from collections.abc import Sequence

import pytest

from drivers.vhost_user import protocol as vp
from drivers.vhost_user.features import (
    F_INDIRECT_DESC,
    F_MRG_RXBUF,
    F_PROTOCOL_FEATURES,
    F_VERSION_1,
)
from drivers.vhost_user.memory import RegionSpec
from drivers.vhost_user.virtqueue import DESC_F_NEXT, DESC_F_WRITE

UADDR_BASE = 0x7F00_0000_0000
DESC = struct.Struct("<QIHH")
DEFAULT_FEATURES = (
    (1 << F_VERSION_1) | (1 << F_MRG_RXBUF) | (1 << F_INDIRECT_DESC) | (1 << F_PROTOCOL_FEATURES)
)


class GuestRam:
    """Guest memory: one memfd mapped here; guest-physical address == offset + ``gpa``."""

    def __init__(self, size: int = 4 << 20, gpa: int = 0, uaddr: int = UADDR_BASE) -> None:
        self.size = size
        self.gpa = gpa
        self.uaddr = uaddr
        self.fd = os.memfd_create("vhost-user-test-guest")
        os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size)
        self._next = 0x1000

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.mm.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def spec(self) -> RegionSpec:
        return RegionSpec(gpa=self.gpa, size=self.size, uaddr=self.uaddr, mmap_offset=0)

    def alloc(self, size: int, align: int = 16) -> int:
        """A guest-physical address of ``size`` fresh bytes."""
        at = (self._next + align - 1) // align * align
        if at + size > self.size:
            raise MemoryError("guest ram exhausted")
        self._next = at + size
        return self.gpa + at

    def write(self, gpa: int, data: bytes) -> None:
        at = gpa - self.gpa
        self.mm[at : at + len(data)] = data

    def read(self, gpa: int, size: int) -> bytes:
        at = gpa - self.gpa
        return self.mm[at : at + size]

    def uva(self, gpa: int) -> int:
        return gpa - self.gpa + self.uaddr


class DriverRing:
    """The driver's side of one split ring in :class:`GuestRam`."""

    def __init__(self, ram: GuestRam, num: int = 256) -> None:
        self.ram = ram
        self.num = num
        self.desc = ram.alloc(16 * num, 16)
        self.avail = ram.alloc(4 + 2 * num + 2, 2)
        self.used = ram.alloc(4 + 8 * num + 2, 4)
        self.avail_idx = 0
        self.last_used = 0
        self._free = list(range(num))

    # -- descriptors -------------------------------------------------------------------------

    def set_desc(self, index: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.ram.write(self.desc + 16 * index, DESC.pack(addr, length, flags, nxt))

    def add_chain(self, bufs: Sequence[tuple[int, int, int]]) -> int:
        """Descriptors for ``(addr, len, flags)`` pieces chained with NEXT; returns the head."""
        ids = [self._free.pop(0) for _ in bufs]
        for k, (addr, length, flags) in enumerate(bufs):
            last = k == len(bufs) - 1
            self.set_desc(
                ids[k],
                addr,
                length,
                flags | (0 if last else DESC_F_NEXT),
                0 if last else ids[k + 1],
            )
        return ids[0]

    def release(self, head: int) -> None:
        """Give a used chain's descriptors back (follows NEXT in the table)."""
        index = head
        for _ in range(self.num):
            self._free.append(index)
            _a, _l, flags, nxt = DESC.unpack(self.ram.read(self.desc + 16 * index, 16))
            if not flags & DESC_F_NEXT:
                return
            index = nxt

    def publish(self, head: int) -> None:
        slot = self.avail_idx % self.num
        self.ram.write(self.avail + 4 + 2 * slot, struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.ram.write(self.avail + 2, struct.pack("<H", self.avail_idx))

    def set_avail_idx(self, value: int) -> None:
        """Write ``avail.idx`` as is (hostile tests)."""
        self.ram.write(self.avail + 2, struct.pack("<H", value & 0xFFFF))

    def set_avail_flags(self, flags: int) -> None:
        self.ram.write(self.avail, struct.pack("<H", flags))

    def set_used_event(self, value: int) -> None:
        self.ram.write(self.avail + 4 + 2 * self.num, struct.pack("<H", value & 0xFFFF))

    # -- used ring -------------------------------------------------------------------------

    @property
    def used_idx(self) -> int:
        return int(struct.unpack("<H", self.ram.read(self.used + 2, 2))[0])

    @property
    def used_flags(self) -> int:
        return int(struct.unpack("<H", self.ram.read(self.used, 2))[0])

    @property
    def avail_event(self) -> int:
        return int(struct.unpack("<H", self.ram.read(self.used + 4 + 8 * self.num, 2))[0])

    def take_used(self) -> list[tuple[int, int]]:
        """Used elements published since the last call."""
        out = []
        while self.last_used != self.used_idx:
            slot = self.last_used % self.num
            out.append(struct.unpack("<II", self.ram.read(self.used + 4 + 8 * slot, 8)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return [(int(i), int(n)) for i, n in out]

    # -- messages --------------------------------------------------------------------------

    def addr_payload(self, index: int) -> bytes:
        ram = self.ram
        return struct.pack(
            "=IIQQQQ", index, 0, ram.uva(self.desc), ram.uva(self.used), ram.uva(self.avail), 0
        )


def msg(request: int, payload: bytes = b"", fds: Sequence[int] = (), flags: int = 1) -> vp.Message:
    return vp.Message(request, flags, payload, list(fds))


def u64(value: int) -> bytes:
    return struct.pack("=Q", value)


def state(index: int, num: int) -> bytes:
    return struct.pack("=II", index, num)


def mem_table(specs: Sequence[RegionSpec]) -> bytes:
    out = struct.pack("=II", len(specs), 0)
    for s in specs:
        out += struct.pack("=QQQQ", s.gpa, s.size, s.uaddr, s.mmap_offset)
    return out


def region_payload(spec: RegionSpec) -> bytes:
    return u64(0) + struct.pack("=QQQQ", spec.gpa, spec.size, spec.uaddr, spec.mmap_offset)


class GuestSetup:
    """A guest with RAM and one ring per vring, and the messages that start it."""

    def __init__(
        self, pairs: int = 1, num: int = 256, features: int = DEFAULT_FEATURES, size: int = 4 << 20
    ) -> None:
        self.ram = GuestRam(size)
        self.features = features
        self.rings = [DriverRing(self.ram, num) for _ in range(2 * pairs)]
        self.kicks = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.rings]
        self.calls = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in self.rings]

    def close(self) -> None:
        for fd in (*self.kicks, *self.calls):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.ram.close()

    def start_messages(self, protocol_features: int = vp.PROTOCOL_FEATURES) -> list[vp.Message]:
        """QEMU's order: features, owner, memory, then per ring num/base/addr/kick/call,
        then enable (descriptors are duplicated: the session takes ownership)."""
        out = [
            msg(vp.GET_FEATURES),
            msg(vp.GET_PROTOCOL_FEATURES),
            msg(vp.SET_PROTOCOL_FEATURES, u64(protocol_features)),
            msg(vp.SET_OWNER),
            msg(vp.SET_FEATURES, u64(self.features)),
            msg(vp.SET_MEM_TABLE, mem_table([self.ram.spec()]), [os.dup(self.ram.fd)]),
        ]
        for i, ring in enumerate(self.rings):
            out += [
                msg(vp.SET_VRING_NUM, state(i, ring.num)),
                msg(vp.SET_VRING_BASE, state(i, 0)),
                msg(vp.SET_VRING_ADDR, ring.addr_payload(i)),
                msg(vp.SET_VRING_KICK, u64(i), [os.dup(self.kicks[i])]),
                msg(vp.SET_VRING_CALL, u64(i), [os.dup(self.calls[i])]),
            ]
        out += [msg(vp.SET_VRING_ENABLE, state(i, 1)) for i in range(len(self.rings))]
        return out

    def kick(self, index: int) -> None:
        os.eventfd_write(self.kicks[index], 1)

    def calls_pending(self, index: int) -> int:
        try:
            return os.eventfd_read(self.calls[index])
        except BlockingIOError:
            return 0

    # -- frames ----------------------------------------------------------------------------

    def post_rx_buffers(self, count: int, size: int = 2048, pair: int = 0) -> list[int]:
        ring = self.rings[2 * pair]
        addrs = []
        for _ in range(count):
            addr = self.ram.alloc(size, 64)
            ring.publish(ring.add_chain([(addr, size, DESC_F_WRITE)]))
            addrs.append(addr)
        return addrs

    def send_frames(self, frames: Sequence[bytes], pair: int = 0, hdr: bytes = bytes(12)) -> None:
        ring = self.rings[2 * pair + 1]
        for f in frames:
            data = hdr + f
            addr = self.ram.alloc(len(data), 16)
            self.ram.write(addr, data)
            ring.publish(ring.add_chain([(addr, len(data), 0)]))

    def received(self, pair: int = 0, hdr_len: int = 12) -> list[tuple[bytes, bytes]]:
        """``(header, frame)`` for each used receive buffer (single-buffer frames)."""
        ring = self.rings[2 * pair]
        out = []
        for head, length in ring.take_used():
            addr, _l, _f, _n = DESC.unpack(self.ram.read(ring.desc + 16 * head, 16))
            data = self.ram.read(addr, length)
            out.append((data[:hdr_len], data[hdr_len:]))
        return out


class SocketFrontend:
    """Sends messages over a unix socket to a back end (descriptors as SCM_RIGHTS)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    @classmethod
    async def connect(cls, path: str, timeout: float = 5.0) -> SocketFrontend:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, path)
                return cls(sock)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.02)

    def close(self) -> None:
        self.sock.close()

    async def send(self, m: vp.Message) -> bytes | None:
        """Send ``m`` (its descriptors are closed here afterwards); the reply's payload if
        the request has one (or asked for one)."""
        data = vp.encode(m.request, m.payload, m.flags)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", m.fds))] if m.fds else []
        self.sock.sendmsg([data], anc)
        m.close_fds()
        if m.request in _REPLIES or m.need_reply:
            return await self.reply(m.request)
        return None

    async def reply(self, request: int, timeout: float = 5.0) -> bytes:
        loop = asyncio.get_running_loop()
        head = await asyncio.wait_for(self._exactly(loop, 12), timeout)
        req, flags, size = vp.HEADER.unpack(head)
        assert flags == vp.REPLY_FLAGS, f"reply flags {flags:#x}"
        assert req == request, f"reply to {req}, expected {request}"
        return await asyncio.wait_for(self._exactly(loop, size), timeout) if size else b""

    async def _exactly(self, loop: asyncio.AbstractEventLoop, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = await loop.sock_recv(self.sock, n - len(buf))
            if not chunk:
                raise ConnectionError("back end closed the connection")
            buf += chunk
        return buf

    async def start(self, guest: GuestSetup, protocol_features: int = vp.PROTOCOL_FEATURES) -> None:
        for m in guest.start_messages(protocol_features):
            await self.send(m)


_REPLIES = {
    vp.GET_FEATURES,
    vp.GET_PROTOCOL_FEATURES,
    vp.GET_QUEUE_NUM,
    vp.GET_VRING_BASE,
    vp.GET_MAX_MEM_SLOTS,
    vp.GET_STATUS,
    vp.GET_CONFIG,
    vp.GET_INFLIGHT_FD,
}


#: The two implementations of the split-ring loops: ``drivers/vhost_user/_vring.c`` through
#: ``fastring``, and the pure-Python reference (``txpath``/``rxpath``).
RING_IMPLS = ("compiled", "python")


def use_ring_impl(monkeypatch: pytest.MonkeyPatch, impl: str) -> None:
    """Make every ``NetDevice`` created from now on run the ``impl`` ring loops (skips the
    test for ``compiled`` when the extension is not built or Python is forced)."""
    from drivers.vhost_user import fastring

    if impl == "python":
        monkeypatch.setattr(fastring, "load", lambda: None)
    elif fastring.load() is None:
        pytest.skip("drivers.vhost_user._vring is not built (or NETSTACK_PURE_PYTHON is set)")
