"""The capture tool's pieces in-process: stream readers, the writer, info network parsing,
the BPF filter, and a whole session against an in-process daemon (no QMP)."""

from __future__ import annotations

import asyncio
import io
import itertools
import struct
from collections.abc import Mapping

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstack.daemon import Netstack
from netstack.errors import NetstackError
from netstack.net.filters import FilterDump
from netstack.net.filters.pcap import (
    pcap_file_header,
    pcap_record_header,
    pcapng_interface,
    pcapng_packet,
    pcapng_section_header,
    pcapng_statistics,
)
from netstack.objects import create_object, delete_object
from netstack.qapi import FilterDumpProperties, object_from_qmp
from tests.kit.daemon import add_netdevs
from tests.kit.polling import until
from tests.support import Recorder, frame
from tools.capture.bpf import BpfFilter, FilterSyntaxError
from tools.capture.output import CaptureWriter, Interface
from tools.capture.session import CaptureError, CapturePoint, CaptureSession, parse_info_network
from tools.capture.streams import CaptureStreamReader, Packet, StreamError

T = 1_700_000_000_123_456_789
SCHEMA_HAS_FORMAT = "format" in FilterDumpProperties.__dataclass_fields__


def _pcapng_stream() -> bytes:
    return (
        pcapng_section_header()
        + pcapng_interface("n0")
        + pcapng_packet(0, T, frame(1), 64, 2)
        + pcapng_packet(0, T + 1000, frame(2, 80)[:70], 80, 1)
        + pcapng_statistics(0, T + 2000, 2, 5)
    )


@given(cuts=st.lists(st.integers(0, 1000), max_size=12))
def test_pcapng_reader_chunk_invariant(cuts: list[int]) -> None:
    data = _pcapng_stream()
    reader = CaptureStreamReader()
    got: list[Packet] = []
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(points):
        got += reader.feed(data[lo:hi])
    assert got == [
        Packet(T, frame(1), 64, 2, 0),
        Packet(T + 1000, frame(2, 80)[:70], 80, 1, 0),
    ]
    assert (reader.received, reader.dropped) == (2, 5)
    assert reader.format == "pcapng" and reader.linktype == 1


