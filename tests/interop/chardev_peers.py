"""Test support for chardev protocol tests: a netstackd with extra chardevs and monitors,
and the TCP port the daemon really bound for a chardev (``port=0`` in the options)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from qemu.qmp import QMPClient

from tests.daemon_proc import Daemon, running_daemon


async def chardev_port(daemon: Daemon, label: str) -> int:
    """The port of a listening inet chardev, read from ``query-chardev`` over the
    daemon's unix QMP socket."""
    client = QMPClient("port-probe")
    await client.connect(str(daemon.qmp))
    try:
        for entry in await client.execute("query-chardev"):
            if entry["label"] == label:
                match = re.search(r":(\d+),server=on", entry["filename"])
                assert match, entry
                return int(match.group(1))
    finally:
        await client.disconnect()
    raise AssertionError(f"no chardev {label}")


@contextmanager
def daemon_with(tmp: Path, args: Sequence[str]) -> Iterator[Daemon]:
    with running_daemon(tmp, list(args)) as daemon:
        yield daemon
