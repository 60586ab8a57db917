"""QMP over the socket chardev's protocol layers, netstackd and QEMU 7.2 side by side.

For each transport - plain ``tcp``, ``telnet=on``, ``tls-creds`` (TLS 1.3, client
certificate) and ``websocket=on`` - one server of each kind is started with a QMP monitor
on that chardev; rounds are interleaved (netstackd, QEMU, netstackd, ...) and each round
measures, with one client:

* ``query-version`` round trips per second (request, wait for the reply, repeat);
* server CPU per 1,000 round trips (utime + stime from ``/proc/PID/stat``);
* for TLS, connections per second (TCP + TLS handshake + greeting) and server CPU per
  connection.

QEMU 7.2 sends the greeting over a websocket chardev but never reads the client's
input, so the websocket row has netstackd only; over TLS its monitor answers a request
only once the next one arrives (each reply lags one request), so its TLS row has
connections only. Medians of the rounds, and the
netstackd/QEMU ratio of each.

    python bench/bench_chardev_protocols.py [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.interop.tls_pki import Pki, make_pki

TICK = os.sysconf("SC_CLK_TCK")
IAC_PREFIX = {"telnet": 12}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chardev_opts(transport: str, port: int) -> str:
    base = f"socket,id=c0,host=127.0.0.1,port={port},server=on,wait=off"
    return {"tcp": base, "telnet": base + ",telnet=on", "tls": base + ",tls-creds=tls0",
            "websocket": base + ",websocket=on"}[transport]  # fmt: skip


def start(kind: str, transport: str, pki: Pki, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = ["-chardev", chardev_opts(transport, port), "-mon", "chardev=c0,mode=control"]
    if transport == "tls":
        args = ["-object", f"tls-creds-x509,id=tls0,dir={pki.server},endpoint=server", *args]
    if kind == "qemu":
        qemu = shutil.which("qemu-system-x86_64")
        assert qemu
        argv = [qemu, "-machine", "none", "-nodefaults", "-display", "none", *args]
    else:
        argv = [sys.executable, "-m", "netstack", *args]
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    time.sleep(0.5)  # the probe connection is being torn down on the server side
    return proc, port


def client_ctx(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki.client / "ca-cert.pem"))
    ctx.load_cert_chain(str(pki.client / "client-cert.pem"), str(pki.client / "client-key.pem"))
    return ctx


class Line:
    """A QMP line client over a stream (optionally TLS, with telnet bytes to skip)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(
        cls, transport: str, port: int, ctx: ssl.SSLContext | None, *, negotiate: bool = True
    ) -> Line:
        if transport == "tls":
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
            )
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if transport in IAC_PREFIX:
            await reader.readexactly(IAC_PREFIX[transport])
        self = cls(reader, writer)
        await reader.readline()
        if negotiate:
            await self.call(b'{"execute": "qmp_capabilities"}\n')
        return self

    async def call(self, req: bytes) -> dict[str, Any]:
        self.writer.write(req)
        while True:
            msg: dict[str, Any] = json.loads(await self.reader.readline())
            if "event" not in msg:
                return msg

    def close(self) -> None:
        self.writer.close()


class Ws:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, port: int) -> Ws:
        import websockets

        ws = await websockets.connect(f"ws://127.0.0.1:{port}/", subprotocols=["binary"])
        await ws.recv()
        self = cls(ws)
        await self.call(b'{"execute": "qmp_capabilities"}\n')
        return self

    async def call(self, req: bytes) -> dict[str, Any]:
        await self.ws.send(req)
        buf = b""
        while True:
            buf += await self.ws.recv()
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg: dict[str, Any] = json.loads(line)
                if "event" not in msg:
                    return msg

    def close(self) -> None:
        asyncio.get_running_loop().create_task(self.ws.close())


async def measure(transport: str, kind: str, pid: int, port: int, ctx: ssl.SSLContext | None,
                  seconds: float) -> dict[str, float]:  # fmt: skip
    out: dict[str, float] = {}
    if transport == "tls":
        t0, conns, cpu0 = time.perf_counter(), 0, cpu_seconds(pid)
        while time.perf_counter() < t0 + seconds:
            line = await Line.open(transport, port, ctx, negotiate=False)
            line.close()
            await line.writer.wait_closed()
            conns += 1
        out["conn/s"] = conns / (time.perf_counter() - t0)
        out["cpu ms/conn"] = (cpu_seconds(pid) - cpu0) / conns * 1e3
        await asyncio.sleep(0.3)
        if kind == "qemu":
            # QEMU 7.2's TLS chardev hands a command to the monitor only when the next
            # record arrives (the reply to each request lags one request behind): a
            # request/response loop never completes.
            return out
    client: Line | Ws
    if transport == "websocket":
        client = await Ws.open(port)
    else:
        client = await Line.open(transport, port, ctx)
    req = b'{"execute": "query-version"}\n'
    for _ in range(50):
        await client.call(req)
    cpu0, t0, n = cpu_seconds(pid), time.perf_counter(), 0
    end = t0 + seconds
    while time.perf_counter() < end:
        await client.call(req)
        n += 1
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    client.close()
    out.update({"rt/s": n / elapsed, "cpu ms/1k": cpu / n * 1e6})
    await asyncio.sleep(0.3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-chardev-") as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "pki").mkdir()
        pki = make_pki(tmp / "pki")
        ctx = client_ctx(pki)
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for transport in ("tcp", "telnet", "tls", "websocket"):
            kinds = ("netstackd",) if transport == "websocket" else ("netstackd", "qemu")
            servers = {k: start(k, transport, pki, tmp) for k in kinds}
            try:
                for _ in range(args.rounds):
                    for kind in kinds:
                        proc, port = servers[kind]
                        got = asyncio.run(
                            measure(transport, kind, proc.pid, port, ctx, args.seconds)
                        )
                        print(f"# {transport} {kind}: {got}", file=sys.stderr, flush=True)
                        results.setdefault((transport, kind), []).append(got)
            finally:
                for proc, _ in servers.values():
                    proc.terminate()
                    proc.wait(10)
        report(results)


def report(results: dict[tuple[str, str], list[dict[str, float]]]) -> None:
    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"{'transport':10} {'metric':10} {'netstackd':>10} {'qemu':>10} {'ratio':>7}")
    for transport in ("tcp", "telnet", "tls", "websocket"):
        ours = results[(transport, "netstackd")]
        theirs = results.get((transport, "qemu"))
        for metric in ours[0]:
            a = med(ours, metric)
            if theirs and metric in theirs[0]:
                b = med(theirs, metric)
                print(f"{transport:10} {metric:10} {a:10.1f} {b:10.1f} {a / b:7.2f}")
            else:
                print(f"{transport:10} {metric:10} {a:10.1f} {'-':>10} {'-':>7}")


if __name__ == "__main__":
    main()
