"""The ``dgram`` netdev on loopback: QEMU's decision order and texts, inet / unix / fd /
multicast modes and their info strings, batching, garbage datagrams, back-pressure."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from drivers import dgram
from drivers.socket.transport import MAX_DATAGRAMS
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.qapi import netdev_from_qmp, parse_netdev_cli
from tests.kit.clock import running
from tests.kit.polling import until
from tests.support import Recorder, frame

pytestmark = [pytest.mark.timeout(30), pytest.mark.manual_clock]


async def add(ns: Netstack, text: str) -> NetClient:
    return (await ns.netdev_add(parse_netdev_cli(text)))[0]


class BatchRecorder(Recorder):
    """Also remembers the size of every batch it was given."""

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__("rec", capacity=capacity)
        self.batches: list[int] = []

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        self.batches.append(len(frames))
        return super().receive(frames, vnet)


def recorder(nc: NetClient, capacity: int | None = None) -> BatchRecorder:
    rec = BatchRecorder(capacity)
    rec.connect(nc)
    return rec


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def inet(prefix: str, host: str, port: int | str) -> dict[str, Any]:
    return {prefix: {"type": "inet", "host": host, "port": str(port)}}


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({}, "dgram requires local= parameter"),
        (inet("local", "127.0.0.1", 0), "type=inet or type=unix requires remote parameter"),
        (
            {"local": {"type": "unix", "path": "/tmp/x"}},
            "type=inet or type=unix requires remote parameter",
        ),
        (
            {"local": {"type": "fd", "str": "3"}, **inet("remote", "127.0.0.1", 5)},
            "don't set remote with local.fd",
        ),
        (
            {"local": {"type": "unix", "path": "/tmp/x"}, **inet("remote", "127.0.0.1", 5)},
            "remote and local types must be the same",
        ),
        (
            {**inet("local", "127.0.0.1", 0), "remote": {"type": "unix", "path": "/tmp/y"}},
            "remote and local types must be the same",
        ),
        (
            {**inet("remote", "230.0.0.1", 5), "local": {"type": "unix", "path": "/tmp/z"}},
            "only support inet or fd type for local",
        ),
        (
            {**inet("remote", "230.0.0.1", 5), **inet("local", "bad", 0)},
            "localaddr 'bad' is not a valid IPv4 address",
        ),
        (inet("remote", "127.0.0.1", "x"), "port number 'x' is invalid"),
        # the remote is converted first, even before local= is looked at
        (inet("remote", "1.2.3.4.5", 1), "host address '1.2.3.4.5' is not a valid IPv4 address"),
        (
            {
                "local": {"type": "vsock", "cid": "1", "port": "2"},
                "remote": {"type": "vsock", "cid": "1", "port": "2"},
            },
            "only support inet or fd type for local",
        ),
        (
            {"local": {"type": "fd", "str": "nosuchfd"}},
            "File descriptor named 'nosuchfd' has not been found",
        ),
        (
            {**inet("local", "192.0.2.199", 0), **inet("remote", "127.0.0.1", 9)},
            "can't bind ip=192.0.2.199 to socket: Cannot assign requested address",
        ),
        (
            {
                "local": {"type": "unix", "path": "/tmp/" + "x" * 110},
                "remote": {"type": "unix", "path": "/tmp/r"},
            },
            "UNIX socket path '/tmp/" + "x" * 110 + "' is too long",
        ),
    ],
)
async def test_validation_texts(ns: Netstack, args: dict[str, Any], error: str) -> None:
    with pytest.raises(GenericError) as err:
        await ns.netdev_add(netdev_from_qmp({"type": "dgram", "id": "d0", **args}))
    assert err.value.desc == error
    assert ns.clients == []


# -- modes ---------------------------------------------------------------------------------


async def test_inet_unicast(ns: Netstack) -> None:
    peer = udp_socket()
    lport = free_udp_port()
    rport = peer.getsockname()[1]
    nc = await add(
        ns,
        f"dgram,id=d0,local.type=inet,local.host=127.0.0.1,local.port={lport},"
        f"remote.type=inet,remote.host=127.0.0.1,remote.port={rport}",
    )
    assert ns.info_network() == f"d0: index=0,type=dgram,udp=127.0.0.1:{lport}/127.0.0.1:{rport}\n"
    rec = recorder(nc)
    loop = asyncio.get_running_loop()
    rec.send([frame(1), frame(2, 1500)])
    assert await asyncio.wait_for(loop.sock_recv(peer, 70000), 5) == frame(1)
    assert await asyncio.wait_for(loop.sock_recv(peer, 70000), 5) == frame(2, 1500)
    stranger = udp_socket()  # datagrams from anyone are taken, as in QEMU
    stranger.sendto(frame(3), ("127.0.0.1", lport))
    await until(lambda: rec.got == [frame(3)])
    peer.close()
    stranger.close()


async def test_info_shows_the_ports_as_given(ns: Netstack) -> None:
    nc = await add(
        ns,
        "dgram,id=d0,local.type=inet,local.host=127.0.0.1,local.port=0,"
        "remote.type=inet,remote.host=127.1,remote.port=0x10",
    )
    assert nc.info_str == "udp=127.0.0.1:0/127.0.0.1:16"


async def test_unix(ns: Netstack, tmp_path: Path) -> None:
    local, remote = str(tmp_path / "l"), str(tmp_path / "r")
    Path(local).write_text("precious")  # QEMU would unlink any file; we refuse
    spec = f"dgram,id=d0,local.type=unix,local.path={local},remote.type=unix,remote.path={remote}"
    with pytest.raises(GenericError) as err:
        await add(ns, spec)
    assert err.value.desc == f"can't bind unix={local} to socket: Address already in use"
    assert Path(local).read_text() == "precious"
    os.unlink(local)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(local)  # a stale socket is replaced, as in QEMU
    stale.close()
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(remote)
    peer.setblocking(False)
    nc = await add(ns, spec)
    assert nc.info_str == f"udp={local}:{remote}"
    rec = recorder(nc)
    rec.send([frame(1)])
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.sock_recv(peer, 70000), 5) == frame(1)
    peer.sendto(frame(2), local)
    await until(lambda: rec.got == [frame(2)])
    peer.sendto(bytes(70000), local)  # longer than NET_BUFSIZE: counted, dropped
    peer.sendto(frame(3), local)
    await until(lambda: len(rec.got) == 2)
    assert rec.got[1] == frame(3) and nc.stats.malformed == 1
    ns.netdev_del("d0")
    assert not os.path.exists(local)
    peer.close()


async def test_fd(ns: Netstack) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = ours.detach()
    nc = await add(ns, f"dgram,id=d0,local.type=fd,local.str={fd}")
    assert nc.info_str == f"fd={fd} unix"
    rec = recorder(nc)
    theirs.setblocking(False)
    rec.send([frame(1)])
    assert await asyncio.wait_for(asyncio.get_running_loop().sock_recv(theirs, 2000), 5) == frame(1)
    theirs.send(frame(2))
    await until(lambda: rec.got == [frame(2)])
    theirs.close()


async def test_multicast(ns: Netstack) -> None:
    port = free_udp_port()
    group = f"230.0.1.{port % 200 + 10}"
    local = "local.type=inet,local.host=127.0.0.1,local.port=0"
    a = await add(ns, f"dgram,id=a,remote.type=inet,remote.host={group},remote.port={port},{local}")
    b = await add(ns, f"dgram,id=b,remote.type=inet,remote.host={group},remote.port={port},{local}")
    assert a.info_str == f"mcast={group}:{port}"
    ra, rb = recorder(a), recorder(b)
    ra.send([frame(1)])
    await until(lambda: rb.got == [frame(1)] and ra.got == [frame(1)])


async def test_multicast_clones_an_fd(ns: Netstack) -> None:
    port = free_udp_port()
    group = f"230.0.2.{port % 200 + 10}"
    placeholder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # the clone joins on the fd's multicast interface: loopback here
    placeholder.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    fd = placeholder.detach()
    nc = await add(
        ns,
        f"dgram,id=m,remote.type=inet,remote.host={group},remote.port={port},"
        f"local.type=fd,local.str={fd}",
    )
    assert nc.info_str == f"fd={fd} (cloned mcast={group}:{port})"
    assert isinstance(nc, dgram.DgramNetdev) and nc.sock is not None
    assert nc.sock.fileno() == fd
    assert nc.sock.getsockname() == (group, port)
    iface = nc.sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4)
    assert socket.inet_ntoa(iface) == "127.0.0.1"


# -- data path -----------------------------------------------------------------------------


async def test_datagrams_are_drained_in_batches(ns: Netstack) -> None:
    lport = free_udp_port()
    nc = await add(
        ns,
        f"dgram,id=d0,local.type=inet,local.host=127.0.0.1,local.port={lport},"
        "remote.type=inet,remote.host=127.0.0.1,remote.port=9",
    )
    assert isinstance(nc, dgram.DgramNetdev) and nc.sock is not None
    nc.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rec = recorder(nc)
    sender = udp_socket()
    count = MAX_DATAGRAMS + 44
    for i in range(count):  # all queued before the loop runs the reader
        sender.sendto(frame(i), ("127.0.0.1", lport))
    sender.sendto(b"", ("127.0.0.1", lport))  # garbage: counted, dropped
    await until(lambda: len(rec.got) == count)
    assert rec.got == [frame(i) for i in range(count)]
    assert rec.batches[0] == MAX_DATAGRAMS
    assert nc.stats.malformed == 1
    sender.close()


async def test_input_back_pressure(ns: Netstack) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    nc = await add(ns, f"dgram,id=d0,local.type=fd,local.str={ours.detach()}")
    rec = recorder(nc, capacity=2)
    for i in range(6):
        theirs.send(frame(i))
    await until(lambda: len(rec.got) == 2)
    await running().settle()
    assert len(rec.got) == 2
    rec.make_room(10)
    await until(lambda: len(rec.got) == 6)
    assert rec.got == [frame(i) for i in range(6)]
    theirs.close()


async def test_callback_during_send_does_not_stall_reading(ns: Netstack) -> None:
    """The peer's queue flushes older entries inside ``send`` and calls back at once."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    nc = await add(ns, f"dgram,id=d0,local.type=fd,local.str={ours.detach()}")
    rec = recorder(nc, capacity=0)
    other = Recorder("other")
    assert rec.incoming.send(other, [frame(100)]) == 0  # an older entry waits in the queue
    rec.capacity = None  # able again, but nobody flushed
    theirs.send(frame(1))
    await until(lambda: rec.got == [frame(100), frame(1)])
    theirs.send(frame(2))  # reading must go on
    await until(lambda: rec.got == [frame(100), frame(1), frame(2)])
    theirs.close()


