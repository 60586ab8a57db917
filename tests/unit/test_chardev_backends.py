"""Stream back ends: null, ringbuf/memory, file, pipe, pty, stdio, udp, and log files."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
import socket
import termios
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.chardev import ChardevTable, Connection
from netstack.chardev.memory import RingbufChardev, glib_base64_decode, qemu_utf8_text
from netstack.chardev.terminals import StdioChardev
from netstack.errors import GenericError
from netstack.qapi import chardev_from_qmp, parse_chardev_cli
from tests.kit.polling import until


class Recorder:
    """A front end that records what it reads and can be told to write."""

    multi_connection = False
    raw_socket = False

    def __init__(self) -> None:
        self.data = bytearray()
        self.conns: list[Connection] = []
        self.ended = 0

    async def serve(self, conn: Connection) -> None:
        self.conns.append(conn)
        try:
            while chunk := await conn.read():
                self.data += chunk
        finally:
            self.ended += 1

    def say(self, data: bytes) -> None:
        self.conns[-1].write(data)


class Greeter(Recorder):
    """Writes a greeting as soon as it gets a connection (like a QMP monitor)."""

    async def serve(self, conn: Connection) -> None:
        conn.write(b"greeting")
        await conn.drain()
        await super().serve(conn)


def spec(cid: str, kind: str, **data: Any) -> Any:
    return chardev_from_qmp(cid, {"type": kind, "data": data})


async def attached(table: ChardevTable, cid: str) -> Recorder:
    fe = Recorder()
    dev = table.get(cid)
    assert dev is not None
    dev.attach(fe)
    await until(lambda: bool(fe.conns))
    return fe


# -- null and log files --------------------------------------------------------------------


async def test_null_discards_and_logs(table: ChardevTable, tmp_path: Path) -> None:
    log = tmp_path / "null.log"
    await table.add(spec("n", "null", logfile=str(log)))
    assert table.query() == [{"label": "n", "filename": "null", "frontend-open": False}]
    fe = await attached(table, "n")
    fe.say(b"into the void\n")
    assert log.read_bytes() == b"into the void\n"
    await table.get("n").close()  # type: ignore[union-attr]
    await until(lambda: fe.ended == 1)
    assert fe.data == b""


async def test_logfile_truncates_or_appends(table: ChardevTable, tmp_path: Path) -> None:
    log = tmp_path / "l.log"
    log.write_bytes(b"old;")
    await table.add(spec("a", "null", logfile=str(log), logappend=True))
    (await attached(table, "a")).say(b"new")
    assert log.read_bytes() == b"old;new"
    await table.add(spec("t", "null", logfile=str(log)))
    assert log.read_bytes() == b""


async def test_logfile_error_text(table: ChardevTable, tmp_path: Path) -> None:
    bad = tmp_path / "missing" / "x.log"
    with pytest.raises(GenericError) as err:
        await table.add(spec("n", "null", logfile=str(bad)))
    assert err.value.desc == (
        f"Failed to add chardev 'n': Could not create '{bad}': No such file or directory"
    )


async def test_socket_output_is_logged(table: ChardevTable, tmp_path: Path) -> None:
    log, path = tmp_path / "s.log", str(tmp_path / "s.sock")
    addr = {"type": "unix", "data": {"path": path}}
    await table.add(spec("s", "socket", addr=addr, logfile=str(log)))
    fe = Recorder()
    table.get("s").attach(fe)  # type: ignore[union-attr]
    reader, writer = await asyncio.open_unix_connection(path)
    await until(lambda: bool(fe.conns))
    fe.say(b"to the client")
    async with asyncio.timeout(5):
        assert await reader.readexactly(13) == b"to the client"
    writer.write(b"from the client")
    await until(lambda: bytes(fe.data) == b"from the client")
    assert log.read_bytes() == b"to the client"  # only output is logged
    writer.close()


# -- ringbuf -------------------------------------------------------------------------------


async def test_ringbuf_wraparound_from_frontend(table: ChardevTable, tmp_path: Path) -> None:
    log = tmp_path / "r.log"
    await table.add(spec("r", "ringbuf", size=8, logfile=str(log)))
    assert table.query()[0]["filename"] == "ringbuf"
    fe = await attached(table, "r")
    fe.say(b"0123456789")
    assert table.ringbuf_read("r", 100) == "23456789"
    assert table.ringbuf_read("r", 100) == ""
    fe.say(b"abc")
    fe.say(b"defghij")
    assert table.ringbuf_read("r", 3) == "cde"
    assert table.ringbuf_read("r", 3) == "fgh"
    assert table.ringbuf_read("r", 3) == "ij"
    assert log.read_bytes() == b"0123456789abcdefghij"


async def test_ringbuf_write_and_read_formats(table: ChardevTable) -> None:
    await table.add(spec("r", "ringbuf"))
    table.ringbuf_write("r", "héllo")
    assert table.ringbuf_read("r", 2, "utf8") == "h\ufffd"  # the é was cut in half
    assert table.ringbuf_read("r", 100) == "\ufffdllo"
    table.ringbuf_write("r", base64.b64encode(b"\x00\x01\xff").decode(), "base64")
    assert table.ringbuf_read("r", 10, "base64") == "AAH/"
    table.ringbuf_write("r", "abc\x00def")  # a C string ends at NUL
    assert table.ringbuf_read("r", 10, "base64") == base64.b64encode(b"abc").decode()
    table.ringbuf_write("r", "A\nQ\nI=", "base64")  # newlines are allowed
    assert table.ringbuf_read("r", 10, "base64") == "AQI="


async def test_ringbuf_default_size_and_memory_alias(table: ChardevTable) -> None:
    await table.add(spec("m", "memory"))
    dev = table.get("m")
    assert isinstance(dev, RingbufChardev) and dev.size == 65536
    assert dev.filename() == "memory"
    table.ringbuf_write("m", "x" * 70000)
    assert dev.count == 65536


@pytest.mark.parametrize("size", [3, 0, -4, 100])
async def test_ringbuf_size_must_be_power_of_two(table: ChardevTable, size: int) -> None:
    with pytest.raises(GenericError) as err:
        await table.add(spec("r", "ringbuf", size=size))
    assert (
        err.value.desc == "Failed to add chardev 'r': size of ringbuf chardev must be power of two"
    )


async def test_ringbuf_cli_size_suffix(table: ChardevTable) -> None:
    await table.add(parse_chardev_cli("ringbuf,id=r,size=1k"), from_cli=True)
    assert table.get("r").size == 1024  # type: ignore[union-attr]


async def test_ringbuf_errors(table: ChardevTable) -> None:
    await table.add(spec("r", "ringbuf"))
    await table.add(spec("n", "null"))
    with pytest.raises(GenericError, match=r"^Device 'x' not found$"):
        table.ringbuf_read("x", 1)
    with pytest.raises(GenericError, match=r"^Device 'x' not found$"):
        table.ringbuf_write("x", "a")
    with pytest.raises(GenericError, match=r"^n is not a ringbuf device$"):
        table.ringbuf_read("n", 1)
    with pytest.raises(GenericError, match=r"^n is not a ringbuf device$"):
        table.ringbuf_write("n", "a")
    with pytest.raises(GenericError, match=r"^size must be greater than zero$"):
        table.ringbuf_read("r", 0)
    with pytest.raises(GenericError, match=r"^Base64 data contains invalid characters$"):
        table.ringbuf_write("r", "a b", "base64")


def test_qemu_utf8_text_cases() -> None:
    assert qemu_utf8_text(b"plain") == "plain"
    assert qemu_utf8_text(b"a\xc0\x80b") == "a\x00b"  # modified UTF-8 NUL
    assert qemu_utf8_text(b"a\x00b") == "a"
    assert qemu_utf8_text(b"\xff\xfe") == "\ufffd\ufffd"
    assert qemu_utf8_text(b"\xe2\x82") == "\ufffd"  # truncated: one replacement
    assert qemu_utf8_text(b"\xe2\x82x") == "\ufffdx"
    assert qemu_utf8_text(b"\xc1\xbf") == "\ufffd"  # overlong
    assert qemu_utf8_text(b"\xed\xa0\x80") == "\ufffd"  # surrogate
    assert qemu_utf8_text(b"\xef\xbf\xbe") == "\ufffd"  # U+FFFE noncharacter
    assert qemu_utf8_text(b"\xf4\x90\x80\x80") == "\ufffd"  # beyond U+10FFFF
    assert qemu_utf8_text(b"\xf0\x9f\x98\x80") == "\U0001f600"
    assert qemu_utf8_text(b"\x80x") == "\ufffdx"


_VALID = st.text(
    st.characters(
        exclude_categories=["Cs"],
        exclude_characters="\x00",
    ).filter(lambda c: not (0xFDD0 <= ord(c) <= 0xFDEF or ord(c) & 0xFFFE == 0xFFFE))
)


@given(_VALID)
def test_qemu_utf8_text_roundtrips_valid_text(text: str) -> None:
    assert qemu_utf8_text(text.encode()) == text


@given(st.binary())
def test_qemu_utf8_text_is_total(data: bytes) -> None:
    qemu_utf8_text(data)


@given(st.binary())
def test_glib_base64_matches_standard_decoding(data: bytes) -> None:
    assert glib_base64_decode(base64.b64encode(data).decode()) == data


def test_glib_base64_quirks() -> None:
    assert glib_base64_decode("QUJD\nREVG") == b"ABCDEF"
    assert glib_base64_decode("QUJDRA") == b"ABC"  # incomplete quantum ignored
    assert glib_base64_decode("") == b""


# -- file and pipe -------------------------------------------------------------------------


async def test_file_out_and_in(table: ChardevTable, tmp_path: Path) -> None:
    out, inp = tmp_path / "out", tmp_path / "in"
    out.write_bytes(b"previous")
    inp.write_bytes(b"input data")
    await table.add(spec("f", "file", out=str(out), **{"in": str(inp)}))
    assert out.read_bytes() == b""  # truncated
    assert table.query()[0]["filename"] == "file"
    fe = Greeter()
    table.get("f").attach(fe)  # type: ignore[union-attr]
    await until(lambda: fe.ended == 1)  # end of the input file ends the connection
    assert fe.data == b"input data"
    assert out.read_bytes() == b"greeting"


async def test_file_append_without_input(table: ChardevTable, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"keep;")
    await table.add(spec("f", "file", out=str(out), append=True))
    fe = await attached(table, "f")
    fe.say(b"more")
    await asyncio.sleep(0.05)
    assert fe.ended == 0  # no input: the connection just stays
    assert out.read_bytes() == b"keep;more"


async def test_file_errors(table: ChardevTable, tmp_path: Path) -> None:
    bad = tmp_path / "no" / "out"
    with pytest.raises(GenericError) as err:
        await table.add(spec("f", "file", out=str(bad)))
    assert (
        err.value.desc
        == f"Failed to add chardev 'f': Could not open '{bad}': No such file or directory"
    )
    with pytest.raises(GenericError) as err:
        await table.add(spec("g", "file", out=str(tmp_path / "o"), **{"in": str(bad)}))
    assert (
        err.value.desc
        == f"Failed to add chardev 'g': Could not open '{bad}': No such file or directory"
    )


async def test_pipe_in_and_out_fifos(table: ChardevTable, tmp_path: Path) -> None:
    base = str(tmp_path / "p")
    os.mkfifo(base + ".in")
    os.mkfifo(base + ".out")
    await table.add(spec("p", "pipe", device=base))
    assert table.query()[0]["filename"] == "pipe"
    fe = await attached(table, "p")
    wfd = os.open(base + ".in", os.O_WRONLY | os.O_NONBLOCK)
    rfd = os.open(base + ".out", os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.write(wfd, b"to guest")
        await until(lambda: bytes(fe.data) == b"to guest")
        fe.say(b"to host")
        await until(lambda: _try_read(rfd) == b"to host")
    finally:
        os.close(wfd)
        os.close(rfd)


def _try_read(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    except BlockingIOError:
        return b""


async def test_pipe_single_path_and_error(table: ChardevTable, tmp_path: Path) -> None:
    base = str(tmp_path / "single")
    os.mkfifo(base)
    await table.add(spec("p", "pipe", device=base))
    fe = await attached(table, "p")
    fe.say(b"loop")  # one FIFO both ways reads back its own output, as in QEMU
    await until(lambda: bytes(fe.data) == b"loop")
    missing = str(tmp_path / "none")
    with pytest.raises(GenericError) as err:
        await table.add(spec("q", "pipe", device=missing))
    assert (
        err.value.desc
        == f"Failed to add chardev 'q': Could not open '{missing}': No such file or directory"
    )


# -- pty -----------------------------------------------------------------------------------


async def test_pty_life(table: ChardevTable) -> None:
    ret = await table.add(spec("t", "pty"))
    path = ret["pty"]
    assert path.startswith("/dev/pts/")
    assert table.query() == [{"label": "t", "filename": f"pty:{path}", "frontend-open": False}]
    fe = Recorder()
    table.get("t").attach(fe)  # type: ignore[union-attr]
    await asyncio.sleep(0.1)
    assert fe.conns == []  # nobody has the slave open
    for round_ in range(2):
        slave = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            await until(lambda: len(fe.conns) == round_ + 1)  # noqa: B023
            os.write(slave, b"typed")
            await until(lambda: bytes(fe.data).endswith(b"typed"))
            fe.say(b"shown")
            got = bytearray()
            await until(lambda: _collect(slave, got) == b"shown")  # noqa: B023
        finally:
            os.close(slave)
        await until(lambda: fe.ended == round_ + 1)  # noqa: B023
    dev = table.get("t")
    assert dev is not None
    dev.detach()
    await table.remove("t")


def _collect(fd: int, into: bytearray) -> bytes:
    with contextlib.suppress(OSError):
        into += os.read(fd, 100)
    return bytes(into)


# -- stdio ---------------------------------------------------------------------------------


async def test_stdio_over_pipes() -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    dev = StdioChardev("io", None, fd_in=in_r, fd_out=out_w)
    other = StdioChardev("io2", None, fd_in=in_r, fd_out=out_w)
    try:
        await dev.start()
        assert dev.filename() == "stdio"
        with pytest.raises(GenericError, match=r"^cannot use stdio by multiple character devices$"):
            await other.start()
        fe = Recorder()
        dev.attach(fe)
        await until(lambda: bool(fe.conns))
        os.write(in_w, b"cmd")
        await until(lambda: bytes(fe.data) == b"cmd")
        fe.say(b"reply")
        assert os.read(out_r, 100) == b"reply"
        os.close(in_w)
        in_w = -1
        await until(lambda: fe.ended == 1)  # end of input ends the connection
    finally:
        await dev.close()
        await other.close()
        for fd in (in_r, in_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)
    assert not StdioChardev._in_use  # released by close


async def test_stdio_restores_tty_and_blocking() -> None:
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    dev = StdioChardev("tty", False, fd_in=slave, fd_out=slave)
    try:
        await dev.start()
        raw = termios.tcgetattr(slave)
        assert not raw[3] & termios.ECHO and not raw[3] & termios.ICANON
        assert not raw[3] & termios.ISIG  # signal=off
        assert not os.get_blocking(slave)
    finally:
        await dev.close()
        assert termios.tcgetattr(slave) == before
        assert os.get_blocking(slave)
        os.close(master)
        os.close(slave)


# -- udp -----------------------------------------------------------------------------------


async def test_udp_both_ways(table: ChardevTable) -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    remote = {"type": "inet", "data": {"host": "127.0.0.1", "port": str(peer.getsockname()[1])}}
    local = {"type": "inet", "data": {"host": "127.0.0.1", "port": str(local_port)}}
    try:
        await table.add(spec("u", "udp", remote=remote, local=local))
        assert table.query()[0]["filename"] == "udp"
        fe = await attached(table, "u")
        fe.say(b"datagram")
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):
            data, addr = await loop.sock_recvfrom(peer, 100)
        assert data == b"datagram" and addr == ("127.0.0.1", local_port)
        peer.sendto(b"answer", addr)
        await until(lambda: bytes(fe.data) == b"answer")
    finally:
        peer.close()


async def test_udp_cli_and_errors(table: ChardevTable) -> None:
    spec_ = parse_chardev_cli("udp,id=u,host=127.0.0.1,port=9")
    await table.add(spec_, from_cli=True)
    fe = await attached(table, "u")
    fe.say(b"nobody listens")  # ICMP port unreachable must not stop the reader
    await asyncio.sleep(0.05)
    fe.say(b"still alive")
    assert fe.ended == 0
    bad = {"type": "inet", "data": {"host": "127.0.0.1", "port": ""}}
    with pytest.raises(
        GenericError, match=r"^Failed to add chardev 'x': remote port not specified$"
    ):
        await table.add(spec("x", "udp", remote=bad))
    with pytest.raises(GenericError) as err:
        await table.add(
            spec(
                "y",
                "udp",
                remote={"type": "inet", "data": {"host": "127.0.0.1", "port": "9"}},
                local={"type": "inet", "data": {"host": "192.0.2.1", "port": "0"}},
            )
        )
    assert err.value.desc == (
        "Failed to add chardev 'y': Failed to bind socket: " + os.strerror(errno.EADDRNOTAVAIL)
    )


async def test_reattach_at_once_keeps_reading(table: ChardevTable, tmp_path: Path) -> None:
    base = str(tmp_path / "re")
    os.mkfifo(base)
    await table.add(spec("p", "pipe", device=base))
    dev = table.get("p")
    assert dev is not None
    first = await attached(table, "p")
    await asyncio.sleep(0.01)  # the first connection now waits for input
    dev.detach()
    second = Recorder()
    dev.attach(second)  # same fd, registered again before the old reader wakes up
    await until(lambda: bool(second.conns))
    second.say(b"after")
    await until(lambda: bytes(second.data) == b"after")
    assert first.ended == 1 and first.data == b""
