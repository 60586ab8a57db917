"""DPDK testpmd's virtio-user with ``packed_vq=1`` (DPDK 22.11, Debian ``dpdk-dev``) as the
packed-ring front end of netstack's vhost-user back end: a second peer, independent of
QEMU and Linux's virtio driver (its own packed-ring driver, IN_ORDER and MRG_RXBUF on, no
EVENT_IDX). Same scenarios as ``test_vhost_user_dpdk.py`` on packed rings, plus two queue
pairs; each checks that VIRTIO_F_RING_PACKED was negotiated and that no ring broke. Every
test runs with the compiled ring loops and with the pure-Python ones.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import drivers.vhost_user as vu
from drivers.vhost_user.features import F_IN_ORDER, F_RING_PACKED
from drivers.vhost_user.packed import PackedQueue
from netstack.daemon import Netstack
from netstack.net.client import NetClient
from netstack.qapi import parse_chardev_cli, parse_netdev_cli
from tests.interop.test_vhost_user_dpdk import (
    DpdkTestpmd,
    ns,
    port,
    ring_impl,
    until,
    virtio_user,
)
from tests.support import Recorder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
__all__ = ["ns", "ring_impl"]  # the fixtures, re-used (ring_impl: autouse, both loops)

FRAME = b"\x02" * 6 + b"\x02\x00\x00\x00\x00\x07" + b"\x88\xb5" + bytes(50)


def packed(path: Path, index: int = 0, queues: int = 1) -> str:
    return virtio_user(path, index, queues) + ",packed_vq=1"


def assert_packed(nc: NetClient) -> None:
    assert isinstance(nc, vu.VhostUserClient)
    device = nc.netdev.device
    assert device.has(F_RING_PACKED) and device.has(F_IN_ORDER), hex(device.features)
    assert all(isinstance(q, PackedQueue) for q in device.queues)
    c = nc.counters()
    assert c["rings-broken"] == 0 and c["requests-refused"] == 0, c


async def test_packed_txonly_frames_reach_the_hub(ns: Netstack, tmp_path: Path) -> None:
    path, nc = await port(ns, "t0", tmp_path)
    rec = Recorder("rec", capacity=2000)
    ns.hub(0).add_port("hrec").connect(rec)
    pmd = DpdkTestpmd([packed(path)], "txonly", workdir=tmp_path)
    await pmd.start()
    try:
        await until(lambda: len(rec.got) >= 2000, 30)
        assert_packed(nc)
    finally:
        await pmd.stop()
    stats = pmd.forward_stats()
    assert stats[0]["tx"] > 0, pmd.output[-3000:]
    assert nc.stats.tx_frames >= stats[0]["tx"] - 256
    assert len(rec.got[0]) == 64 and rec.got[0][12:14] == b"\x08\x00"


async def test_packed_rxonly_receives_every_frame_sent(ns: Netstack, tmp_path: Path) -> None:
    path, nc = await port(ns, "r0", tmp_path, hub=None)
    src = Recorder("src")
    src.connect(nc)
    pmd = DpdkTestpmd([packed(path)], "rxonly", workdir=tmp_path)
    await pmd.start()
    try:
        await pmd.wait_for("Port statistics")
        total = 20000
        loop = asyncio.get_running_loop()
        for _ in range(total // 100):
            done: asyncio.Future[None] = loop.create_future()
            if (
                src.send([FRAME] * 100, sent_cb=lambda _n, f=done: f.done() or f.set_result(None))
                < 100
            ):
                await done
            else:
                await asyncio.sleep(0)
        await until(lambda: nc.stats.rx_frames >= total, 30)
        await asyncio.sleep(1.5)  # one stats period
        assert_packed(nc)
    finally:
        await pmd.stop()
    assert nc.incoming.dropped == 0
    assert pmd.forward_stats()[0]["rx"] == nc.stats.rx_frames == total, pmd.output[-2000:]


async def test_packed_io_loop_through_the_hub(ns: Netstack, tmp_path: Path) -> None:
    pa, a = await port(ns, "pa", tmp_path)
    pb, b = await port(ns, "pb", tmp_path)
    vdevs = [packed(pa, 0), packed(pb, 1)]
    pmd = DpdkTestpmd(vdevs, "io", tx_first=4, workdir=tmp_path)
    await pmd.start()
    try:
        await until(lambda: a.stats.tx_frames > 20000 and b.stats.tx_frames > 20000, 30)
        assert_packed(a)
        assert_packed(b)
    finally:
        await pmd.stop()
    stats = pmd.forward_stats()
    assert stats[0]["rx"] > 10000 and stats[1]["rx"] > 10000, pmd.output[-3000:]
    assert abs(a.stats.tx_frames - b.stats.rx_frames) <= 512
    assert abs(b.stats.tx_frames - a.stats.rx_frames) <= 512


async def test_packed_two_queue_pairs(ns: Netstack, tmp_path: Path) -> None:
    """Multiqueue: testpmd transmits on both pairs of a two-pair port (``queues=2``)."""
    path = tmp_path / "mq.sock"
    await ns.chardev_add(
        parse_chardev_cli(f"socket,id=cmq,path={path},server=on,wait=off"), from_cli=True
    )
    clients = await ns.netdev_add(parse_netdev_cli("vhost-user,id=mq,chardev=cmq,queues=2"))
    await ns.netdev_add(parse_netdev_cli("hubport,id=hmq,hubid=0,netdev=mq"))
    rec = Recorder("rec", capacity=20000)
    ns.hub(0).add_port("hrec").connect(rec)
    pmd = DpdkTestpmd(
        [packed(path, 0, queues=2)], "txonly", workdir=tmp_path, extra=["--txq=2", "--rxq=2"]
    )
    await pmd.start()
    mq = clients[0]
    assert isinstance(mq, vu.VhostUserClient)
    device = mq.netdev.device

    def moved(pair: int) -> bool:
        q = device.tx_queue(pair)
        return isinstance(q, PackedQueue) and (q.avail_slot, q.avail_wrap) != (0, 1)

    def state() -> str:
        return repr(
            (
                len(rec.got),
                [(q, getattr(q, "avail_slot", None), q.kick_fd) for q in device.queues],
                mq.netdev.counters(),
                pmd.output[-1500:],
            )
        )

    try:
        # testpmd's start-up (EAL, 256 MiB without hugepages) alone can take many seconds
        # on a loaded machine: the 30 s for traffic count from its first statistics.
        await pmd.wait_for("Port statistics", 60)
        try:
            await until(lambda: len(rec.got) >= 5000 and moved(0) and moved(1), 30)
        except AssertionError:
            raise AssertionError(f"both pairs did not move: {state()}") from None
        assert_packed(mq)
    finally:
        await pmd.stop()
    assert len(clients) == 2
