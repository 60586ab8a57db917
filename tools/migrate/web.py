"""A small throttled HTTP/1.0 server on 127.0.0.1 for migration tests and benches: transfers
that last long enough to be in flight while a VM moves, in both directions.

Paths: ``GET /big`` (``big`` pseudo-random bytes sent at ``rate`` bytes/s), ``GET /small``
(32 KiB), ``GET /ctl`` (``go`` until :attr:`Web.stop_flag` is set, then ``stop``: a guest loop
asks it to know when to end), ``POST /up`` (the body is read at ``rate`` bytes/s; the answer
is its MD5, also kept in :attr:`Web.uploads`). Anything else gets 404. One request per
connection; every connection is bounded in time.

What it owns: the listening socket and its connections (closed by :meth:`Web.close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random

CHUNK = 16384
#: Seconds one connection may last.
CONN_TIMEOUT = 300.0


class Web:
    def __init__(self, big: int = 6 << 20, rate: float = 1 << 20, seed: int = 11) -> None:
        rng = random.Random(seed)
        self.big = rng.randbytes(big)
        self.small = rng.randbytes(32768)
        self.big_md5 = hashlib.md5(self.big).hexdigest()
        self.small_md5 = hashlib.md5(self.small).hexdigest()
        self.rate = rate
        self.stop_flag = False
        self.uploads: list[str] = []
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await asyncio.wait_for(self._serve(reader, writer), CONN_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > 8192:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split()[:2]
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        self.requests += 1
        if method == "GET" and path == "/big":
            await self._send(writer, self.big, throttled=True)
        elif method == "GET" and path == "/small":
            await self._send(writer, self.small)
        elif method == "GET" and path == "/ctl":
            await self._send(writer, b"stop" if self.stop_flag else b"go")
        elif method == "POST" and path == "/up":
            length = int(headers.get("content-length", "0"))
            if not 0 <= length <= 64 << 20:
                return
            digest = hashlib.md5()
            left = length
            while left:
                data = await reader.readexactly(min(CHUNK, left))
                digest.update(data)
                left -= len(data)
                await asyncio.sleep(len(data) / self.rate)
            self.uploads.append(digest.hexdigest())
            await self._send(writer, digest.hexdigest().encode() + b"\n")
        else:
            writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async def _send(
        self, writer: asyncio.StreamWriter, body: bytes, throttled: bool = False
    ) -> None:
        writer.write(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        if not throttled:
            writer.write(body)
            await writer.drain()
            return
        view = memoryview(body)
        for at in range(0, len(body), CHUNK):
            writer.write(view[at : at + CHUNK])
            await writer.drain()
            await asyncio.sleep(CHUNK / self.rate)


def main(argv: list[str] | None = None) -> None:
    """``python -c 'from tools.migrate.web import main; main()' ADDR PORT BIG RATE``: serve
    until killed (used inside a network namespace standing for a remote server)."""
    import sys

    addr, port, big, rate = (argv if argv is not None else sys.argv[1:])[:4]

    async def serve() -> None:
        web = Web(big=int(big), rate=float(rate))
        web._server = await asyncio.start_server(web._client, addr, int(port))
        print(f"serving {web.big_md5}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())
