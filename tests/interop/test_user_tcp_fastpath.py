"""The established-flow TCP fast path against a Linux guest (a namespace behind a tap).

Topology as :mod:`tests.interop.test_user_tap_netns` (tap with ``vnet_hdr=on`` into a
user netdev; the namespace's kernel is the guest, 10.0.2.2 reaches the host's
127.0.0.1). Covered: 1-byte request/response exchanges with TCP_NODELAY (the steady state
the fast path serves: guest data, piggybacked ACKs and host replies run lent, every
reply checked) and bulk transfers both ways on one connection (8 MiB each way, SHA-256
checked), which push connections in and out of the fast path (congestion window,
full host sockets, the end of the stream). Runs the compiled fast path or its Python
twin, whichever the process uses; the counters show it served the traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys

import pytest

from tests.interop.test_user_tap_netns import GATEWAY, served_namespace
from tests.kit.netns import run_in

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

#: ``HOST PORT COUNT``: COUNT 1-byte exchanges on one TCP_NODELAY connection; prints
#: one JSON line (good, bad).
RR_CLIENT = r"""
import json, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=20)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
good = bad = 0
for i in range(count):
    b = bytes([i & 0xFF])
    s.sendall(b)
    got = s.recv(1)
    if got == bytes([(i + 1) & 0xFF]):
        good += 1
    else:
        bad += 1
s.close()
print(json.dumps({"good": good, "bad": bad}))
"""

#: ``HOST PORT SIZE``: send SIZE seeded bytes, half-close, read everything back; prints
#: the SHA-256 of what was sent and of what came back.
BULK_CLIENT = r"""
import hashlib, json, random, socket, sys, threading
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = random.Random(7).randbytes(size)
s = socket.create_connection((host, port), timeout=60)
got = hashlib.sha256()
n = 0
def reader():
    global n
    while chunk := s.recv(1 << 16):
        got.update(chunk)
        n += len(chunk)
t = threading.Thread(target=reader)
t.start()
s.sendall(data)
s.shutdown(socket.SHUT_WR)
t.join(90)
print(json.dumps({"sent": hashlib.sha256(data).hexdigest(), "got": got.hexdigest(), "n": n}))
"""


async def _server(handler: object) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)  # type: ignore[arg-type]
    return server, int(server.sockets[0].getsockname()[1])


async def test_request_response_runs_on_the_fast_path(caplog: pytest.LogCaptureFixture) -> None:
    async def plus_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1):
                writer.write(bytes([(data[0] + 1) & 0xFF]))
                await writer.drain()
        finally:
            writer.close()

    server, port = await _server(plus_one)
    try:
        async with served_namespace(caplog) as s:
            count = 400
            rc, out = await run_in(s.ns, sys.executable, "-c", RR_CLIENT, GATEWAY, str(port),
                                   str(count), timeout=120)  # fmt: skip
            assert rc == 0, out
            assert json.loads(out.strip().splitlines()[-1]) == {"good": count, "bad": 0}
            c = s.user.counters()
            # most exchanges ran lent: the guest's requests in, the host's replies out
            assert c["tcp-fast-frames-in"] >= count // 2, c
            assert c["tcp-fast-frames-out"] >= count // 2, c
            assert c["tcp-fast-lends"] >= 1, c
    finally:
        server.close()
        await server.wait_closed()


async def test_bulk_both_ways_in_and_out_of_the_fast_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    received = hashlib.sha256()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                received.update(data)
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        finally:
            writer.close()

    server, port = await _server(echo)
    size = 8 << 20
    try:
        async with served_namespace(caplog) as s:
            rc, out = await run_in(s.ns, sys.executable, "-c", BULK_CLIENT, GATEWAY, str(port),
                                   str(size), timeout=150)  # fmt: skip
            assert rc == 0, out
            r = json.loads(out.strip().splitlines()[-1])
            assert r["n"] == size and r["got"] == r["sent"], r
            assert received.hexdigest() == r["sent"]
            c = s.user.counters()
            assert c["tcp-fast-lends"] >= 1 and c["tcp-fast-reclaims"] >= 1, c
    finally:
        server.close()
        await server.wait_closed()
