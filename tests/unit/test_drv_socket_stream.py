"""The ``stream`` netdev on loopback: server and client over inet, unix (path, abstract,
temporary) and fd addresses; info strings, link state, NETDEV_STREAM_* events (payloads as
QEMU 7.2 sends them), reconnect, validation texts, clean-up."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from drivers import stream
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.proto.streamframe import FrameDecoder, encode_frames, frame_header
from netstack.qapi import netdev_from_qmp, parse_netdev_cli
from tests.kit.clock import accept_after_retry, running
from tests.kit.polling import until
from tests.support import Recorder, frame

pytestmark = [pytest.mark.timeout(30), pytest.mark.manual_clock]


Event = tuple[str, Any]


def record_events(ns: Netstack) -> list[Event]:
    events: list[Event] = []

    def listener(name: str, data: Mapping[str, Any] | None) -> None:
        events.append((name, dict(data) if data is not None else None))

    ns.add_listener(listener)
    return events


async def add(ns: Netstack, text: str) -> NetClient:
    return (await ns.netdev_add(parse_netdev_cli(text)))[0]


def recorder(nc: NetClient) -> Recorder:
    rec = Recorder("rec")
    rec.connect(nc)
    return rec


async def read_frames(sock: socket.socket, count: int) -> list[bytes]:
    loop = asyncio.get_running_loop()
    dec = FrameDecoder()
    got: list[bytes] = []
    async with asyncio.timeout(5):
        while len(got) < count:
            data = await loop.sock_recv(sock, 1 << 16)
            assert data
            got += dec.feed(data)
    return got


async def connect(family: int, addr: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, addr)
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_port(nc: NetClient) -> int:
    assert isinstance(nc, stream.StreamServer) and nc.listener is not None
    return int(nc.listener.getsockname()[1])


# -- validation ----------------------------------------------------------------------------


async def test_reconnect_option_checks(ns: Netstack) -> None:
    base = {"type": "stream", "id": "s", "addr": {"type": "unix", "path": "/nonexistent/x"}}
    cases = [
        (
            {**base, "reconnect": 1, "reconnect-ms": 5},
            "'reconnect' and 'reconnect-ms' are mutually exclusive",
        ),
        (
            {**base, "server": True, "reconnect-ms": 5},
            "'reconnect' and 'reconnect-ms' options are incompatible with socket in server mode",
        ),
        (
            {**base, "server": True, "reconnect": 1},
            "'reconnect' and 'reconnect-ms' options are incompatible with socket in server mode",
        ),
    ]
    for args, text in cases:
        with pytest.raises(GenericError) as err:
            await ns.netdev_add(netdev_from_qmp(args))
        assert err.value.desc == text
    assert ns.clients == []


# -- server --------------------------------------------------------------------------------


async def test_inet_server_one_client_at_a_time(ns: Netstack) -> None:
    events = record_events(ns)
    nc = await add(ns, "stream,id=st0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port=0")
    assert ns.info_network() == "st0: index=0,type=stream,listening\n"
    assert nc.link_down
    rec = recorder(nc)
    port = server_port(nc)
    peer = await connect(socket.AF_INET, ("127.0.0.1", port))
    await until(lambda: not nc.link_down)
    cport = peer.getsockname()[1]
    assert nc.info_str == f"tcp:127.0.0.1:{cport}"
    assert events == [
        (
            "NETDEV_STREAM_CONNECTED",
            {
                "netdev-id": "st0",
                "addr": {"type": "inet", "host": "127.0.0.1", "port": str(cport), "ipv4": True},
            },
        )
    ]
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(peer, encode_frames([frame(1), frame(2, 1514)]))
    await until(lambda: len(rec.got) == 2)
    rec.send([frame(3)])
    assert await read_frames(peer, 1) == [frame(3)]
    waiting = await connect(socket.AF_INET, ("127.0.0.1", port))
    peer.close()
    await until(lambda: len(events) == 3)
    assert events[1] == ("NETDEV_STREAM_DISCONNECTED", {"netdev-id": "st0"})
    assert events[2][0] == "NETDEV_STREAM_CONNECTED"
    assert nc.info_str == f"tcp:127.0.0.1:{waiting.getsockname()[1]}"
    waiting.close()
    await until(lambda: nc.info_str == "listening" and nc.link_down)


async def test_unix_server_reports_its_own_path(ns: Netstack, tmp_path: Path) -> None:
    events = record_events(ns)
    path = str(tmp_path / "st.sock")
    nc = await add(ns, f"stream,id=st0,server=on,addr.type=unix,addr.path={path}")
    rec = recorder(nc)
    peer = await connect(socket.AF_UNIX, path)
    await until(lambda: not nc.link_down)
    assert nc.info_str == f"unix:{path}"
    assert events[0][1] == {"netdev-id": "st0", "addr": {"type": "unix", "path": path}}
    await asyncio.get_running_loop().sock_sendall(peer, encode_frames([frame(1)]))
    await until(lambda: rec.got == [frame(1)])
    peer.close()
    await until(lambda: nc.info_str == "listening")
    ns.netdev_del("st0")
    assert not os.path.exists(path)  # the listening socket's file goes with the netdev


async def test_abstract_and_temporary_unix_servers(ns: Netstack) -> None:
    events = record_events(ns)
    name = f"netstack-test-{os.getpid()}"
    nc = await add(ns, f"stream,id=ab,server=on,addr.type=unix,addr.path={name},addr.abstract=on")
    peer = await connect(socket.AF_UNIX, "\0" + name)
    await until(lambda: not nc.link_down)
    assert nc.info_str == f"unix:{name}"
    assert events[-1][1]["addr"] == {"type": "unix", "path": name, "abstract": True, "tight": True}
    peer.close()
    loose = await add(
        ns,
        f"stream,id=lo,server=on,addr.type=unix,addr.path={name}x,addr.abstract=on,addr.tight=off",
    )
    peer = await connect(socket.AF_UNIX, ("\0" + name + "x").encode().ljust(108, b"\0"))
    await until(lambda: not loose.link_down)
    assert events[-1][1]["addr"]["tight"] is False
    peer.close()
    tmp = await add(ns, "stream,id=tm,server=on,addr.type=unix,addr.path=")
    assert isinstance(tmp, stream.StreamServer) and tmp.path is not None
    assert os.path.basename(tmp.path).startswith("qemu-socket-")
    path = tmp.path
    peer = await connect(socket.AF_UNIX, path)
    await until(lambda: not tmp.link_down)
    assert tmp.info_str == f"unix:{path}"
    peer.close()
    ns.netdev_del("tm")
    assert not os.path.exists(path)


async def test_listen_failure_shows_in_info(ns: Netstack) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    nc = await add(
        ns, f"stream,id=st0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"
    )
    assert nc.info_str == "error: Failed to find an available port: Address already in use"
    busy.close()
    nc2 = await add(ns, "stream,id=st1,server=on,addr.type=unix,addr.path=/nonexistent/dir/s")
    assert nc2.info_str == (
        "error: Failed to bind socket to /nonexistent/dir/s: No such file or directory"
    )


async def test_oversized_frame_disconnects(ns: Netstack) -> None:
    events = record_events(ns)
    nc = await add(ns, "stream,id=st0,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port=0")
    rec = recorder(nc)
    peer = await connect(socket.AF_INET, ("127.0.0.1", server_port(nc)))
    await until(lambda: not nc.link_down)
    wire = encode_frames([frame(1)]) + frame_header(1 << 20)
    await asyncio.get_running_loop().sock_sendall(peer, wire)
    await until(lambda: nc.link_down)
    assert rec.got == [frame(1)]
    assert nc.stats.malformed == 1
    assert events[-1] == ("NETDEV_STREAM_DISCONNECTED", {"netdev-id": "st0"})
    assert nc.info_str == "listening"
    peer.close()


# -- client --------------------------------------------------------------------------------


async def test_inet_client(ns: Netstack) -> None:
    events = record_events(ns)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    nc = await add(ns, f"stream,id=c0,addr.type=inet,addr.host=localhost,addr.port={port}")
    assert nc.link_down
    assert nc.info_str in ("connecting", f"tcp:127.0.0.1:{port}")
    rec = recorder(nc)
    loop = asyncio.get_running_loop()
    conn, _ = await asyncio.wait_for(loop.sock_accept(server), 5)
    await until(lambda: not nc.link_down)
    assert nc.info_str == f"tcp:127.0.0.1:{port}"
    assert events == [
        (
            "NETDEV_STREAM_CONNECTED",
            {
                "netdev-id": "c0",
                "addr": {"type": "inet", "host": "127.0.0.1", "port": str(port), "ipv4": True},
            },
        )
    ]
    assert isinstance(nc, stream.StreamClient) and nc.sock is not None
    assert nc.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0  # as QEMU's client
    rec.send([frame(1)])
    assert await read_frames(conn, 1) == [frame(1)]
    conn.close()
    await until(lambda: nc.link_down)
    assert events[-1] == ("NETDEV_STREAM_DISCONNECTED", {"netdev-id": "c0"})
    assert nc.info_str == f"tcp:127.0.0.1:{port}"  # QEMU 10.0 keeps the last URI
    server.close()


async def test_client_errors_show_in_info(ns: Netstack, tmp_path: Path) -> None:
    port = free_port()
    nc = await add(ns, f"stream,id=c0,addr.type=inet,addr.host=127.0.0.1,addr.port={port}")
    await until(lambda: nc.info_str.startswith("error:"))
    assert nc.info_str == f"error: Failed to connect to '127.0.0.1:{port}': Connection refused"
    assert nc.link_down
    path = tmp_path / "nothing"
    nc2 = await add(ns, f"stream,id=c1,addr.type=unix,addr.path={path}")
    await until(lambda: nc2.info_str.startswith("error:"))
    assert nc2.info_str == f"error: Failed to connect to '{path}': No such file or directory"
    nc3 = await add(
        ns,
        "stream,id=c2,addr.type=inet,addr.host=127.0.0.1,addr.port=1,addr.ipv4=off,addr.ipv6=off",
    )
    await until(lambda: nc3.info_str.startswith("error:"))
    assert nc3.info_str == "error: Cannot disable IPv4 and IPv6 at same time"


async def test_client_reconnects(ns: Netstack, tmp_path: Path) -> None:
    events = record_events(ns)
    path = str(tmp_path / "srv.sock")
    nc = await add(ns, f"stream,id=c0,addr.type=unix,addr.path={path},reconnect-ms=50")
    rec = recorder(nc)
    await until(lambda: nc.info_str == "connecting" and os.path.exists(path) is False)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    for round_ in range(2):
        conn = await accept_after_retry(server, 0.05)
        await until(lambda: not nc.link_down)
        assert nc.info_str == f"unix:{path}"
        await loop.sock_sendall(conn, encode_frames([frame(round_)]))
        await until(lambda r=round_: len(rec.got) == r + 1)  # type: ignore[misc]
        conn.close()
        await until(lambda: nc.link_down)
        assert nc.info_str == "connecting"
    names = [name for name, _ in events]
    assert names[:4] == [
        "NETDEV_STREAM_CONNECTED",
        "NETDEV_STREAM_DISCONNECTED",
        "NETDEV_STREAM_CONNECTED",
        "NETDEV_STREAM_DISCONNECTED",
    ]
    assert events[0][1] == {"netdev-id": "c0", "addr": {"type": "unix", "path": path}}
    assert rec.got == [frame(0), frame(1)]
    server.close()
    assert running().pending  # the retry
    ns.netdev_del("c0")  # cancels the pending retry
    assert not running().pending


async def test_fd_client(ns: Netstack) -> None:
    events = record_events(ns)
    ours, theirs = socket.socketpair()
    fd = ours.detach()
    nc = await add(ns, f"stream,id=f0,addr.type=fd,addr.str={fd}")
    await until(lambda: not nc.link_down)
    assert nc.info_str == "unix:"
    assert events == [
        ("NETDEV_STREAM_CONNECTED", {"netdev-id": "f0", "addr": {"type": "unix", "path": ""}})
    ]
    rec = recorder(nc)
    theirs.setblocking(False)
    rec.send([frame(5)])
    assert await read_frames(theirs, 1) == [frame(5)]
    theirs.close()
    await until(lambda: nc.link_down)
    bad = await add(ns, "stream,id=f1,addr.type=fd,addr.str=nosuch")
    await until(lambda: bad.info_str.startswith("error:"))
    assert bad.info_str == "error: File descriptor named 'nosuch' has not been found"


async def test_delete_while_connecting(ns: Netstack) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    await add(ns, f"stream,id=c0,addr.type=inet,addr.host=127.0.0.1,addr.port={port}")
    ns.netdev_del("c0")
    await running().settle()
    assert ns.find_netdev("c0") is None
    server.close()
