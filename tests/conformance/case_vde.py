"""Conformance case: vde, a port on Debian's ``vde_switch`` with ``vde_plug`` as the far end.

The switch runs in a private temporary directory for the case and is stopped by PID;
``vde_plug`` (libvdeplug) relays the switch to its stdio. The switch drops what a full
port cannot take, so the outside cannot push back (``can_pause`` is false).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from drivers import hubport, vde
from netstack.daemon import Netstack
from netstack.qapi import parse_netdev_cli
from tests.conformance.harness import DriverCase, Outside
from tests.vde_peers import VdePlug, VdeSwitch, have_vde, plug_ports


class PlugOutside(Outside):
    can_pause = False

    def __init__(self, plug: VdePlug) -> None:
        self.plug = plug

    async def send(self, frame: bytes) -> None:
        await self.plug.send(frame)

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        return await self.plug.recv(timeout)

    async def close(self) -> None:
        await self.plug.close()


class VdeCase(DriverCase):
    id = "vde-switch"
    type = "vde"

    def registry(self) -> dict[str, object]:
        return {"vde": vde.SPEC, "hubport": hubport.SPEC}

    @asynccontextmanager
    async def start(self, ns: Netstack) -> AsyncIterator[Outside]:
        if (missing := have_vde()) is not None:
            pytest.skip(missing)
        base = Path(tempfile.mkdtemp(prefix="conf-vde-"))
        switch = VdeSwitch(base / "sw").start()
        try:
            await ns.netdev_add(parse_netdev_cli(f"vde,id={self.name},sock={switch.directory}"))
            plug = await VdePlug(switch.directory).start()
            for _ in range(500):
                if len(plug_ports(switch.directory)) >= 2:
                    break
                await asyncio.sleep(0.01)
            yield PlugOutside(plug)
        finally:
            switch.stop()
            shutil.rmtree(base, ignore_errors=True)
