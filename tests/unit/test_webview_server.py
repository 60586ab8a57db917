"""The web view's server in-process: static files, configuration, the capture endpoints,
the QMP websocket it creates (driven by the ``websockets`` library), and hostile HTTP
(malformed heads, wrong Host, cross-site POSTs, silence) answered with a status, counted,
and never disturbing the next client. Plus ``-webview``'s argument and the HTTP parser."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets

import drivers
from netstack import cli
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.nic import NicClient
from netstack.qapi import parse_chardev_cli, parse_netdev_cli, parse_object_cli
from netstack.qmp.server import monitor_add
from netstack.webview import WebView, WebViewSpec, parse_spec
from netstack.webview import capture as capture_mod
from netstack.webview import server as server_mod
from netstack.webview.http import BadRequest, parse_head
from tests.daemon_proc import running_daemon
from tests.interop.tls_pki import make_pki
from tests.kit.clock import ManualLoop, run_manual
from tests.support import frame

pytestmark = pytest.mark.timeout(60)

BT_SHB, BT_IDB, BT_EPB, BT_ISB = 0x0A0D0D0A, 1, 6, 5


@contextlib.asynccontextmanager
async def open_view(tmp_path: Path) -> AsyncIterator[WebView]:
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path, name="unit")
    for spec in ("hubport,id=p0,hubid=0", "hubport,id=p1,hubid=0"):
        await ns.netdev_add(parse_netdev_cli(spec))
    wv = WebView(ns, WebViewSpec("127.0.0.1", 0))
    await wv.start()
    try:
        yield wv
    finally:
        await wv.close()
        await ns.close()


@pytest.fixture
async def view(tmp_path: Path) -> AsyncIterator[WebView]:
    async with open_view(tmp_path) as wv:
        yield wv


async def request(wv: WebView, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", wv.port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), fields, body


def get(path: str, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def post(path: str, extra: str = "X-Netstack-Webview: 1\r\n") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n{extra}\r\n".encode()


def blocks(data: bytes) -> list[int]:
    out, pos = [], 0
    while pos + 8 <= len(data):
        btype, length = struct.unpack_from("=II", data, pos)
        assert length >= 12 and pos + length <= len(data)
        out.append(btype)
        pos += length
    assert pos == len(data)
    return out


async def test_static_files_and_config(view: WebView) -> None:
    status, fields, body = await request(view, get("/"))
    assert status == 200 and body.startswith(b"<!doctype html>")
    assert fields["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in fields["content-security-policy"]
    assert fields["x-content-type-options"] == "nosniff"
    for name in ("app.js", "qmp.js", "topology.js", "plots.js", "tables.js", "capture.js"):
        status, fields, body = await request(view, get(f"/{name}"))
        assert status == 200 and fields["content-type"].startswith("text/javascript"), name
    status, _, body = await request(view, get("/config.json"))
    assert status == 200
    assert json.loads(body) == {
        "qmp": {"port": view.qmp_port, "path": "/"},
        "name": "unit",
        "version": cli.__version__,
    }
    status, _, _ = await request(view, get("/nothing.js"))
    assert status == 404
    status, fields, body = await request(
        view, b"HEAD /style.css HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    assert status == 200 and body == b"" and int(fields["content-length"]) > 1000


async def test_qmp_over_the_created_websocket(view: WebView) -> None:
    url = f"ws://127.0.0.1:{view.qmp_port}/"
    async with websockets.connect(url, subprotocols=["binary"]) as ws:
        assert "QMP" in json.loads(await asyncio.wait_for(ws.recv(), 10))
        for cmd in ("qmp_capabilities", "query-netdev"):
            await ws.send(json.dumps({"execute": cmd, "id": cmd}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert reply["id"] == cmd and "return" in reply
        assert [row["id"] for row in reply["return"]] == ["p0", "p1"]


@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        (None, True),  # not a browser
        ("page", True),
        ("http://localhost:{port}", True),
        ("http://evil.example", False),
        ("http://evil.example:{port}", False),
        ("https://127.0.0.1:{port}", False),
        ("http://127.0.0.1:1", False),
        ("null", False),
        ("http://[::1", False),
    ],
)
async def test_websocket_takes_only_the_pages_origin(
    view: WebView, origin: str | None, accepted: bool
) -> None:
    """A page of another site open in the same browser cannot reach the QMP websocket."""
    if origin == "page":
        origin = f"http://127.0.0.1:{view.port}"
    elif origin is not None:
        origin = origin.format(port=view.port)
    url = f"ws://127.0.0.1:{view.qmp_port}/"
    headers = {} if origin is None else {"origin": origin}
    if accepted:
        async with websockets.connect(url, subprotocols=["binary"], **headers) as ws:
            assert "QMP" in json.loads(await asyncio.wait_for(ws.recv(), 10))
        return
    with pytest.raises(websockets.exceptions.InvalidStatus) as err:
        async with websockets.connect(url, subprotocols=["binary"], **headers):
            pass
    assert err.value.response.status_code == 403
    async with websockets.connect(url, subprotocols=["binary"]) as ws:  # still serving
        assert "QMP" in json.loads(await asyncio.wait_for(ws.recv(), 10))


async def test_capture_round_trip(view: WebView) -> None:
    ns = view.ns
    assert isinstance(ns, Netstack)
    nic = NicClient("nic0", bytes.fromhex("525400123456"))
    p0 = ns.find_netdev("p0")
    assert p0 is not None
    nic.connect(p0)
    ns.add_client(nic, netdev=False)
    status, _, body = await request(view, post("/api/capture?netdev=p0"))
    assert status == 200
    cap = json.loads(body)
    assert cap["state"] == "running" and cap["netdev"] == "p0"
    assert any(o.startswith("webview-capture") for o in ns.objects)
    (row,) = ns.query_netdev("p0")
    assert row["filters"] == [
        {"id": f"webview-capture{os.getpid()}-1", "qom-type": "filter-dump", "queue": "all",
         "status": "on"}
    ]  # fmt: skip
    for i in range(5):
        nic.send([frame(i, 100)])
    await asyncio.sleep(0.2)
    status, _, body = await request(view, get(f"/api/capture/{cap['id']}"))
    assert json.loads(body)["frames"] == 5
    status, _, body = await request(view, get(f"/api/capture/{cap['id']}.pcapng"))
    assert status == 409 and "still running" in json.loads(body)["error"]
    status, _, body = await request(view, post(f"/api/capture/{cap['id']}/stop"))
    assert status == 200 and json.loads(body)["state"] == "stopped"
    assert not any(o.startswith("webview-capture") for o in ns.objects)
    status, fields, data = await request(view, get(f"/api/capture/{cap['id']}.pcapng"))
    assert status == 200 and fields["content-type"] == "application/vnd.tcpdump.pcapng"
    assert fields["content-disposition"].startswith('attachment; filename="netstack-p0-c1-')
    assert blocks(data) == [BT_SHB, BT_IDB, *[BT_EPB] * 5, BT_ISB]
    status, _, body = await request(view, get("/api/captures"))
    assert [c["id"] for c in json.loads(body)] == [cap["id"]]


async def test_capture_ends_when_its_netdev_is_deleted(view: WebView) -> None:
    status, _, body = await request(view, post("/api/capture?netdev=p1"))
    assert status == 200
    assert isinstance(view.ns, Netstack)
    view.ns.netdev_del("p1")
    for _ in range(50):
        status, _, body = await request(view, get("/api/capture/c1"))
        if json.loads(body)["state"] == "stopped":
            break
        await asyncio.sleep(0.1)
    got = json.loads(body)
    assert got["state"] == "stopped"
    assert got["error"] == "the capture ended: netdev p1 was deleted"
    status, _, data = await request(view, get("/api/capture/c1.pcapng"))
    assert status == 200 and blocks(data) == [BT_SHB, BT_IDB, BT_ISB]


def test_capture_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_manual(lambda loop: capture_refusals(loop, tmp_path, monkeypatch))


async def capture_refusals(
    loop: ManualLoop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_view(tmp_path) as view:
        await _capture_refusals(loop, view, monkeypatch)


async def _capture_refusals(
    loop: ManualLoop, view: WebView, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, body = await request(view, post("/api/capture?netdev=nope"))
    assert status == 409 and json.loads(body) == {"error": "no such netdev: nope"}
    status, _, body = await request(view, post("/api/capture?netdev=p0%2Cfile%3D%2Fetc%2Fx"))
    assert status == 409
    status, _, body = await request(view, post("/api/capture?netdev=p0&seconds=0"))
    assert status == 409 and "seconds" in json.loads(body)["error"]
    status, _, _ = await request(view, post("/api/capture?netdev=p0&seconds=x"))
    assert status == 400
    status, _, _ = await request(view, post("/api/capture/c99/stop"))
    assert status == 404
    monkeypatch.setattr(capture_mod, "MAX_RUNNING", 1)
    status, _, body = await request(view, post("/api/capture?netdev=p0&seconds=1"))
    assert status == 200
    status, _, body = await request(view, post("/api/capture?netdev=p0"))
    assert status == 409 and "at most 1" in json.loads(body)["error"]
    await loop.advance(1.0)  # the first capture stops by itself
    status, _, body = await request(view, get("/api/captures"))
    assert [c["state"] for c in json.loads(body)] == ["stopped"]


async def test_hostile_requests_are_answered_counted_and_harmless(
    view: WebView, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [
        (get("/", host="evil.example"), 421),
        (get("/", host="127.0.0.1.nip.io:80"), 421),
        (post("/api/capture?netdev=p0", extra=""), 403),
        (
            post("/api/capture?netdev=p0", extra="X-Netstack-Webview: 1\r\nOrigin: http://x\r\n"),
            403,
        ),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nbad field\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"GET /a/../app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
        (b"POST /api/capture HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999\r\n\r\n", 413),
        (
            b"POST /api/capture HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"DELETE /config.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 405),
    ]
    for raw, want in cases:
        status, _, _ = await request(view, raw)
        assert status == want, raw[:60]
    assert view.stats["http-421"] == 2 and view.stats["http-400"] == 6
    # A client that says nothing is dropped after the read timeout; others are served.
    monkeypatch.setattr(server_mod, "READ_TIMEOUT", 0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", view.port)
    status, _, _ = await request(view, get("/"))
    assert status == 200
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert view.stats["io-error"] == 1


def test_parse_spec() -> None:
    assert parse_spec("tcp:127.0.0.1:8080") == WebViewSpec("127.0.0.1", 8080)
    assert parse_spec("tcp:[::1]:0,chardev=ws0") == WebViewSpec("::1", 0, "ws0")
    for text, msg in [
        ("127.0.0.1:8080", "expected tcp:HOST:PORT"),
        ("tcp:127.0.0.1", "not a valid tcp:HOST:PORT"),
        ("tcp:127.0.0.1:99999", "not a valid"),
        ("tcp::8080", "a host is required"),
        ("tcp:127.0.0.1:1,foo=bar", "Invalid parameter 'foo'"),
        ("tcp:127.0.0.1:1,chardev=1x", "expects an identifier"),
    ]:
        with pytest.raises(GenericError, match=msg):
            parse_spec(text)


def test_parse_head() -> None:
    req = parse_head(b"GET /api/capture/c1?x=1&y= HTTP/1.1\r\nHost: a\r\nAccept: b\r\nAccept: c")
    assert (req.method, req.path, req.query) == ("GET", "/api/capture/c1", {"x": "1", "y": ""})
    assert req.headers == {"host": "a", "accept": "b, c"}
    for raw in (
        b"GET http://x/ HTTP/1.1",
        b"GET / HTTP/2.0",
        b"get / HTTP/1.1",
        b"GET /%00 HTTP/1.1",
    ):
        with pytest.raises(BadRequest):
            parse_head(raw)


def test_cli_option() -> None:
    cfg = cli.parse_argv(["-webview", "tcp:127.0.0.1:0"])
    assert cfg.embedded_default and cfg.webview == "tcp:127.0.0.1:0"
    cfg = cli.parse_argv(["-netdev", "hubport,id=p0,hubid=0", "-webview", "tcp:127.0.0.1:0"])
    assert not cfg.embedded_default and cfg.webview == "tcp:127.0.0.1:0"
    assert not cli.parse_argv(["-netdev", "hubport,id=p0,hubid=0"]).webview


async def test_embedded_default_prints_the_address(tmp_path: Path) -> None:
    """``netstackd -webview tcp:127.0.0.1:0`` is the embedded default plus the web view."""
    with running_daemon(tmp_path, ["-webview", "tcp:127.0.0.1:0"], qmp=False) as daemon:
        deadline = time.monotonic() + 20
        while "Web view:" not in daemon.output() and time.monotonic() < deadline:
            assert daemon.proc.poll() is None, daemon.output()
            await asyncio.sleep(0.1)
        out = daemon.output()
        assert "embedded default running" in out and "vhost-user socket:" in out
        m = re.search(r"^  Web view: +http://127\.0\.0\.1:(\d+)/$", out, re.M)
        assert m, out
        reader, writer = await asyncio.open_connection("127.0.0.1", int(m.group(1)))
        writer.write(get("/config.json"))
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert data.startswith(b"HTTP/1.1 200 OK") and b'"name": "netstack"' in data
    assert daemon.proc.returncode == 0


def test_bad_webview_option_is_a_usage_error(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "netstack", "-webview", "udp:1"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == "netstackd: -webview udp:1: expected tcp:HOST:PORT\n"


@pytest.mark.parametrize("verify_peer", [False, True])
async def test_https_and_wss_with_tls_creds(tmp_path: Path, verify_peer: bool) -> None:
    """``tls-creds=ID``: the page over HTTPS and QMP over wss, checked by clients that
    trust only the test CA; with verify-peer=on, nothing without a client certificate."""
    pki = make_pki(tmp_path)
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path, name="tls")
    await ns.object_add(
        parse_object_cli(
            f"tls-creds-x509,id=tls0,dir={pki.server},endpoint=server,"
            f"verify-peer={'on' if verify_peer else 'off'}"
        )
    )
    await ns.netdev_add(parse_netdev_cli("hubport,id=p0,hubid=0"))
    wv = WebView(ns, parse_spec("tcp:127.0.0.1:0,tls-creds=tls0"))
    await wv.start()
    try:
        assert wv.url == f"https://127.0.0.1:{wv.port}/"
        client = ssl.create_default_context(cafile=str(pki.ca_cert))
        if verify_peer:
            bare = ssl.create_default_context(cafile=str(pki.ca_cert))
            try:  # TLS 1.3: the refusal comes after the client's side of the handshake
                status, body = await fetch_tls(wv.port, bare, "/config.json")
            except (ssl.SSLError, ConnectionError):
                status, body = 0, b""
            assert (status, body) == (0, b"")
            client.load_cert_chain(pki.client / "client-cert.pem", pki.client / "client-key.pem")
        status, body = await fetch_tls(wv.port, client, "/config.json")
        assert status == 200 and json.loads(body)["qmp"]["port"] == wv.qmp_port
        async with websockets.connect(
            f"wss://127.0.0.1:{wv.qmp_port}/", subprotocols=["binary"], ssl=client
        ) as ws:
            assert "QMP" in json.loads(await asyncio.wait_for(ws.recv(), 10))
        # Plain HTTP to the HTTPS port gets no page.
        reader, writer = await asyncio.open_connection("127.0.0.1", wv.port)
        writer.write(get("/"))
        data = await asyncio.wait_for(reader.read(), 15)
        writer.close()
        assert b"<!doctype html>" not in data
    finally:
        await wv.close()
        await ns.close()


async def fetch_tls(port: int, context: ssl.SSLContext, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    writer.write(get(path))
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_points_at_an_existing_websocket_monitor(tmp_path: Path) -> None:
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    try:
        spec = "socket,id=ws0,host=127.0.0.1,port=0,server=on,wait=off,websocket=on"
        await ns.chardev_add(parse_chardev_cli(spec), from_cli=True)
        await monitor_add(ns, "mon", "chardev=ws0,mode=control", False, 0)
        plain = "socket,id=plain,host=127.0.0.1,port=0,server=on,wait=off"
        await ns.chardev_add(parse_chardev_cli(plain), from_cli=True)
        for text, error in [
            ("tcp:127.0.0.1:0,chardev=nope", "chardev 'nope' not found"),
            ("tcp:127.0.0.1:0,chardev=plain", "chardev 'plain' is not a websocket server"),
            ("tcp:127.0.0.1:0,tls-creds=nope", "No TLS credentials with id 'nope'"),
        ]:
            with pytest.raises(GenericError, match=error):
                await WebView(ns, parse_spec(text)).start()
        wv = WebView(ns, parse_spec("tcp:127.0.0.1:0,chardev=ws0"))
        await wv.start()
        try:
            assert ns.chardev("webview-qmp") is None
            m = re.search(r":(\d+),server=on", ns.chardev("ws0").filename())
            assert m is not None
            port = int(m.group(1))
            assert wv.qmp_port == port
            async with websockets.connect(f"ws://127.0.0.1:{port}/", subprotocols=["binary"]) as ws:
                assert "QMP" in json.loads(await asyncio.wait_for(ws.recv(), 10))
        finally:
            await wv.close()
    finally:
        await ns.close()
