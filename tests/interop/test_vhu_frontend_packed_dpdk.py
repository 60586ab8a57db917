"""The Python front end's packed rings (``tools/vhost_user_frontend/packed.py``) against an
independent packed-ring back end: DPDK's vhost PMD inside ``dpdk-testpmd`` (Debian
``dpdk-dev``). What DPDK's vhost library accepts and completes validates our driver side
the way DPDK testpmd's virtio-user validates netstackd's device side.

* rxonly: every frame our TX queue sends is counted by testpmd over many laps of the ring,
  also starting mid-ring; GET_VRING_BASE returns our next slot and wrap counter;
* txonly: testpmd's frames arrive in our RX queue, with and without mergeable buffers;
* io with two ports: our two front ends exchange frames byte-exact, one with 512-byte TX
  slots (frames as chains of up to three descriptors) and 512-byte mergeable RX buffers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.interop.test_vhu_frontend_dpdk import _exchange, _frames, vhost
from tests.kit.polling import until
from tools.vhost_user_frontend import testpmd
from tools.vhost_user_frontend.frontend import FrontendConfig, VhostUserFrontend
from tools.vhost_user_frontend.packed import PackedQueue
from tools.vhost_user_frontend.protocol import Feature, bit, has
from tools.vhost_user_frontend.session import PACKED_FEATURES
from tools.vhost_user_frontend.testpmd import Testpmd
from tools.vhost_user_frontend.traffic import udp_frame

pytestmark = [
    pytest.mark.skipif(not testpmd.available(), reason="dpdk-testpmd missing (dpdk-dev)"),
    pytest.mark.timeout(240),
]


@pytest.mark.parametrize("ring_base", [0, 200], ids=["base0", "mid-ring"])
async def test_packed_tx_counted_by_testpmd(tmp_path: Path, ring_base: int) -> None:
    sock = tmp_path / "vhost.sock"
    tp = Testpmd([vhost(sock)], "rxonly", wait_for=[sock], workdir=str(tmp_path))
    await tp.start()
    try:
        cfg = FrontendConfig(queue_size=256, ring_base=ring_base, features=PACKED_FEATURES)
        async with await VhostUserFrontend.connect(str(sock), cfg) as fe:
            await fe.start()
            assert has(fe.session.acked, Feature.RING_PACKED)
            assert isinstance(fe.vqs[1], PackedQueue)
            tx = fe.tx[0]
            plan = [udp_frame(64)] * 3000 + [udp_frame(1500, fill=0xA5)] * 2000
            sent = 0
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            while sent < len(plan) and loop.time() < end:
                sent += tx.send(plan[sent : sent + 64])
                if sent < len(plan):
                    await asyncio.sleep(0)
            vq = fe.vqs[1]
            assert isinstance(vq, PackedQueue)
            state = (sent, vq.broken, vq.bad_used, vq.in_flight, vq.last_used, vq.used_wrap)
            assert sent == len(plan), (state, vq.ring[:8], tp.output[-1500:])
            await until(lambda: tx.reclaim() >= 0 and tx.completed == len(plan))
            bases = await fe.stop()
            end = ring_base + len(plan)
            assert bases[1] & 0xFFFF == end % 256 | (1 ^ (end // 256) % 2) << 15
            assert fe.vqs[1].bad_used == 0
        nic = await tp.wait_stats(0, rx_packets=len(plan))
    finally:
        stats = await tp.stop()
        tp.cleanup()
    assert stats[0].rx_packets == len(plan), tp.output[-2000:]
    assert nic is not None and nic.rx_bytes == 3000 * 64 + 2000 * 1500


@pytest.mark.parametrize("mergeable", [True, False], ids=["mrg", "no-mrg"])
async def test_packed_testpmd_txonly_arrives(tmp_path: Path, mergeable: bool) -> None:
    sock = tmp_path / "vhost.sock"
    tp = Testpmd([vhost(sock)], "txonly", txpkts=64, wait_for=[sock], workdir=str(tmp_path))
    await tp.start()
    feats = PACKED_FEATURES if mergeable else PACKED_FEATURES & ~bit(Feature.MRG_RXBUF)
    frames: list[bytes] = []
    try:
        fe = await VhostUserFrontend.connect(str(sock), FrontendConfig(features=feats))
        async with fe:
            await fe.start()
            assert isinstance(fe.vqs[0], PackedQueue)
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.0
            while loop.time() < end:
                frames += [f.data for f in fe.rx[0].receive()]
                await asyncio.sleep(0)
            stats = await tp.stop()
            end = loop.time() + 0.3
            while loop.time() < end:
                frames += [f.data for f in fe.rx[0].receive()]
                await asyncio.sleep(0.01)
            assert fe.rx[0].bad_frames == 0 and fe.vqs[0].bad_used == 0
    finally:
        await tp.stop()
        tp.cleanup()
    assert len(frames) > 1000
    assert len(frames) == stats[0].tx_packets
    assert {len(f) for f in frames} == {64}


async def test_packed_two_frontends_exchange_byte_exact(tmp_path: Path) -> None:
    s0, s1 = tmp_path / "p0.sock", tmp_path / "p1.sock"
    tp = Testpmd(
        [vhost(s0), vhost(s1, "net_vhost1")], "io", wait_for=[s0, s1], workdir=str(tmp_path)
    )
    await tp.start()
    try:
        a = await VhostUserFrontend.connect(
            str(s0), FrontendConfig(rx_buf_size=512, features=PACKED_FEATURES)
        )
        b = await VhostUserFrontend.connect(
            str(s1), FrontendConfig(tx_slot_size=512, features=PACKED_FEATURES)
        )
        async with a, b:
            await a.start()
            await b.start()
            assert all(isinstance(vq, PackedQueue) for vq in (*a.vqs, *b.vqs))
            fa, fb = _frames(1, 600), _frames(2, 600)
            got_a, got_b = await _exchange(a, b, fa, fb)
            assert got_b == fa
            assert got_a == fb
            assert a.rx[0].bad_frames == b.rx[0].bad_frames == 0
            assert a.vqs[1].bad_used == b.vqs[1].bad_used == 0
    finally:
        stats = await tp.stop()
        tp.cleanup()
    assert stats[0].rx_packets == stats[1].tx_packets == 600
