"""The vhost-user netdev in a daemon, driven over its unix socket by the test front end:
option checks with QEMU's texts, connection life (events, link, reconnect), frames through a
hub, backpressure, MAC learning and the rx filter, multiqueue, hostile rings and protocol
errors (the daemon keeps serving every other port)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import drivers.vhost_user as vu
from drivers import hubport
from drivers.vhost_user import protocol as vp
from drivers.vhost_user.virtqueue import DESC_F_NEXT
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.qapi import Netdev, NetdevVhostUserOptions, parse_chardev_cli, parse_netdev_cli
from tests.kit.polling import until
from tests.kit.vhost_user import GuestSetup, SocketFrontend, msg, state, u64
from tests.support import Recorder, frame

pytestmark = pytest.mark.timeout(60)


class Daemon:
    def __init__(self, ns: Netstack, tmp: Path) -> None:
        self.ns = ns
        self.tmp = tmp
        self.events: list[tuple[str, Any]] = []
        ns.add_listener(lambda name, data: self.events.append((name, data)))

    async def port(self, name: str, hub: int | None = 0, extra: str = "") -> str:
        path = str(self.tmp / f"{name}.sock")
        await self.ns.chardev_add(
            parse_chardev_cli(f"socket,id=c-{name},path={path},server=on,wait=off"), from_cli=True
        )
        await self.ns.netdev_add(parse_netdev_cli(f"vhost-user,id={name},chardev=c-{name}{extra}"))
        if hub is not None:
            await self.ns.netdev_add(
                parse_netdev_cli(f"hubport,id=hp-{name},hubid={hub},netdev={name}")
            )
        return path

    def recorder(self, hub: int = 0) -> Recorder:
        rec = Recorder(f"rec{hub}")
        self.ns.hub(hub).add_port(f"hp-rec{hub}").connect(rec)
        return rec

    def client(self, name: str, queue: int = 0) -> vu.VhostUserClient:
        for nc in self.ns.clients:
            if nc.name == name and nc.queue_index == queue:
                assert isinstance(nc, vu.VhostUserClient)
                return nc
        raise KeyError(name)


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    ns = Netstack({"vhost-user": vu.SPEC, "hubport": hubport.SPEC}, runtime_dir=tmp_path)
    try:
        yield Daemon(ns, tmp_path)
    finally:
        await ns.close()


async def attach(path: str, guest: GuestSetup) -> SocketFrontend:
    fe = await SocketFrontend.connect(path)
    await fe.start(guest)
    return fe


# -- options -----------------------------------------------------------------------------------


async def test_chardev_checks_use_qemu_texts(daemon: Daemon) -> None:
    ns = daemon.ns
    with pytest.raises(GenericError, match='chardev "nope" not found'):
        await ns.netdev_add(parse_netdev_cli("vhost-user,id=v0,chardev=nope"))
    await ns.chardev_add(parse_chardev_cli("ringbuf,id=rb"), from_cli=True)
    with pytest.raises(GenericError, match='chardev "rb" is not reconnectable'):
        await ns.netdev_add(parse_netdev_cli("vhost-user,id=v0,chardev=rb"))
    await ns.chardev_add(
        parse_chardev_cli("socket,id=tcp,host=127.0.0.1,port=0,server=on,wait=off"), from_cli=True
    )
    with pytest.raises(GenericError, match='chardev "tcp" does not support FD passing'):
        await ns.netdev_add(parse_netdev_cli("vhost-user,id=v0,chardev=tcp"))
    path = daemon.tmp / "q.sock"
    await ns.chardev_add(
        parse_chardev_cli(f"socket,id=u,path={path},server=on,wait=off"), from_cli=True
    )
    for bad in (0, 1025):
        with pytest.raises(GenericError, match=r"must be in range \[1, 1024\]"):
            await ns.netdev_add(parse_netdev_cli(f"vhost-user,id=v0,chardev=u,queues={bad}"))
    await ns.netdev_add(parse_netdev_cli("vhost-user,id=v0,chardev=u,queues=2"))
    assert [nc.info_str for nc in ns.clients] == ["vhost-user0 to u", "vhost-user1 to u"]
    with pytest.raises(GenericError, match="Device 'u' is in use"):
        await ns.netdev_add(parse_netdev_cli("vhost-user,id=v1,chardev=u"))
    assert ns.chardevs.get("u").busy  # type: ignore[union-attr]
    ns.netdev_del("v0")
    assert not ns.chardevs.get("u").busy  # type: ignore[union-attr]
    assert "v0" not in ns.info_network()


# -- connection life ---------------------------------------------------------------------------


async def test_connect_events_link_and_reconnect(daemon: Daemon) -> None:
    path = await daemon.port("vm0")
    nc = daemon.client("vm0")
    assert nc.link_down
    for round_ in range(2):
        guest = GuestSetup(num=64)
        try:
            fe = await attach(path, guest)
            await until(lambda: nc.netdev.device.queues[1].ready)
            assert not nc.link_down
            assert daemon.events[-1] == (
                "NETDEV_VHOST_USER_CONNECTED",
                {"netdev-id": "vm0", "chardev-id": "c-vm0"},
            )
            assert nc.counters()["connections"] == round_ + 1
            fe.close()
            await until(lambda: nc.link_down)
            assert daemon.events[-1] == ("NETDEV_VHOST_USER_DISCONNECTED", {"netdev-id": "vm0"})
            assert len(nc.netdev.device.mem) == 0 and nc.netdev.session is None
        finally:
            guest.close()


async def test_frames_cross_a_hub_between_two_guests(daemon: Daemon) -> None:
    pa = await daemon.port("a")
    pb = await daemon.port("b")
    rec = daemon.recorder()
    ga, gb = GuestSetup(num=64), GuestSetup(num=64)
    try:
        fa, fb = await attach(pa, ga), await attach(pb, gb)
        gb.post_rx_buffers(32)
        gb.kick(0)
        frames = [frame(i, size=100 + i, dst=b"\x02" * 6) for i in range(20)]
        ga.send_frames(frames)
        ga.kick(1)
        await until(lambda: len(rec.got) == 20)
        assert rec.got == frames
        got: list[bytes] = []
        await until(lambda: got.extend(f for _h, f in gb.received()) or len(got) == 20)
        assert got == frames
        assert gb.calls_pending(0) >= 1  # the guest was interrupted
        # the other way round
        ga.post_rx_buffers(8)
        gb.send_frames([frame(99)])
        gb.kick(1)
        await until(lambda: ga.rings[0].used_idx == 1)
        assert [f for _h, f in ga.received()] == [frame(99)]
        st = daemon.client("a").stats
        assert st.tx_frames == 20 and st.rx_frames == 1
        fa.close()
        fb.close()
    finally:
        ga.close()
        gb.close()


async def test_backpressure_queues_until_the_guest_posts_buffers(daemon: Daemon) -> None:
    pa = await daemon.port("a")
    ga = GuestSetup(num=64)
    try:
        fa = await attach(pa, ga)
        rec = daemon.recorder()
        await until(lambda: daemon.client("a").netdev.device.rx_ready(0))
        frames = [frame(i) for i in range(10)]
        rec.send(frames[:4])
        rec.send(frames[4:])
        nc = daemon.client("a")
        queued = len(nc.incoming) + sum(len(p.incoming) for p in daemon.ns.hub(0).ports)
        assert queued == 10  # no receive buffers: the core holds the frames
        ga.post_rx_buffers(6)
        ga.kick(0)
        await until(lambda: ga.rings[0].used_idx == 6)
        ga.post_rx_buffers(10)
        ga.kick(0)
        await until(lambda: ga.rings[0].used_idx == 10)
        assert [f for _h, f in ga.received()] == frames
        assert not nc.receive_disabled and len(nc.incoming) == 0
        # disconnected: the link goes down and frames are dropped, not queued
        fa.close()
        await until(lambda: nc.link_down)
        rec.send([frame(1)])
        assert len(nc.incoming) == 0
    finally:
        ga.close()


async def test_transmit_stops_while_the_peer_queues_and_resumes_on_completion(
    daemon: Daemon,
) -> None:
    pa = await daemon.port("a", hub=None)
    nc = daemon.client("a")
    rec = Recorder("rec", capacity=2)
    nc.connect(rec)
    ga = GuestSetup(num=64)
    try:
        fa = await attach(pa, ga)
        frames = [frame(i, dst=b"\x02" * 6) for i in range(15)]
        ga.send_frames(frames[:10])
        ga.kick(1)
        await until(lambda: ga.rings[1].used_idx == 10)
        assert rec.got == frames[:2] and len(rec.incoming) == 8  # the rest waits at the peer
        ga.send_frames(frames[10:])
        ga.kick(1)
        await asyncio.sleep(0.05)  # a stopped ring stays stopped: nothing to poll for
        assert ga.rings[1].used_idx == 10 and len(rec.got) == 2
        rec.make_room(100)  # the queue delivers and calls back: passes resume
        await until(lambda: ga.rings[1].used_idx == 15)
        await until(lambda: len(rec.got) == 15)
        assert rec.got == frames and nc.stats.tx_frames == 15
        fa.close()
    finally:
        ga.close()


async def test_mac_learned_from_first_frame_and_filter_programmable(daemon: Daemon) -> None:
    pa = await daemon.port("a")
    rec = daemon.recorder()
    (info,) = daemon.ns.query_rx_filter("a")
    assert info["main-mac"] == "00:00:00:00:00:00" and info["promiscuous"] is True
    ga = GuestSetup(num=64)
    try:
        fe = await attach(pa, ga)
        src = bytes.fromhex("525400aabbcc")
        f = b"\xff" * 6 + src + b"\x08\x06" + bytes(46)
        ga.send_frames([f])
        ga.kick(1)
        await until(lambda: rec.got)
        (info,) = daemon.ns.query_rx_filter("a")
        assert info["main-mac"] == "52:54:00:aa:bb:cc"
        assert ("NIC_RX_FILTER_CHANGED", {"name": "a", "path": daemon.ns.qom_path("a")}) in (
            daemon.events
        )
        # management turns promiscuous mode off: only its MAC and broadcast get through
        daemon.ns.set_rx_filter("a", rx_modes={"promiscuous": False})
        ga.post_rx_buffers(8)
        rec.send([frame(1, dst=src), frame(2, dst=b"\x02\x00\x00\x00\x00\x09"), frame(3)])
        await until(lambda: ga.rings[0].used_idx == 2)
        assert [x for _h, x in ga.received()] == [frame(1, dst=src), frame(3)]
        assert daemon.client("a").stats.rx_filtered == 1
        fe.close()
    finally:
        ga.close()


async def test_mac_option(daemon: Daemon) -> None:
    """``mac=`` (proposed for NetdevVhostUserOptions): taken when the schema has it; a
    subclass with the member stands in for it until then."""
    text = "vhost-user,id=m,chardev=c-m,mac=52:54:00:12:34:99"
    try:
        spec = parse_netdev_cli(text)
    except GenericError:

        @dataclass(frozen=True, kw_only=True)
        class WithMac(NetdevVhostUserOptions):
            mac: str | None = None

        spec = Netdev(
            id="m", type="vhost-user", options=WithMac(chardev="c-m", mac="52:54:00:12:34:99")
        )
    path = daemon.tmp / "m.sock"
    await daemon.ns.chardev_add(
        parse_chardev_cli(f"socket,id=c-m,path={path},server=on,wait=off"), from_cli=True
    )
    await daemon.ns.netdev_add(spec)
    assert daemon.ns.query_rx_filter("m")[0]["main-mac"] == "52:54:00:12:34:99"
    # a fixed MAC is not replaced by what the guest sends
    guest = GuestSetup(num=64)
    try:
        fe = await attach(str(path), guest)
        guest.send_frames([frame(1)])  # source 02:00:00:00:00:01
        guest.kick(1)
        await until(
            lambda: daemon.client("m").stats.tx_dropped + daemon.client("m").stats.tx_frames
        )
        assert daemon.ns.query_rx_filter("m")[0]["main-mac"] == "52:54:00:12:34:99"
        fe.close()
    finally:
        guest.close()


async def test_send_rarp_learns_and_announces(daemon: Daemon) -> None:
    pa = await daemon.port("a")
    rec = daemon.recorder()
    ga = GuestSetup(num=64)
    try:
        fe = await attach(pa, ga)
        mac = bytes.fromhex("525400010203")
        await fe.send(msg(vp.SEND_RARP, mac + b"\0\0", flags=9))
        await until(lambda: rec.got)
        (rarp,) = rec.got
        assert rarp[6:12] == mac and rarp[12:14] == b"\x80\x35"
        assert daemon.ns.query_rx_filter("a")[0]["main-mac"] == "52:54:00:01:02:03"
    finally:
        ga.close()


async def test_multiqueue_pairs(daemon: Daemon) -> None:
    pa = await daemon.port("mq", extra=",queues=2")
    rec = daemon.recorder()
    guest = GuestSetup(pairs=2, num=64)
    try:
        fe = await SocketFrontend.connect(pa)
        assert await fe.send(msg(vp.GET_QUEUE_NUM)) == u64(2)
        await fe.start(guest)
        guest.send_frames([frame(1)], pair=1)  # the second pair's transmit ring
        guest.kick(3)
        await until(lambda: rec.got == [frame(1)])  # out through queue 0's hub port
        guest.post_rx_buffers(4, pair=1)
        guest.kick(2)
        daemon.client("mq", 1).receive([frame(2)], False)
        assert [f for _h, f in guest.received(pair=1)] == [frame(2)]
    finally:
        guest.close()


# -- hostile front ends ------------------------------------------------------------------------


async def test_hostile_ring_leaves_other_ports_serving(daemon: Daemon) -> None:
    pa = await daemon.port("bad")
    pb = await daemon.port("good")
    rec = daemon.recorder()
    gbad, ggood = GuestSetup(num=64), GuestSetup(num=64)
    try:
        fbad = await attach(pa, gbad)
        fgood = await attach(pb, ggood)
        ring = gbad.rings[1]
        addr = gbad.ram.alloc(64)
        ring.set_desc(0, addr, 10, DESC_F_NEXT, 1)
        ring.set_desc(1, addr, 10, DESC_F_NEXT, 0)  # a loop
        ring.publish(0)
        gbad.kick(1)
        bad = daemon.client("bad")
        await until(lambda: bad.counters()["rings-broken"] == 1)
        assert bad.stats.malformed == 1
        ggood.send_frames([frame(5)])
        ggood.kick(1)
        await until(lambda: frame(5) in rec.got)
        # the broken port's receive side still works too
        gbad.post_rx_buffers(4)
        rec.send([frame(6)])
        await until(lambda: gbad.rings[0].used_idx >= 1)
        fbad.close()
        fgood.close()
    finally:
        gbad.close()
        ggood.close()


async def test_protocol_errors_close_only_that_connection(daemon: Daemon) -> None:
    pa = await daemon.port("a")
    nc = daemon.client("a")
    fe = await SocketFrontend.connect(pa)
    fe.sock.send(struct.pack("=III", vp.GET_FEATURES, 0x2, 0))  # version 2
    await until(lambda: nc.counters()["protocol-errors"] == 1)
    with pytest.raises(ConnectionError):
        await fe.reply(vp.GET_FEATURES, timeout=2)
    fe.close()
    fe2 = await SocketFrontend.connect(pa)  # the chardev takes the next front end
    assert await fe2.send(msg(vp.GET_QUEUE_NUM)) == u64(1)
    await fe2.send(msg(vp.SET_VRING_NUM, state(0, 100)))  # refused (not a power of 2): goes on
    assert await fe2.send(msg(vp.GET_QUEUE_NUM)) == u64(1)
    fe2.close()


async def test_netdev_del_while_connected_releases_everything(daemon: Daemon) -> None:
    pa = await daemon.port("a", hub=None)
    guest = GuestSetup(num=64)
    try:
        fe = await attach(pa, guest)
        nc = daemon.client("a")
        await until(lambda: nc.netdev.device.queues[0].ready)
        daemon.ns.netdev_del("a")
        assert nc.netdev.session is None and len(nc.netdev.device.mem) == 0
        with pytest.raises(ConnectionError):
            await fe.reply(vp.GET_FEATURES, timeout=2)
        assert not daemon.ns.chardevs.get("c-a").busy  # type: ignore[union-attr]
    finally:
        guest.close()


async def test_kick_and_call_fds_that_are_not_eventfds(daemon: Daemon) -> None:
    """/dev/null or a pipe at EOF as kick fd: the ring is polled instead (no spinning, no
    dropped connection); a full pipe as call fd never blocks the daemon."""
    pa = await daemon.port("a")
    rec = daemon.recorder()
    guest = GuestSetup(num=64)
    r, w = os.pipe()
    os.close(w)  # r is at EOF: always readable, never an eventfd value
    cr, cw = os.pipe()
    with contextlib.suppress(BlockingIOError):  # fill the call pipe
        os.set_blocking(cw, False)
        while True:
            os.write(cw, bytes(65536))
    os.set_blocking(cw, True)
    try:
        fe = await SocketFrontend.connect(pa)
        for m in guest.start_messages():
            if m.request == vp.SET_VRING_KICK:
                m.close_fds()
                null = os.open(os.devnull, os.O_RDONLY)
                m.fds = [null] if m.payload[:1] == b"\0" else [os.dup(r)]
            elif m.request == vp.SET_VRING_CALL and m.payload[:1] == b"\1":
                m.close_fds()
                m.fds = [os.dup(cw)]
            await fe.send(m)
        guest.send_frames([frame(1), frame(2)])
        await until(lambda: len(rec.got) == 2)  # found by polling
        guest.post_rx_buffers(4)
        rec.send([frame(3)])
        await until(lambda: guest.rings[0].used_idx == 1)
        nc = daemon.client("a")
        assert nc.netdev.session is not None  # still connected
        fe.close()
    finally:
        for fd in (r, cr, cw):
            os.close(fd)
        guest.close()
