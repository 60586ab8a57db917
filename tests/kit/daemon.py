"""An in-process daemon for tests: a :class:`~netstack.daemon.Netstack` with every driver,
closed on exit, and the ``-netdev`` lines tests add to it (parsed and id-checked exactly
as the command line does)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import drivers
from netstack.daemon import Netstack
from netstack.driver import DriverSpec
from netstack.net.client import NetClient
from netstack.qapi import check_id, parse_netdev_cli


@asynccontextmanager
async def in_process(
    runtime_dir: Path | None = None, registry: Mapping[str, DriverSpec] | None = None
) -> AsyncIterator[Netstack]:
    """A daemon with ``registry`` (default: every driver), closed on exit."""
    daemon = Netstack(dict(registry or drivers.registry()), runtime_dir=runtime_dir)
    try:
        yield daemon
    finally:
        await daemon.close()


async def add_netdevs(ns: Netstack, *specs: str) -> list[NetClient]:
    """Add each ``-netdev`` option string in order; the clients they made."""
    made: list[NetClient] = []
    for spec in specs:
        netdev = parse_netdev_cli(spec)
        check_id(netdev.id)
        made += await ns.netdev_add(netdev)
    return made