def test_pcap_reader_both_byte_orders() -> None:
    little = pcap_file_header(100) + pcap_record_header(T // 1000, 64, 64) + frame(1)
    assert CaptureStreamReader().feed(little) == [Packet(T // 1000 * 1000, frame(1), 64)]
    big = (
        struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 100, 1)
        + struct.pack(">IIII", 10, 5, 64, 64)
        + frame(1)
    )
    assert CaptureStreamReader().feed(big) == [Packet(10 * 10**9 + 5000, frame(1), 64)]
    with pytest.raises(StreamError):
        CaptureStreamReader().feed(b"GET / HTTP/1.1")


def test_reader_reads_dpkt_pcapng() -> None:
    buf = io.BytesIO()
    writer = dpkt.pcapng.Writer(buf)
    writer.writepkt(frame(3), ts=1.5)
    packets = CaptureStreamReader().feed(buf.getvalue())
    assert [(p.ts_ns, p.data) for p in packets] == [(1_500_000_000, frame(3))]


@pytest.mark.parametrize("fmt", ["pcapng", "pcap"])
def test_writer_output_reads_back(fmt: str) -> None:
    chunks: list[bytes] = []
    w = CaptureWriter(
        chunks.append, [Interface("n0", "netdev n0"), Interface("u0", "x")], fmt=fmt, snaplen=70
    )
    w.packet(0, Packet(T, frame(1), 64), 2)
    w.packet(1, Packet(T + 5000, frame(2, 100), 100), 1)
    data = b"".join(chunks)
    assert len(chunks) == 3  # the header, then one write per packet
    reader = (dpkt.pcapng.Reader if fmt == "pcapng" else dpkt.pcap.Reader)(io.BytesIO(data))
    got = [bytes(p) for _, p in reader]
    assert got == [frame(1), frame(2, 100)[:70]]
    if fmt == "pcapng":
        ours = CaptureStreamReader().feed(data)
        assert [(p.if_id, p.direction, p.length) for p in ours] == [(0, 2, 64), (1, 1, 100)]


def test_parse_info_network() -> None:
    text = (
        "hub 1\r\n \\ hp1: s1: index=0,type=socket,socket: udp=127.0.0.1:45713\r\n"
        " \\ hp0\r\nhub 0\r\n \\ p0: u0: index=0,type=user,net=10.0.2.0,restrict=off\r\n"
        "filters:\r\n  - f0: type=filter-dump,file=x\r\n"
        "nic0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n"
        " \\ n0: index=0,type=user,net=10.0.2.0,restrict=off\r\n"
        "s0: index=0,type=socket,\r\n"
    )
    view = parse_info_network(text)
    assert view.hubs == {1: ["hp1", "hp0"], 0: ["p0"]}
    assert view.clients == [
        ("hp1", "hubport"),
        ("s1", "socket"),
        ("hp0", "hubport"),
        ("p0", "hubport"),
        ("u0", "user"),
        ("nic0", "nic"),
        ("n0", "user"),
        ("s0", "socket"),
    ]


def test_bpf_filter() -> None:
    f = BpfFilter("ether proto 0x88b5 and ether[14:4] = 7")
    try:
        assert f.matches(frame(7), 64)
        assert not f.matches(frame(8), 64)
        assert not f.matches(frame(7)[:12], 64)  # truncated: the filter cannot see it
    finally:
        f.close()
    with pytest.raises(FilterSyntaxError, match="syntax error"):
        BpfFilter("ether proto (")


# -- a whole session against an in-process daemon -------------------------------------


@pytest.fixture
async def ns(ns: Netstack) -> Netstack:
    """The shared daemon with two ports on hub 0."""
    await add_netdevs(ns, "hubport,id=p0,hubid=0", "hubport,id=p1,hubid=0")
    return ns


def executor(ns: Netstack, *, pcapng: bool = True):  # type: ignore[no-untyped-def]
    """QMP ``execute`` stand-in running the commands the session uses on ``ns``.

    ``pcapng=False`` answers ``format`` as QEMU does; with ``pcapng=True`` and a schema
    that lacks the field, the filter-dump is built directly, as the schema will.
    """

    async def execute(cmd: str, args: Mapping[str, object]) -> object:
        if cmd == "human-monitor-command":
            return ns.info_network()
        if cmd == "object-add":
            if "format" in args and not pcapng:
                raise NetstackError("Parameter 'format' is unexpected")
            if "format" in args and not SCHEMA_HAS_FORMAT:
                await _add_pcapng_dump(ns, args)
                return {}
            await create_object(ns, object_from_qmp(dict(args)))
            return {}
        if cmd == "object-del":
            delete_object(ns, str(args["id"]))
            return {}
        raise AssertionError(cmd)

    return execute


async def _add_pcapng_dump(ns: Netstack, args: Mapping[str, object]) -> None:
    nc = ns.find_netdev(str(args["netdev"]))
    if nc is None:
        raise NetstackError("Parameter 'netdev' expects a network backend id")
    nf = FilterDump(
        str(args["id"]),
        nc,
        file=str(args["file"]),
        maxlen=int(str(args["maxlen"])),
        fmt="pcapng",
        queue=str(args["queue"]),  # type: ignore[arg-type]
    )
    nf.setup(ns)
    nc.filters.append(nf)
    ns.objects[nf.id] = nf


@pytest.mark.parametrize("pcapng", [True, False])
async def test_session_streams_netdev_and_hub(ns: Netstack, pcapng: bool) -> None:
    peers = {name: Recorder(f"peer-{name}") for name in ("p0", "p1")}
    for name, peer in peers.items():
        nc = ns.find_netdev(name)
        assert nc is not None
        peer.connect(nc)
    got: list[tuple[int, int, bytes]] = []

    def sink(point: CapturePoint, packets: list[Packet]) -> None:
        got.extend((point.if_index, point.direction or p.direction, p.data) for p in packets)

    session = CaptureSession(executor(ns, pcapng=pcapng), sink, prefix="cap")
    await session.plan(["p0", "hub:0"])
    assert [i.name for i in session.interfaces] == ["p0", "p1", "p0"]
    try:
        await session.attach()
        assert session.pcapng is pcapng
        assert len(ns.objects) == (3 if pcapng else 4)
        peers["p0"].send([frame(1)])  # enters the hub at p0, leaves at p1
        peers["p1"].send([frame(2)])  # enters at p1, leaves at p0
        await until(lambda: len(got) >= 4)
        assert sorted(got) == [
            (0, 1, frame(1)),  # netdev p0: rx, sent to it by its peer (inbound)
            (0, 2, frame(2)),  # netdev p0: tx, sent by it (outbound)
            (1, 1, frame(2)),  # hub 0, port p1: entering the hub
            (2, 1, frame(1)),  # hub 0, port p0: entering the hub
        ]
    finally:
        await session.close()
    assert ns.objects == {}
    assert all(not p.object_id for p in session.points)


async def test_session_unknown_target_undoes_everything(ns: Netstack) -> None:
    session = CaptureSession(executor(ns), lambda p, pk: None)
    await session.plan(["p0", "nosuch"])
    with pytest.raises(CaptureError, match=r"^nosuch: no such netdev$"):
        await session.attach()
    assert ns.objects == {}
    with pytest.raises(CaptureError, match="no such hub"):
        await CaptureSession(executor(ns), lambda p, pk: None).plan(["hub:7"])


async def test_session_ends_when_the_netdev_goes(ns: Netstack) -> None:
    session = CaptureSession(executor(ns), lambda p, pk: None)
    await session.plan(["p1"])
    try:
        await session.attach()
        ns.netdev_del("p1")
        await asyncio.wait_for(session.wait_all_closed(), 5)
    finally:
        await session.close()
