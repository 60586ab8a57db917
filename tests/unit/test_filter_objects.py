"""object-add / object-del of net filters on the daemon: QEMU's checks, their order and
texts, chain placement, info network lines, and the netdev's lifecycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from netstack.daemon import Netstack
from netstack.errors import DeviceNotFound, GenericError, NetstackError
from netstack.net.filters import FilterBuffer, FilterDump
from netstack.net.nic import NicClient
from netstack.objects import create_object, delete_object
from netstack.qapi import chardev_add_from_qmp, object_from_qmp, parse_netdev_cli
from tests.kit.daemon import add_netdevs
from tests.support import Recorder, frame

MAC = bytes.fromhex("525400123456")


@pytest.fixture
async def ns(ns: Netstack) -> Netstack:
    """The shared daemon with two ports on hub 0."""
    await add_netdevs(ns, "hubport,id=h0,hubid=0", "hubport,id=h1,hubid=0")
    return ns


async def add(ns: Netstack, **args: Any) -> Any:
    return await create_object(ns, object_from_qmp(args))


def chain(ns: Netstack, name: str) -> list[str]:
    nc = ns.find_netdev(name)
    assert nc is not None
    return [nf.id for nf in nc.filters]


async def error_of(ns: Netstack, **args: Any) -> tuple[str, str]:
    with pytest.raises(NetstackError) as err:
        await add(ns, **args)
    return err.value.qmp_class, err.value.desc


async def test_check_order_and_texts(ns: Netstack, tmp_path: Path) -> None:
    f = str(tmp_path / "x.pcap")
    await add(ns, **{"qom-type": "filter-dump", "id": "d0", "netdev": "h0", "file": f})
    nic = NicClient("nic0", MAC)
    ns.add_client(nic, netdev=False)
    dump = {"qom-type": "filter-dump", "file": f}
    cases: list[tuple[dict[str, Any], str]] = [
        # setter checks (schema) come first, then the duplicate id, then the netdev
        (
            {**dump, "id": "d0", "netdev": "nosuch", "status": "bad"},
            "Invalid value for netfilter status, should be 'on' or 'off'",
        ),
        (
            {**dump, "id": "d0", "netdev": "nosuch"},
            "attempt to add duplicate property 'd0' to object (type 'container')",
        ),
        (
            {**dump, "id": "d1", "netdev": "nosuch", "position": "bad"},
            "Parameter 'netdev' expects a network backend id",
        ),
        ({**dump, "id": "d1", "netdev": "nic0"}, "Parameter 'netdev' expects a network backend id"),
        (
            {**dump, "id": "d1", "netdev": "h0", "position": "bad"},
            "Parameter 'position' expects 'head', 'tail' or 'id=<id>'",
        ),
        ({**dump, "id": "d1", "netdev": "h0", "position": "id=zz"}, "filter 'zz' not found"),
        (
            {**dump, "id": "d1", "netdev": "h1", "position": "id=d0"},
            "filter 'd0' belongs to a different netdev",
        ),
        (
            {**dump, "id": "d1", "netdev": "h0", "position": "id=d1"},
            "filter 'd1' belongs to a different netdev",
        ),
        (
            {**dump, "id": "d1", "netdev": "h0", "file": "/nonexistent/x.pcap"},
            "net dump: can't open /nonexistent/x.pcap: No such file or directory",
        ),
        (
            {"qom-type": "filter-mirror", "id": "m1", "netdev": "h0", "outdev": "nosuch"},
            "Device 'nosuch' not found",
        ),
        (
            {"qom-type": "filter-redirector", "id": "m1", "netdev": "h0"},
            "filter redirector needs 'indev' or 'outdev' at least one property set",
        ),
        (
            {"qom-type": "filter-buffer", "id": "b1", "netdev": "h0", "interval": 0},
            "Property 'filter-buffer.interval' requires a positive value",
        ),
    ]
    for args, text in cases:
        assert (await error_of(ns, **args))[1] == text, args
    assert (
        await error_of(
            ns, **{"qom-type": "filter-mirror", "id": "m", "netdev": "h0", "outdev": "x"}
        )
    )[0] == "DeviceNotFound"
    assert list(ns.objects) == ["d0"] and chain(ns, "h0") == ["d0"]


async def test_multiqueue_and_vhost_are_refused(ns: Netstack, tmp_path: Path) -> None:
    q0, q1 = Recorder("mq", accepts_vnet=False), Recorder("mq")
    q1.queue_index = 1
    ns.add_client(q0)
    ns.add_client(q1)
    v = Recorder("vh")
    v.vhost = True  # type: ignore[attr-defined]
    ns.add_client(v)
    dump = {"qom-type": "filter-dump", "id": "d", "file": str(tmp_path / "x")}
    assert (await error_of(ns, **dump, netdev="mq"))[1] == "multiqueue is not supported"
    assert (await error_of(ns, **dump, netdev="vh"))[1] == "Vhost is not supported"


async def test_position_and_insert(ns: Netstack) -> None:
    def buf(fid: str, **extra: Any) -> dict[str, Any]:
        return {"qom-type": "filter-buffer", "id": fid, "netdev": "h0", "interval": 1000, **extra}

    await add(ns, **buf("a"))
    await add(ns, **buf("b"))
    await add(ns, **buf("c", position="head"))
    await add(ns, **buf("d", position="id=a"))  # behind a
    await add(ns, **buf("e", position="id=a", insert="before"))
    await add(ns, **buf("f", position="id=b", insert="behind"))
    assert chain(ns, "h0") == ["c", "e", "a", "d", "b", "f"]


async def test_chain_order_tx_head_to_tail_rx_tail_to_head(ns: Netstack) -> None:
    a, b = Recorder("ta"), Recorder("tb")
    a.connect(b)
    ns.add_client(a)
    ns.add_client(b)
    made = []
    for fid in ("f0", "f1", "f2"):
        made.append(
            await add(
                ns, **{"qom-type": "filter-buffer", "id": fid, "netdev": "ta", "interval": 1000}
            )
        )
    a.send([frame(1)])
    assert [nf.held_frames for nf in made] == [1, 0, 0]  # tx reached the head first
    made[0].release()
    assert [nf.held_frames for nf in made] == [0, 1, 0]
    b.send([frame(2)])
    assert [nf.held_frames for nf in made] == [0, 1, 1]  # rx reached the tail first


async def test_info_network_lines_in_qemus_property_order(ns: Netstack, tmp_path: Path) -> None:
    for cid in ("c1", "c2", "c3"):
        await ns.chardev_add(
            chardev_add_from_qmp({"id": cid, "backend": {"type": "null", "data": {}}})
        )
    u0 = Recorder("u0")
    ns.add_client(u0)
    f = str(tmp_path / "x.pcap")
    for args in (
        {"qom-type": "filter-dump", "id": "d0", "file": f},
        {"qom-type": "filter-mirror", "id": "m0", "outdev": "c1"},
        {"qom-type": "filter-redirector", "id": "r0", "outdev": "c2"},
        {
            "qom-type": "filter-redirector",
            "id": "r1",
            "indev": "c3",
            "vnet_hdr_support": True,
            "queue": "rx",
            "position": "head",
        },
        {
            "qom-type": "filter-buffer",
            "id": "b0",
            "interval": 1000,
            "status": "off",
            "insert": "before",
            "position": "id=d0",
        },
    ):
        await add(ns, netdev="u0", **args)
    # Recorded from QEMU 7.2 (glib hash order of the QOM class properties).
    expected = f"""u0: index=0,type=socket,
