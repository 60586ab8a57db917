"""Learning hubs and their MAC table (sans-IO, manual clock): learning, ageing, flooding
only BUM, split horizon, flushes on link down / port removal / peer deletion, views, the
option rules of ``hubport``, and that NIC rx filters still apply behind a switch."""

from __future__ import annotations

from typing import Any

import pytest

from drivers import hubport
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.fdb import MacTable, learnable
from netstack.net.hub import Hub, HubPort
from netstack.net.rxfilter import RxFilter
from netstack.qapi import parse_netdev_cli
from netstack.qmp.hmp import run_hmp
from tests.support import Recorder

BCAST = b"\xff" * 6


def mac(n: int) -> bytes:
    return bytes([2, 0, 0, 0, 0, n])


def eth(dst: bytes, src: bytes, tag: int = 0) -> bytes:
    return dst + src + b"\x88\xb5" + tag.to_bytes(4, "big") + bytes(42)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Tunnel(Recorder):
    overlay = True


def switch(n: int, tunnels: int = 0, ageing: float = 300.0) -> tuple[Hub, list[Recorder], Clock]:
    clock = Clock()
    hub = Hub(0, clock)
    hub.set_learning(True, ageing)
    clients: list[Recorder] = []
    for i in range(n):
        c: Recorder = Tunnel(f"t{i}") if i >= n - tunnels else Recorder(f"c{i}")
        hub.add_port(f"p{i}").connect(c)
        clients.append(c)
    return hub, clients, clock


def test_mac_table_rules() -> None:
    t: MacTable[str] = MacTable(ageing=10, max_entries=2)
    assert not learnable(BCAST) and not learnable(bytes(6)) and learnable(mac(1))
    t.learn(BCAST, "x", 0)
    t.learn(mac(1), "a", 0)
    assert t.lookup(mac(1), 5) == "a"
    t.learn(mac(1), "b", 6)
    assert t.lookup(mac(1), 6) == "b" and t.moves == 1
    t.learn(mac(2), "a", 6)
    t.learn(mac(3), "a", 6)  # full: not learned
    assert t.full_drops == 1 and t.lookup(mac(3), 6) is None
    assert t.lookup(mac(1), 16.5) is None  # aged
    t.learn(mac(3), "c", 17)  # a sweep makes room
    assert t.lookup(mac(3), 17) == "c" and len(t) == 1
    t.add_static(mac(9), "s")
    t.learn(mac(9), "z", 18)
    assert t.lookup(mac(9), 1e9) == "s"
    assert t.flush() == 1 and len(t) == 1  # statics stay
    assert t.flush(static=True) == 1 and len(t) == 0
    off: MacTable[str] = MacTable(ageing=0)
    off.learn(mac(1), "a", 0)
    assert len(off) == 0


def test_unknown_floods_then_known_unicast_goes_to_one_port() -> None:
    hub, (a, b, c, d), _ = switch(4)
    a.send([eth(mac(2), mac(1))])  # unknown: flooded
    assert [len(x.got) for x in (a, b, c, d)] == [0, 1, 1, 1]
    b.send([eth(mac(1), mac(2))])  # a is known: only a
    assert [len(x.got) for x in (a, b, c, d)] == [1, 1, 1, 1]
    a.send([eth(mac(2), mac(1), 7)] * 10)  # b is known now
    assert [len(x.got) for x in (a, b, c, d)] == [1, 11, 1, 1]
    ctr = hub.counters
    assert ctr.frames_in == 12 and ctr.deliveries == 3 + 1 + 10 and ctr.unicast == 11
    a.send([eth(BCAST, mac(1)), eth(b"\x01\x00\x5e\x00\x00\x01", mac(1))])  # BUM floods
    assert [len(x.got) for x in (a, b, c, d)] == [1, 13, 3, 3]


