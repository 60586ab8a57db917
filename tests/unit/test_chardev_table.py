"""The chardev table: QMP chardev commands, their error texts, refusals, CLI forms."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from netstack.chardev import ChardevTable, Connection, create_backend
from netstack.chardev.mux import MuxChardev
from netstack.chardev.table import UNAVAILABLE
from netstack.errors import GenericError
from netstack.qapi import (
    chardev_add_from_qmp,
    chardev_from_qmp,
    parse_chardev_cli,
    parse_qmp_shorthand,
)
from tests.kit.polling import until


class Frontend:
    raw_socket = False
    multi_connection = False

    def __init__(self, *, hotswap: bool = False) -> None:
        self.supports_hotswap = hotswap
        self.breaks = 0
        self.conns: list[Connection] = []

    async def serve(self, conn: Connection) -> None:
        self.conns.append(conn)
        while await conn.read():
            pass

    def on_break(self) -> None:
        self.breaks += 1


def spec(cid: str, kind: str, **data: Any) -> Any:
    return chardev_from_qmp(cid, {"type": kind, "data": data})


def unix_server(cid: str, path: Path) -> Any:
    return spec(cid, "socket", addr={"type": "unix", "data": {"path": str(path)}})


def attach(table: ChardevTable, cid: str, fe: Any) -> None:
    dev = table.get(cid)
    assert dev is not None
    dev.attach(fe)


async def expect(coro: Any, text: str) -> None:
    with pytest.raises(GenericError) as err:
        await coro
    assert err.value.desc == text
    assert err.value.qmp_class == "GenericError"


# -- chardev-add ---------------------------------------------------------------------------


async def test_add_duplicate_and_odd_ids(table: ChardevTable) -> None:
    assert (
        await table.add(
            chardev_add_from_qmp({"id": "1bad id", "backend": {"type": "null", "data": {}}})
        )
        == {}
    )
    await expect(table.add(spec("1bad id", "null")), "Chardev with id '1bad id' already exists")
    await table.add(parse_chardev_cli("null,id=n0"), from_cli=True)
    await expect(
        table.add(parse_chardev_cli("ringbuf,id=n0"), from_cli=True),
        "Duplicate ID 'n0' for chardev",
    )


@pytest.mark.manual_clock
async def test_concurrent_add_of_one_id(table: ChardevTable, tmp_path: Path) -> None:
    path = tmp_path / "w.sock"
    waiting = asyncio.create_task(
        table.add(
            spec("w", "socket", addr={"type": "unix", "data": {"path": str(path)}}, wait=True)
        )
    )
    await until(path.exists)  # listening, waiting for its client
    await expect(table.add(spec("w", "null")), "Chardev with id 'w' already exists")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert table.get("w") is None
    assert not path.exists()  # the half-opened chardev was cleaned up
    await table.add(spec("w", "null"))


@pytest.mark.parametrize("kind", sorted(UNAVAILABLE))
async def test_refused_backends(table: ChardevTable, kind: str) -> None:
    data: dict[str, Any] = {}
    if kind in ("serial", "parallel"):
        data = {"device": "/dev/null"}
    elif kind == "spicevmc":
        data = {"type": "vdagent"}
    elif kind == "spiceport":
        data = {"fqdn": "org.qemu.x"}
    elif kind == "dbus":
        data = {"name": "x"}
    with pytest.raises(GenericError) as err:
        await table.add(spec("x", kind, **data))
    assert err.value.desc.startswith(
        f"Failed to add chardev 'x': chardev backend '{kind}' is not available in netstack: "
    )


async def test_refusal_text_for_vc(table: ChardevTable) -> None:
    await expect(
        table.add(spec("v", "vc")),
        "Failed to add chardev 'v': chardev backend 'vc' is not available in netstack: "
        "it needs a display",
    )


async def test_cli_errors_are_not_wrapped(table: ChardevTable, tmp_path: Path) -> None:
    missing = tmp_path / "nope.sock"
    await expect(
        table.add(parse_chardev_cli(f"socket,id=c,path={missing}"), from_cli=True),
        f"Failed to connect to '{missing}': No such file or directory",
    )


async def test_query_backends(table: ChardevTable) -> None:
    names = [b["name"] for b in table.query_backends()]
    assert set(names) == {
        "file", "pipe", "socket", "udp", "pty", "null", "mux", "stdio", "ringbuf", "memory"
    }  # fmt: skip
    for name in names:
        assert name not in UNAVAILABLE


# -- query-chardev -------------------------------------------------------------------------


async def test_query_in_creation_order_with_frontend_open(
    table: ChardevTable, tmp_path: Path
) -> None:
    await table.add(spec("b", "ringbuf"))
    await table.add(spec("a", "null"))
    await table.add(unix_server("s", tmp_path / "s.sock"))
    attach(table, "a", Frontend())
    assert table.query() == [
        {"label": "b", "filename": "ringbuf", "frontend-open": False},
        {"label": "a", "filename": "null", "frontend-open": True},
        {
            "label": "s",
            "filename": f"disconnected:unix:{tmp_path / 's.sock'},server=on",
            "frontend-open": False,
        },
    ]


# -- chardev-remove, chardev-send-break ----------------------------------------------------


async def test_remove(table: ChardevTable, tmp_path: Path) -> None:
    await expect(table.remove("x"), "Chardev 'x' not found")
    await table.add(unix_server("s", tmp_path / "s.sock"))
    fe = Frontend()
    attach(table, "s", fe)
    await expect(table.remove("s"), "Chardev 's' is busy")
    dev = table.get("s")
    assert dev is not None
    dev.detach()
    await table.remove("s")
    assert table.get("s") is None
    assert not (tmp_path / "s.sock").exists()
    await table.add(unix_server("s", tmp_path / "s.sock"))  # the id is free again


async def test_send_break(table: ChardevTable) -> None:
    with pytest.raises(GenericError, match=r"^Chardev 'x' not found$"):
        table.send_break("x")
    await table.add(spec("n", "null"))
    table.send_break("n")  # nobody listening: nothing happens
    fe = Frontend()
    attach(table, "n", fe)
    table.send_break("n")
    assert fe.breaks == 1


async def test_attach_twice_and_raw_socket_on_a_file(table: ChardevTable) -> None:
    await table.add(spec("n", "null"))
    attach(table, "n", Frontend())
    with pytest.raises(GenericError, match=r"^Device 'n' is in use$"):
        attach(table, "n", Frontend())

    class Raw(Frontend):
        raw_socket = True

    await table.add(spec("r", "ringbuf"))
    with pytest.raises(GenericError, match=r'^chardev "r" does not support FD passing$'):
        attach(table, "r", Raw())


# -- chardev-change ------------------------------------------------------------------------


async def test_change_errors(table: ChardevTable) -> None:
    await expect(table.change(spec("x", "null")), "Chardev 'x' does not exist")
    await table.add(spec("n", "null"))
    await table.add(spec("m", "mux", chardev="n"))
    await expect(table.change(spec("m", "null")), "Mux device hotswap not supported yet")
    await table.add(spec("busy", "null"))
    attach(table, "busy", Frontend())
    await expect(
        table.change(spec("busy", "ringbuf")), "Chardev user does not support chardev hotswap"
    )


async def test_change_without_frontend_replaces(table: ChardevTable) -> None:
    await table.add(spec("c", "null"))
    ret = await table.change(spec("c", "pty"))
    assert ret["pty"].startswith("/dev/pts/")
    assert table.query() == [
        {"label": "c", "filename": f"pty:{ret['pty']}", "frontend-open": False}
    ]
    # a failing add loses the old chardev, as in QEMU
    await expect(
        table.change(spec("c", "ringbuf", size=3)),
        "Failed to add chardev 'c': size of ringbuf chardev must be power of two",
    )
    assert table.get("c") is None


async def test_change_moves_a_hotswap_frontend(table: ChardevTable, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    await table.add(unix_server("c", path))
    fe = Frontend(hotswap=True)
    attach(table, "c", fe)
    # a failing new back end reports the bare reason and keeps the old one
    await expect(
        table.change(spec("c", "ringbuf", size=5)), "size of ringbuf chardev must be power of two"
    )
    old = table.get("c")
    assert old is not None and old.frontend is fe
    # a new socket on the same path: the old one's cleanup must not remove it
    assert await table.change(unix_server("c", path)) == {}
    new = table.get("c")
    assert new is not None and new is not old and new.frontend is fe and old.frontend is None
    assert path.exists()
    _reader, writer = await asyncio.open_unix_connection(str(path))
    await until(lambda: fe.conns)
    writer.close()
    assert await table.change(spec("c", "ringbuf")) == {}
    assert not path.exists()
    assert table.query() == [{"label": "c", "filename": "ringbuf", "frontend-open": True}]


# -- mux from the command line -------------------------------------------------------------


async def test_cli_mux_on_creates_base_and_mux(table: ChardevTable) -> None:
    await table.add(parse_chardev_cli("ringbuf,id=con,mux=on,size=64"), from_cli=True)
    assert [d["label"] for d in table.query()] == ["con-base", "con"]
    base, mux = table.get("con-base"), table.get("con")
    assert isinstance(mux, MuxChardev) and mux.base is base
    assert mux.filename() == "mux"
    await expect(table.remove("con-base"), "Chardev 'con-base' is busy")
    await table.remove("con")  # no front end on the mux: removable
    await table.remove("con-base")  # and now its base is free


async def test_qmp_shorthand_mon_prefix(table: ChardevTable) -> None:
    await table.add(parse_qmp_shorthand("mon:null", "compat_monitor0"), from_cli=True)
    assert [d["label"] for d in table.query()] == ["compat_monitor0-base", "compat_monitor0"]


async def test_mux_errors(table: ChardevTable) -> None:
    await expect(
        table.add(spec("m", "mux", chardev="nothere")),
        "Failed to add chardev 'm': mux: base chardev nothere not found",
    )
    await table.add(spec("n", "null"))
    attach(table, "n", Frontend())
    await expect(
        table.add(spec("m", "mux", chardev="n")), "Failed to add chardev 'm': Device 'n' is in use"
    )


# -- factory and shutdown ------------------------------------------------------------------


def test_create_backend_opens_nothing(tmp_path: Path) -> None:
    dev = create_backend(unix_server("s", tmp_path / "s.sock"))
    assert dev.id == "s" and not (tmp_path / "s.sock").exists()


async def test_close_all_removes_socket_files(tmp_path: Path) -> None:
    table = ChardevTable()
    for i in range(3):
        await table.add(unix_server(f"s{i}", tmp_path / f"s{i}.sock"))
    await table.add(parse_chardev_cli("null,id=con,mux=on"), from_cli=True)
    attach(table, "con", Frontend())
    await table.close_all()
    assert len(table) == 0
    assert os.listdir(tmp_path) == []
