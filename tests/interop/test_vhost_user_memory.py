"""Guest memory a front end damages after SET_MEM_TABLE, played by the Python front end of
``tools/vhost_user_frontend`` against netstack's vhost-user back end.

Every memory backing users attach VMs with (an unsealed memfd, a sealed memfd as QEMU's
``memory-backend-memfd`` makes by default, a tmpfs file as ``memory-backend-file`` on
``/dev/shm``, a file on an ordinary file system) attaches and passes frames both ways.
Then the hostile cases of ``MEMORY_CASES``: the damaged port stops (counted in
``memory-faults``, logged once) while a second port on the same hub keeps exchanging
frames. The same with netstackd as a real process, where a SIGBUS would be exit 135: the
daemon, its other port and QMP must carry on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

import drivers.vhost_user as vu
from drivers import hubport
from netstack.daemon import Netstack
from tests.daemon_proc import Daemon, running_daemon
from tests.interop.test_vhost_user_dpdk import DpdkTestpmd, virtio_user
from tests.interop.test_vhost_user_hostile import FRAME, Rig
from tests.kit.polling import until

pytestmark = pytest.mark.timeout(120)

fe_tool = pytest.importorskip("tools.vhost_user_frontend")

SMALL_MEMORY = 2 << 20
DESC_F_WRITE = 2
STOP_LINE = "every vring stopped"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    ns = Netstack({"vhost-user": vu.SPEC, "hubport": hubport.SPEC}, runtime_dir=tmp_path)
    r = Rig(ns, tmp_path)
    try:
        await r.setup()
        yield r
    finally:
        await ns.close()


def config(backing: str) -> Any:
    return fe_tool.FrontendConfig(queue_size=64, spare_memory=SMALL_MEMORY, memory_backing=backing)


def backings(tmp: Path) -> dict[str, set[str]]:
    """Front-end memory backing -> the kinds the back end may see."""
    out = {
        "memfd": {"memfd"},
        "sealed-memfd": {"sealed-memfd"},
        f"file:{tmp}": {"file", "tmpfs"},  # the temporary directory may live on tmpfs
    }
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        out["file:/dev/shm"] = {"tmpfs"}
    return out


async def exchange(rig: Rig, fe: Any) -> None:
    """``fe``'s guest sends a frame to the hub and receives one from it."""
    await rig.good_port_serves(fe)


async def test_every_backing_attaches_and_passes_frames(rig: Rig, tmp_path: Path) -> None:
    for backing, kind in backings(tmp_path).items():
        fe = await fe_tool.VhostUserFrontend.connect(rig.path("good"), config(backing))
        try:
            await fe.start()
            await exchange(rig, fe)
            device = rig.client("good").netdev.device
            (region,) = device.mem.regions
            assert region.backing.kind in kind, backing
            assert region.backing.pinned == (backing == "sealed-memfd")
            assert device.counters["memory-faults"] == 0
        finally:
            fe.close()
        await until(lambda: rig.client("good").link_down)


async def test_sealed_memfd_cannot_be_truncated(rig: Rig) -> None:
    fe = await fe_tool.VhostUserFrontend.connect(rig.path("bad"), config("sealed-memfd"))
    try:
        await fe.start()
        with pytest.raises(PermissionError):
            fe_tool.damage(fe.mem.regions[0], "truncate_4k")
        await exchange(rig, fe)
    finally:
        fe.close()


async def damage_and_poke(rig: Rig, bad: Any, case: str) -> None:
    """Queue a frame on ``bad``'s transmit ring, damage its memory, then kick and deliver a
    frame to it: the back end touches the damaged memory both ways. ``bad``'s own mapping
    is not touched after the damage."""
    bad.tx[0].send([FRAME], kick=False)
    fe_tool.damage(bad.mem.regions[0], case)
    bad.kick(1)
    rig.rec.send([FRAME])
    await asyncio.sleep(0.3)
    bad.kick(1)
    rig.rec.send([FRAME])
    await asyncio.sleep(0.2)


