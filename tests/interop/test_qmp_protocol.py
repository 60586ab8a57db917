"""QMP wire protocol against a real netstackd process (QEMU's tests/qtest/qmp-test.c)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.daemon_proc import Daemon, running_daemon

pytestmark = pytest.mark.timeout(60)


class Raw:
    """A byte-level QMP client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)
        await self.writer.drain()

    async def line(self, timeout: float = 5) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), timeout)

    async def recv(self, timeout: float = 5) -> dict:  # type: ignore[type-arg]
        raw = await self.line(timeout)
        assert raw.endswith(b"\r\n"), raw
        return json.loads(raw)  # type: ignore[no-any-return]

    async def cmd(self, text: str) -> dict:  # type: ignore[type-arg]
        await self.send(text + "\n")
        return await self.recv()

    async def nothing(self, timeout: float = 0.3) -> bool:
        try:
            await asyncio.wait_for(self.reader.readline(), timeout)
        except TimeoutError:
            return True
        return False


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    with running_daemon(tmp_path, ["-netdev", "hubport,id=p0,hubid=0"]) as d:
        yield d


async def connect(d: Daemon) -> AsyncIterator[Raw]:
    reader, writer = await asyncio.open_unix_connection(str(d.qmp))
    try:
        yield Raw(reader, writer)
    finally:
        writer.close()


@pytest.fixture
async def raw(daemon: Daemon):  # type: ignore[no-untyped-def]
    async for r in connect(daemon):
        yield r


def err(resp: dict, cls: str = "GenericError") -> str:  # type: ignore[type-arg]
    assert "error" in resp, resp
    assert resp["error"]["class"] == cls, resp
    return str(resp["error"]["desc"])


async def test_greeting_and_negotiation(raw: Raw) -> None:
    greeting = await raw.recv()
    assert set(greeting) == {"QMP"}
    assert set(greeting["QMP"]) == {"version", "capabilities"}
    assert greeting["QMP"]["capabilities"] == ["oob"]
    version = greeting["QMP"]["version"]
    assert set(version["qemu"]) == {"major", "minor", "micro"}
    assert isinstance(version["package"], str)
    resp = await raw.cmd('{"execute": "query-version"}')
    assert err(resp, "CommandNotFound") == (
        "Expecting capabilities negotiation with 'qmp_capabilities'"
    )
    assert await raw.cmd('{"execute": "qmp_capabilities"}') == {"return": {}}
    resp = await raw.cmd('{"execute": "qmp_capabilities"}')
    assert err(resp, "CommandNotFound") == (
        "Capabilities negotiation is already complete, command ignored"
    )


async def assert_recovered(raw: Raw) -> None:
    resp = await raw.cmd("{ 'execute': 'no-such-cmd' }")
    assert err(resp, "CommandNotFound") in (
        "The command no-such-cmd has not been found",
        "Expecting capabilities negotiation with 'qmp_capabilities'",
    )


async def check_malformed(raw: Raw) -> None:
    """qmp-test.c's test_malformed, byte for byte."""
    for bad in [
        b"{]\n",
        b"{\xff",
        b"{\x01",
        b"{'bad \xff",
        b"{'execute': 'nonexistent', 'id':'\n",
        b"%p",
    ]:
        await raw.send(bad)
        resp = await raw.recv()
        assert err(resp).startswith("JSON parse error"), (bad, resp)
        assert "id" not in resp
        await assert_recovered(raw)
    for text in [
        "null",
        "{}",
        "{ 'execute': true }",
        "{ 'execute': 'no-such-cmd', 'arguments': [] }",
        "{ 'execute': 'no-such-cmd', 'extra': true }",
    ]:
        resp = await raw.cmd(text)
        err(resp)


async def test_malformed_input_recovers(raw: Raw) -> None:
    await raw.recv()
    await check_malformed(raw)
    await raw.cmd('{"execute": "qmp_capabilities"}')
    await check_malformed(raw)
    # Exact texts of a few lexical errors.
    for bad, desc in [
        (b"{\xff\n", "JSON parse error, stray '\\ufffd'"),
        (b"{\x01\n", "JSON parse error, stray '\\u0001'"),
        (b'{"a": 1, "a": 2}\n', "JSON parse error, duplicate key"),
    ]:
        await raw.send(bad)
        resp = await raw.recv()
        assert err(resp) == desc.encode().decode("unicode_escape"), (bad, resp)
        await assert_recovered(raw)
    resp = await raw.cmd("{ 'execute': 'human-monitor-command', 'id': 2 }")
    assert resp["id"] == 2 and err(resp) == "Parameter 'command-line' is missing"