async def test_full_unix_destination_does_not_spin(ns: Netstack, tmp_path: Path) -> None:
    """A unix datagram peer that stops reading: we wait without burning CPU (poll on our
    own unconnected socket would say "writable" all along), then deliver everything."""
    local, remote = str(tmp_path / "l"), str(tmp_path / "r")
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(remote)
    peer.setblocking(False)
    nc = await add(
        ns, f"dgram,id=d0,local.type=unix,local.path={local},remote.type=unix,remote.path={remote}"
    )
    rec = recorder(nc)
    frames = [frame(i) for i in range(100)]  # far more than the peer's queue holds
    rec.send(frames)
    assert nc.receive_disabled
    cpu = time.process_time()
    await running().wait_io(0.3)  # real time, the loop serving fds
    assert time.process_time() - cpu < 0.1, "spinning while the peer's queue is full"
    loop = asyncio.get_running_loop()
    got = [await asyncio.wait_for(loop.sock_recv(peer, 2000), 5) for _ in frames]
    assert got == frames
    await until(lambda: not nc.receive_disabled and len(nc.incoming) == 0)
    peer.close()


async def test_output_back_pressure(ns: Netstack) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    nc = await add(ns, f"dgram,id=d0,local.type=fd,local.str={ours.detach()}")
    rec = recorder(nc)
    frames = [frame(i, 1000) for i in range(200)]
    rec.send(frames)
    assert nc.receive_disabled and len(nc.incoming) > 0  # the socket said EAGAIN
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    got = [await asyncio.wait_for(loop.sock_recv(theirs, 2000), 5) for _ in frames]
    assert got == frames
    await until(lambda: not nc.receive_disabled and len(nc.incoming) == 0)
    theirs.close()
