"""The hostile catalogues of ``tools/vhost_user_frontend`` (an independent Python front end)
against netstack's vhost-user back end.

Every broken-ring case (:data:`RING_CASES`, on split and on packed rings) and
malformed-message case (:data:`MSG_CASES`) is played by one front end on one port while a
second front end on another port of the same hub keeps exchanging frames with an
in-process peer: the daemon must stay up, keep serving the other port, never touch memory
outside what was shared (the tool's cases only *name* outside addresses) and leak no
descriptors. Ring cases that break a queue must show up in the port's counters. Split and
packed rings are played against the compiled ring loops and against the pure-Python ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import drivers.vhost_user as vu
from drivers import hubport
from netstack.daemon import Netstack
from netstack.qapi import parse_chardev_cli, parse_netdev_cli
from tests.kit.polling import open_fds, until
from tests.kit.vhost_user import use_ring_impl
from tests.support import Recorder

pytestmark = pytest.mark.timeout(120)

fe_tool = pytest.importorskip("tools.vhost_user_frontend")

BROKEN_OK = {  # cases after which a broken queue is the expected (sound) outcome
    "desc_out_of_memory", "desc_straddles_region", "desc_addr_overflow", "chain_loop",
    "chain_longer_than_queue", "next_out_of_range", "zero_length_chain", "short_header",
    "write_flag_on_tx", "indirect_without_feature", "indirect_bad_len", "indirect_zero_len",
    "indirect_out_of_memory", "indirect_nested", "indirect_with_next",
    "indirect_next_out_of_table", "head_out_of_range", "avail_idx_jump", "readonly_rx_buffer",
    "rx_out_of_memory",
}  # fmt: skip
FRAME = b"\x02\x00\x00\x00\x00\x0b" + b"\x02\x00\x00\x00\x00\x0a" + b"\x88\xb5" + bytes(50)


class Rig:
    def __init__(self, ns: Netstack, tmp: Path) -> None:
        self.ns = ns
        self.tmp = tmp
        self.rec = Recorder("rec")

    async def setup(self) -> None:
        for name in ("bad", "good"):
            path = self.tmp / f"{name}.sock"
            await self.ns.chardev_add(
                parse_chardev_cli(f"socket,id=c{name},path={path},server=on,wait=off"),
                from_cli=True,
            )
            await self.ns.netdev_add(parse_netdev_cli(f"vhost-user,id={name},chardev=c{name}"))
            await self.ns.netdev_add(parse_netdev_cli(f"hubport,id=h{name},hubid=0,netdev={name}"))
        self.ns.hub(0).add_port("hrec").connect(self.rec)

    def path(self, name: str) -> str:
        return str(self.tmp / f"{name}.sock")

    def client(self, name: str) -> vu.VhostUserClient:
        nc = self.ns.find_netdev(name)
        assert isinstance(nc, vu.VhostUserClient)
        return nc

    async def good_port_serves(self, fe: object) -> None:
        """The good port's guest sends a frame out and receives one from the peer."""
        before = len(self.rec.got)
        fe.tx[0].send([FRAME])  # type: ignore[attr-defined]
        await until(lambda: len(self.rec.got) > before)
        self.rec.send([FRAME])
        got: list[object] = []
        await until(lambda: got.extend(fe.rx[0].receive()) or bool(got))  # type: ignore[attr-defined]


