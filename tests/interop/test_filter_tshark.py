"""filter-dump output read back by tshark: classic pcap (QEMU's format) and pcapng with
the netdev as interface name and the direction of each frame."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from netstack.daemon import Netstack
from netstack.net.filters import FilterDump
from netstack.objects import create_object
from netstack.qapi import object_from_qmp
from tests.interop.test_filter_support import tshark_fields
from tests.kit.daemon import add_netdevs
from tests.support import Recorder, frame

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="no tshark")

MAC_A = bytes.fromhex("020000000aaa")
MAC_B = bytes.fromhex("020000000bbb")


@pytest.fixture
async def ns(ns: Netstack) -> Netstack:
    """The shared daemon with two ports on hub 0."""
    await add_netdevs(ns, "hubport,id=n0,hubid=0", "hubport,id=n1,hubid=0")
    return ns


def plug(ns: Netstack, name: str) -> Recorder:
    peer = Recorder(f"guest-{name}")
    nc = ns.find_netdev(name)
    assert nc is not None
    peer.connect(nc)
    return peer


async def test_pcap_file_through_object_add(ns: Netstack, tmp_path: Path) -> None:
    path = tmp_path / "n0.pcap"
    spec = {"qom-type": "filter-dump", "id": "d0", "netdev": "n0", "file": str(path),
            "maxlen": 100}  # fmt: skip
    await create_object(ns, object_from_qmp(spec))
    g0, g1 = plug(ns, "n0"), plug(ns, "n1")
    g0.send([frame(1, 60, dst=MAC_B), frame(2, 300, dst=MAC_B)])  # into the hub via n0 (rx)
    g1.send([frame(3, 1514, dst=MAC_A)])  # out of the hub via n0 (tx)
    ns.object_del("d0")
    rows = tshark_fields(str(path), "frame.len", "frame.cap_len", "eth.dst", "eth.type")
    assert rows == [
        ["60", "60", "02:00:00:00:0b:bb", "0x88b5"],
        ["300", "100", "02:00:00:00:0b:bb", "0x88b5"],
        ["1514", "100", "02:00:00:00:0a:aa", "0x88b5"],
    ]


async def test_pcapng_interface_names_and_directions(ns: Netstack, tmp_path: Path) -> None:
    g0, g1 = plug(ns, "n0"), plug(ns, "n1")
    made = []
    for name in ("n0", "n1"):
        nc = ns.find_netdev(name)
        assert nc is not None
        nf = FilterDump(f"d{name}", nc, file=str(tmp_path / f"{name}.pcapng"), fmt="pcapng")
        nf.setup(ns)
        nc.filters.append(nf)
        made.append(nf)
    g0.send([frame(1, 80, dst=MAC_B)])
    g1.send([frame(2, 90, dst=MAC_A)])
    for nf in made:
        nf.cleanup()
    fields = ("frame.len", "eth.dst", "frame.interface_name", "frame.packet_flags_direction")
    assert tshark_fields(str(tmp_path / "n0.pcapng"), *fields) == [
        ["80", "02:00:00:00:0b:bb", "n0", "0x00000001"],  # sent to n0 by its guest: inbound
        ["90", "02:00:00:00:0a:aa", "n0", "0x00000002"],  # sent by n0: outbound
    ]
    assert tshark_fields(str(tmp_path / "n1.pcapng"), *fields) == [
        ["80", "02:00:00:00:0b:bb", "n1", "0x00000002"],
        ["90", "02:00:00:00:0a:aa", "n1", "0x00000001"],
    ]
