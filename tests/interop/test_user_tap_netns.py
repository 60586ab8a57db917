"""The user netdev serving a Linux network namespace through tap (the rootlesskit topology).

Topology (in-process daemon; the namespace is made and deleted here)::

    ns: ut0 10.0.2.100/24, default via 10.0.2.2
        <- tap t0 (vnet_hdr=on, opened in ns with x-netns) -> hub 0 <- user nat0 -> host

The namespace's kernel is the guest; 10.0.2.2 reaches the host's 127.0.0.1. Covered:
iperf3 from the namespace to an iperf3 server on host loopback in both directions (short
runs; bytes moved, sane totals, no timing asserts); many connections at once (iperf3
``-P 32``, and 200 echo connections from a Python client in the namespace, 100 one after
another and 100 in parallel, every byte checked); connections the host refuses (a closed
127.0.0.1 port through 10.0.2.2, and a closed port on one of the host's own non-loopback
addresses, which the NAT connects to directly: both answer ECONNREFUSED at once, and no
flow is left behind). After each test the daemon's counters show no internal error, the
tap no write error, and nothing was logged at ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

import drivers
from drivers.tap.client import TapClient
from netstack.daemon import Netstack
from netstack.qapi import parse_netdev_cli
from tests.kit.netns import ip, netns, require_root, run_in

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

IFNAME = "ut0"
GUEST_ADDR = "10.0.2.100"
GATEWAY = "10.0.2.2"
#: Counters that must stay zero: bugs, not guest or host behaviour.
BUG_COUNTERS = ("internal-error", "hostfwd-internal-error", "tcp-host-data-over-room")


@dataclass
class Served:
    daemon: Netstack
    ns: str

    @property
    def user(self) -> Any:
        client = self.daemon.find_netdev("nat0")
        assert client is not None
        return client

    @property
    def tap(self) -> TapClient:
        client = self.daemon.find_netdev("t0")
        assert isinstance(client, TapClient)
        return client


@contextlib.asynccontextmanager
async def served_namespace(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Served]:
    """A namespace whose tap is served by a user netdev, checked for bugs on the way out."""
    require_root()
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 not installed (tools/setup-deps.sh)")
    caplog.set_level(logging.WARNING, logger="netstack")
    with netns("nsu", ipv6=False) as ns:
        daemon = Netstack(drivers.registry())
        try:
            for spec in (
                "user,id=nat0",
                f"tap,id=t0,ifname={IFNAME},script=no,downscript=no,vnet_hdr=on,x-netns={ns}",
                "hubport,id=h0,hubid=0,netdev=nat0",
                "hubport,id=h1,hubid=0,netdev=t0",
            ):
                await daemon.netdev_add(parse_netdev_cli(spec))
            ip("-n", ns, "addr", "add", f"{GUEST_ADDR}/24", "dev", IFNAME)
            ip("-n", ns, "link", "set", IFNAME, "up")
            ip("-n", ns, "route", "add", "default", "via", GATEWAY)
            served = Served(daemon, ns)
            yield served
            counters = served.user.counters()
            assert {k: counters.get(k, 0) for k in BUG_COUNTERS} == dict.fromkeys(BUG_COUNTERS, 0)
            assert served.tap.write_errors == 0 and served.tap.read_errors == 0
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert not errors, [r.getMessage() for r in errors]
        finally:
            await daemon.close()


def free_port(addr: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound and released at once)."""
    with socket.socket() as s:
        s.bind((addr, 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def iperf3_server() -> AsyncIterator[int]:
    """``iperf3 -s`` on host 127.0.0.1 (serves tests one after another); yields its port."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "iperf3", "-s", "-B", "127.0.0.1", "-p", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("iperf3 -s did not listen")
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def iperf3(ns: str, port: int, *args: str, seconds: int = 2) -> dict[str, Any]:
    """One iperf3 client run from the namespace; its JSON report's ``end`` section."""
    rc, out = await run_in(
        ns, "iperf3", "-c", GATEWAY, "-p", str(port), "-t", str(seconds), "-J", *args,
        timeout=seconds + 30,
    )  # fmt: skip
    report = json.loads(out[out.index("{") :])
    assert rc == 0 and "error" not in report, out[-2000:]
    end: dict[str, Any] = report["end"]
    return end


def check_sane(end: dict[str, Any], seconds: int) -> int:
    """Bytes moved; the totals agree and the rate is plausible (no speed asserted)."""
    sent, received = end["sum_sent"], end["sum_received"]
    assert received["bytes"] > 1 << 20, end  # at least 1 MiB in a few seconds
    assert sent["bytes"] >= received["bytes"], end
    assert 0 < received["bits_per_second"] < 1e12, end
    assert seconds * 0.5 < received["seconds"] < seconds * 3, end
    return int(received["bytes"])


async def test_iperf3_both_directions(caplog: pytest.LogCaptureFixture) -> None:
    async with served_namespace(caplog) as s, iperf3_server() as port:
        rc, out = await run_in(s.ns, "ping", "-c", "1", "-W", "2", GATEWAY)
        assert rc == 0, out
        up = check_sane(await iperf3(s.ns, port), 2)
        down = check_sane(await iperf3(s.ns, port, "-R"), 2)
        assert up > 0 and down > 0
        counters = s.user.counters()
        assert counters["tcp-connects"] >= 4, counters  # control + data, twice
        assert s.tap.frames_read > 0 and s.tap.frames_written > 0


async def test_iperf3_32_parallel_streams(caplog: pytest.LogCaptureFixture) -> None:
    async with served_namespace(caplog) as s, iperf3_server() as port:
        for args in ((), ("-R",)):
            end = await iperf3(s.ns, port, "-P", "32", *args, seconds=3)
            check_sane(end, 3)
            streams = end["streams"]
            assert len(streams) == 32, end
            assert all(st["receiver"]["bytes"] > 0 for st in streams), streams
        assert s.user.counters()["tcp-connects"] >= 2 * 33


#: The namespace's client: SEQ echo connections one after another, then PAR at once; each
#: sends a seeded random payload (1 B .. 256 KiB), half-closes, and reads the echo to EOF
#: while still sending. Prints one JSON line: counts of good and bad connections.
ECHO_CLIENT = r"""
import asyncio, json, random, sys, time
host, port, seq, par = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

async def one(i):
    rng = random.Random(i)
    data = rng.randbytes(rng.choice((1, 100, 1460, 1461, 30000, 65536, 262144)))
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 20)
    async def send():
        writer.write(data)
        await writer.drain()
        writer.write_eof()
    sender = asyncio.ensure_future(send())
    got = await asyncio.wait_for(reader.read(), 60)
    await sender
    writer.close()
    return got == data, len(data)

async def main():
    results = []
    t0 = time.monotonic()
    for i in range(seq):
        results.append(await one(i))
    outs = await asyncio.gather(*(one(seq + i) for i in range(par)), return_exceptions=True)
    errors = [repr(o) for o in outs if isinstance(o, BaseException)]
    results += [o for o in outs if not isinstance(o, BaseException)]
    print(json.dumps({"good": sum(ok for ok, _ in results), "bad": sum(not ok for ok, _ in results),
                      "bytes": sum(n for _, n in results), "errors": errors[:5],
                      "seconds": time.monotonic() - t0}))

asyncio.run(main())
"""


async def test_200_echo_connections_sequential_and_parallel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    accepted = 0

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=256)
    port = server.sockets[0].getsockname()[1]
    try:
        async with served_namespace(caplog) as s:
            rc, out = await run_in(
                s.ns, sys.executable, "-c", ECHO_CLIENT, GATEWAY, str(port), "100", "100",
                timeout=150,
            )  # fmt: skip
            assert rc == 0, out
            result = json.loads(out.strip().splitlines()[-1])
            assert result == {**result, "good": 200, "bad": 0, "errors": []}, result
            assert accepted == 200
            counters = s.user.counters()
            assert counters["tcp-connects"] >= 200, counters
            assert counters.get("tcp-flow-limit", 0) == 0, counters
    finally:
        server.close()
        await server.wait_closed()


#: Connect to each HOST:PORT given; print one JSON line per target: the errno name and the
#: time the refusal took.
REFUSED_CLIENT = r"""
import errno, json, socket, sys, time
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    for attempt in range(5):
        s = socket.socket()
        s.settimeout(10)
        t0 = time.monotonic()
        try:
            s.connect((host, int(port)))
            err = "connected"
        except OSError as exc:
            err = errno.errorcode.get(exc.errno, str(exc)) if exc.errno else repr(exc)
        finally:
            s.close()
        print(json.dumps({"target": target, "error": err, "seconds": time.monotonic() - t0}))
"""


def host_global_ipv4() -> str | None:
    """One of this host's own non-loopback IPv4 addresses (delivered locally, never sent)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            addr = fields[fields.index("inet") + 1].split("/")[0]
            if not addr.startswith("10.0.2."):  # would be inside the virtual network
                return addr
    return None


async def test_connections_refused_by_the_host(caplog: pytest.LogCaptureFixture) -> None:
    targets = [f"{GATEWAY}:{free_port()}"]
    own = host_global_ipv4()
    if own is not None:
        targets.append(f"{own}:{free_port(own)}")
    async with served_namespace(caplog) as s:
        rc, out = await run_in(s.ns, sys.executable, "-c", REFUSED_CLIENT, *targets, timeout=120)
        assert rc == 0, out
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert len(rows) == 5 * len(targets), out
        for row in rows:
            assert row["error"] == "ECONNREFUSED", row
            assert row["seconds"] < 1.0, row
        counters = s.user.counters()
        assert counters.get("tcp-event-connect-failed", 0) >= len(rows), counters
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while s.user.counters().get("tcp-flows", 0) and loop.time() < end:
            await asyncio.sleep(0.1)
        assert s.user.counters().get("tcp-flows", 0) == 0, s.user.counters()
