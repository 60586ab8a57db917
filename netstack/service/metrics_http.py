"""The metrics endpoint: a small HTTP/1.1 server on a unix socket or a TCP port
(``-metrics unix:PATH`` / ``-metrics tcp:HOST:PORT``), serving ``GET /metrics``.

The exposition itself is ``prometheus_client``'s (``choose_encoder``: the Prometheus text
format, or OpenMetrics when the scraper's ``Accept`` asks for it) over a registry holding
:class:`.metrics.NetstackCollector`. The HTTP side is written here on asyncio rather than
taken from ``prometheus_client.start_http_server``: that one serves TCP only (no unix
socket) from a thread, and a collector running in another thread would read the daemon's
tables while the event loop changes them. Here a scrape runs on the loop, between two
packet batches, and sees one consistent state.

Requests: ``GET``/``HEAD`` of ``/metrics`` (``/`` answers with a pointer to it); other
paths 404, other methods 405, a malformed request line 400, a head over
:data:`MAX_HEAD` bytes 431; a client silent for :data:`IDLE_TIMEOUT` seconds, or that
does not read its answer for as long, is disconnected; at most :data:`MAX_CLIENTS` are
served at once (more get 503). Every answer is counted by status in
``netstack_metrics_requests_total``; nothing a client sends can raise out of the server.
Connections are kept alive while the client asks.

A unix socket is created mode 0600 (a stale socket file at the path is replaced) and
removed on close; a socket inherited from systemd (named ``metrics`` or bound to the
same address, :mod:`.activation`) is used as is and never removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from netstack.errors import GenericError
from netstack.service.metrics import EndpointStats, NetstackCollector

if TYPE_CHECKING:
    from netstack.daemon import Netstack
    from netstack.service.activation import ListenFds

MAX_HEAD: Final = 8192
IDLE_TIMEOUT: Final = 10.0
MAX_CLIENTS: Final = 16
_REASONS: Final = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    503: "Service Unavailable",
}  # fmt: skip

log = logging.getLogger("netstack.service")


@dataclass(frozen=True)
class Endpoint:
    """A parsed ``-metrics`` value."""

    kind: str  # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``unix:PATH`` | ``tcp:HOST:PORT`` | ``tcp:[V6]:PORT``; GenericError otherwise."""
    kind, sep, rest = text.partition(":")
    if kind == "unix" and sep and rest:
        return Endpoint("unix", path=rest)
    if kind == "tcp" and sep:
        host, sep2, port = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if sep2 and host and port.isdigit() and 0 < int(port) < 65536:
            return Endpoint("tcp", host=host, port=int(port))
    raise GenericError(f"'{text}': expected unix:PATH or tcp:HOST:PORT (e.g. tcp:127.0.0.1:9464)")


class MetricsServer:
    """Serves the collector of ``ns`` at ``endpoint``."""

    def __init__(self, ns: Netstack, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.stats = EndpointStats()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NetstackCollector(ns, self.stats))
        self._server: asyncio.base_events.Server | None = None
        self._created: tuple[str, int, int] | None = None
        self._clients = 0

    async def start(self, listen_fds: ListenFds | None = None) -> None:
        ep = self.endpoint
        sock = None
        if listen_fds is not None:
            sock = listen_fds.take(
                "metrics",
                unix_path=ep.path if ep.kind == "unix" else None,
                inet=(ep.host, str(ep.port)) if ep.kind == "tcp" else None,
            )
        try:
            if sock is None:
                sock = self._bind_unix() if ep.kind == "unix" else self._bind_tcp()
            if ep.kind == "unix":
                self._server = await asyncio.start_unix_server(
                    self._client, sock=sock, limit=MAX_HEAD
                )
            else:
                self._server = await asyncio.start_server(self._client, sock=sock, limit=MAX_HEAD)
        except OSError as exc:
            raise GenericError(f"metrics endpoint {ep}: {exc.strerror or exc}") from exc
        log.info("metrics endpoint on %s", ep)

    def _bind_unix(self) -> socket.socket:
        path = self.endpoint.path
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        st = os.stat(path)
        self._created = (path, st.st_dev, st.st_ino)
        sock.listen(16)
        return sock

    def _bind_tcp(self) -> socket.socket:
        ep = self.endpoint
        infos = socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
        family, kind, proto, _name, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        return sock

    @property
    def address(self) -> str:
        """The bound address (``tcp:HOST:PORT`` with the real port for port 0)."""
        if self._server is None or not self._server.sockets:
            return str(self.endpoint)
        local = self._server.sockets[0].getsockname()
        if isinstance(local, tuple):
            return str(Endpoint("tcp", host=local[0], port=local[1]))
        return f"unix:{local}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        if self._created is not None:
            path, dev, ino = self._created
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):
                    os.unlink(path)
            self._created = None

    # -- HTTP ------------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        try:
            if self._clients > MAX_CLIENTS:
                self._answer(writer, 503, b"too many clients\n", close=True)
            else:
                while await self._request(reader, writer):
                    pass
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:  # never let a client take the server down
            log.exception("metrics endpoint: request failed")
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is to be closed."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
        except asyncio.LimitOverrunError:
            self._answer(writer, 431, b"request head too large\n", close=True)
            return False
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                self._answer(writer, 400, b"incomplete request\n", close=True)
            return False
        if len(head) > MAX_HEAD:
            self._answer(writer, 431, b"request head too large\n", close=True)
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._answer(writer, 400, b"malformed request line\n", close=True)
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers or "transfer-encoding" in headers:
            self._answer(writer, 400, b"requests have no body here\n", close=True)
            return False
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._answer(writer, 405, b"GET or HEAD only\n", close=close, allow=True)
        elif path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            body = encoder(self.registry)
            self._answer(writer, 200, body, close=close, head=method == "HEAD",
                         content_type=content_type)  # fmt: skip
        elif path == "/":
            self._answer(writer, 200, b"netstack metrics: /metrics\n", close=close)
        else:
            self._answer(writer, 404, b"not found: try /metrics\n", close=close)
        await asyncio.wait_for(writer.drain(), IDLE_TIMEOUT)  # a client that never reads
        return not close

    def _answer(
        self,
        writer: asyncio.StreamWriter,
        code: int,
        body: bytes,
        *,
        close: bool,
        head: bool = False,
        allow: bool = False,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        self.stats.requests[str(code)] += 1
        lines = [
            f"HTTP/1.1 {code} {_REASONS.get(code, '')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
        ]
        if allow:
            lines.append("Allow: GET, HEAD")
        if close:
            lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head:
            writer.write(body)
