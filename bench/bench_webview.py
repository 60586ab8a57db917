"""What an open web view costs netstackd, next to the same QMP work done by a plain client.

One ``netstackd`` (a user NAT and eight hub ports, ``-webview tcp:127.0.0.1:0`` and a unix
QMP socket). Modes, interleaved in every round (medians of the rounds are printed):

* ``idle``: nothing connected;
* ``webview``: headless chromium showing the page (QMP over the websocket chardev:
  ``query-netdev`` every second, leases, connections and forwards every two seconds);
* ``qmp-unix``: the same commands at the same cadence from a plain QMP client on the unix
  socket - the path a script would take, i.e. the page's QMP work without the websocket
  layer and without the page.

For each: the daemon's CPU time per wall second (``/proc/PID/stat`` utime + stime) and,
above idle, per poll. Also the ``query-netdev`` round trips per second, back to back, over
the websocket (the ``websockets`` library) and over the unix socket.

    python bench/bench_webview.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.chromium import Browser  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
FULL = ("query-dhcp-leases", "query-user-connections", "query-user-forwards")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class UnixQmp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> UnixQmp:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=16 << 20)
        qmp = cls(reader, writer)
        await reader.readline()
        await qmp.call("qmp_capabilities")
        return qmp

    async def call(self, cmd: str) -> Any:
        self.writer.write(json.dumps({"execute": cmd}).encode() + b"\n")
        while True:
            msg = json.loads(await self.reader.readline())
            if "event" not in msg:
                return msg

    def close(self) -> None:
        self.writer.close()


async def poll_like_the_page(qmp: UnixQmp, seconds: float) -> int:
    """The page's cadence: query-netdev each second, the three tables every other."""
    polls = 0
    end = time.monotonic() + seconds
    tick = 0
    while time.monotonic() < end:
        started = time.monotonic()
        await qmp.call("query-netdev")
        if tick % 2 == 0:
            for cmd in FULL:
                await qmp.call(cmd)
        tick += 1
        polls += 1
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return polls


async def round_trips_ws(port: int, seconds: float) -> float:
    async with websockets.connect(f"ws://127.0.0.1:{port}/", subprotocols=["binary"]) as ws:  # type: ignore[list-item]
        await ws.recv()
        await ws.send(json.dumps({"execute": "qmp_capabilities"}))
        await ws.recv()
        n = 0
        end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        while time.perf_counter() < end:
            await ws.send('{"execute": "query-netdev"}')
            await ws.recv()
            n += 1
        return n / (time.perf_counter() - t0)


async def round_trips_unix(path: Path, seconds: float) -> float:
    qmp = await UnixQmp.open(path)
    n = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        await qmp.call("query-netdev")
        n += 1
    qmp.close()
    return n / (time.perf_counter() - t0)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-webview-"))
    qmp_path = tmp / "qmp.sock"
    argv = [sys.executable, "-m", "netstack", "-netdev", "user,id=nat0"]
    argv += ["-netdev", "hubport,id=hp-nat0,hubid=0,netdev=nat0"]
    for i in range(8):
        argv += ["-netdev", f"hubport,id=p{i},hubid={i % 2}"]
    argv += ["-qmp", f"unix:{qmp_path},server=on,wait=off", "-webview", "tcp:127.0.0.1:0"]
    log = tmp / "daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "XDG_RUNTIME_DIR": str(tmp)},
        )  # fmt: skip
    try:
        url = ""
        for _ in range(300):
            m = re.search(r"web view at (http://\S+)", log.read_text())
            if m:
                url = m.group(1)
                break
            await asyncio.sleep(0.1)
        assert url, log.read_text()
        unix = await UnixQmp.open(qmp_path)
        netdevs = (await unix.call("query-netdev"))["return"]
        print(f"netstackd pid {daemon.pid}, {len(netdevs)} clients, web view {url}")
        results: dict[str, list[float]] = {"idle": [], "webview": [], "qmp-unix": []}
        polls: dict[str, list[int]] = {"webview": [], "qmp-unix": []}
        async with Browser.launch(tmp) as browser:
            page = await browser.new_page()
            for rnd in range(args.rounds):
                # idle
                c0 = cpu_seconds(daemon.pid)
                await asyncio.sleep(args.seconds)
                results["idle"].append((cpu_seconds(daemon.pid) - c0) / args.seconds)
                # the page
                await page.goto(url)
                await page.wait_for("document.getElementById('conn').dataset.state === 'up'")
                c0 = cpu_seconds(daemon.pid)
                await asyncio.sleep(args.seconds)
                results["webview"].append((cpu_seconds(daemon.pid) - c0) / args.seconds)
                polls["webview"].append(round(args.seconds))
                await page.goto("about:blank")
                # the same work from a plain QMP client
                c0 = cpu_seconds(daemon.pid)
                polls["qmp-unix"].append(await poll_like_the_page(unix, args.seconds))
                results["qmp-unix"].append((cpu_seconds(daemon.pid) - c0) / args.seconds)
                print(
                    f"round {rnd + 1}: "
                    + ", ".join(f"{k} {v[-1] * 1000:.1f} ms/s" for k, v in results.items())
                )
        unix.close()
        med = {k: statistics.median(v) for k, v in results.items()}
        idle = med["idle"]
        print("\ndaemon CPU, ms per wall second (median of rounds):")
        for k, v in med.items():
            extra = ""
            if k in polls:
                per_poll = (v - idle) * args.seconds / statistics.median(polls[k]) * 1000
                extra = f"   above idle per poll: {per_poll:.2f} ms"
            print(f"  {k:9s} {v * 1000:7.2f}{extra}")
        if med["qmp-unix"] > idle:
            ratio = (med["webview"] - idle) / (med["qmp-unix"] - idle)
            print(f"  webview / qmp-unix above idle: {ratio:.2f}x")
        with urllib.request.urlopen(f"{url}config.json", timeout=10) as reply:
            port = json.loads(reply.read())["qmp"]["port"]
        ws_rates, unix_rates = [], []
        for rnd in range(args.rounds):
            if rnd % 2:
                unix_rates.append(await round_trips_unix(qmp_path, 3))
            ws_rates.append(await round_trips_ws(port, 3))
            if not rnd % 2:
                unix_rates.append(await round_trips_unix(qmp_path, 3))
        ws, ux = statistics.median(ws_rates), statistics.median(unix_rates)
        print(
            f"\nquery-netdev round trips/s: websocket {ws:.0f}, unix {ux:.0f} "
            f"(websocket/unix {ws / ux:.2f}x)"
        )
    finally:
        daemon.terminate()
        daemon.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
