"""A bare QEMU for comparing behaviour: no machine, no devices, stopped (``-machine none
-nodefaults -display none -S``), driven over its QMP monitor."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient


@contextlib.asynccontextmanager
async def qemu_monitor(tmp: Path, *args: str, name: str = "test") -> AsyncIterator[QMPClient]:
    """Start ``qemu-system-x86_64`` with ``args`` and a QMP socket in ``tmp``; yield the
    connected client; disconnect and kill QEMU on exit."""
    sock = tmp / "qmp.sock"
    proc = await asyncio.create_subprocess_exec(
        shutil.which("qemu-system-x86_64") or "qemu-system-x86_64",
        "-machine", "none", "-nodefaults", "-display", "none", "-S", *args,
        "-qmp", f"unix:{sock},server=on,wait=off",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    qmp = QMPClient(name)
    try:
        for _ in range(200):
            if sock.exists():
                break
            await asyncio.sleep(0.05)
        await qmp.connect(str(sock))
        yield qmp
    finally:
        with contextlib.suppress(Exception):
            await qmp.disconnect()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def netdev_add_errors(qmp: QMPClient, cases: Sequence[Mapping[str, Any]]) -> list[str | None]:
    """``netdev_add`` each case (without its id: the n-th is ``u<n>``): QEMU's error text,
    or ``None`` where it was taken (and then deleted again)."""
    out: list[str | None] = []
    for n, args in enumerate(cases):
        try:
            await qmp.execute("netdev_add", {"id": f"u{n}", **args})
        except ExecuteError as exc:
            received: Any = exc.received
            out.append(str(received["error"]["desc"]))
            continue
        out.append(None)
        await qmp.execute("netdev_del", {"id": f"u{n}"})
    return out
