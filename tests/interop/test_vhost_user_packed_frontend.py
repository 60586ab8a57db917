"""The Python front end's packed rings (``tools/vhost_user_frontend``) against netstackd's
packed rings, through a hub: byte-exact exchanges with multi-descriptor transmit chains,
indirect tables and mergeable receive buffers, two queue pairs, and interrupts driven by
the driver event suppression area with EVENT_IDX. (Each side is also checked against an
independent peer: ``test_vhost_user_packed_dpdk.py`` and
``test_vhu_frontend_packed_dpdk.py``.) Every test runs with the compiled ring loops and
with the pure-Python ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import drivers.vhost_user as vu
from drivers import hubport
from drivers.vhost_user.packed import PackedQueue as DevicePackedQueue
from netstack.daemon import Netstack
from netstack.qapi import parse_chardev_cli, parse_netdev_cli
from tests.interop.test_vhu_frontend_dpdk import _exchange, _frames
from tests.kit.vhost_user import RING_IMPLS, use_ring_impl
from tools.vhost_user_frontend.frontend import FrontendConfig, VhostUserFrontend
from tools.vhost_user_frontend.packed import PACKED_DTYPE, PackedQueue
from tools.vhost_user_frontend.session import PACKED_FEATURES
from tools.vhost_user_frontend.traffic import udp_frame
from tools.vhost_user_frontend.virtqueue import DESC_F_INDIRECT

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True, params=RING_IMPLS)
def ring_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    use_ring_impl(monkeypatch, request.param)
    return str(request.param)


@pytest.fixture
async def ns(tmp_path: Path) -> AsyncIterator[Netstack]:
    daemon = Netstack({"vhost-user": vu.SPEC, "hubport": hubport.SPEC}, runtime_dir=tmp_path)
    yield daemon
    await daemon.close()


async def port(ns: Netstack, tmp: Path, name: str, queues: int = 1) -> str:
    path = tmp / f"{name}.sock"
    await ns.chardev_add(
        parse_chardev_cli(f"socket,id=c{name},path={path},server=on,wait=off"), from_cli=True
    )
    await ns.netdev_add(parse_netdev_cli(f"vhost-user,id={name},chardev=c{name},queues={queues}"))
    await ns.netdev_add(parse_netdev_cli(f"hubport,id=h{name},hubid=0,netdev={name}"))
    return str(path)


def packed_device(ns: Netstack, name: str) -> bool:
    nc = ns.find_netdev(name)
    assert isinstance(nc, vu.VhostUserClient)
    c = nc.counters()
    assert c["rings-broken"] == 0 and c["requests-refused"] == 0, c
    return all(isinstance(q, DevicePackedQueue) for q in nc.netdev.device.queues)


async def test_packed_frontends_exchange_byte_exact(ns: Netstack, tmp_path: Path) -> None:
    pa, pb = await port(ns, tmp_path, "a"), await port(ns, tmp_path, "b")
    a = await VhostUserFrontend.connect(
        pa, FrontendConfig(rx_buf_size=512, features=PACKED_FEATURES)
    )
    b = await VhostUserFrontend.connect(
        pb, FrontendConfig(tx_slot_size=512, features=PACKED_FEATURES, queue_size=100)
    )
    async with a, b:
        await a.start()
        await b.start()
        assert all(isinstance(vq, PackedQueue) for vq in (*a.vqs, *b.vqs))
        assert packed_device(ns, "a") and packed_device(ns, "b")
        fa, fb = _frames(3, 600), _frames(4, 600)
        got_a, got_b = await _exchange(a, b, fa, fb)
        assert got_b == fa  # b's RX: whole frames in 2048-byte buffers
        assert got_a == fb  # a's RX: merged over 512-byte buffers; b's TX: 512-byte chains
        assert a.rx[0].bad_frames == b.rx[0].bad_frames == 0
        assert a.vqs[1].bad_used == b.vqs[1].bad_used == 0
        assert packed_device(ns, "a") and packed_device(ns, "b")


async def test_packed_indirect_and_two_queue_pairs(ns: Netstack, tmp_path: Path) -> None:
    pa, pb = await port(ns, tmp_path, "a", queues=2), await port(ns, tmp_path, "b")
    cfg = FrontendConfig(queue_pairs=2, indirect_max=4, features=PACKED_FEATURES)
    a = await VhostUserFrontend.connect(pa, cfg)
    b = await VhostUserFrontend.connect(pb, FrontendConfig(features=PACKED_FEATURES))
    async with a, b:
        await a.start()
        await b.start()
        assert a.mem is not None and len(a.vqs) == 4
        got: list[bytes] = []
        loop = asyncio.get_running_loop()
        for pair in (0, 1):
            frame = udp_frame(300, fill=0x30 + pair)
            data = bytes(a.hdr_len) + frame
            gpa = a.mem.alloc(len(data), 64)
            a.mem.write(gpa, data)
            cut = a.hdr_len + 100
            tx = a.tx[pair]
            vq = tx.vq
            (head,) = tx.take_descriptors(1)
            table = a.mem.alloc(32, 16)
            entries = a.mem.array(table, PACKED_DTYPE, 2)
            entries[0] = (gpa, cut, 0, 0)
            entries[1] = (gpa + cut, len(data) - cut, 0, 0)
            vq.write_desc(head, table, 32, DESC_F_INDIRECT)
            tx.adopt_chain([head])
            vq.push([head])
            vq.publish()
            a.kick(2 * pair + 1)
            end = loop.time() + 10
            while len(got) <= pair and loop.time() < end:
                got += [f.data for f in b.rx[0].receive()]
                await asyncio.sleep(0.01)
            assert got[pair] == frame
            while tx.reclaim() == 0 and loop.time() < end:
                await asyncio.sleep(0.01)
        assert packed_device(ns, "a")


async def test_packed_event_idx_interrupts(ns: Netstack, tmp_path: Path) -> None:
    """With interrupts on, the driver area asks (EVENT_IDX: the next used slot) and the
    device calls; with them off (DISABLE) it stays quiet."""
    pa, pb = await port(ns, tmp_path, "a"), await port(ns, tmp_path, "b")
    a = await VhostUserFrontend.connect(pa, FrontendConfig(features=PACKED_FEATURES))
    b = await VhostUserFrontend.connect(
        pb, FrontendConfig(features=PACKED_FEATURES, interrupts=True)
    )
    async with a, b:
        await a.start()
        await b.start()
        assert b.vqs[0].event_idx
        a.tx[0].send([udp_frame(64)])
        assert await b.wait_call(0, 10.0)
        assert len(b.rx[0].receive()) == 1
        b.vqs[0].set_interrupts(False)
        a.tx[0].send([udp_frame(64)])
        assert not await b.wait_call(0, 0.5)
        assert len(b.rx[0].receive()) == 1