filters:
  - r1: type=filter-redirector,vnet_hdr_support=true,indev=c3,outdev=,position=head,status=on,insert=behind,netdev=u0,queue=rx
  - b0: type=filter-buffer,interval=1000,position=id=d0,status=off,insert=before,netdev=u0,queue=all
  - d0: type=filter-dump,file={f},maxlen=65536,position=tail,status=on,insert=behind,netdev=u0,queue=all
  - m0: type=filter-mirror,vnet_hdr_support=false,outdev=c1,position=tail,status=on,insert=behind,netdev=u0,queue=all
  - r0: type=filter-redirector,vnet_hdr_support=false,indev=,outdev=c2,position=tail,status=on,insert=behind,netdev=u0,queue=all
"""  # noqa: E501
    assert expected in ns.info_network()


async def test_object_del_and_netdev_del(ns: Netstack, tmp_path: Path) -> None:
    f = str(tmp_path / "x.pcap")
    await add(ns, **{"qom-type": "filter-dump", "id": "d0", "netdev": "h0", "file": f})
    b0 = await add(
        ns, **{"qom-type": "filter-buffer", "id": "b0", "netdev": "h0", "interval": 1000}
    )
    await add(ns, **{"qom-type": "filter-dump", "id": "d1", "netdev": "h1", "file": f + "1"})
    with pytest.raises(GenericError) as err:
        delete_object(ns, "zz")
    assert err.value.desc == "object 'zz' not found"
    delete_object(ns, "d1")
    assert "d1" not in ns.objects and chain(ns, "h1") == []
    assert isinstance(b0, FilterBuffer) and b0.deadline is not None
    ns.netdev_del("h0")
    assert ns.objects == {} and b0.deadline is None
    # the id is free again, and so is the netdev name
    netdev = parse_netdev_cli("hubport,id=h0,hubid=0")
    await ns.netdev_add(netdev)
    nf = await add(ns, **{"qom-type": "filter-dump", "id": "d0", "netdev": "h0", "file": f})
    assert isinstance(nf, FilterDump)


async def test_failed_setup_leaves_nothing_behind(ns: Netstack) -> None:
    await ns.chardev_add(
        chardev_add_from_qmp({"id": "c1", "backend": {"type": "null", "data": {}}})
    )
    with pytest.raises(DeviceNotFound) as err:
        await add(
            ns,
            **{
                "qom-type": "filter-redirector",
                "id": "r",
                "netdev": "h0",
                "indev": "c1",
                "outdev": "nosuch",
            },
        )
    assert err.value.desc == "OUT Device 'nosuch' not found"
    assert ns.chardev("c1").frontend is None
    assert ns.objects == {} and chain(ns, "h0") == []
    await add(ns, **{"qom-type": "filter-mirror", "id": "m", "netdev": "h0", "outdev": "c1"})
    with pytest.raises(GenericError) as busy:
        await add(ns, **{"qom-type": "filter-mirror", "id": "m2", "netdev": "h1", "outdev": "c1"})
    assert busy.value.desc == "Device 'c1' is in use"