@pytest.mark.parametrize("case", ["truncate_4k", "truncate_zero"])
@pytest.mark.parametrize("backing", ["memfd", "file:/dev/shm"])
async def test_truncated_memory_stops_only_that_port(
    rig: Rig, case: str, backing: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backing == "file:/dev/shm" and not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    caplog.set_level(logging.WARNING)
    good = await fe_tool.VhostUserFrontend.connect(rig.path("good"))
    bad = await fe_tool.VhostUserFrontend.connect(rig.path("bad"), config(backing))
    try:
        await good.start()
        await bad.start()
        await exchange(rig, bad)
        await damage_and_poke(rig, bad, case)
        counters = rig.client("bad").counters()
        assert counters["memory-faults"] == 1, counters
        assert counters["rings-running"] == 0 and counters["rings-broken"] >= 1, counters
        lines = [r.getMessage() for r in caplog.records if STOP_LINE in r.getMessage()]
        assert len(lines) == 1 and "faulted" in lines[0], lines
        await rig.good_port_serves(good)
        # The front end resets its rings: they stay stopped while the memory is broken.
        got = len(rig.rec.got)
        bad.kick(1)
        await asyncio.sleep(0.1)
        assert len(rig.rec.got) == got
        assert rig.client("bad").counters()["memory-faults"] == 1
    finally:
        bad.close()
        good.close()
    await until(lambda: rig.client("bad").link_down)
    # A new connection with intact memory works again.
    again = await fe_tool.VhostUserFrontend.connect(rig.path("bad"))
    try:
        await again.start()
        await exchange(rig, again)
    finally:
        again.close()


async def test_shrunk_and_regrown_memory_reads_as_zeros(rig: Rig) -> None:
    good = await fe_tool.VhostUserFrontend.connect(rig.path("good"))
    bad = await fe_tool.VhostUserFrontend.connect(rig.path("bad"))
    try:
        await good.start()
        await bad.start()
        await damage_and_poke(rig, bad, "shrink_regrow")
        # No page was missing when touched: no fault; the rings just read as zeros.
        assert rig.client("bad").counters()["memory-faults"] == 0
        await rig.good_port_serves(good)
    finally:
        bad.close()
        good.close()


async def test_replaced_file_leaves_the_mapping_alone(rig: Rig, tmp_path: Path) -> None:
    bad = await fe_tool.VhostUserFrontend.connect(rig.path("bad"), config(f"file:{tmp_path}"))
    try:
        await bad.start()
        fe_tool.damage(bad.mem.regions[0], "replace_file")
        await exchange(rig, bad)  # both sides still share the old file
        assert rig.client("bad").counters()["memory-faults"] == 0
    finally:
        bad.close()


async def test_region_removed_under_running_rings(rig: Rig) -> None:
    good = await fe_tool.VhostUserFrontend.connect(rig.path("good"))
    bad = await fe_tool.VhostUserFrontend.connect(rig.path("bad"))
    try:
        await good.start()
        await bad.start()
        await exchange(rig, bad)
        # REM_MEM_REG of the region every ring lives in, while the rings run
        await bad.remove_region(bad.mem.regions[0])
        bad.kick(1)
        rig.rec.send([FRAME])
        await asyncio.sleep(0.3)
        counters = rig.client("bad").counters()
        assert counters["rings-running"] == 0 and counters["memory-faults"] == 0, counters
        assert not rig.client("bad").netdev.device.mem.regions
        await rig.good_port_serves(good)
    finally:
        bad.close()
        good.close()


async def test_truncated_hot_added_region(rig: Rig) -> None:
    """A region added later (ADD_MEM_REG) and truncated: the rings live elsewhere, the
    fault comes from a receive buffer placed in it."""
    good = await fe_tool.VhostUserFrontend.connect(rig.path("good"))
    cfg = fe_tool.FrontendConfig(queue_size=64, spare_memory=SMALL_MEMORY, rx_reserve=63)
    bad = await fe_tool.VhostUserFrontend.connect(rig.path("bad"), cfg)
    try:
        await good.start()
        await bad.start()
        extra = await bad.add_region(1 << 32, 1 << 20)
        assert len(rig.client("bad").netdev.device.mem.regions) == 2
        await exchange(rig, bad)
        fe_tool.damage(extra, "truncate_zero")
        rx_vq, spare = bad.vqs[0], bad.rx[0].reserved[0]
        rx_vq.write_desc(spare, extra.gpa + 8192, 2048, DESC_F_WRITE)
        rx_vq.push([spare])
        rx_vq.publish()
        rig.rec.send([FRAME, FRAME])  # the second one goes into the truncated region
        await until(lambda: rig.client("bad").counters()["memory-faults"] == 1)
        assert rig.client("bad").counters()["rings-running"] == 0
        await rig.good_port_serves(good)
    finally:
        bad.close()
        good.close()


async def test_dpdk_virtio_user_memory_attaches(rig: Rig, tmp_path: Path) -> None:
    """DPDK testpmd's virtio-user (``--no-huge``: its memory is a memfd it cannot seal)
    is a second, independent front end: its memory is guarded and frames flow."""
    if not DpdkTestpmd.available():
        pytest.skip("dpdk-testpmd not installed (Debian dpdk-dev)")
    pmd = DpdkTestpmd([virtio_user(Path(rig.path("bad")))], "txonly", workdir=tmp_path)
    await pmd.start()
    try:
        await until(lambda: len(rig.rec.got) >= 100, timeout=30)
        device = rig.client("bad").netdev.device
        kinds = {r.backing.kind for r in device.mem.regions}
    finally:
        await pmd.stop()
    assert kinds and kinds <= {"memfd", "sealed-memfd", "tmpfs", "hugetlbfs"}, kinds
    assert device.counters["memory-faults"] == 0 and device.counters["rings-broken"] == 0


# -- netstackd as a process -----------------------------------------------------------------


def assert_alive(daemon: Daemon) -> None:
    code = daemon.proc.poll()
    assert code is None, f"netstackd died (returncode {code}):\n{daemon.output()}"


async def qmp_counters(client: QMPClient, name: str) -> dict[str, int]:
    (entry,) = await client.execute("query-netdev", {"name": name})  # type: ignore[misc]
    counters: dict[str, int] = entry["counters"]
    return counters


async def fe_exchange(src: Any, dst: Any) -> None:
    """``src``'s guest sends a frame; ``dst``'s guest receives it (same hub)."""
    got: list[object] = []
    for _ in range(3):
        src.tx[0].send([FRAME])
        try:
            await until(lambda: got.extend(dst.rx[0].receive()) or bool(got), timeout=3)
            return
        except AssertionError:
            continue
    raise AssertionError("frame not delivered")


async def test_daemon_process_survives_truncated_memory(tmp_path: Path) -> None:
    args: list[str] = []
    for name in ("bad", "good", "peer"):
        sock = tmp_path / f"{name}.sock"
        args += ["-chardev", f"socket,id=c{name},path={sock},server=on,wait=off"]
        args += ["-netdev", f"vhost-user,id={name},chardev=c{name}"]
        args += ["-netdev", f"hubport,id=h{name},hubid=0,netdev={name}"]
    with running_daemon(tmp_path, args) as daemon:
        qmp = QMPClient("t")
        await qmp.connect(str(daemon.qmp))
        fes: list[Any] = []
        try:
            for name in ("good", "peer", "bad"):
                fe = await fe_tool.VhostUserFrontend.connect(str(tmp_path / f"{name}.sock"))
                fes.append(fe)
                await fe.start()
            good, peer, bad = fes
            await fe_exchange(good, peer)
            await fe_exchange(bad, peer)
            # bad: a frame queued, the memory cut to 4 KiB, then kicks and frames toward it
            bad.tx[0].send([FRAME], kick=False)
            fe_tool.damage(bad.mem.regions[0], "truncate_4k")
            for _ in range(3):
                bad.kick(1)
                peer.tx[0].send([FRAME])
                await asyncio.sleep(0.2)
            assert_alive(daemon)

            async def faulted() -> bool:
                return (await qmp_counters(qmp, "bad"))["memory-faults"] == 1

            for _ in range(50):
                if await faulted():
                    break
                await asyncio.sleep(0.1)
            counters = await qmp_counters(qmp, "bad")
            assert counters["memory-faults"] == 1 and counters["rings-running"] == 0, counters
            await fe_exchange(good, peer)
            await fe_exchange(peer, good)
            version = await qmp.execute("query-version")
            assert "qemu" in version, version  # type: ignore[operator]
            assert (await qmp_counters(qmp, "good"))["memory-faults"] == 0
        finally:
            for fe in fes:
                fe.close()
            await qmp.disconnect()
        assert_alive(daemon)
    assert daemon.proc.returncode == 0, (daemon.proc.returncode, daemon.output())
    log = daemon.output()
    assert log.count(STOP_LINE) == 1, log
    assert "faulted" in log and "bad" in log, log
    assert "Traceback" not in log, log