def test_frame_to_its_own_port_is_filtered_and_order_is_kept() -> None:
    hub, (a, b, c), _ = switch(3)
    a.send([eth(BCAST, mac(1))])
    c.send([eth(BCAST, mac(3))])
    a.send([eth(mac(1), mac(11))])  # mac(1) lives behind a: not sent back
    assert hub.counters.filtered == 1
    b.got.clear()
    batch = [eth(mac(3), mac(1), 1), eth(BCAST, mac(1), 2), eth(mac(3), mac(1), 3)]
    a.send(batch)
    assert c.got[-3:] == batch  # unicast and flood mixed, in input order
    assert b.got == [batch[1]]


def test_ageing_floods_again_and_moves_follow_the_station() -> None:
    hub, (a, b, c), clock = switch(3, ageing=10)
    b.send([eth(BCAST, mac(2))])
    a.got.clear()
    c.got.clear()
    a.send([eth(mac(2), mac(1))])
    assert len(c.got) == 0 and len(b.got) == 1
    c.send([eth(BCAST, mac(2))])  # the station moved behind c
    a.send([eth(mac(2), mac(1))])
    assert len(c.got) == 1 and len(b.got) == 2  # b saw the broadcast only
    assert hub.fdb is not None and hub.fdb.moves == 1
    clock.now += 11
    a.send([eth(mac(2), mac(1))])
    assert len(c.got) == 2 and len(b.got) == 3  # aged out: flooded


def test_split_horizon_between_tunnel_ports() -> None:
    hub, (g, t1, t2), _ = switch(3, tunnels=2)
    ports = {p.name: p for p in hub.ports}
    assert ports["p1"].isolated and ports["p2"].isolated and not ports["p0"].isolated
    t1.send([eth(BCAST, mac(21))])  # from the overlay: to the guest only
    assert len(g.got) == 1 and t2.got == []
    g.send([eth(BCAST, mac(1))])  # from the guest: to both tunnels
    assert len(t1.got) == len(t2.got) == 1
    t2.send([eth(BCAST, mac(22))])
    t1.send([eth(mac(22), mac(21))])  # known behind another tunnel: never re-tunnelled
    assert len(t2.got) == 1 and hub.counters.horizon == 1
    ports["p1"].isolated_opt = False  # configured explicitly
    t1.send([eth(mac(22), mac(21))])
    assert len(t2.got) == 2


def test_three_switches_in_a_full_mesh_do_not_loop() -> None:
    """Three learning hubs joined pairwise by 'tunnels' (peered overlay clients)."""
    hubs = [Hub(i) for i in range(3)]
    guests = []
    for h in hubs:
        h.set_learning(True)
        g = Recorder(f"g{h.id}")
        h.add_port().connect(g)
        guests.append(g)
    links = []
    for i, j in ((0, 1), (1, 2), (0, 2)):
        x, y = Tunnel(f"t{i}{j}"), Tunnel(f"t{j}{i}")
        hubs[i].add_port().connect(x)
        hubs[j].add_port().connect(y)
        links.append((x, y))

    def pump() -> int:
        moved = 0
        for _ in range(20):
            step = 0
            for x, y in links:
                for src, dst in ((x, y), (y, x)):
                    if src.got:
                        frames, src.got = src.got, []
                        dst.send(frames)
                        step += len(frames)
            moved += step
            if not step:
                return moved
        raise AssertionError("frames still circulating: a loop")

    guests[0].send([eth(BCAST, mac(1))])
    assert pump() == 2  # one copy per tunnel to the others, none further
    assert len(guests[1].got) == len(guests[2].got) == 1
    guests[2].send([eth(mac(1), mac(3))])
    assert pump() == 1 and len(guests[0].got) == 1 and guests[1].got[1:] == []


def test_flush_on_link_down_and_on_port_removal() -> None:
    hub, (a, b, c), _ = switch(3)
    for i, x in enumerate((a, b, c)):
        x.send([eth(BCAST, mac(i + 1))])
    assert hub.fdb is not None and len(hub.fdb) == 3
    port_b = b.peer
    assert isinstance(port_b, HubPort)
    b.link_down = True
    port_b.link_status_changed()
    assert {r["mac"] for r in hub.fdb_rows()} == {"02:00:00:00:00:01", "02:00:00:00:00:03"}
    port_c = c.peer
    assert isinstance(port_c, HubPort)
    hub.remove_port(port_c)
    assert [r["port"] for r in hub.fdb_rows()] == ["p0"]


