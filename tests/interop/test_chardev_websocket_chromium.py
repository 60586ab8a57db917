"""QMP over ``-chardev socket,websocket=on`` from a real browser: Debian's headless
Chromium runs a page's JavaScript ``WebSocket`` (served from localhost by the test, no
CDN), negotiates QMP capabilities, runs queries, and posts what it saw back to the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.interop.chardev_peers import chardev_port, daemon_with

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed"),
]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>netstack qmp</title></head>
<body><pre id="log"></pre>
<script>
const results = {frames: []};
const log = (s) => { document.getElementById("log").textContent += s + "\\n"; };
function report() {
  fetch("/result", {method: "POST", body: JSON.stringify(results)});
}
const ws = new WebSocket("ws://127.0.0.1:%(port)d/", %(protocols)s);
ws.binaryType = "arraybuffer";
const decoder = new TextDecoder();
let pending = "";
const replies = [];
let waiter = null;
ws.onmessage = (ev) => {
  const text = typeof ev.data === "string" ? ev.data : decoder.decode(ev.data);
  results.frames.push(typeof ev.data === "string" ? "text" : "binary");
  pending += text;
  let nl;
  while ((nl = pending.indexOf("\\n")) >= 0) {
    const line = pending.slice(0, nl).trim();
    pending = pending.slice(nl + 1);
    if (!line) continue;
    const msg = JSON.parse(line);
    if (msg.event) continue;
    replies.push(msg);
    if (waiter) { const w = waiter; waiter = null; w(); }
  }
};
function next() {
  return new Promise((resolve) => {
    if (replies.length) { resolve(replies.shift()); return; }
    waiter = () => resolve(replies.shift());
  });
}
ws.onerror = () => { results.error = "websocket error"; report(); };
ws.onopen = async () => {
  results.protocol = ws.protocol;
  results.greeting = await next();
  ws.send(JSON.stringify({execute: "qmp_capabilities"}));
  results.caps = await next();
  ws.send(new TextEncoder().encode(JSON.stringify({execute: "query-chardev"})));
  results.chardevs = await next();
  ws.send(JSON.stringify({execute: "query-netdev", arguments: {name: "p0"}}));
  results.netdev = await next();
  log(JSON.stringify(results.netdev));
  ws.close(1000, "done");
  ws.onclose = (ev) => { results.close = ev.code; report(); };
};
</script></body></html>
"""


class _Server(ThreadingHTTPServer):
    page = b""
    result: Any = None
    got = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        body = self.server.page
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        self.server.result = json.loads(self.rfile.read(size))
        self.server.got.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def page_server(page: str) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.page = page.encode()
    server.got = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def chromium(url: str) -> Iterator[subprocess.Popen[bytes]]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="netstack-chromium-") as profile:
        proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", url],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(), start_new_session=True,
        )  # fmt: skip
        try:
            yield proc
        finally:
            # chromium's helpers share its new session: end the whole group it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.mark.parametrize("protocols", ['["binary"]', "[]"])
async def test_chromium_javascript_websocket_drives_qmp(tmp_path: Path, protocols: str) -> None:
    args = [
        "-chardev", "socket,id=ws0,host=127.0.0.1,port=0,server=on,wait=off,websocket=on",
        "-mon", "chardev=ws0,mode=control",
        "-netdev", "hubport,id=p0,hubid=0",
    ]  # fmt: skip
    with daemon_with(tmp_path, args) as daemon:
        port = await chardev_port(daemon, "ws0")
        with page_server(PAGE % {"port": port, "protocols": protocols}) as server:
            url = f"http://127.0.0.1:{server.server_address[1]}/"
            with chromium(url):
                got = await asyncio.to_thread(server.got.wait, 60)
            assert got, "the page never reported back"
        result = server.result
        assert "error" not in result, result
        assert result["protocol"] == ("binary" if "binary" in protocols else "")
        assert "QMP" in result["greeting"]
        assert result["caps"] == {"return": {}}
        (entry,) = [e for e in result["chardevs"]["return"] if e["label"] == "ws0"]
        assert entry["filename"].startswith(f"websocket:127.0.0.1:{port},server=on <-> ")
        assert result["netdev"]["return"][0]["id"] == "p0"
        assert set(result["frames"]) == {"binary"}
        assert result["close"] == 1000
        assert daemon.proc.poll() is None
