"""The daemon's control operations: netdev_add/del, set_link, info network, rx-filter query."""

from __future__ import annotations

import pytest

from netstack.daemon import Netstack
from netstack.errors import DeviceNotFound, GenericError
from netstack.net.nic import NicClient
from netstack.qapi import check_id, netdev_from_qmp, parse_netdev_cli
from tests.support import Recorder, frame

MAC = bytes.fromhex("525400123456")


async def add(ns: Netstack, text: str) -> None:
    netdev = parse_netdev_cli(text)
    check_id(netdev.id)
    await ns.netdev_add(netdev)


async def qmp_add(ns: Netstack, args: dict[str, object]) -> None:
    netdev = netdev_from_qmp(args)
    check_id(netdev.id)
    await ns.netdev_add(netdev)


async def test_netdev_add_error_order(ns: Netstack) -> None:
    cases = [
        ({"id": "x"}, "Parameter 'type' is missing"),
        ({"type": "hubport", "hubid": 0}, "Parameter 'id' is missing"),
        ({"id": "x", "type": "nosuch"}, "Parameter 'type' does not accept value 'nosuch'"),
        ({"id": "x", "type": "hubport", "hubid": 0, "foo": 1}, "Parameter 'foo' is unexpected"),
        ({"id": "1x", "type": "hubport", "hubid": 0}, "Parameter 'id' expects an identifier"),
        ({"id": "x", "type": "nic"}, "network backend 'nic' is not compiled into this binary"),
        ({"id": "x", "type": "none"}, "network backend 'none' is not compiled into this binary"),
        (
            {"id": "x", "type": "netmap", "ifname": "n"},
            "network backend 'netmap' is not compiled into this binary",
        ),
    ]
    for args, text in cases:
        with pytest.raises(GenericError) as err:
            await qmp_add(ns, args)
        assert err.value.desc == text, args
    assert ns.clients == []


async def test_duplicate_id_and_reuse_after_delete(ns: Netstack) -> None:
    await add(ns, "hubport,id=p0,hubid=0")
    with pytest.raises(GenericError, match=r"^Duplicate ID 'p0'$"):
        await add(ns, "hubport,id=p0,hubid=1")
    ns.netdev_del("p0")
    await add(ns, "hubport,id=p0,hubid=1")


async def test_hubport_netdev_errors(ns: Netstack) -> None:
    with pytest.raises(GenericError, match=r"^netdev 'nope' not found$"):
        await add(ns, "hubport,id=p0,hubid=0,netdev=nope")
    await add(ns, "hubport,id=a,hubid=0")
    await add(ns, "hubport,id=b,hubid=1,netdev=a")
    # QEMU aborts here (assertion); netstack refuses.
    with pytest.raises(GenericError, match="it's in use"):
        await add(ns, "hubport,id=c,hubid=2,netdev=a")


async def test_netdev_del_errors(ns: Netstack) -> None:
    with pytest.raises(DeviceNotFound, match=r"^Device 'nope' not found$"):
        ns.netdev_del("nope")
    nic = NicClient("nic0", MAC)
    ns.add_client(nic)
    with pytest.raises(DeviceNotFound, match=r"^Device 'nic0' not found$"):
        ns.netdev_del("nic0")


async def test_netdev_del_in_use_keeps_nic_on_dead_backend(ns: Netstack) -> None:
    be = Recorder("be")
    be.info_str = "socket: fd=3"
    ns.add_client(be)
    nic = NicClient("nic0", MAC)
    nic.connect(be)
    ns.add_client(nic)
    assert ns.info_network() == (
        "nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\n"
        " \\ be: index=0,type=socket,socket: fd=3\n"
    )
    ns.netdev_del("be")
    assert nic.link_down and nic.link_changes == 1
    assert nic.peer is be and be.deleted and be.cleaned
    assert ns.find_netdev("be") is None
    # The NIC still shows its dead backend, as QEMU does.
    assert " \\ be: index=0,type=socket" in ns.info_network()
    # The id is free again, and the new netdev is not attached to the NIC.
    await add(ns, "hubport,id=be,hubid=0")
    assert ns.find_netdev("be") is not be and nic.peer is be


