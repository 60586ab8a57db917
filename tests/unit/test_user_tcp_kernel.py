"""The guest-side TCP endpoint against the real Linux TCP stack.

A network namespace plays the guest: its kernel owns a tap device whose file descriptor
we hold (opened inside the namespace, ``IFF_TAP | IFF_NO_PI``, plus ``IFF_VNET_HDR`` and
TSO/checksum offloads for the offload cases). The namespace has 10.0.2.15/24 and
fec0::15/64 with the gateway 10.0.2.2 / fec0::2 as a permanent neighbour, so no ARP or
NDP is needed. :class:`TapPort` reads guest frames from the fd into a
:class:`~drivers.user.tcp.TcpSplicer` and writes its frames back; the splicer connects
guest connections to servers on host loopback (10.0.2.2 -> 127.0.0.1, fec0::2 -> ::1,
same port). Clients and servers inside the namespace are ``ip netns exec NS python3``.

Checked: multi-megabyte transfers in both directions at once with md5 on both ends, for
IPv4 and IPv6, MSS-sized frames and TSO super-frames; window scaling negotiated and used
(the guest had more than 64 KiB unacknowledged); connection refused (RST) and host
unreachable (ICMP) answers; a hostfwd-style inbound connection to a server in the
namespace. Every namespace is deleted and every process killed by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from drivers.user.tcp import Event, TcpConfig, TcpEndpoint, TcpSplicer, ethernet_header
from netstack.proto.tcp import Segment
from tests.kit.netns import unique_name

GW_MAC = bytes.fromhex("52550a000202")
GUEST_MAC = bytes.fromhex("020000000f0f")
GUEST4, GW4 = "10.0.2.15", "10.0.2.2"
GUEST6, GW6 = "fec0::15", "fec0::2"
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
CLONE_NEWNET = 0x40000000
#: Guest port whose connects the resolver rejects as EHOSTUNREACH (ICMP path).
UNREACHABLE_PORT = 9


def can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, timeout=20, capture_output=True)


def _open_tap_in(ns: str, name: str, vnet: bool) -> int:
    """Open a tap in namespace ``ns`` from a short-lived thread that setns-es first."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            nsfd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(nsfd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(nsfd)
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet else 0)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
            if vnet:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 12))
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
            result["fd"] = fd
        except Exception as exc:  # reported to the caller below
            result["error"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join(10)
    if "error" in result:
        raise result["error"]
    return int(result["fd"])


class KernelGuest:
    """A namespace whose kernel is the guest, behind a tap whose fd we hold."""

    def __init__(self, vnet: bool, mtu: int = 1500) -> None:
        self.ns = unique_name("nstcp")
        self.vnet = vnet
        self.mtu = mtu
        self.fd = -1

    def __enter__(self) -> KernelGuest:
        ip("netns", "add", self.ns)
        try:
            self.fd = _open_tap_in(self.ns, "tap0", self.vnet)
            n = ["-n", self.ns]
            ip(*n, "link", "set", "lo", "up")
            ip(*n, "link", "set", "tap0", "address", ":".join(f"{b:02x}" for b in GUEST_MAC))
            ip(*n, "link", "set", "tap0", "mtu", str(self.mtu), "up")
            ip(*n, "addr", "add", f"{GUEST4}/24", "dev", "tap0")
            ip(*n, "-6", "addr", "add", f"{GUEST6}/64", "dev", "tap0", "nodad")
            gw = ":".join(f"{b:02x}" for b in GW_MAC)
            for addr in (GW4, GW6):
                ip(*n, "neigh", "add", addr, "lladdr", gw, "dev", "tap0", "nud", "permanent")
            ip(*n, "route", "add", "default", "via", GW4)
            ip(*n, "-6", "route", "add", "default", "via", GW6)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        subprocess.run(["ip", "netns", "del", self.ns], timeout=20, capture_output=True)

    def python(self, code: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, sys.executable, "-c", code, *args]


class TapPort:
    """The guest-facing port: frames from the tap fd into the splicer and back."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, guest: KernelGuest, cfg: TcpConfig,
        loss: float = 0.0,
    ) -> None:  # fmt: skip
        self.loop = loop
        #: Fraction of TCP frames dropped in each direction; as many are delayed behind
        #: the next frame (reordered). Seeded, so a failure replays.
        self.loss = loss
        self.rng = random.Random(7)
        self.held: dict[str, bytes] = {}
        self.data_frames: dict[str, int] = {}
        self.dropped = 0
        self.fd = guest.fd
        self.vnet = guest.vnet
        self.established: list[TcpEndpoint] = []
        self.events: list[tuple[Event, int]] = []
        self.splicer = TcpSplicer(
            loop, cfg, send=self.send, resolve=self.resolve, l2_for=self.l2_for,
            on_event=self.on_event,
        )  # fmt: skip
        self.write_errors = 0
        loop.add_reader(self.fd, self.readable)

    @staticmethod
    def l2_for(seg: Segment) -> bytes:
        return ethernet_header(seg.mac, GW_MAC, seg.v6)

    @staticmethod
    def resolve(seg: Segment) -> tuple[int, tuple[Any, ...]] | int:
        if seg.dport == UNREACHABLE_PORT:
            return errno.EHOSTUNREACH
        if seg.v6:
            return socket.AF_INET6, ("::1", seg.dport)
        return socket.AF_INET, ("127.0.0.1", seg.dport)

    def on_event(self, m: TcpEndpoint, event: Event, detail: int) -> None:
        self.events.append((event, detail))
        if event is Event.ESTABLISHED:
            self.established.append(m)

    def readable(self) -> None:
        frames: list[bytes] = []
        for _ in range(64):
            try:
                frames.append(os.read(self.fd, 65536 + 128))
            except BlockingIOError:
                break
        if frames:
            self.splicer.guest_frames(self.impair(frames, "in"), self.vnet)

    def impair(self, frames: list[bytes], way: str) -> list[bytes]:
        if not self.loss:
            return frames
        out: list[bytes] = []
        for f in frames:
            r = self.rng.random()
            big = len(f) > 100
            self.data_frames[way] = self.data_frames.get(way, 0) + big
            if big and (r < self.loss or self.data_frames[way] == 5):  # the 5th always
                self.dropped += 1
                continue
            out.append(f)
            held = self.held.pop(way, None)
            if held is not None:
                out.append(held)
            elif r > 1 - self.loss and len(f) > 100:
                self.held[way] = out.pop()
        return out

    def send(self, frames: Sequence[bytes]) -> None:
        for f in self.impair(list(frames), "out"):
            try:
                os.write(self.fd, f)
            except OSError:
                self.write_errors += 1

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.splicer.close()


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def exchange_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, result: dict[str, Any]
) -> None:
    """Send ``data`` while reading everything the client sends; record the md5."""

    async def send() -> None:
        for i in range(0, len(data), 1 << 20):
            writer.write(data[i : i + (1 << 20)])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    md5 = hashlib.md5()
    total = 0
    while chunk := await reader.read(1 << 18):
        md5.update(chunk)
        total += len(chunk)
    await sender
    result.update(md5=md5.hexdigest(), size=total)
    writer.close()


#: Run in the namespace: connect, send N bytes (seeded) from a thread while reading to
#: EOF; print JSON with the md5 and size of what came back (or the connect error).
CLIENT = r"""
import hashlib, json, random, socket, sys, threading
host, port, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(60)
try:
    s.connect((host, port))
except OSError as e:
    print(json.dumps({"error": e.errno})); sys.exit(0)
data = random.Random(seed).randbytes(size)
def send():
    s.sendall(data); s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send); t.start()
