"""Live-migrate a VM between two netstackd hosts, moving the user netdev's state with it.

    python -m tools.migrate --src-qemu QMP --dst-qemu QMP --uri URI \\
        --src-daemon QMP --dst-daemon QMP [--netdev ID] [--dst-netdev ID]
        [--before-export CMD] [--after-import CMD]

The sequence (``docs/migration.md``): the destination QEMU runs with ``-incoming URI -S`` and
its NIC attached to the destination daemon; then

1. ``migrate`` on the source QEMU; wait until ``query-migrate`` says ``completed`` (the
   source VM is stopped from then on, the destination has not started: ``-S``);
2. ``--before-export`` (a shell command), if given: stop the network delivering the
   moving connections' packets to the source host (e.g. a blackhole route for their
   address). Otherwise a segment arriving at the source host after the export finds no
   socket there and the kernel answers it with a RST, which ends the connection (CRIU
   locks the network with a firewall for the same reason);
3. ``x-user-state-export`` on the source daemon (TCP connections leave the source host);
4. ``x-user-state-import`` on the destination daemon;
5. ``--after-import`` (a shell command), if given: deliver the address to the destination
   host now (e.g. the route);
6. ``cont`` on the destination QEMU.

If the migration fails nothing was exported and the source VM runs on. If the import is
refused (nothing applied) the destination stays stopped and the tool says so; the
exported blob is written to ``--save`` when given, so it can be imported by hand. Exit
status 0 when the VM runs at the destination. Prints QEMU's downtime and total time and
the time the VM really stood still (migration end to ``cont``).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from .qemu import MigrationResult, migrate, qmp_connect


@dataclass
class Outcome:
    """What happened, step by step."""

    migration: MigrationResult | None = None
    exported: dict[str, Any] = field(default_factory=dict)
    imported: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    stood_still_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error


async def _call(path: str, command: str, args: dict[str, Any] | None = None) -> Any:
    client = await qmp_connect(path)
    try:
        return await client.execute(command, args or {})
    finally:
        await client.disconnect()


async def run(
    src_qemu: str,
    dst_qemu: str,
    uri: str,
    src_daemon: str,
    dst_daemon: str,
    netdev: str = "u0",
    dst_netdev: str | None = None,
    before_export: str | None = None,
    after_import: str | None = None,
    save: Path | None = None,
    timeout: float = 300.0,
) -> Outcome:
    out = Outcome()
    source: QMPClient = await qmp_connect(src_qemu)
    try:
        out.migration = await migrate(source, uri, timeout=timeout)
    finally:
        await source.disconnect()
    if not out.migration.ok:
        out.error = f"migration {out.migration.status}: {out.migration.error}"
        return out
    stopped = time.monotonic()
    if not _hook(out, before_export, "--before-export"):
        return out
    exported = await _call(src_daemon, "x-user-state-export", {"netdev": netdev})
    data = exported.pop("data")
    out.exported = exported
    if save is not None:
        save.write_text(data)
    try:
        out.imported = await _call(
            dst_daemon, "x-user-state-import", {"netdev": dst_netdev or netdev, "data": data}
        )
    except Exception as exc:
        out.error = f"import refused ({exc}); destination left stopped"
        return out
    if not _hook(out, after_import, "--after-import"):
        return out
    await _call(dst_qemu, "cont")
    out.stood_still_ms = (time.monotonic() - stopped) * 1000
    return out


def _hook(out: Outcome, command: str | None, name: str) -> bool:
    if not command:
        return True
    done = subprocess.run(command, shell=True, check=False, timeout=60)
    if done.returncode:
        out.error = f"{name} exited with {done.returncode}; destination left stopped"
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.migrate", description=__doc__)
    p.add_argument("--src-qemu", required=True, help="QMP socket of the source QEMU")
    p.add_argument("--dst-qemu", required=True, help="QMP socket of the destination QEMU")
    p.add_argument("--uri", required=True, help="migration URI (the destination's -incoming)")
    p.add_argument("--src-daemon", required=True, help="QMP socket of the source netstackd")
    p.add_argument("--dst-daemon", required=True, help="QMP socket of the destination netstackd")
    p.add_argument("--netdev", default="u0", help="the user netdev on the source (u0)")
    p.add_argument("--dst-netdev", help="the user netdev on the destination (same)")
    p.add_argument("--before-export", help="shell command run before the export")
    p.add_argument("--after-import", help="shell command run after the import")
    p.add_argument("--save", type=Path, help="write the exported state blob here")
    p.add_argument("--timeout", type=float, default=300.0)
    a = p.parse_args(argv)
    job = run(
        a.src_qemu,
        a.dst_qemu,
        a.uri,
        a.src_daemon,
        a.dst_daemon,
        a.netdev,
        a.dst_netdev,
        a.before_export,
        a.after_import,
        a.save,
        a.timeout,
    )
    outcome = asyncio.run(job)
    m = outcome.migration
    if m is not None and m.ok:
        print(f"migrated: downtime {m.downtime_ms} ms, total {m.total_ms} ms (QEMU)")
    if outcome.exported:
        print(f"exported: {outcome.exported}")
    if outcome.imported:
        print(f"imported: {outcome.imported}; VM stood still {outcome.stood_still_ms:.0f} ms")
    if outcome.error:
        print(f"error: {outcome.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