def test_nic_rx_filter_still_applies_behind_the_switch() -> None:
    hub, (a, _b), _ = switch(2)
    nic = Recorder("nic")
    rx = RxFilter(mac(5))
    rx.program(rx_modes={"promisc": False})  # as a guest driver sets it up
    nic.rx_filter = rx
    hub.add_port("pn").connect(nic)
    a.send([eth(mac(6), mac(1))])  # unknown unicast to another MAC: flooded, filtered
    assert nic.got == [] and nic.stats.rx_filtered == 1
    a.send([eth(mac(5), mac(1))])
    assert len(nic.got) == 1


def test_vnet_frames_are_switched_on_their_ethernet_header() -> None:
    hub, (_a, b, c), _ = switch(3)
    a_v = Recorder("av", accepts_vnet=True)
    b.send([eth(BCAST, mac(2))])
    port = hub.add_port("pv")
    port.connect(a_v)
    c.got.clear()
    a_v.send([bytes(12) + eth(mac(2), mac(7))], vnet=True)
    assert len(b.got) == 1 and c.got == []
    a_v.send([bytes(10)], vnet=True)
    assert hub.counters.malformed == 1


async def test_hubport_options_views_and_deletion_flush() -> None:
    ns = Netstack({"hubport": hubport.SPEC})

    async def add(spec: str) -> Any:
        return await ns.netdev_add(parse_netdev_cli(spec))

    await add("hubport,id=h0,hubid=1,x-learning=on,x-ageing=60")
    await add("hubport,id=h1,hubid=1,x-isolated=on")
    hub = ns.hub(1)
    assert hub.learning and hub.fdb is not None and hub.fdb.ageing == 60
    with pytest.raises(GenericError, match="hub 1 is a learning switch"):
        await add("hubport,id=h2,hubid=1,x-learning=off")
    with pytest.raises(GenericError, match="hub 1 has ageing time 60"):
        await add("hubport,id=h2,hubid=1,x-ageing=5")
    await add("hubport,id=r0,hubid=2")
    with pytest.raises(GenericError, match="hub 2 is a repeater"):
        await add("hubport,id=r1,hubid=2,x-learning=on")
    with pytest.raises(GenericError, match="x-ageing needs a learning hub"):
        await add("hubport,id=r1,hubid=2,x-ageing=5")
    a, b = Recorder("a"), Recorder("b")
    ports = {p.name: p for p in hub.ports}
    ports["h0"].connect(a)
    ports["h1"].connect(b)
    ns.add_client(a)
    ns.add_client(b)
    a.send([eth(BCAST, mac(1))])
    b.send([eth(BCAST, mac(2))])
    rows = ns.query_hub_fdb(1)
    assert {(r["mac"], r["port"], r["peer"], r["isolated"]) for r in rows} == {
        ("02:00:00:00:00:01", "h0", "a", False),
        ("02:00:00:00:00:02", "h1", "b", True),
    }
    assert ns.query_hub_fdb(2) == []
    with pytest.raises(GenericError, match="hub 7 not found"):
        ns.query_hub_fdb(7)
    text = await run_hmp(ns, "info fdb")
    assert "hub 1: learning switch, ageing 60s, 2 entries" in text
    assert " 02:00:00:00:00:02 port h1 (b) isolated age 0.0s" in text
    assert "hub 2: repeater" in text
    ns.netdev_del("b")  # the peer goes away: its MAC is forgotten
    assert [r["mac"] for r in ns.query_hub_fdb(1)] == ["02:00:00:00:00:01"]
    ns.set_link("h0", False)
    assert ns.query_hub_fdb(1) == []
    await ns.close()


def test_a_lone_port_releases_its_queue_when_a_second_port_arrives() -> None:
    hub = Hub(0)
    src = Recorder("src")
    hub.add_port("p0").connect(src)
    done: list[int] = []
    assert src.send([eth(BCAST, mac(1))], sent_cb=done.append) == 0  # nowhere to go yet
    dst = Recorder("dst")
    hub.add_port("p1").connect(dst)
    assert done == [1]
