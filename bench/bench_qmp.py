"""QMP control-plane figures, netstackd and QEMU side by side in one run.

* round trips/s of ``query-version`` with 1 client and with 8 concurrent clients (each
  client sends a request and waits for its reply before the next);
* ``netdev_add`` + ``netdev_del`` of a hubport, 1,000 cycles: ms per cycle, and the
  server's open fds and RSS before and after (they must not grow).

QEMU is ``qemu-system-x86_64 -machine none -nodefaults -display none -qmp unix:...``.

    python bench/bench_qmp.py [--seconds 3] [--cycles 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


async def _session(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    await reader.readline()
    writer.write(b'{"execute": "qmp_capabilities"}\n')
    await reader.readline()
    return reader, writer


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> dict:  # type: ignore[type-arg]
    writer.write(req)
    while True:
        msg = json.loads(await reader.readline())
        if "event" not in msg:
            return msg  # type: ignore[no-any-return]


async def round_trips(paths: list[Path], clients: int, seconds: float) -> float:
    sessions = [await _session(paths[i % len(paths)]) for i in range(clients)]
    req = b'{"execute": "query-version"}\n'
    end = time.perf_counter() + seconds
    counts = [0] * clients

    async def worker(i: int) -> None:
        r, w = sessions[i]
        while time.perf_counter() < end:
            await _call(r, w, req)
            counts[i] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - t0
    for _, w in sessions:
        w.close()
    return sum(counts) / elapsed


def _fds_rss(pid: int) -> tuple[int, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return fds, rss


async def add_del_cycles(
    path: Path, pid: int, cycles: int
) -> tuple[float, tuple[int, int], tuple[int, int]]:
    r, w = await _session(path)
    add = b'{"execute": "netdev_add", "arguments": {"id": "hp", "type": "hubport", "hubid": 0}}\n'
    delete = b'{"execute": "netdev_del", "arguments": {"id": "hp"}}\n'
    for _ in range(20):  # warm up
        await _call(r, w, add)
        await _call(r, w, delete)
    before = _fds_rss(pid)
    t0 = time.perf_counter()
    for _ in range(cycles):
        a = await _call(r, w, add)
        d = await _call(r, w, delete)
        assert "return" in a and "return" in d, (a, d)
    per_cycle = (time.perf_counter() - t0) / cycles * 1000
    after = _fds_rss(pid)
    w.close()
    return per_cycle, before, after


def _start(argv: list[str], sock: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"{argv[0]} did not start")
        time.sleep(0.05)
    return proc


async def measure(
    name: str, argv: list[str], socks: list[Path], args: argparse.Namespace
) -> dict[str, object]:
    sock = socks[0]
    proc = _start(argv, socks[-1])
    try:
        one = await round_trips([sock], 1, args.seconds)
        eight = await round_trips(socks, 8, args.seconds)
        ms, before, after = await add_del_cycles(sock, proc.pid, args.cycles)
    finally:
        proc.terminate()
        proc.wait(10)
    return {"name": name, "rt1": one, "rt8": eight, "ms": ms, "before": before, "after": after}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cycles", type=int, default=1000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-qmp-"))
    rows = []
    ns_sock = tmp / "ns.sock"
    # netstackd serves the 8 clients on one socket; a QEMU monitor takes one client at a
    # time, so QEMU gets 8 monitors (one per client).
    rows.append(
        await measure(
            "netstackd",
            [sys.executable, "-m", "netstack", "-qmp", f"unix:{ns_sock},server=on,wait=off"],
            [ns_sock],
            args,
        )
    )
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        q_socks = [tmp / f"qemu{i}.sock" for i in range(8)]
        qmp_args = [a for s in q_socks for a in ("-qmp", f"unix:{s},server=on,wait=off")]
        rows.append(
            await measure(
                "qemu",
                [qemu, "-machine", "none", "-nodefaults", "-display", "none", *qmp_args],
                q_socks,
                args,
            )
        )
    print(
        f"{'server':10} {'rt/s 1 client':>14} {'rt/s 8 clients':>15} {'add+del ms':>11} "
        f"{'fds before->after':>18} {'RSS kB before->after':>21}"
    )
    for r in rows:
        b, a = r["before"], r["after"]
        print(
            f"{r['name']:10} {r['rt1']:14,.0f} {r['rt8']:15,.0f} {r['ms']:11.3f} "
            f"{f'{b[0]}->{a[0]}':>18} {f'{b[1]}->{a[1]}':>21}"
        )  # type: ignore[index]
    if len(rows) == 2:
        ns, q = rows
        print(
            f"ratio netstackd/qemu: 1 client {ns['rt1'] / q['rt1']:.2f}x, "  # type: ignore[operator]
            f"8 clients {ns['rt8'] / q['rt8']:.2f}x, add+del {q['ms'] / ns['ms']:.2f}x"
        )  # type: ignore[operator]
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
