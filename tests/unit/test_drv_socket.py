"""The ``socket`` netdev on loopback: QEMU's validation order and texts, ``info network``
strings and link state of every mode, byte-exact framing, back-pressure, clean-up."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket

import pytest

import drivers.socket as socket_driver
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.proto.streamframe import FrameDecoder, encode_frames, frame_header
from netstack.qapi import Netdev, NetdevSocketOptions, parse_netdev_cli
from tests.kit.clock import accept_after_retry, running
from tests.kit.polling import until
from tests.support import Recorder, frame

pytestmark = [pytest.mark.timeout(30), pytest.mark.manual_clock]


async def add(ns: Netstack, text: str) -> NetClient:
    return (await ns.netdev_add(parse_netdev_cli(text)))[0]


def recorder(nc: NetClient, capacity: int | None = None) -> Recorder:
    rec = Recorder("rec", capacity=capacity)
    rec.connect(nc)
    return rec


async def read_frames(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    """Read ``count`` framed frames from a non-blocking socket through the loop."""
    loop = asyncio.get_running_loop()
    dec = FrameDecoder()
    got: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            data = await loop.sock_recv(sock, 1 << 16)
            assert data, f"EOF after {len(got)} frames"
            got += dec.feed(data)
    return got


async def connect_to(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listen_port(nc: NetClient) -> int:
    assert isinstance(nc, socket_driver.SocketListen) and nc.listener is not None
    return int(nc.listener.getsockname()[1])


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opts", "error"),
    [
        ("", "exactly one of listen=, connect=, mcast= or udp= is required"),
        (
            "listen=127.0.0.1:1,connect=127.0.0.1:2",
            "exactly one of listen=, connect=, mcast= or udp= is required",
        ),
        ("fd=3,mcast=230.0.0.1:1", "exactly one of listen=, connect=, mcast= or udp= is required"),
        ("listen=127.0.0.1:0,localaddr=127.0.0.1", "localaddr= is only valid with mcast= or udp="),
        ("udp=127.0.0.1:5", "localaddr= is mandatory with udp="),
        ("listen=nocolon", "host address 'nocolon' doesn't contain ':' separating host from port"),
        ("connect=1.2.3.4.5:80", "host address '1.2.3.4.5' is not a valid IPv4 address"),
        ("listen=127.0.0.1:abc", "port number 'abc' is invalid"),
        (
            "mcast=127.0.0.1:5000",
            "specified mcastaddr 127.0.0.1 (0x7f000001) does not contain a multicast address",
        ),
        ("mcast=230.0.0.1:5000,localaddr=bad", "localaddr 'bad' is not a valid IPv4 address"),
        (
            "mcast=230.0.0.1:5000,localaddr=127.0.0.1:77",
            "localaddr '127.0.0.1:77' is not a valid IPv4 address",
        ),
        (
            "udp=127.0.0.1:5,localaddr=192.0.2.199:0",
            "can't bind ip=192.0.2.199 to socket: Cannot assign requested address",
        ),
        # localaddr is parsed before udp= (QEMU's order)
        ("udp=bad:1,localaddr=1.2.3.4.5:0", "host address '1.2.3.4.5' is not a valid IPv4 address"),
        ("fd=abc", "File descriptor named 'abc' has not been found"),
        ("fd=12x", "Invalid file descriptor number '12x'"),
        ("fd=999999", "s0: Can't use file descriptor 999999: Bad file descriptor"),
    ],
)
async def test_validation_texts(ns: Netstack, opts: str, error: str) -> None:
    text = "socket,id=s0" + ("," + opts if opts else "")
    with pytest.raises(GenericError) as err:
        await add(ns, text)
    assert err.value.desc == error
    assert ns.clients == []


async def test_fd_that_is_not_a_usable_socket(ns: Netstack) -> None:
    rd, wr = os.pipe()
    os.close(wr)
    with pytest.raises(GenericError, match=r"^can't get socket option SO_TYPE$"):
        await add(ns, f"socket,id=s0,fd={rd}")
    with pytest.raises(OSError):
        os.fstat(rd)  # the netdev took the fd and closed it, as QEMU does
    seq = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fd = seq.detach()
    with pytest.raises(GenericError) as err:
        await add(ns, f"socket,id=s0,fd={fd}")
    assert err.value.desc == (f"socket type=5 for fd={fd} must be either SOCK_DGRAM or SOCK_STREAM")


# -- listen --------------------------------------------------------------------------------


async def test_listen_serves_one_peer_at_a_time(ns: Netstack) -> None:
    nc = await add(ns, "socket,id=s0,listen=127.0.0.1:0")
    assert ns.info_network() == "s0: index=0,type=socket,\n"
    rec = recorder(nc)
    port = listen_port(nc)
    assert nc.link_down
    first = await connect_to(port)
    await until(lambda: not nc.link_down)
    local = first.getsockname()
    assert nc.info_str == f"socket: connection from 127.0.0.1:{local[1]}"
    second = await connect_to(port)  # completes in the backlog, but is not served yet
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(first, encode_frames([frame(1), b"", frame(2, 1500)]))
    await until(lambda: len(rec.got) == 3)
    assert rec.got == [frame(1), b"", frame(2, 1500)]
    assert rec.send([frame(3), frame(4, 100)]) == 2
    assert await read_frames(first, 2) == [frame(3), frame(4, 100)]
    await loop.sock_sendall(second, encode_frames([frame(9)]))
    await running().settle()
    assert len(rec.got) == 3  # the second peer waits
    first.close()
    await until(lambda: nc.info_str.endswith(str(second.getsockname()[1])))
    assert not nc.link_down
    await until(lambda: len(rec.got) == 4)
    assert rec.got[3] == frame(9)
    second.close()
    await until(lambda: nc.link_down and nc.info_str == "")
    ns.netdev_del("s0")
    with socket.socket() as again:  # the listening port is free again
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


async def test_frames_to_an_unconnected_listener_are_dropped(ns: Netstack) -> None:
    nc = await add(ns, "socket,id=s0,listen=127.0.0.1:0")
    rec = recorder(nc)
    assert rec.send([frame(1)]) == 1
    assert nc.stats.rx_dropped == 1 and len(nc.incoming) == 0


async def test_oversized_frame_drops_the_connection(ns: Netstack) -> None:
    nc = await add(ns, "socket,id=s0,listen=127.0.0.1:0")
    rec = recorder(nc)
    peer = await connect_to(listen_port(nc))
    await until(lambda: not nc.link_down)
    wire = encode_frames([frame(1)]) + frame_header(69633) + bytes(100)
    await asyncio.get_running_loop().sock_sendall(peer, wire)
    await until(lambda: nc.link_down)
    assert rec.got == [frame(1)]  # frames before the bad one are delivered
    assert nc.stats.malformed == 1
    assert nc.info_str == ""
    assert await asyncio.get_running_loop().sock_recv(peer, 10) == b""  # closed by us
    again = await connect_to(listen_port(nc))  # and the next peer is served
    await until(lambda: not nc.link_down)
    again.close()
    peer.close()


# -- connect -------------------------------------------------------------------------------


async def test_connect_link_is_up_at_once_and_frames_wait_for_the_connection(
    ns: Netstack,
) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    nc = await add(ns, f"socket,id=c0,connect=127.0.0.1:{port}")
    rec = recorder(nc)
    assert nc.info_str == f"socket: connect to 127.0.0.1:{port}"
    assert not nc.link_down
    rec.send([frame(1), frame(2)])  # queued or sent, never dropped
    conn, _ = await asyncio.get_running_loop().sock_accept(server)
    assert await read_frames(conn, 2) == [frame(1), frame(2)]
    await asyncio.get_running_loop().sock_sendall(conn, encode_frames([frame(3)]))
    await until(lambda: rec.got == [frame(3)])
    conn.close()
    await until(lambda: nc.link_down)
    assert nc.info_str == ""  # QEMU empties the info at the end, and never reconnects
    server.close()


async def test_refused_connect_is_reported_beyond_qemu(ns: Netstack) -> None:
    port = free_port()
    nc = await add(ns, f"socket,id=c0,connect=127.0.0.1:{port}")  # succeeds, like QEMU
    rec = recorder(nc)
    rec.send([frame(1)])
    await until(lambda: nc.link_down)
    assert nc.info_str == f"error: Failed to connect to '127.0.0.1:{port}': Connection refused"
    assert len(nc.incoming) == 0  # what waited for the connection is dropped


@dataclasses.dataclass(frozen=True, kw_only=True)
class _ReconnectOptions(NetdevSocketOptions):
    """The options as they look once the schema carries the proposed ``x-reconnect-ms``."""

    x_reconnect_ms: int | None = None


async def test_reconnect_ms_extension(ns: Netstack) -> None:
    port = free_port()
    opts = _ReconnectOptions(connect=f"127.0.0.1:{port}", x_reconnect_ms=50)
    nc = (await ns.netdev_add(Netdev(id="c0", type="socket", options=opts)))[0]
    rec = recorder(nc)
    await until(lambda: nc.info_str.startswith("error: "))
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(1)
    server.setblocking(False)
    conn = await accept_after_retry(server, 0.05)
    await until(lambda: not nc.link_down)
    assert nc.info_str == f"socket: connect to 127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(conn, encode_frames([frame(1)]))
    await until(lambda: rec.got == [frame(1)])
    conn.close()  # the end of the connection: retried
    conn = await accept_after_retry(server, 0.05)
    await until(lambda: not nc.link_down)
    rec.send([frame(2)])
    assert await read_frames(conn, 1) == [frame(2)]
    conn.close()
    server.close()
    bad = _ReconnectOptions(listen="127.0.0.1:0", x_reconnect_ms=5)
    with pytest.raises(GenericError, match=r"^x-reconnect-ms= is only valid with connect=$"):
        await ns.netdev_add(Netdev(id="c1", type="socket", options=bad))


# -- fd ------------------------------------------------------------------------------------


async def test_fd_stream_is_byte_exact(ns: Netstack) -> None:
    ours, theirs = socket.socketpair()
    fd = ours.detach()
    nc = await add(ns, f"socket,id=f0,fd={fd}")
    rec = recorder(nc)
    assert nc.info_str == f"socket: fd={fd}"
    assert not nc.link_down
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    payload = bytes(range(23))
    rec.send([payload])
    assert await loop.sock_recv(theirs, 100) == b"\x00\x00\x00\x17" + payload
    await loop.sock_sendall(theirs, b"\x00\x00\x00\x03abc\x00\x00")  # and half a header
    await until(lambda: rec.got == [b"abc"])
    await loop.sock_sendall(theirs, b"\x00\x01z")
    await until(lambda: rec.got == [b"abc", b"z"])
    theirs.close()
    await until(lambda: nc.link_down and nc.info_str == "")


async def test_fd_dgram(ns: Netstack) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = ours.detach()
    nc = await add(ns, f"socket,id=f0,fd={fd}")
    rec = recorder(nc)
    assert nc.info_str == f"socket: fd={fd} unix"
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    rec.send([frame(1), frame(2)])
    assert await loop.sock_recv(theirs, 2000) == frame(1)
    assert await loop.sock_recv(theirs, 2000) == frame(2)
    theirs.send(frame(3))
    await until(lambda: rec.got == [frame(3)])
    ns.netdev_del("f0")
    with pytest.raises(OSError):
        os.fstat(fd)
    theirs.close()


# -- datagrams -----------------------------------------------------------------------------


async def test_udp_pair(ns: Netstack) -> None:
    p1, p2 = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    a = await add(ns, f"socket,id=a,udp=127.0.0.1:{p2},localaddr=127.0.0.1:{p1}")
    b = await add(ns, f"socket,id=b,udp=127.0.0.1:{p1},localaddr=127.0.0.1:{p2}")
    assert "a: index=0,type=socket,socket: udp=127.0.0.1:" in ns.info_network()
    ra, rb = recorder(a), recorder(b)
    assert a.info_str == f"socket: udp=127.0.0.1:{p2}"
    ra.send([frame(1), frame(2, 1500)])
    await until(lambda: len(rb.got) == 2)
    assert rb.got == [frame(1), frame(2, 1500)]
    rb.send([frame(3)])
    await until(lambda: ra.got == [frame(3)])


async def test_udp_port_quirks(ns: Netstack) -> None:
    nc = await add(ns, "socket,id=u,udp=127.1:010,localaddr=127.0.0.1:0")
    assert nc.info_str == "socket: udp=127.0.0.1:8"
    local = free_port(socket.SOCK_DGRAM)
    nc2 = await add(ns, f"socket,id=v,udp=127.0.0.1:-1,localaddr=127.0.0.1:{local + 65536}")
    assert nc2.info_str == "socket: udp=127.0.0.1:65535"
    assert isinstance(nc2, socket_driver.SocketDatagram) and nc2.sock is not None
    assert nc2.sock.getsockname()[1] == local  # htons() truncation


async def test_mcast_hears_itself_and_its_group(ns: Netstack) -> None:
    port = free_port(socket.SOCK_DGRAM)
    group = f"230.0.0.{(port % 200) + 10}:{port}"
    a = await add(ns, f"socket,id=a,mcast={group},localaddr=127.0.0.1")
    b = await add(ns, f"socket,id=b,mcast={group},localaddr=127.0.0.1")
    ra, rb = recorder(a), recorder(b)
    assert a.info_str == f"socket: mcast={group}"
    ra.send([frame(1)])
    await until(lambda: rb.got == [frame(1)] and ra.got == [frame(1)])  # loop is on


async def test_garbage_datagrams_are_counted_and_dropped(ns: Netstack) -> None:
    p1 = free_port(socket.SOCK_DGRAM)
    nc = await add(ns, f"socket,id=a,udp=127.0.0.1:9,localaddr=127.0.0.1:{p1}")
    rec = recorder(nc)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"", ("127.0.0.1", p1))
        s.sendto(frame(1), ("127.0.0.1", p1))
    await until(lambda: rec.got == [frame(1)])
    assert nc.stats.malformed == 1


# -- back-pressure -------------------------------------------------------------------------


async def test_output_back_pressure_loses_nothing(ns: Netstack) -> None:
    ours, theirs = socket.socketpair()
    for s in (ours, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    nc = await add(ns, f"socket,id=f0,fd={ours.detach()}")
    rec = recorder(nc)
    frames = [frame(i, 1000) for i in range(400)]
    for i in range(0, len(frames), 50):
        rec.send(frames[i : i + 50])
    assert nc.receive_disabled  # the socket is full: frames wait in the queue
    assert len(nc.incoming) > 0
    theirs.setblocking(False)
    assert await read_frames(theirs, len(frames)) == frames
    await until(lambda: not nc.receive_disabled and len(nc.incoming) == 0)
    theirs.close()


async def test_input_back_pressure_pauses_reading(ns: Netstack) -> None:
    ours, theirs = socket.socketpair()
    nc = await add(ns, f"socket,id=f0,fd={ours.detach()}")
    rec = recorder(nc, capacity=3)
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    frames = [frame(i) for i in range(10)]
    await loop.sock_sendall(theirs, encode_frames(frames[:5]))
    await until(lambda: len(rec.got) == 3)
    await loop.sock_sendall(theirs, encode_frames(frames[5:]))
    await running().settle()
    assert len(rec.got) == 3 and len(rec.incoming) == 2  # the rest stays in the socket
    rec.make_room(100)
    await until(lambda: len(rec.got) == 10)
    assert rec.got == frames
    theirs.close()


async def test_ipv6_listen_and_connect_beyond_qemu(ns: Netstack) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        srv = await add(ns, "socket,id=l6,listen=[::1]:0")
    except GenericError as exc:
        pytest.skip(f"IPv6 loopback unavailable: {exc}")
    assert isinstance(srv, socket_driver.SocketListen) and srv.listener is not None
    port = srv.listener.getsockname()[1]
    cli = await add(ns, f"socket,id=c6,connect=[::1]:{port}")
    assert cli.info_str == f"socket: connect to [::1]:{port}"
    rs, rc = recorder(srv), recorder(cli)
    await until(lambda: not srv.link_down)
    assert srv.info_str.startswith("socket: connection from [::1]:")
    rc.send([frame(1)])
    await until(lambda: rs.got == [frame(1)])
