"""socket / stream / dgram against QEMU 7.2 used as a pure switch (``-machine none``).

QEMU's own netdevs are the independent peer: a QEMU with two netdevs on its hub 0 sits in
the middle of a path whose ends are Python sockets of the test acting as QEMU-compatible
peers, and a netstack daemon (in-process, on the test's event loop) with its own netdevs
on its own hubs forms the rest. Crafted frames cross both switches and must arrive
byte-exact (the stream ends check the raw wire bytes, length headers included) in both
directions. Covered: ``stream`` (QEMU as client of our server, and as server of our
client; inet and unix), legacy ``socket`` (QEMU's ``connect=`` to our ``listen=``, our
``connect=`` to QEMU's ``listen=``), ``dgram`` (inet and unix), multicast (``socket,mcast``
and ``dgram`` with a multicast remote, on 127.0.0.1). Finally the validation texts and
``info network`` strings of ``socket`` and ``dgram`` are compared with QEMU's own over QMP.

Every QEMU is stopped by PID when its test ends; only loopback and temporary paths are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import drivers.socket as socket_driver
from drivers import stream
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.proto.streamframe import encode_frames
from netstack.qapi import netdev_from_qmp, parse_netdev_cli
from tests.kit.polling import until

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU"),
]


HEAD = bytes.fromhex("020000000002020000000001" + "88b5")


def crafted(tag: int, largest: int = 65535) -> list[bytes]:
    """Frames of several sizes (up to ``largest`` bytes) with recognisable contents."""
    out = []
    for size in (60, 64, 1514, 9000, largest):
        head = HEAD + bytes([tag, size & 0xFF])
        body = bytes((i * 7 + tag) & 0xFF for i in range(size - len(head)))
        out.append(head + body)
    return out


@contextlib.asynccontextmanager
async def qemu(*netdevs: str, qmp: Path | None = None) -> AsyncIterator[asyncio.subprocess.Process]:
    """QEMU ``-machine none`` with ``netdevs``, each put on hub 0 by a hubport."""
    argv = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none"]
    if qmp is not None:
        argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    for spec in netdevs:
        nid = spec.split("id=", 1)[1].split(",", 1)[0]
        argv += ["-netdev", spec, "-netdev", f"hubport,id=h{nid},hubid=0,netdev={nid}"]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def add(ns: Netstack, text: str, hub: int | None = None) -> NetClient:
    nc = (await ns.netdev_add(parse_netdev_cli(text)))[0]
    if hub is not None:
        await ns.netdev_add(parse_netdev_cli(f"hubport,id=h{nc.name},hubid={hub},netdev={nc.name}"))
    return nc


async def connect_retry(family: int, addr: Any, timeout: float = 10.0) -> socket.socket:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
            return sock
        except OSError:
            sock.close()
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


class StreamEnd:
    """A QEMU-compatible stream peer: sends framed frames, checks raw wire bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.raw = bytearray()

    async def send(self, frames: Sequence[bytes]) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, encode_frames(frames))

    async def expect(self, frames: Sequence[bytes], timeout: float = 10.0) -> None:
        want = encode_frames(frames)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while len(self.raw) < len(want):
                data = await loop.sock_recv(self.sock, 1 << 20)
                assert data, "connection closed"
                self.raw += data
        assert bytes(self.raw[: len(want)]) == want  # byte-exact, headers included
        del self.raw[: len(want)]

    async def drain(self, quiet: float = 0.3) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            while True:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 20), quiet)
                assert data
        self.raw.clear()

    def close(self) -> None:
        self.sock.close()


