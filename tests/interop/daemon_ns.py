"""Test support: a ``netstackd`` process serving network namespaces through taps, with
chosen descriptor limits, and the programs that load it (many concurrent connections from
a namespace, an echo server on host loopback).

Used by the fd-limit, fairness and confinement tests. Every namespace is made (and
deleted) by the caller through :func:`tests.kit.netns.netns`; every process
started here is ended by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from tests.kit.netns import ip

GATEWAY = "10.0.2.2"

#: Opens COUNT connections to HOST:PORT (at most 200 connecting at once), sends a byte on
#: each and waits for its echo, holds them all, prints one JSON line of outcomes, and keeps
#: holding until stdin closes. Like the server, it raises its own descriptor limit.
CLIENT = r"""
import asyncio, errno, json, resource, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 65536),) * 2)
except (OSError, ValueError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held, out = [], {"ok": 0, "refused": 0, "reset": 0, "timeout": 0, "other": 0}
gate = asyncio.Semaphore(200)
async def one():
    async with gate:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
            w.write(b"x")
            await w.drain()
            if await asyncio.wait_for(r.readexactly(1), 30) != b"x":
                raise OSError(errno.EIO, "bad echo")
            held.append(w)
            out["ok"] += 1
        except ConnectionRefusedError:
            out["refused"] += 1
        except (ConnectionResetError, asyncio.IncompleteReadError):
            out["reset"] += 1
        except asyncio.TimeoutError:
            out["timeout"] += 1
        except OSError as e:
            out["other"] += 1
            out.setdefault("errors", []).append(str(e)) if len(out.get("errors", [])) < 5 else None
async def main():
    await asyncio.gather(*(one() for _ in range(count)))
    print(json.dumps(out), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""

#: An echo server on 127.0.0.1 (descriptor limit raised); prints its port.
SERVER = r"""
import asyncio, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 65536),) * 2)
except (OSError, ValueError):
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def echo(r, w):
    try:
        while data := await r.read(4096):
            w.write(data)
            await w.drain()
    except OSError:
        pass
    w.close()
async def main():
    srv = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
    print(srv.sockets[0].getsockname()[1], flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""


@dataclass
class DaemonProc:
    proc: subprocess.Popen[bytes]
    qmp_path: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def status(self) -> dict[str, str]:
        out: dict[str, str] = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key] = value.strip()
        return out

    def wait_status(self, key: str, value: str, timeout: float = 20) -> dict[str, str]:
        """``/proc/PID/status`` once ``key`` reads ``value`` (the daemon confines itself
        after its QMP socket exists)."""
        deadline = time.monotonic() + timeout
        while (st := self.status()).get(key) != value:
            assert time.monotonic() < deadline, f"{key}: {st.get(key)!r}, wanted {value!r}"
            time.sleep(0.05)
        return st

    def rss_kib(self) -> int:
        return int(self.status()["VmRSS"].split()[0])

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def _limits(soft: int, hard: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def daemon(
    tmp: Path, args: Sequence[str], *, nofile: tuple[int, int] | None = None,
    timeout: float = 30,
) -> Iterator[DaemonProc]:  # fmt: skip
    """``python -m netstack ARGS -qmp unix:TMP/qmp.sock`` with ``RLIMIT_NOFILE`` set to
    ``nofile`` (soft, hard) before it starts, and ``-D TMP/daemon.log``."""
    qmp = tmp / "qmp.sock"
    log = tmp / "daemon.log"
    argv = [sys.executable, "-m", "netstack", *args, "-D", str(log),
            "-qmp", f"unix:{qmp},server=on,wait=off"]  # fmt: skip
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp))
    pre = (lambda: _limits(*nofile)) if nofile is not None else None
    with open(tmp / "daemon.out", "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=pre)  # fmt: skip
    d = DaemonProc(proc, qmp, log)
    try:
        deadline = time.monotonic() + timeout
        while not qmp.exists():
            if proc.poll() is not None:
                raise RuntimeError(
                    "netstackd exited early:\n" + (tmp / "daemon.out").read_text(errors="replace")
                )
            if time.monotonic() > deadline:
                raise RuntimeError("netstackd did not create its QMP socket")
            time.sleep(0.05)
        yield d
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def tap_args(netdev: str, hub: int, ns: str, ifname: str, extra: str = "") -> list[str]:
    """A user netdev ``netdev`` and a tap in ``ns`` joined on hub ``hub``."""
    return [
        "-netdev", f"user,id={netdev}{extra}",
        "-netdev", f"tap,id=t{netdev},ifname={ifname},script=no,downscript=no,vnet_hdr=on,"
                   f"x-netns={ns}",
        "-netdev", f"hubport,id=h{netdev}a,hubid={hub},netdev={netdev}",
        "-netdev", f"hubport,id=h{netdev}b,hubid={hub},netdev=t{netdev}",
    ]  # fmt: skip


def configure_ns(ns: str, ifname: str, addr: str = "10.0.2.100") -> None:
    ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
    ip("-n", ns, "link", "set", ifname, "up")
    ip("-n", ns, "route", "add", "default", "via", GATEWAY)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """The echo server on host loopback; yields its port."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        yield int(line)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def connections(
    ns: str, port: int, count: int, timeout: float = 240
) -> AsyncIterator[dict[str, Any]]:
    """``count`` concurrent connections from ``ns`` to the host's ``port`` via the
    gateway, held open while the caller runs; yields the outcome counts."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, GATEWAY, str(port), str(count),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the namespace client ended without a result")
        yield json.loads(line)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def qmp_client(path: Path) -> AsyncIterator[QMPClient]:
    qmp = QMPClient("test")
    await asyncio.wait_for(qmp.connect(str(path)), 20)
    try:
        yield qmp
    finally:
        await qmp.disconnect()


async def counters(qmp: QMPClient, netdev: str) -> dict[str, int]:
    rows = await asyncio.wait_for(qmp.execute("query-netdev", {"name": netdev}), 20)
    assert isinstance(rows, list)
    return dict(rows[0].get("counters", {}))