md5 = hashlib.md5(); n = 0
while True:
    b = s.recv(1 << 18)
    if not b: break
    md5.update(b); n += len(b)
t.join(); s.close()
print(json.dumps({"md5": md5.hexdigest(), "size": n}))
"""

#: Run in the namespace: accept one connection on argv[1]:argv[2], then like CLIENT.
SERVER = r"""
import hashlib, json, random, socket, sys, threading
host, port, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
ls = socket.socket(fam, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((host, port)); ls.listen(1); ls.settimeout(60)
print("READY", flush=True)
s, _ = ls.accept(); s.settimeout(60)
data = random.Random(seed).randbytes(size)
def send():
    s.sendall(data); s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send); t.start()
md5 = hashlib.md5(); n = 0
while True:
    b = s.recv(1 << 18)
    if not b: break
    md5.update(b); n += len(b)
t.join(); s.close()
print(json.dumps({"md5": md5.hexdigest(), "size": n}))
"""


async def run_proc(argv: list[str], timeout: float = 120) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    assert lines, f"no result from {argv[-5:]}: {err.decode()[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def outbound_transfer(
    guest: KernelGuest, port: TapPort, v6: bool, up: int, down: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The guest connects out to a host server; ``up`` bytes guest->host, ``down`` back."""
    server_result: dict[str, Any] = {}
    down_data = payload(down, 2)
    server = await asyncio.start_server(
        lambda r, w: exchange_server(r, w, down_data, server_result),
        "::1" if v6 else "127.0.0.1", 0,
    )  # fmt: skip
    try:
        host_port = server.sockets[0].getsockname()[1]
        client = await run_proc(
            guest.python(CLIENT, GW6 if v6 else GW4, str(host_port), str(up), "1")
        )
        for _ in range(100):
            if server_result:
                break
            await asyncio.sleep(0.05)
    finally:
        server.close()
        await server.wait_closed()
    return client, server_result


@contextlib.contextmanager
def harness(
    vnet: bool, cfg: TcpConfig | None = None, loss: float = 0.0
) -> Iterator[tuple[KernelGuest, TapPort]]:
    loop = asyncio.get_running_loop()
    with KernelGuest(vnet) as guest:
        port = TapPort(loop, guest, cfg or TcpConfig(vnet=vnet, time_wait=0.2), loss)
        try:
            yield guest, port
        finally:
            port.close()


