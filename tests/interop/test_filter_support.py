"""Helpers for the filter and capture interop tests: a QEMU with two UDP socket netdevs on
a hub, and tshark."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Qemu:
    proc: subprocess.Popen[bytes]
    qmp: Any
    to_s0: socket.socket
    s0_addr: tuple[str, int]
    from_s1: socket.socket

    def send(self, frames: list[bytes]) -> None:
        for f in frames:
            self.to_s0.sendto(f, self.s0_addr)

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        return await self.qmp.execute(cmd, args)


@contextlib.asynccontextmanager
async def qemu(tmp_path: Path, extra: list[str]) -> AsyncIterator[Qemu]:
    from qemu.qmp import QMPClient

    s0_local, s1_local = free_udp_port(), free_udp_port()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.settimeout(5)
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src.bind(("127.0.0.1", 0))
    qmp_path = str(tmp_path / "qmp.sock")
    argv = [
        "qemu-system-x86_64", "-M", "none", "-display", "none", "-nodefaults",
        "-netdev", f"socket,id=s0,udp=127.0.0.1:{src.getsockname()[1]},"
                   f"localaddr=127.0.0.1:{s0_local}",
        "-netdev", "hubport,id=h0,hubid=0,netdev=s0",
        "-netdev", f"socket,id=s1,udp=127.0.0.1:{sink.getsockname()[1]},"
                   f"localaddr=127.0.0.1:{s1_local}",
        "-netdev", "hubport,id=h1,hubid=0,netdev=s1",
        *extra,
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
        # QEMU's monitor serves one client at a time: a second one for the capture tool
        "-qmp", f"unix:{tmp_path}/tool-qmp.sock,server=on,wait=off",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    qmp = QMPClient("test")
    try:
        for _ in range(200):
            if os.path.exists(qmp_path) or proc.poll() is not None:
                break
            await asyncio.sleep(0.025)
        await qmp.connect(qmp_path)
        await qmp.execute("query-status")  # answered from the main loop: netdevs exist
        yield Qemu(proc, qmp, src, ("127.0.0.1", s0_local), sink)
    finally:
        with contextlib.suppress(Exception):
            await qmp.disconnect()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sink.close()
        src.close()


def tshark_fields(source: str | bytes, *fields: str, timeout: float = 60) -> list[list[str]]:
    """``tshark -r`` a file (str) or capture bytes (via stdin) and return the field rows."""
    argv = ["tshark", "-r", "-" if isinstance(source, bytes) else source, "-T", "fields"]
    for name in fields:
        argv += ["-e", name]
    res = subprocess.run(
        argv,
        input=source if isinstance(source, bytes) else None,
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return [line.split("\t") for line in res.stdout.decode().splitlines()]
