"""The ``mux`` chardev: several front ends over one socket, focus switching with C-a c."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from netstack.chardev import ChardevTable, Connection
from netstack.chardev.mux import MuxChardev
from netstack.errors import GenericError
from netstack.qapi import parse_chardev_cli
from tests.kit.polling import until


class Recorder:
    multi_connection = False
    raw_socket = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.data = bytearray()
        self.conns: list[Connection] = []
        self.breaks = 0

    async def serve(self, conn: Connection) -> None:
        self.conns.append(conn)
        while chunk := await conn.read():
            self.data += chunk

    def say(self, text: bytes) -> None:
        self.conns[-1].write(text)

    def on_break(self) -> None:
        self.breaks += 1


async def muxed(
    table: ChardevTable, tmp_path: Path, count: int
) -> tuple[MuxChardev, list[Recorder], asyncio.StreamReader, asyncio.StreamWriter]:
    path = tmp_path / "mux.sock"
    spec = parse_chardev_cli(f"socket,id=con,path={path},server=on,wait=off,mux=on")
    await table.add(spec, from_cli=True)
    mux = table.get("con")
    assert isinstance(mux, MuxChardev)
    fes = [Recorder(f"fe{i}") for i in range(count)]
    for fe in fes:
        mux.attach(fe)
    reader, writer = await asyncio.open_unix_connection(str(path))
    await until(lambda: all(fe.conns for fe in fes))
    return mux, fes, reader, writer


async def test_focus_and_switching(table: ChardevTable, tmp_path: Path) -> None:
    mux, (a, b), reader, writer = await muxed(table, tmp_path, 2)
    assert mux.frontend is b  # the last front end to attach has the focus
    writer.write(b"to-b")
    await until(lambda: bytes(b.data) == b"to-b")
    writer.write(b"\x01c" + b"to-a")
    await until(lambda: bytes(a.data) == b"to-a")
    assert mux.frontend is a
    writer.write(b"\x01cback\x01\x01")  # wraps around to b; C-a C-a sends one C-a
    await until(lambda: bytes(b.data) == b"to-bback\x01")
    assert bytes(a.data) == b"to-a"
    # output of every front end reaches the base connection
    a.say(b"from a;")
    b.say(b"from b;")
    async with asyncio.timeout(5):
        assert await reader.readexactly(14) == b"from a;from b;"
    writer.close()
    await until(lambda: all(fe.conns[-1].closed for fe in (a, b)))


async def test_help_break_and_timestamps(table: ChardevTable, tmp_path: Path) -> None:
    mux, (a,), reader, writer = await muxed(table, tmp_path, 1)
    writer.write(b"\x01h")
    async with asyncio.timeout(5):
        help_text = await reader.readuntil(b"sends C-a\n\r")
    assert help_text.startswith(b"\n\rC-a h    print this help\n\r")
    assert b"C-a c    switch between console and monitor\n\r" in help_text
    writer.write(b"\x01b")
    await until(lambda: a.breaks == 1)
    writer.write(b"\x01t")
    await until(lambda: mux.timestamps)
    a.say(b"line one\nline two\n")
    async with asyncio.timeout(5):
        out = await reader.readuntil(b"line two\n")
    assert re.fullmatch(rb"line one\n\[00:00:00\.\d\d\d\] line two\n", out)
    writer.write(b"\x01x\x01s\x01zplain")  # swallowed: quit, commit, unknown
    await until(lambda: bytes(a.data) == b"plain")
    writer.close()


async def test_attach_later_detach_and_limits(table: ChardevTable, tmp_path: Path) -> None:
    mux, (a, _b), _reader, writer = await muxed(table, tmp_path, 2)
    c = Recorder("c")
    mux.attach(c)  # joins the running base connection, takes the focus
    await until(lambda: bool(c.conns))
    writer.write(b"c!")
    await until(lambda: bytes(c.data) == b"c!")
    mux.detach(c)
    assert mux.frontend is a  # focus moves on to the next front end, wrapping around
    writer.write(b"a!")
    await until(lambda: bytes(a.data) == b"a!")
    mux.attach(Recorder("d"))
    mux.attach(Recorder("e"))
    with pytest.raises(
        GenericError, match=r"^too many uses of multiplexed chardev 'con' \(maximum is 4\)$"
    ):
        mux.attach(Recorder("f"))
    assert table.query()[1] == {"label": "con", "filename": "mux", "frontend-open": True}
    writer.close()


async def test_new_base_connection_gives_new_sessions(table: ChardevTable, tmp_path: Path) -> None:
    _mux, (a, b), _reader, writer = await muxed(table, tmp_path, 2)
    writer.close()
    await until(lambda: a.conns[0].closed and b.conns[0].closed)
    _reader2, writer2 = await asyncio.open_unix_connection(str(tmp_path / "mux.sock"))
    await until(lambda: len(a.conns) == 2 and len(b.conns) == 2)
    writer2.write(b"again")
    await until(lambda: bytes(b.data) == b"again")
    writer2.close()


async def test_mux_logfile(table: ChardevTable, tmp_path: Path) -> None:
    log = tmp_path / "mux.log"
    await table.add(parse_chardev_cli("ringbuf,id=rb"), from_cli=True)
    await table.add(parse_chardev_cli(f"mux,id=m,chardev=rb,logfile={log}"), from_cli=True)
    mux = table.get("m")
    assert mux is not None
    fe = Recorder("fe")
    mux.attach(fe)
    await until(lambda: bool(fe.conns))
    fe.say(b"logged")
    assert log.read_bytes() == b"logged"
    assert table.ringbuf_read("rb", 100) == "logged"