async def test_request_validation_texts(raw: Raw) -> None:
    await raw.recv()
    await raw.cmd('{"execute": "qmp_capabilities"}')
    cases = [
        ("[]", "QMP input must be a JSON object"),
        ('[{"id": 1}]', "QMP input must be a JSON object"),
        ("{}", "QMP input lacks member 'execute'"),
        ('{"execute": 1}', "QMP input member 'execute' must be a string"),
        (
            '{"execute": "query-version", "arguments": []}',
            "QMP input member 'arguments' must be an object",
        ),
        ('{"execute": "query-version", "extra": 1}', "QMP input member 'extra' is unexpected"),
        ('{"exec-oob": "query-version"}', "QMP input member 'exec-oob' is unexpected"),
        ('{"execute": "query-version", "arguments": {"x": 1}}', "Parameter 'x' is unexpected"),
        ('{"execute": "netdev_del"}', "Parameter 'id' is missing"),
        (
            '{"execute": "netdev_del", "arguments": {"id": 1}}',
            "Invalid parameter type for 'id', expected: string",
        ),
        (
            '{"execute": "set_link", "arguments": {"name": "p0", "up": "yes"}}',
            "Invalid parameter type for 'up', expected: boolean",
        ),
    ]
    for text, desc in cases:
        resp = await raw.cmd(text)
        assert err(resp) == desc, text
    null = await raw.cmd("null {}")
    assert err(null) == "QMP input must be a JSON object"
    assert err(await raw.recv()) == "QMP input lacks member 'execute'"


async def test_id_is_echoed(raw: Raw) -> None:
    await raw.recv()
    await raw.cmd('{"execute": "qmp_capabilities"}')
    resp = await raw.cmd('{"execute": "query-version", "id": "cookie#1"}')
    assert resp["id"] == "cookie#1" and "return" in resp
    resp = await raw.cmd('{"execute": "no-such", "id": 2}')
    assert resp["id"] == 2 and "error" in resp
    resp = await raw.cmd('{"execute": "query-version", "id": {"a": [1, null]}}')
    assert resp["id"] == {"a": [1, None]}
    raw_line = None
    await raw.send('{"execute": "query-version", "id": 1.5e3}\n')
    raw_line = await raw.line()
    assert raw_line.endswith(b'"id": 1500}\r\n'), raw_line


async def test_no_events_before_negotiation(daemon: Daemon) -> None:
    async for a in connect(daemon):
        async for b in connect(daemon):
            await a.recv()
            await b.recv()
            await b.cmd('{"execute": "qmp_capabilities"}')
            # An event every negotiated session sees: netdev changes emit none in QEMU,
            # so use quit's SHUTDOWN at the very end.
            await b.send('{"execute": "quit"}\n')
            first = await b.recv()
            second = await b.recv()
            got = {first.get("event"), "return" in second or "return" in first}
            assert "SHUTDOWN" in got
            line = await a.line()
            assert line == b"", line  # a saw no event: only the connection closing
    assert daemon.proc.wait(10) == 0


async def test_oob(raw: Raw) -> None:
    await raw.recv()
    resp = await raw.cmd('{"execute": "qmp_capabilities", "arguments": {"enable": ["cap-foo"]}}')
    assert err(resp) == "Parameter 'null' does not accept value 'cap-foo'"
    assert await raw.cmd('{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}') == {
        "return": {}
    }
    resp = await raw.cmd('{"exec-oob": "netdev_del", "arguments": {"id": "x"}}')
    assert err(resp) == "The command netdev_del does not support OOB"
    resp = await raw.cmd('{"execute": "query-version", "exec-oob": "query-version"}')
    assert "clashes with" in err(resp)
    # An in-band command blocks; an OOB one overtakes it and unblocks it.
    await raw.send('{"execute": "x-oob-test", "arguments": {"lock": true}, "id": "lock"}\n')
    await raw.send('{"execute": "query-version", "id": "in-band"}\n')
    await raw.send("{]\n")
    await raw.send('{"exec-oob": "x-oob-test", "arguments": {"lock": false}, "id": "oob"}\n')
    order = [(await raw.recv()).get("id") for _ in range(4)]
    assert order == ["oob", "lock", "in-band", None]
    # Even a malformed in-band request is answered in order.
    await raw.send('{"execute": "x-oob-test", "arguments": {"lock": true}, "id": "blocks-2"}\n')
    await raw.send("{ 'id': 'err-2' }\n")
    assert await raw.nothing(0.3)
    await raw.send('{"exec-oob": "x-oob-test", "arguments": {"lock": false}, "id": "u"}\n')
    order = [(await raw.recv()).get("id") for _ in range(3)]
    assert order == ["u", "blocks-2", "err-2"]


async def test_socket_mode_and_removal(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        mode = stat.S_IMODE(os.stat(d.qmp).st_mode)
        assert mode == 0o600
        assert d.stop() == 0
    assert not d.qmp.exists()
