"""Driving a QEMU live migration over QMP, and the command line of a vhost-user VM that can
be migrated (shared memfd RAM, a QMP socket, optionally ``-incoming``).

Follows QEMU's QMP ``migrate`` / ``query-migrate`` (``qapi/migration.json``): ``migrate``
returns at once; the source's ``query-migrate`` goes ``setup``, ``active``, ``device``,
then ``completed`` (or ``failed`` with ``error-desc``); ``downtime`` and ``total-time`` (ms)
are QEMU's own measurements, reported once completed. The destination QEMU waits with
``-incoming URI`` and runs the guest by itself when the migration completes.

What it owns: :func:`vm_args`, :class:`MigrationResult`, :func:`migrate` (bounded wait).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from tools.guest import shared_memory_args, virtio_nic_args

#: Seconds between two ``query-migrate`` polls.
POLL = 0.05


def vm_args(
    vhost_sock: Path | str,
    qmp_sock: Path | str,
    mac: str,
    *,
    incoming: str | None = None,
    memory_mb: int = 256,
    msix: bool = False,
) -> list[str]:
    """QEMU arguments of a guest whose NIC is a vhost-user port at ``vhost_sock`` (the back
    end listens), with a QMP server at ``qmp_sock``; ``incoming`` makes it a destination.
    ``msix=False`` is QEMU 7.2's TCG workaround (``vectors=0``)."""
    args = [
        *shared_memory_args(memory_mb),
        "-chardev",
        f"socket,id=vhost0,path={vhost_sock}",
        "-netdev",
        "vhost-user,id=net0,chardev=vhost0",
        *virtio_nic_args("net0", mac, msix=msix),
        "-qmp",
        f"unix:{qmp_sock},server=on,wait=off",
    ]
    if incoming is not None:
        args += ["-incoming", incoming]
    return args


@dataclass
class MigrationResult:
    """What the source QEMU reported at the end."""

    status: str
    downtime_ms: float | None = None
    total_ms: float | None = None
    setup_ms: float | None = None
    error: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "completed"


async def qmp_connect(path: Path | str, name: str = "migrate", timeout: float = 10.0) -> QMPClient:
    """A QMP client connected to ``path`` (retried while the socket is not there yet)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        client = QMPClient(name)
        try:
            await client.connect(str(path))
            return client
        except Exception:
            with contextlib.suppress(Exception):
                await client.disconnect()
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def migrate(source: QMPClient, uri: str, timeout: float = 120.0) -> MigrationResult:
    """Migrate the VM behind ``source`` to ``uri``; wait (at most ``timeout`` s) for the end."""
    await source.execute("migrate", {"uri": uri})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    info: dict[str, Any] = {}
    while loop.time() < deadline:
        reply = await source.execute("query-migrate")
        assert isinstance(reply, dict)
        info = reply
        if info.get("status") in ("completed", "failed", "cancelled"):
            break
        await asyncio.sleep(POLL)
    else:
        with contextlib.suppress(Exception):
            await source.execute("migrate_cancel")
        return MigrationResult("timeout", error=f"not done within {timeout}s", raw=info)
    return MigrationResult(
        status=str(info.get("status")),
        downtime_ms=info.get("downtime"),
        total_ms=info.get("total-time"),
        setup_ms=info.get("setup-time"),
        error=str(info.get("error-desc", "")),
        raw=info,
    )