async def test_netdev_del_purges_frames_queued_at_peer(ns: Netstack) -> None:
    await add(ns, "hubport,id=a,hubid=0")
    a = ns.find_netdev("a")
    assert a is not None
    sink = Recorder("sink", capacity=1)
    a.connect(sink)
    ns.add_client(sink)
    # Frames from another port, forwarded by 'a', wait in sink's queue.
    b = ns.hub(0).add_port("b")
    src = Recorder("src")
    b.connect(src)
    src.send([frame(0), frame(1), frame(2)])
    assert sink.got == [frame(0)] and len(sink.incoming) == 2
    ns.netdev_del("a")
    assert len(sink.incoming) == 0 and sink.peer is None


async def test_set_link_matrix(ns: Netstack) -> None:
    await add(ns, "hubport,id=be,hubid=0")
    be = ns.find_netdev("be")
    assert be is not None
    nic = NicClient("nic0", MAC)
    nic.connect(be)
    ns.add_client(nic)
    with pytest.raises(DeviceNotFound, match=r"^Device 'x' not found$"):
        ns.set_link("x", False)
    # netdev off: backend and its NIC go down.
    ns.set_link("be", False)
    assert be.link_down and nic.link_down and nic.link_changes == 1
    ns.set_link("be", True)
    assert not be.link_down and not nic.link_down
    # NIC off: the backend keeps its state.
    ns.set_link("nic0", False)
    assert nic.link_down and not be.link_down
    ns.set_link("nic0", True)
    # hubport off: only that port (its peer is a hubport? no: a plain netdev peer).
    await add(ns, "hubport,id=p1,hubid=3")
    r = Recorder("r1")
    ns.find_netdev("p1").connect(r)  # type: ignore[union-attr]
    ns.set_link("p1", False)
    assert ns.find_netdev("p1").link_down and not r.link_down  # type: ignore[union-attr]
    assert r.link_changes == 1


async def test_info_network_layout(ns: Netstack) -> None:
    await add(ns, "hubport,id=hp0,hubid=1")
    await add(ns, "hubport,id=hp1,hubid=1")
    r = Recorder("s0")
    r.info_str = "socket: udp=127.0.0.1:45691"
    ns.add_client(r)
    await add(ns, "hubport,id=hp2,hubid=0,netdev=s0")
    text = ns.info_network()
    assert text == (
        "hub 0\n"
        " \\ hp2: s0: index=0,type=socket,socket: udp=127.0.0.1:45691\n"
        "hub 1\n"
        " \\ hp1\n"
        " \\ hp0\n"
    )


async def test_query_rx_filter(ns: Netstack) -> None:
    await add(ns, "hubport,id=hp0,hubid=1")
    nic = NicClient("nic0", MAC)
    ns.add_client(nic)
    events: list[tuple[str, object]] = []
    ns.add_listener(lambda name, data: events.append((name, data)))
    (info,) = ns.query_rx_filter()
    assert info["name"] == "nic0" and info["promiscuous"] is True
    assert info["main-mac"] == "52:54:00:12:34:56"
    assert info["vlan"] == "all" and info["vlan-table"][:2] == [4095, 4094]
    assert ns.query_rx_filter("nic0") == [info]
    with pytest.raises(GenericError, match=r"^net client\(hp0\) isn't a NIC$"):
        ns.query_rx_filter("hp0")
    with pytest.raises(GenericError, match=r"^invalid net client name: zz$"):
        ns.query_rx_filter("zz")
    ns.set_rx_filter("nic0", rx_modes={"promiscuous": False})
    ns.set_rx_filter("nic0", rx_modes={"allmulti": True})
    assert [e[0] for e in events] == ["NIC_RX_FILTER_CHANGED"]
    ns.query_rx_filter("nic0")
    ns.set_rx_filter("nic0", rx_modes={"allmulti": False})
    assert len(events) == 2
    assert events[0][1] == {"name": "nic0", "path": "/machine/peripheral/nic0/virtio-backend"}


async def test_rx_filter_applies_on_delivery(ns: Netstack) -> None:
    await add(ns, "hubport,id=hp0,hubid=0")
    nic = NicClient("nic0", MAC)
    nic.connect(ns.find_netdev("hp0"))  # type: ignore[arg-type]
    ns.add_client(nic)
    ns.set_rx_filter("nic0", rx_modes={"promiscuous": False})
    src = Recorder("src")
    ns.hub(0).add_port("p9").connect(src)
    other = frame(1, dst=bytes.fromhex("525400999999"))
    mine = frame(2, dst=MAC)
    bcast = frame(3)
    src.send([other, mine, bcast])
    assert nic.received == [mine, bcast]
    assert nic.stats.rx_filtered == 1
