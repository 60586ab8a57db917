"""The web view's small HTTP server, run on the daemon's own loop (``-webview``).

It serves the static page (``netstack/webview/static/``: HTML, CSS and JavaScript
modules, no build step, nothing fetched from elsewhere), ``/config.json`` telling the
page where its QMP monitor is, and the capture endpoints of :mod:`.capture`. The page
talks QMP itself, over a ``socket`` chardev with ``websocket=on`` that carries a
control-mode monitor: either one the web view creates (``webview-qmp``, on the HTTP
host with a port the kernel picks) or an existing one named with ``chardev=ID``.

``tls-creds=ID`` (a ``tls-creds-x509`` object with ``endpoint=server``) serves the page
over HTTPS and gives the created websocket chardev the same credentials (``wss:``); with
``verify-peer=on`` both demand a client certificate signed by the CA, so a browser
without one never reaches the page or the monitor.

Why a server of our own rather than only the websocket chardev: a browser needs the page
from somewhere, and a capture's bytes need a way out that a browser can take. A
filter-dump writes to a file or FIFO on the daemon's host, which the page cannot open; a
second websocket chardev would not help, since filter-dump does not write to chardevs,
and the page would have to assemble and save a file itself. An HTTP download of the
finished pcapng is what browsers do best, on a phone too, and needs no JavaScript.

Endpoints (one request per connection, see :mod:`.http`)::

    GET  /, /index.html, /<static file>
    GET  /config.json                      {"qmp": {"port", "path"}, "name", "version"}
    GET  /api/captures                     [status, ...]
    POST /api/capture?netdev=ID[&seconds=N]  -> status        (starts a capture)
    GET  /api/capture/ID                   status
    POST /api/capture/ID/stop              status
    GET  /api/capture/ID.pcapng            the file (409 while running)

Safety: the web view is as powerful as the QMP monitor it points at, so bind it to
loopback (or a trusted interface) only. Against other web sites in the same browser:
the ``Host`` header must name the address the server listens on, an IP literal or
``localhost`` (DNS rebinding); a ``POST`` needs the ``X-Netstack-Webview`` header, which
a cross-origin page cannot send without a CORS preflight this server never grants, and
an ``Origin``, when sent, must match ``Host``. Pages carry a Content-Security-Policy
that allows only the server's own scripts and styles. Bad requests are answered with
their status, counted in :attr:`WebView.stats` and logged at most once per
:data:`LOG_INTERVAL` seconds per kind; they never disturb the daemon. The websocket
chardev the page uses accepts a browser's handshake only with this server's ``Origin``
(:meth:`WebView._page_origin`; QEMU's websocket chardev checks none), so another site
open in the same browser cannot reach the monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import ssl
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

from netstack import __version__, qapi
from netstack.chardev.sockets import SocketChardev
from netstack.counters import Family, FamilyKey
from netstack.errors import GenericError
from netstack.qmp.control import Control
from netstack.qmp.server import monitor_add
from netstack.ratelog import RateLog

from .capture import CaptureManager, CaptureRefused
from .http import MAX_HEAD, BadRequest, Request, parse_head, response

log = logging.getLogger("netstack.webview")

CHARDEV_ID: Final = "webview-qmp"
LOG_INTERVAL: Final = 10.0
READ_TIMEOUT: Final = 10.0
MAX_CONNECTIONS: Final = 32
POST_HEADER: Final = "x-netstack-webview"

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: What :attr:`WebView.stats` counts besides refused requests.
WebViewCounter = Literal["requests", "busy", "io-error"]
#: ``http-STATUS``: requests refused, per HTTP status sent.
HTTP_REFUSED: Final = Family("http")
_CAPTURE_PATH: Final = re.compile(r"^/api/capture/(c\d{1,9})(\.pcapng|/stop)?$")


class TlsServerCreds(Protocol):
    """What the web view needs of a ``tls-creds-x509`` object (``netstack.tlscreds``)."""

    context: ssl.SSLContext

    def check_endpoint(self, endpoint: str) -> None: ...


class WebViewHost(Control, Protocol):
    """What the web view needs of the daemon (beyond what its QMP monitor needs)."""

    name: str | None
    objects: dict[str, Any]

    def chardev(self, chardev_id: str) -> Any: ...


@dataclass(frozen=True)
class WebViewSpec:
    """``-webview tcp:HOST:PORT[,chardev=ID][,tls-creds=ID]``."""

    host: str
    port: int
    chardev: str | None = None
    tls_creds: str | None = None


def parse_spec(text: str) -> WebViewSpec:
    """Parse ``-webview``'s argument (errors are :class:`GenericError` for the CLI)."""
    addr, *rest = text.split(",")
    named: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if key not in ("chardev", "tls-creds") or not sep or not value:
            raise GenericError(f"Invalid parameter '{key}'")
        qapi.check_id(value)
        named[key] = value
    if not addr.startswith("tcp:"):
        raise GenericError("expected tcp:HOST:PORT")
    host, sep, port_text = addr[4:].rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise GenericError(f"'{addr}' is not a valid tcp:HOST:PORT address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise GenericError("a host is required (e.g. tcp:127.0.0.1:8080)")
    return WebViewSpec(host, int(port_text), named.get("chardev"), named.get("tls-creds"))


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, by URL path, read once from the package data."""
    out: dict[str, tuple[bytes, str]] = {}
    root = resources.files("netstack.webview") / "static"
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            out["/" + entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    if "/index.html" in out:
        out["/"] = out["/index.html"]
    return out


class WebView:
    """The HTTP server and the websocket QMP monitor the page uses."""

    def __init__(self, host: WebViewHost, spec: WebViewSpec, *, monitor_index: int = 99) -> None:
        self.ns = host
        self.spec = spec
        self.monitor_index = monitor_index
        self.files = static_files()
        self.captures = CaptureManager(self._add_object, host.object_del, host.objects.get)
        self.stats: dict[WebViewCounter | FamilyKey, int] = {}
        self.qmp_port = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._ratelog = RateLog(log, interval=LOG_INTERVAL)
        self._allowed_hosts: set[str] = set()

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        context = self._tls_context()
        chardev_id = self.spec.chardev or CHARDEV_ID
        if self.spec.chardev is None:
            tls = f",tls-creds={self.spec.tls_creds}" if self.spec.tls_creds else ""
            spec = qapi.parse_chardev_cli(
                f"socket,id={chardev_id},host={self.spec.host},port=0,server=on,wait=off,"
                f"websocket=on{tls}"
            )
            await self.ns.chardev_add(spec, from_cli=True)
            await monitor_add(
                self.ns, "mon", f"chardev={chardev_id},mode=control", False, self.monitor_index
            )
        chardev = self.ns.chardev(chardev_id)
        if chardev is None:
            raise GenericError(f"chardev '{chardev_id}' not found")
        self.qmp_port = _websocket_port(chardev)
        self._server = await asyncio.start_server(
            self._serve,
            self.spec.host,
            self.spec.port,
            limit=MAX_HEAD + 2,
            ssl=context,
            ssl_handshake_timeout=READ_TIMEOUT if context is not None else None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        if isinstance(chardev, SocketChardev):
            chardev.websocket_origin_ok = self._page_origin
        self._allowed_hosts = {"localhost", self.spec.host.lower()}

    def _tls_context(self) -> ssl.SSLContext | None:
        name = self.spec.tls_creds
        if name is None:
            return None
        creds = self.ns.objects.get(name)
        if creds is None:
            raise GenericError(f"No TLS credentials with id '{name}'")
        if not isinstance(getattr(creds, "context", None), ssl.SSLContext):
            raise GenericError(f"Object with id '{name}' is not TLS credentials")
        tls: TlsServerCreds = creds
        tls.check_endpoint("server")
        return tls.context

    @property
    def scheme(self) -> str:
        return "https" if self.spec.tls_creds else "http"

    @property
    def url(self) -> str:
        host = f"[{self.spec.host}]" if ":" in self.spec.host else self.spec.host
        return f"{self.scheme}://{host}:{self.port}/"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(BaseException):
                await task
        await self.captures.close()

    async def _add_object(self, args: dict[str, object]) -> None:
        await self.ns.object_add(qapi.object_from_qmp(args))

    # -- connections -----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._conns) >= MAX_CONNECTIONS:
            self._count("busy", "too many connections")
            writer.write(response(503, b"busy\n"))
            await _close(writer)
            return
        self._conns.add(task)
        try:
            reply = await self._exchange(reader)
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            self._count("io-error", "connection failed or timed out")
        finally:
            self._conns.discard(task)
            await _close(writer)

    async def _exchange(self, reader: asyncio.StreamReader) -> bytes:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except asyncio.LimitOverrunError:
                raise BadRequest("request head too large", 431) from None
            req = parse_head(head[:-4])
            length = req.content_length
            if length:
                req.body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
            self._check_origin(req)
            self.stats["requests"] = self.stats.get("requests", 0) + 1
            return await self._route(req)
        except BadRequest as exc:
            self._count(HTTP_REFUSED.key(exc.status), str(exc))
            return response(exc.status, f"{exc}\n".encode())

    def _known_host(self, name: str) -> bool:
        """A name the page may be reached by: the listening address, ``localhost`` or an IP
        literal (not a DNS name an attacker's site could rebind to us)."""
        if name in self._allowed_hosts:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    def _page_origin(self, origin: str) -> bool:
        """Whether a websocket handshake's ``Origin`` is this server's page (the QMP
        websocket refuses every other site's pages)."""
        try:
            url = urlsplit(origin)
            port = url.port or (443 if url.scheme == "https" else 80)
        except ValueError:
            return False
        name = (url.hostname or "").lower()
        return url.scheme == self.scheme and port == self.port and self._known_host(name)

    def _check_origin(self, req: Request) -> None:
        host = req.headers.get("host", "")
        name = host.rpartition(":")[0] if not host.endswith("]") else host
        name = (name or host).strip("[]").lower()
        if not self._known_host(name):
            raise BadRequest(f"Host '{host[:64]}' is not this server", 421)
        if req.method == "POST":
            if req.headers.get(POST_HEADER) != "1":
                raise BadRequest(f"POST requests need the {POST_HEADER} header", 403)
            origin = req.headers.get("origin")
            if origin is not None and origin != f"{self.scheme}://{host}":
                raise BadRequest("cross-origin request refused", 403)

    def _count(self, kind: WebViewCounter | FamilyKey, text: str) -> None:
        self.stats[kind] = self.stats.get(kind, 0) + 1
        self._ratelog.warning(kind, "web view: %s (%d so far)", text, self.stats[kind])

    # -- routes ----------------------------------------------------------------------------

    async def _route(self, req: Request) -> bytes:
        if req.path == "/config.json":
            _need(req, "GET")
            return _json(200, self.config())
        if req.path == "/api/captures":
            _need(req, "GET")
            for cap in self.captures.captures.values():
                self.captures.refresh(cap)
            return _json(200, [c.status() for c in self.captures.captures.values()])
        if req.path == "/api/capture":
            _need(req, "POST")
            return await self._capture_start(req)
        m = _CAPTURE_PATH.match(req.path)
        if m is not None:
            return await self._capture(req, m.group(1), m.group(2))
        found = self.files.get(req.path)
        if found is None:
            raise BadRequest("not found", 404)
        _need(req, "GET", "HEAD")
        body, ctype = found
        extra = {"Content-Security-Policy": CSP} if ctype.startswith("text/html") else {}
        reply = response(200, body, ctype, extra)
        if req.method == "HEAD":
            return reply[: len(reply) - len(body)]
        return reply

    def config(self) -> dict[str, Any]:
        return {
            "qmp": {"port": self.qmp_port, "path": "/"},
            "name": self.ns.name,
            "version": __version__,
        }

    async def _capture_start(self, req: Request) -> bytes:
        netdev = req.query.get("netdev", "")
        seconds_text = req.query.get("seconds", "")
        if seconds_text and not (seconds_text.isdigit() and len(seconds_text) <= 6):
            raise BadRequest("seconds must be a whole number")
        try:
            cap = await self.captures.start(netdev, int(seconds_text) if seconds_text else None)
        except CaptureRefused as exc:
            return _json(409, {"error": str(exc)})
        return _json(200, cap.status())

    async def _capture(self, req: Request, capture_id: str, what: str | None) -> bytes:
        cap = self.captures.get(capture_id)
        if cap is None:
            raise BadRequest("no such capture", 404)
        if what == "/stop":
            _need(req, "POST")
            await self.captures.stop(cap)
            return _json(200, cap.status())
        _need(req, "GET")
        self.captures.refresh(cap)
        if what is None:
            return _json(200, cap.status())
        if cap.running:
            return _json(409, {"error": "the capture is still running: stop it first"})
        return response(
            200,
            bytes(cap.data),
            "application/vnd.tcpdump.pcapng",
            {"Content-Disposition": f'attachment; filename="{cap.filename}"'},
        )


def _need(req: Request, *methods: str) -> None:
    if req.method not in methods:
        raise BadRequest(f"method {req.method} not allowed here", 405)


def _json(status: int, value: Any) -> bytes:
    return response(status, json.dumps(value).encode(), "application/json")


def _websocket_port(chardev: Any) -> int:
    """The TCP port a websocket chardev listens on (from its ``query-chardev`` filename,
    ``[disconnected:]websocket:HOST:PORT,server=on...``)."""
    m = re.match(r"^(?:disconnected:)?websocket:.*:(\d+),server=on", str(chardev.filename()))
    if m is None:
        raise GenericError(f"chardev '{chardev.id}' is not a websocket server (websocket=on)")
    return int(m.group(1))


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 2.0)
