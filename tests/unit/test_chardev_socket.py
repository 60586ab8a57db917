"""The ``socket`` chardev: unix/inet servers and clients, wait, reconnect, filenames."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from netstack.chardev import ChardevTable, Connection
from netstack.chardev.sockets import SocketChardev
from netstack.errors import GenericError
from netstack.qapi import chardev_from_qmp, parse_chardev_cli
from tests.kit.clock import running
from tests.kit.polling import until


class Echo:
    """A front end that upper-cases what it reads and records its connections."""

    raw_socket = False

    def __init__(self, multi: bool = False) -> None:
        self.multi_connection = multi
        self.conns: list[Connection] = []
        self.done = 0

    async def serve(self, conn: Connection) -> None:
        self.conns.append(conn)
        try:
            while data := await conn.read():
                conn.write(data.upper())
                await conn.drain()
        finally:
            self.done += 1


class Raw:
    multi_connection = False
    raw_socket = True

    def __init__(self) -> None:
        self.got: asyncio.Queue[Connection] = asyncio.Queue()

    async def serve(self, conn: Connection) -> None:
        await self.got.put(conn)
        assert conn.sock is not None
        data = await asyncio.get_running_loop().sock_recv(conn.sock, 100)
        await asyncio.get_running_loop().sock_sendall(conn.sock, data[::-1])


def unix(path: str, **data: Any) -> dict[str, Any]:
    return {"type": "unix", "data": {"path": path, **data}}


def inet(host: str, port: str, **data: Any) -> dict[str, Any]:
    return {"type": "inet", "data": {"host": host, "port": port, **data}}


def sock_spec(cid: str, addr: dict[str, Any], **data: Any) -> Any:
    return chardev_from_qmp(cid, {"type": "socket", "data": {"addr": addr, **data}})


def filename(table: ChardevTable, cid: str) -> str:
    dev = table.get(cid)
    assert dev is not None
    return dev.filename()


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        return await reader.readexactly(len(data))


# -- unix server ---------------------------------------------------------------------------


async def test_unix_server_life(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    assert await table.add(sock_spec("s", unix(path))) == {}
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert filename(table, "s") == f"disconnected:unix:{path},server=on"
    fe = Echo()
    dev = table.get("s")
    assert dev is not None
    dev.attach(fe)
    assert table.query() == [
        {"label": "s", "filename": f"disconnected:unix:{path},server=on", "frontend-open": True}
    ]
    reader, writer = await asyncio.open_unix_connection(path)
    assert await roundtrip(reader, writer, b"hello") == b"HELLO"
    assert filename(table, "s") == f"unix:{path},server=on"
    writer.close()
    await until(lambda: fe.done == 1)
    await until(lambda: filename(table, "s").startswith("disconnected:"))
    # the listener accepts the next client
    reader, writer = await asyncio.open_unix_connection(path)
    assert await roundtrip(reader, writer, b"again") == b"AGAIN"
    writer.close()
    dev.detach()
    await table.remove("s")
    assert not os.path.exists(path)


async def test_unix_socket_mode(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "q.sock")
    await table.add(sock_spec("q", unix(path)), socket_mode=0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    old = os.umask(0o022)
    try:
        other = str(tmp_path / "o.sock")
        await table.add(sock_spec("o", unix(other)))
        assert stat.S_IMODE(os.stat(other).st_mode) == 0o755
    finally:
        os.umask(old)


async def test_stale_socket_replaced_but_regular_file_kept(
    table: ChardevTable, tmp_path: Path
) -> None:
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a socket file nobody listens on
    await table.add(sock_spec("s", unix(path)))
    _reader, writer = await asyncio.open_unix_connection(path)
    writer.close()
    regular = tmp_path / "precious"
    regular.write_text("keep me")
    with pytest.raises(GenericError) as err:
        await table.add(sock_spec("r", unix(str(regular))))
    assert err.value.desc == (
        f"Failed to add chardev 'r': Failed to bind socket to {regular}: Address already in use"
    )
    assert regular.read_text() == "keep me"


async def test_multi_connection_frontend_serves_three_clients(
    table: ChardevTable, tmp_path: Path
) -> None:
    path = str(tmp_path / "m.sock")
    await table.add(sock_spec("m", unix(path)))
    fe = Echo(multi=True)
    dev = table.get("m")
    assert dev is not None
    dev.attach(fe)
    clients = [await asyncio.open_unix_connection(path) for _ in range(3)]
    for i, (reader, writer) in enumerate(reversed(clients)):
        assert await roundtrip(reader, writer, f"c{i}".encode()) == f"C{i}".encode()
    await until(lambda: len(dev.connections) == 3)
    for _reader, writer in clients:
        writer.close()
    await until(lambda: fe.done == 3)


async def test_single_connection_frontend_takes_one_client_at_a_time(
    table: ChardevTable, tmp_path: Path
) -> None:
    path = str(tmp_path / "one.sock")
    await table.add(sock_spec("one", unix(path)))
    fe = Echo()
    dev = table.get("one")
    assert dev is not None
    dev.attach(fe)
    r1, w1 = await asyncio.open_unix_connection(path)
    assert await roundtrip(r1, w1, b"first") == b"FIRST"
    r2, w2 = await asyncio.open_unix_connection(path)  # sits in the backlog
    w2.write(b"second")
    await w2.drain()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await r2.readexactly(6)
    w1.close()
    async with asyncio.timeout(5):
        assert await r2.readexactly(6) == b"SECOND"
    assert len(fe.conns) == 2
    w2.close()


async def test_connection_held_until_frontend_attaches(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "h.sock")
    await table.add(sock_spec("h", unix(path)))
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"early")
    await until(lambda: filename(table, "h") == f"unix:{path},server=on")
    dev = table.get("h")
    assert dev is not None
    dev.attach(Echo())
    async with asyncio.timeout(5):
        assert await reader.readexactly(5) == b"EARLY"
    writer.close()


@pytest.mark.manual_clock
async def test_wait_blocks_start_until_a_client_connects(
    table: ChardevTable, tmp_path: Path
) -> None:
    path = str(tmp_path / "w.sock")
    adding = asyncio.create_task(table.add(sock_spec("w", unix(path), wait=True)))
    await until(lambda: os.path.exists(path))
    await running().advance(60)  # waits for a client, however long
    assert not adding.done()
    assert table.get("w") is None
    _reader, writer = await asyncio.open_unix_connection(path)
    async with asyncio.timeout(5):
        assert await adding == {}
    assert filename(table, "w") == f"unix:{path},server=on"
    writer.close()


@pytest.mark.manual_clock
async def test_cli_server_waits_by_default(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "cli.sock")
    spec = parse_chardev_cli(f"socket,id=c,path={path},server=on")
    adding = asyncio.create_task(table.add(spec, from_cli=True))
    await until(lambda: os.path.exists(path))
    await running().advance(60)
    assert not adding.done()
    _reader, writer = await asyncio.open_unix_connection(path)
    async with asyncio.timeout(5):
        await adding
    writer.close()


async def test_raw_socket_frontend_gets_the_socket(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "v.sock")
    await table.add(sock_spec("v", unix(path)))
    dev = table.get("v")
    assert dev is not None and dev.fd_pass and dev.reconnectable
    fe = Raw()
    dev.attach(fe)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"abc")
    async with asyncio.timeout(5):
        conn = await fe.got.get()
        assert conn.reader is None and conn.sock is not None
        assert await reader.readexactly(3) == b"cba"
    writer.close()


# -- unix client ---------------------------------------------------------------------------


async def test_client_connect_failure_text(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "nobody.sock")
    with pytest.raises(GenericError) as err:
        await table.add(sock_spec("u3", unix(path), server=False))
    assert err.value.desc == (
        f"Failed to add chardev 'u3': Failed to connect to '{path}': No such file or directory"
    )
    assert table.get("u3") is None


@pytest.mark.manual_clock
async def test_client_filenames_and_data(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "peer.sock")
    peers: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peers.append(writer)
        writer.write(b"ping")
        await writer.drain()

    server = await asyncio.start_unix_server(on_client, path)
    try:
        await table.add(sock_spec("c", unix(path), server=False))
        assert filename(table, "c") == f"unix:{path}"
        fe = Echo()
        dev = table.get("c")
        assert dev is not None
        dev.attach(fe)
        await until(lambda: bool(peers))
        await until(lambda: bool(fe.conns))
        peers[0].close()
        await until(lambda: filename(table, "c") == f"disconnected:unix:{path}")
        await running().advance(60)  # no reconnect option: stays disconnected
        assert filename(table, "c") == f"disconnected:unix:{path}"
    finally:
        server.close()


async def test_client_reconnects_after_server_restart(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "r.sock")
    await table.add(sock_spec("r", unix(path), server=False, **{"reconnect-ms": 50}))
    assert filename(table, "r") == f"disconnected:unix:{path}"
    dev = table.get("r")
    assert dev is not None
    dev.attach(Echo())
    for round_ in range(2):
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"x%d" % round_)  # noqa: B023 - used within this round
            await writer.drain()
            await got.put(await reader.readexactly(2))  # noqa: B023
            writer.close()

        server = await asyncio.start_unix_server(on_client, path)
        async with asyncio.timeout(5):
            assert await got.get() == b"X%d" % round_
        server.close()
        await server.wait_closed()
        os.unlink(path)
        await until(lambda: filename(table, "r").startswith("disconnected:"))


async def test_deprecated_reconnect_seconds(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "late.sock")
    await table.add(sock_spec("l", unix(path), server=False, reconnect=1))
    dev = table.get("l")
    assert isinstance(dev, SocketChardev) and dev.reconnect_ms == 1000


# -- abstract unix -------------------------------------------------------------------------


async def test_abstract_unix(table: ChardevTable) -> None:
    name = f"netstack-test-{uuid.uuid4().hex}"
    await table.add(sock_spec("a", unix(name, abstract=True)))
    assert filename(table, "a") == f"disconnected:unix:{name},abstract=on,tight=on,server=on"
    fe = Echo()
    dev = table.get("a")
    assert dev is not None
    dev.attach(fe)
    # the CLI sets tight=on explicitly; a client shows abstract and tight while disconnected
    client = parse_chardev_cli(f"socket,id=ac,path={name},abstract=on,reconnect-ms=5000")
    await table.add(client, from_cli=True)
    await until(lambda: filename(table, "ac") == "unix:")  # C prints the empty sun_path
    assert filename(table, "a") == "unix:,server=on"
    peer = socket.socket(socket.AF_UNIX)
    peer.setblocking(False)
    await asyncio.get_running_loop().sock_connect(peer, b"\0" + name.encode())
    peer.close()


async def test_abstract_unix_not_tight(table: ChardevTable) -> None:
    name = f"netstack-test-{uuid.uuid4().hex}"
    await table.add(sock_spec("a", unix(name, abstract=True, tight=False)))
    assert filename(table, "a") == f"disconnected:unix:{name},abstract=on,server=on"
    peer = socket.socket(socket.AF_UNIX)
    peer.setblocking(False)
    padded = (b"\0" + name.encode()).ljust(108, b"\0")
    await asyncio.get_running_loop().sock_connect(peer, padded)
    peer.close()


# -- inet ----------------------------------------------------------------------------------


async def test_inet_v4_server(table: ChardevTable) -> None:
    await table.add(sock_spec("t", inet("127.0.0.1", "0")))
    listen = filename(table, "t")
    assert listen.startswith("disconnected:tcp:127.0.0.1:") and listen.endswith(",server=on")
    port = int(listen.split(":")[3].split(",")[0])
    dev = table.get("t")
    assert dev is not None
    dev.attach(Echo())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await roundtrip(reader, writer, b"v4") == b"V4"
    cport = writer.get_extra_info("sockname")[1]
    assert filename(table, "t") == f"tcp:127.0.0.1:{port},server=on <-> 127.0.0.1:{cport}"
    writer.close()


def _have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _have_ipv6(), reason="no IPv6 loopback")
async def test_inet_v6_server(table: ChardevTable) -> None:
    await table.add(sock_spec("t6", inet("::1", "0")))
    listen = filename(table, "t6")
    assert listen.startswith("disconnected:tcp:::1:") and listen.endswith(",server=on")
    port = int(listen.removeprefix("disconnected:tcp:::1:").split(",")[0])
    dev = table.get("t6")
    assert dev is not None
    dev.attach(Echo())
    reader, writer = await asyncio.open_connection("::1", port)
    assert await roundtrip(reader, writer, b"v6") == b"V6"
    cport = writer.get_extra_info("sockname")[1]
    assert filename(table, "t6") == f"tcp:[::1]:{port},server=on <-> [::1]:{cport}"
    writer.close()


async def test_inet_client_nodelay(table: ChardevTable) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await table.add(sock_spec("tc", inet("127.0.0.1", str(port)), server=False, nodelay=True))
        dev = table.get("tc")
        assert dev is not None
        local = filename(table, "tc")
        assert local.startswith("tcp:127.0.0.1:") and local.endswith(f" <-> 127.0.0.1:{port}")
        fe = Echo()
        dev.attach(fe)
        await until(lambda: bool(fe.conns))
        sock = fe.conns[0].sock
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        for w in accepted:
            w.close()
        server.close()


async def test_inet_client_refused(table: ChardevTable) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GenericError) as err:
        await table.add(sock_spec("x", inet("127.0.0.1", str(port)), server=False))
    assert err.value.desc == (
        f"Failed to add chardev 'x': Failed to connect to '127.0.0.1:{port}': Connection refused"
    )


async def test_inet_port_range_skips_used_ports(table: ChardevTable) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spec = sock_spec("pr", inet("127.0.0.1", str(port), to=port))
        with pytest.raises(GenericError) as err:
            await table.add(spec)
        assert err.value.desc == (
            "Failed to add chardev 'pr': Failed to find an available port: Address already in use"
        )


async def test_inet_resolution_failure(table: ChardevTable) -> None:
    with pytest.raises(GenericError) as err:
        await table.add(sock_spec("n", inet("no-such-host.invalid", "1"), server=False))
    assert err.value.desc.startswith(
        "Failed to add chardev 'n': address resolution failed for no-such-host.invalid:1: "
    )


async def test_both_families_off(table: ChardevTable) -> None:
    with pytest.raises(GenericError) as err:
        await table.add(sock_spec("n", inet("127.0.0.1", "0", ipv4=False, ipv6=False)))
    assert err.value.desc == (
        "Failed to add chardev 'n': Cannot disable IPv4 and IPv6 at same time"
    )


# -- option validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "text"),
    [
        ({"server": False, "wait": False},
         "'wait' option is incompatible with socket in client connect mode"),
        ({"reconnect": 1}, "'reconnect' option is incompatible with socket in server listen mode"),
        ({"server": False, "reconnect": 1, "reconnect-ms": 5},
         "'reconnect' and 'reconnect-ms' are mutually exclusive"),
        ({"server": False, "websocket": True}, "Websocket client is not implemented"),
        ({"tls-creds": "tls0"}, "No TLS credentials with id 'tls0'"),
        ({"tls-authz": "authz0"}, "'tls_authz' option requires 'tls_creds' option"),
    ],
)  # fmt: skip
async def test_option_errors(
    table: ChardevTable, tmp_path: Path, extra: dict[str, Any], text: str
) -> None:
    with pytest.raises(GenericError) as err:
        await table.add(sock_spec("e", unix(str(tmp_path / "e.sock")), **extra))
    assert err.value.desc == f"Failed to add chardev 'e': {text}"
    assert not (tmp_path / "e.sock").exists()


async def test_unix_path_too_long(table: ChardevTable) -> None:
    path = "/tmp/" + "x" * 120
    with pytest.raises(GenericError) as err:
        await table.add(sock_spec("e", unix(path)))
    assert err.value.desc == f"Failed to add chardev 'e': UNIX socket path '{path}' is too long"


async def test_empty_unix_path_gets_a_temporary_socket(table: ChardevTable) -> None:
    await table.add(sock_spec("tmp", unix("")))
    name = filename(table, "tmp")
    path = name.removeprefix("disconnected:unix:").removesuffix(",server=on")
    assert os.path.basename(path).startswith("qemu-socket-")
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    await table.remove("tmp")
    assert not os.path.exists(path)


async def test_fd_server(table: ChardevTable, tmp_path: Path) -> None:
    path = str(tmp_path / "fd.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    fd = listener.detach()
    spec = chardev_from_qmp(
        "f", {"type": "socket", "data": {"addr": {"type": "fd", "data": {"str": str(fd)}}}}
    )
    await table.add(spec)
    assert filename(table, "f") == f"disconnected:unix:{path},server=on"
    dev = table.get("f")
    assert dev is not None
    dev.attach(Echo())
    reader, writer = await asyncio.open_unix_connection(path)
    assert await roundtrip(reader, writer, b"fd") == b"FD"
    writer.close()
    with contextlib.suppress(OSError):
        os.unlink(path)


async def test_fd_not_a_socket(table: ChardevTable, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    spec = chardev_from_qmp(
        "f", {"type": "socket", "data": {"addr": {"type": "fd", "data": {"str": str(fd)}}}}
    )
    with pytest.raises(GenericError) as err:
        await table.add(spec)
    assert err.value.desc == f"Failed to add chardev 'f': File descriptor '{fd}' is not a socket"
    with pytest.raises(OSError):
        os.fstat(fd)  # closed, like QEMU
