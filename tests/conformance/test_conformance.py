"""Generic driver conformance tests, run over every case in ``cases.CASES``.

Topology: DUT netdev <-> hubport (hub 7) <-> hub <-> hubport <-> inside Recorder.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from netstack.daemon import Netstack
from netstack.net.hub import HubPort
from netstack.qapi import parse_netdev_cli
from tests.conformance.cases import CASES
from tests.conformance.harness import DriverCase, Outside
from tests.support import Recorder, frame

pytestmark = pytest.mark.timeout(60)


class Rig:
    def __init__(self, ns: Netstack, outside: Outside, inside: Recorder, case: DriverCase):
        self.ns, self.outside, self.inside, self.case = ns, outside, inside, case

    async def inside_got(self, n: int, timeout: float = 3.0) -> list[bytes]:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(self.inside.got) < n and loop.time() < end:
            await asyncio.sleep(0.01)
        return self.inside.got


async def _rig(case: DriverCase, tmp_path) -> AsyncIterator[Rig]:  # type: ignore[no-untyped-def]
    ns = Netstack(case.registry(), runtime_dir=tmp_path)  # type: ignore[arg-type]
    try:
        async with case.start(ns) as outside:
            await ns.netdev_add(parse_netdev_cli(f"hubport,id=hp-dut,hubid=7,netdev={case.name}"))
            port = ns.hub(7).add_port("hp-inside")
            inside = Recorder("inside")
            port.connect(inside)
            try:
                yield Rig(ns, outside, inside, case)
            finally:
                await outside.close()
    finally:
        await ns.close()


@pytest.fixture(params=CASES, ids=lambda c: c.id)
async def rig(request, tmp_path):  # type: ignore[no-untyped-def]
    async for r in _rig(request.param(), tmp_path):
        yield r


async def test_frames_cross_both_ways(rig: Rig) -> None:
    out_frames = [frame(i, size=60 + i) for i in range(5)]
    for f in out_frames:
        await rig.outside.send(f)
    assert await rig.inside_got(5) == out_frames
    in_frames = [frame(100 + i, size=200) for i in range(5)]
    rig.inside.send(in_frames)
    got = [await rig.outside.recv() for _ in in_frames]
    assert got == in_frames


async def test_link_down_stops_both_directions(rig: Rig) -> None:
    rig.ns.set_link(rig.case.name, False)
    await rig.outside.send(frame(1))
    rig.inside.send([frame(2)])
    assert await rig.outside.recv(timeout=0.5) is None
    await asyncio.sleep(0.2)
    assert rig.inside.got == []
    rig.ns.set_link(rig.case.name, True)
    await rig.outside.send(frame(3))
    assert await rig.inside_got(1) == [frame(3)]


async def test_backpressure_queues_then_flushes_in_order(rig: Rig) -> None:
    if not rig.outside.can_pause:
        pytest.skip("this outside cannot refuse frames (datagrams are dropped, not queued)")
    await rig.outside.pause()
    dut = rig.ns.find_netdev(rig.case.name)
    assert dut is not None and isinstance(dut.peer, HubPort)
    # Send until the driver pushes back (its kernel buffers are full), bounded well below
    # the queue's 10,000-frame limit so nothing is dropped.
    frames: list[bytes] = []
    for i in range(80):
        batch = [frame(i * 100 + j, size=1400) for j in range(100)]
        frames += batch
        rig.inside.send(batch)
        await asyncio.sleep(0.01)
        if len(dut.incoming) > 0 or dut.receive_disabled:
            break
    assert len(dut.incoming) > 0 or dut.receive_disabled, "the driver never pushed back"
    await rig.outside.resume()
    got = [await rig.outside.recv(timeout=5) for _ in frames]
    assert got == frames


async def test_delete_purges_and_frees_the_id(rig: Rig) -> None:
    name = rig.case.name
    assert f"{name}: index=0,type={rig.case.type}," in rig.ns.info_network()
    (entry,) = rig.ns.query_netdev(name)
    assert entry["type"] == rig.case.type and entry["peer"] == "hp-dut" and entry["hub"] == 7
    rig.ns.netdev_del(name)
    assert rig.ns.find_netdev(name) is None
    assert f"{name}:" not in rig.ns.info_network()
    port = rig.ns.find_netdev("hp-dut")
    assert port is not None and port.peer is None
    # Frames into the hub towards the deleted netdev go nowhere, and nothing raises.
    rig.inside.send([frame(9)])