@pytest.fixture
def ring_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ring loops the daemon runs: as built, or the ones named by the test."""
    impl = str(getattr(request, "param", "default"))
    if impl != "default":
        use_ring_impl(monkeypatch, impl)
    return impl


@pytest.fixture
async def rig(tmp_path: Path, ring_impl: str) -> AsyncIterator[Rig]:
    ns = Netstack({"vhost-user": vu.SPEC, "hubport": hubport.SPEC}, runtime_dir=tmp_path)
    r = Rig(ns, tmp_path)
    try:
        await r.setup()
        yield r
    finally:
        await ns.close()


@pytest.mark.parametrize(
    ("layout", "ring_impl"),
    [("split", "compiled"), ("split", "python"), ("packed", "compiled"), ("packed", "python")],
    indirect=["ring_impl"],
)
@pytest.mark.parametrize("case", sorted(fe_tool.RING_CASES))
async def test_hostile_ring_case(rig: Rig, case: str, layout: str) -> None:
    features = fe_tool.PACKED_FEATURES if layout == "packed" else fe_tool.SUPPORTED_FEATURES
    cfg = fe_tool.FrontendConfig(rx_reserve=4, indirect_max=8, queue_size=64, features=features)
    if case == "indirect_without_feature":
        cfg = fe_tool.FrontendConfig(
            rx_reserve=4,
            queue_size=64,
            features=features & ~(1 << 28),  # no INDIRECT_DESC
        )
    good_cfg = fe_tool.FrontendConfig(features=features)
    good = await fe_tool.VhostUserFrontend.connect(rig.path("good"), good_cfg)
    bad = await fe_tool.VhostUserFrontend.connect(rig.path("bad"), cfg)
    try:
        await good.start()
        await bad.start()
        await rig.good_port_serves(good)
        assert isinstance(bad.vqs[1], fe_tool.PackedQueue) == (layout == "packed")
        fe_tool.RingCrafter(bad).run(case)
        await asyncio.sleep(0.2)
        if case.startswith(("readonly_rx", "rx_")):
            rig.rec.send([FRAME])  # make the daemon look at the crafted receive buffer
            await asyncio.sleep(0.2)
        counters = rig.client("bad").counters()
        if counters["rings-broken"]:
            assert case in BROKEN_OK, f"{case} broke a ring: {counters}"
        await rig.good_port_serves(good)
    finally:
        bad.close()
        good.close()
    await until(lambda: rig.client("bad").link_down)


@pytest.mark.parametrize("case", sorted(fe_tool.MSG_CASES))
async def test_hostile_message_case(rig: Rig, case: str) -> None:
    good = await fe_tool.VhostUserFrontend.connect(rig.path("good"))
    try:
        await good.start()
        before = open_fds()
        channel = await fe_tool.Channel.connect(rig.path("bad"))
        try:
            outcome = await fe_tool.send_case(channel, case)
            for reply in outcome.replies:
                assert reply.flags == 0x5  # every answer is a well-formed reply
            if case.startswith("log_base"):  # always answered (QEMU waits): 1, refused
                assert [r.payload for r in outcome.replies] == [(1).to_bytes(8, "little")]
        finally:
            channel.close()
        await until(lambda: rig.client("bad").link_down)
        await rig.good_port_serves(good)
        assert open_fds() <= before, f"{case}: descriptors leaked"
    finally:
        good.close()


async def test_dirty_log_sized_against_the_memory_table(rig: Rig) -> None:
    """After a real handshake: a log too small for the memory table is refused (1), one
    that covers it is mapped (0); a pipe as the log is refused; the port keeps serving."""
    from tools.vhost_user_frontend.hostile_msgs import LOG_BASE, CaseContext
    from tools.vhost_user_frontend.protocol import Message, Request

    fe = await fe_tool.VhostUserFrontend.connect(rig.path("good"))
    ctx = CaseContext([], [])
    try:
        await fe.start()
        assert fe.mem is not None
        end = max(r.guest_phys_addr + r.memory_size for r in fe.mem.table())
        need = -(-end // (4096 * 8))
        need += -need % 8
        answers = []
        for size, fd in ((need // 2, ctx.sealed_memfd(need // 2)), (need, ctx.sealed_memfd(need)),
                         (need, ctx.pipe_read())):  # fmt: skip
            await fe.channel.send(Message(Request.SET_LOG_BASE, 1, LOG_BASE.pack(size, 0), (fd,)))
            answers.append((await fe.channel.recv_reply(5)).u64())
        assert answers == [1, 0, 1]
        await rig.good_port_serves(fe)
    finally:
        ctx.close()
        fe.close()