async def settle(port: TapPort, seconds: float = 6.0) -> None:
    """Wait (bounded) until every connection ended, TIME_WAIT included."""
    for _ in range(int(seconds / 0.05)):
        if not port.splicer.flows:
            return
        await asyncio.sleep(0.05)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(can_run() is not None, reason=str(can_run())),
]

UP, DOWN = 6 << 20, 5 << 20


@pytest.mark.parametrize("vnet", [False, True], ids=["mss", "tso"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
async def test_bulk_both_ways(vnet: bool, v6: bool) -> None:
    with harness(vnet) as (guest, port):
        client, server = await outbound_transfer(guest, port, v6, UP, DOWN)
        assert client == {"md5": md5(payload(DOWN, 2)), "size": DOWN}
        assert server == {"md5": md5(payload(UP, 1)), "size": UP}
        assert len(port.established) == 1
        m = port.established[0]
        assert m.tx.snd_ws > 0 and m.rx.rcv_ws > 0, "window scaling not negotiated"
        assert m.rx.max_guest_flight > 65535, "the guest never used more than 64 KiB of window"
        assert m.tx.max_snd_wnd > 65535, "the guest's scaled window was never above 64 KiB"
        assert m.tx.sack_ok
        await settle(port)
        assert Event.CLOSED in [e for e, _ in port.events]
        assert not port.splicer.flows
        assert port.write_errors == 0


async def test_connection_refused_gets_rst() -> None:
    with harness(False) as (guest, _port):
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        free = closed.getsockname()[1]
        closed.close()  # nothing listens there: the host connect is refused
        result = await run_proc(guest.python(CLIENT, GW4, str(free), "10", "1"))
        assert result == {"error": errno.ECONNREFUSED}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
async def test_unreachable_gets_icmp(v6: bool) -> None:
    with harness(False) as (guest, port):
        target = GW6 if v6 else GW4
        result = await run_proc(guest.python(CLIENT, target, str(UNREACHABLE_PORT), "10", "1"))
        assert result == {"error": errno.EHOSTUNREACH}
        assert port.splicer.stats["rejected"] == 1


@pytest.mark.parametrize("vnet", [False, True], ids=["mss", "tso"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
async def test_inbound_forward(vnet: bool, v6: bool) -> None:
    """hostfwd: a host client's connection is opened to a server in the namespace."""
    up, down = 3 << 20, 4 << 20  # host->guest, guest->host
    with harness(vnet) as (guest, port):
        proc = await asyncio.create_subprocess_exec(
            *guest.python(SERVER, GUEST6 if v6 else GUEST4, "7000", str(down), "3"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.strip() == b"READY"
            listener = socket.create_server(("127.0.0.1", 0))
            listener.setblocking(False)
            host_port = listener.getsockname()[1]
            loop = asyncio.get_running_loop()
            results: dict[str, Any] = {}

            async def host_client() -> None:
                reader, writer = await asyncio.open_connection("127.0.0.1", host_port)
                await exchange_server(reader, writer, payload(up, 4), results)

            task = asyncio.create_task(host_client())
            accepted, _ = await loop.sock_accept(listener)
            listener.close()
            l2 = ethernet_header(GUEST_MAC, GW_MAC, v6)
            fam = socket.AF_INET6 if v6 else socket.AF_INET
            guest_ip = socket.inet_pton(fam, GUEST6 if v6 else GUEST4)
            local_ip = socket.inet_pton(fam, GW6 if v6 else GW4)
            m = port.splicer.forward(accepted, guest_ip, 7000, local_ip, 40001, l2)
            await asyncio.wait_for(task, 60)
            out, _err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        guest_result = json.loads(out.decode().splitlines()[-1])
        assert guest_result == {"md5": md5(payload(up, 4)), "size": up}
        assert results == {"md5": md5(payload(down, 3)), "size": down}
        assert m.tx.snd_ws > 0 and m.rx.rcv_ws > 0
        await settle(port)
        assert m.done
        assert Event.CLOSED in [e for e, _ in port.events]


@pytest.mark.parametrize("vnet", [False, True], ids=["mss", "tso"])
async def test_lossy_link(vnet: bool) -> None:
    """1 % of frames lost and 1 % reordered each way: both stacks recover, data intact."""
    up, down = 3 << 20, 3 << 20
    with harness(vnet, loss=0.01) as (guest, port):
        client, server = await outbound_transfer(guest, port, False, up, down)
        assert client == {"md5": md5(payload(down, 2)), "size": down}
        assert server == {"md5": md5(payload(up, 1)), "size": up}
        assert port.dropped > 0
        m = port.established[0]
        assert m.stats["retransmits"] > 0 or m.stats["out-of-order"] > 0
