"""Hypothesis on the QMP input path of a real netstackd: any bytes give replies or errors,
and the server and its other sessions carry on."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon_proc import Daemon, running_daemon

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp: Path = tmp_path_factory.mktemp("qmpfuzz")
    with running_daemon(tmp, ["-netdev", "hubport,id=p0,hubid=0"]) as d:
        yield d


class Session:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.buf = b""
        self.lines(1)

    def lines(self, n: int, timeout: float = 5) -> list[bytes]:
        self.sock.settimeout(timeout)
        out: list[bytes] = []
        while len(out) < n:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return out
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            out.append(line)
        return out

    def drain(self, timeout: float = 0.2) -> list[bytes]:
        out: list[bytes] = []
        try:
            while True:
                out += self.lines(1, timeout)
        except TimeoutError:
            return out

    def close(self) -> None:
        self.sock.close()


JSONISH = st.lists(
    st.sampled_from(
        [
            b"{",
            b"}",
            b"[",
            b"]",
            b":",
            b",",
            b'"execute"',
            b"'x'",
            b'"arguments"',
            b"1",
            b"-0.5e3",
            b"null",
            b"true",
            b"\\u00e9",
            b'"',
            b"\xff",
            b"\x01",
            b"\n",
            b" ",
            b'"query-version"',
            b'"id"',
            b'"netdev_add"',
            b'{"execute": "qmp_capabilities"}',
            b'"hubid"',
            b'"type"',
            b'"hubport"',
            b"9" * 30,
            b"[" * 40,
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.one_of(st.binary(max_size=300), JSONISH))
def test_any_bytes_get_answers_and_others_carry_on(daemon: Daemon, payload: bytes) -> None:
    fuzz = Session(daemon.qmp)
    other = Session(daemon.qmp)
    try:
        fuzz.sock.sendall(payload + b"\x01\n")
        for line in fuzz.drain():
            msg = json.loads(line)
            assert isinstance(msg, dict)
            assert {"return", "error", "event"} & set(msg), msg
            assert line.endswith(b"\r")
        other.sock.sendall(
            b'{"execute": "qmp_capabilities"}\n{"execute": "query-version", "id": 7}\n'
        )
        replies = [json.loads(x) for x in other.lines(2)]
        assert replies[1]["id"] == 7 and "return" in replies[1]
    finally:
        fuzz.close()
        other.close()
    assert daemon.proc.poll() is None