class DgramEnd:
    """A QEMU-compatible datagram peer."""

    def __init__(self, sock: socket.socket, dest: Any) -> None:
        sock.setblocking(False)
        self.sock, self.dest = sock, dest

    async def send(self, frames: Sequence[bytes]) -> None:
        for f in frames:
            self.sock.sendto(f, self.dest)
            await asyncio.sleep(0.002)  # keep QEMU's one-datagram-per-wakeup reader ahead

    async def expect(self, frames: Sequence[bytes], timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        async with asyncio.timeout(timeout):
            while len(got) < len(frames):
                got.append(await loop.sock_recv(self.sock, 70000))
        assert got == list(frames)

    async def drain(self, quiet: float = 0.3) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            while True:
                await asyncio.wait_for(loop.sock_recv(self.sock, 70000), quiet)

    def close(self) -> None:
        self.sock.close()


End = StreamEnd | DgramEnd


async def probe(a: End, b: End, timeout: float = 10.0) -> None:
    """Send a small probe from ``a`` until ``b`` sees one (links come up asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    marker = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x09" + b"\x88\xb5probe" + bytes(41)
    while True:
        await a.send([marker])
        try:
            await b.expect([marker], timeout=0.3)
            break
        except (TimeoutError, AssertionError):
            if loop.time() > deadline:
                raise AssertionError("no path between the two ends") from None
            if isinstance(b, StreamEnd):
                b.raw.clear()
    await a.drain()
    await b.drain()


async def exchange(a: End, b: End) -> None:
    """Crafted frames both ways, byte-exact (the largest a UDP datagram can carry)."""
    largest = 65507 if isinstance(a, DgramEnd) or isinstance(b, DgramEnd) else 65535
    await a.send(crafted(1, largest))
    await b.expect(crafted(1, largest))
    await b.send(crafted(2, largest))
    await a.expect(crafted(2, largest))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_end(dest: Any) -> DgramEnd:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return DgramEnd(sock, dest)


# -- stream --------------------------------------------------------------------------------


async def test_stream_qemu_client_of_ours_and_ours_client_of_qemu(
    ns: Netstack, tmp_path: Path
) -> None:
    """A <-> our unix server | hub 0 | our inet server <- QEMU client | QEMU hub |
    QEMU unix server <- our client (reconnect) | hub 1 | our unix server <-> B."""
    events: list[tuple[str, Any]] = []
    ns.add_listener(lambda name, data: events.append((name, data)))
    a_path, b_path, q_path = tmp_path / "a.sock", tmp_path / "b.sock", tmp_path / "q.sock"
    await add(ns, f"stream,id=ta,server=on,addr.type=unix,addr.path={a_path}", hub=0)
    srv = await add(
        ns, "stream,id=s0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port=0", hub=0
    )
    assert isinstance(srv, stream.StreamServer) and srv.listener is not None
    port = srv.listener.getsockname()[1]
    cli = await add(ns, f"stream,id=c1,addr.type=unix,addr.path={q_path},reconnect-ms=100", hub=1)
    await add(ns, f"stream,id=tb,server=on,addr.type=unix,addr.path={b_path}", hub=1)
    async with qemu(
        f"stream,id=q0,addr.type=inet,addr.host=127.0.0.1,addr.port={port}",
        f"stream,id=q1,server=on,addr.type=unix,addr.path={q_path}",
    ):
        await until(lambda: not srv.link_down and not cli.link_down)
        assert srv.info_str.startswith("tcp:127.0.0.1:")
        assert cli.info_str == f"unix:{q_path}"
        connected = {
            data["netdev-id"]: data["addr"] for name, data in events if name.endswith("CONNECTED")
        }
        assert connected["s0"]["type"] == "inet" and connected["s0"]["ipv4"] is True
        assert connected["c1"] == {"type": "unix", "path": str(q_path)}
        a = StreamEnd(await connect_retry(socket.AF_UNIX, str(a_path)))
        b = StreamEnd(await connect_retry(socket.AF_UNIX, str(b_path)))
        await probe(a, b)
        await exchange(a, b)
        a.close()
        b.close()
    await until(lambda: srv.link_down and srv.info_str == "listening")
    assert ("NETDEV_STREAM_DISCONNECTED", {"netdev-id": "s0"}) in events


# -- legacy socket ---------------------------------------------------------------------------


async def test_socket_connect_and_listen_with_qemu(ns: Netstack, tmp_path: Path) -> None:
    """A <-> our unix server | hub 0 | our listen= <- QEMU connect= | QEMU hub |
    QEMU listen= <- our connect= | hub 1 | our unix server <-> B."""
    a_path, b_path = tmp_path / "a.sock", tmp_path / "b.sock"
    await add(ns, f"stream,id=ta,server=on,addr.type=unix,addr.path={a_path}", hub=0)
    lsn = await add(ns, "socket,id=l0,listen=127.0.0.1:0", hub=0)
    assert isinstance(lsn, socket_driver.SocketListen) and lsn.listener is not None
    port = lsn.listener.getsockname()[1]
    qport = free_port()
    async with qemu(
        f"socket,id=q0,connect=127.0.0.1:{port}", f"socket,id=q1,listen=127.0.0.1:{qport}"
    ):
        await until(lambda: not lsn.link_down)
        assert lsn.info_str.startswith("socket: connection from 127.0.0.1:")
        (await connect_retry(socket.AF_INET, ("127.0.0.1", qport))).close()  # QEMU is up
        await asyncio.sleep(0.2)
        con = await add(ns, f"socket,id=c1,connect=127.0.0.1:{qport}", hub=1)
        assert con.info_str == f"socket: connect to 127.0.0.1:{qport}"
        await add(ns, f"stream,id=tb,server=on,addr.type=unix,addr.path={b_path}", hub=1)
        a = StreamEnd(await connect_retry(socket.AF_UNIX, str(a_path)))
        b = StreamEnd(await connect_retry(socket.AF_UNIX, str(b_path)))
        await probe(a, b)
        await exchange(a, b)
        a.close()
        b.close()
    await until(lambda: lsn.link_down and con.link_down)
    assert lsn.info_str == "" and con.info_str == ""


# -- dgram -----------------------------------------------------------------------------------


async def test_dgram_inet_and_unix_with_qemu(ns: Netstack, tmp_path: Path) -> None:
    """A <-> our dgram inet | hub 0 | our dgram unix <-> QEMU dgram unix | QEMU hub |
    QEMU dgram inet <-> B."""
    a = udp_end(None)
    b = udp_end(None)
    our_inet, q_inet = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    a.dest, b.dest = ("127.0.0.1", our_inet), ("127.0.0.1", q_inet)
    ours_u, theirs_u = tmp_path / "ours.dg", tmp_path / "theirs.dg"
    d0 = await add(
        ns,
        f"dgram,id=d0,local.type=inet,local.host=127.0.0.1,local.port={our_inet},"
        f"remote.type=inet,remote.host=127.0.0.1,remote.port={a.sock.getsockname()[1]}",
        hub=0,
    )
    d1 = await add(
        ns,
        f"dgram,id=d1,local.type=unix,local.path={ours_u},remote.type=unix,remote.path={theirs_u}",
        hub=0,
    )
    assert d0.info_str == f"udp=127.0.0.1:{our_inet}/127.0.0.1:{a.sock.getsockname()[1]}"
    assert d1.info_str == f"udp={ours_u}:{theirs_u}"
    async with qemu(
        f"dgram,id=q1,local.type=unix,local.path={theirs_u},remote.type=unix,remote.path={ours_u}",
        f"dgram,id=q0,local.type=inet,local.host=127.0.0.1,local.port={q_inet},"
        f"remote.type=inet,remote.host=127.0.0.1,remote.port={b.sock.getsockname()[1]}",
    ):
        await probe(a, b)
        await exchange(a, b)
    a.close()
    b.close()


async def test_multicast_with_qemu(ns: Netstack, tmp_path: Path) -> None:
    """A <-> our unix server | hub 0 | our socket,mcast ~ group ~ QEMU socket,mcast |
    QEMU hub | QEMU dgram inet <-> B; then the same with our dgram multicast netdev.
    Multicast loops back: each side also hears its own frames (QEMU's behaviour)."""
    port = free_port(socket.SOCK_DGRAM)
    group = f"230.0.3.{port % 200 + 10}:{port}"
    b = udp_end(None)
    q_inet = free_port(socket.SOCK_DGRAM)
    b.dest = ("127.0.0.1", q_inet)
    a_path = tmp_path / "a.sock"
    await add(ns, f"stream,id=ta,server=on,addr.type=unix,addr.path={a_path}", hub=0)
    m = await add(ns, f"socket,id=m0,mcast={group},localaddr=127.0.0.1", hub=0)
    assert m.info_str == f"socket: mcast={group}"
    async with qemu(
        f"socket,id=qm,mcast={group},localaddr=127.0.0.1",
        f"dgram,id=q0,local.type=inet,local.host=127.0.0.1,local.port={q_inet},"
        f"remote.type=inet,remote.host=127.0.0.1,remote.port={b.sock.getsockname()[1]}",
    ):
        a = StreamEnd(await connect_retry(socket.AF_UNIX, str(a_path)))
        await probe(a, b)
        sent_a, sent_b = crafted(1, 65507), crafted(2, 65507)
        await a.send(sent_a)
        await b.expect(sent_a)
        await a.expect(sent_a)  # our own multicast came back to us
        await b.send(sent_b)
        await a.expect(sent_b)
        await b.expect(sent_b)  # and QEMU's came back to QEMU
        ns.netdev_del("hm0")
        ns.netdev_del("m0")
        host, gport = group.split(":")
        await add(
            ns,
            f"dgram,id=m1,remote.type=inet,remote.host={host},remote.port={gport},"
            "local.type=inet,local.host=127.0.0.1,local.port=0",
            hub=0,
        )
        await a.drain()
        await b.drain()
        await probe(a, b)
        await b.send(crafted(3, 65507))
        await a.expect(crafted(3, 65507))
        a.close()
    b.close()


# -- texts compared with QEMU's own ------------------------------------------------------------


ERROR_CASES: list[dict[str, Any]] = [
    {"type": "socket"},
    {"type": "socket", "listen": "127.0.0.1:1", "connect": "127.0.0.1:2"},
    {"type": "socket", "listen": "127.0.0.1:0", "localaddr": "127.0.0.1:0"},
    {"type": "socket", "udp": "127.0.0.1:5"},
    {"type": "socket", "listen": "nocolon"},
    {"type": "socket", "listen": "1.2.3.4.5:80"},
    {"type": "socket", "listen": "127.0.0.1:abc"},
    {"type": "socket", "listen": "127.0.0.1:"},
    {"type": "socket", "listen": "127.0.0.1:99999999999999999999"},
    {"type": "socket", "listen": "[::1:5000"},  # no "]:": QEMU's reading, not our IPv6
    {"type": "socket", "mcast": "127.0.0.1:5000"},
    {"type": "socket", "mcast": "230.0.0.1:5000", "localaddr": "bad"},
    {"type": "socket", "mcast": "230.0.0.1:5000", "localaddr": "127.0.0.1:77"},
    {"type": "socket", "udp": "127.0.0.1:5", "localaddr": "192.0.2.199:0"},
    {"type": "socket", "fd": "abc"},
    {"type": "socket", "connect": " 127.0.0.1:22"},
    {"type": "dgram"},
    {"type": "dgram", "local": {"type": "inet", "host": "127.0.0.1", "port": "0"}},
    {
        "type": "dgram",
        "local": {"type": "fd", "str": "3"},
        "remote": {"type": "inet", "host": "127.0.0.1", "port": "5"},
    },
    {
        "type": "dgram",
        "local": {"type": "unix", "path": "/tmp/x"},
        "remote": {"type": "inet", "host": "127.0.0.1", "port": "5"},
    },
    {
        "type": "dgram",
        "remote": {"type": "inet", "host": "230.0.0.1", "port": "5"},
        "local": {"type": "unix", "path": "/tmp/z"},
    },
    {
        "type": "dgram",
        "remote": {"type": "inet", "host": "230.0.0.1", "port": "5"},
        "local": {"type": "inet", "host": "bad", "port": "0"},
    },
    {"type": "dgram", "remote": {"type": "inet", "host": "127.0.0.1", "port": "x"}},
    {
        "type": "dgram",
        "local": {"type": "vsock", "cid": "1", "port": "2"},
        "remote": {"type": "vsock", "cid": "1", "port": "2"},
    },
    {"type": "dgram", "local": {"type": "fd", "str": "nosuchfd"}},
]


def info_cases(tmp: Path) -> list[dict[str, Any]]:
    """Options that succeed and print the same ``info network`` text in both."""
    port = free_port(socket.SOCK_DGRAM)
    return [
        {"type": "socket", "udp": "127.1:010", "localaddr": "127.0.0.1:0"},
        {"type": "socket", "udp": "127.0.0.1:-1", "localaddr": "127.0.0.1:0"},
        {"type": "socket", "mcast": f"230.0.4.1:{port}", "localaddr": "127.0.0.1"},
        {"type": "socket", "listen": "127.0.0.1:0"},
        {
            "type": "dgram",
            "local": {"type": "inet", "host": "127.0.0.1", "port": "0"},
            "remote": {"type": "inet", "host": "127.1", "port": "0x10"},
        },
        {
            "type": "dgram",
            "remote": {"type": "inet", "host": "230.0.4.3", "port": str(port)},
            "local": {"type": "inet", "host": "127.0.0.1", "port": "9"},
        },
    ]


def dgram_unix_case(tmp: Path, who: str) -> dict[str, Any]:
    return {
        "type": "dgram",
        "local": {"type": "unix", "path": str(tmp / f"{who}-l")},
        "remote": {"type": "unix", "path": str(tmp / "r")},
    }


async def test_texts_match_qemu(ns: Netstack, tmp_path: Path) -> None:
    qemu_mod = pytest.importorskip("qemu.qmp")
    qmp_path = tmp_path / "qmp.sock"
    async with qemu(qmp=qmp_path):
        await until(qmp_path.exists)
        client = qemu_mod.QMPClient("texts")
        await client.connect(str(qmp_path))
        try:
            for i, case in enumerate(ERROR_CASES):
                args = {**case, "id": f"e{i}"}
                with pytest.raises(qemu_mod.ExecuteError) as theirs:
                    await client.execute("netdev_add", args)
                with pytest.raises(GenericError) as ours:
                    await ns.netdev_add(netdev_from_qmp(args))
                assert ours.value.desc == theirs.value.error.error.desc, case
            cases = info_cases(tmp_path)
            for i, case in enumerate(cases):
                await client.execute("netdev_add", {**case, "id": f"i{i}"})
                await ns.netdev_add(netdev_from_qmp({**case, "id": f"i{i}"}))
            await client.execute("netdev_add", {**dgram_unix_case(tmp_path, "x"), "id": "u"})
            await ns.netdev_add(netdev_from_qmp({**dgram_unix_case(tmp_path, "x"), "id": "u"}))
            theirs_info = await client.execute(
                "human-monitor-command", {"command-line": "info network"}
            )
        finally:
            await client.disconnect()
    assert str(theirs_info).replace("\r\n", "\n") == ns.info_network()
