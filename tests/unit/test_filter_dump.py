"""filter-dump: QEMU's pcap bytes, pcapng (beyond QEMU), write errors, FIFO targets."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import struct
from pathlib import Path

import dpkt
import pytest

from netstack.errors import GenericError
from netstack.net.filter import NetFilter
from netstack.net.filters.dump import STREAM_HIGH_WATER, FilterDump
from netstack.net.filters.pcap import pcap_file_header
from netstack.proto import vnet
from tests.kit.polling import until
from tests.support import Recorder, frame
from tests.unit.test_filter_support import SimpleHost

T0 = 1_700_000_000_123_456_789  # ns


def pair() -> tuple[Recorder, Recorder]:
    a, b = Recorder("a"), Recorder("b")
    a.connect(b)
    return a, b


def attach(nf: NetFilter) -> NetFilter:
    nf.netdev.filters.append(nf)
    return nf


def test_pcap_header_bytes_exact() -> None:
    assert pcap_file_header(65536) == bytes.fromhex(
        "d4c3b2a1 0200 0400 00000000 00000000 00000100 01000000".replace(" ", "")
    )
    assert pcap_file_header(100)[16:20] == (100).to_bytes(4, "little")


def test_records_exact_with_maxlen_and_direction(tmp_path: Path) -> None:
    a, b = pair()
    path = tmp_path / "x.pcap"
    nf = FilterDump("d0", a, file=str(path), maxlen=100, clock=lambda: T0)
    nf.setup(SimpleHost())
    attach(nf)
    small, big = frame(1, 60), frame(2, 150)
    a.send([small, big])  # tx
    b.send([frame(3, 64)])  # rx on a
    assert b.got == [small, big] and a.got == [frame(3, 64)]
    nf.cleanup()
    data = path.read_bytes()
    assert data[:24] == bytes.fromhex("d4c3b2a10200040000000000000000006400000001000000")
    sec, usec = 1_700_000_000, 123_456
    rec = struct.Struct("<IIII")
    off = 24
    for payload in (small, big, frame(3, 64)):
        caplen = min(len(payload), 100)
        assert rec.unpack_from(data, off) == (sec, usec, caplen, len(payload))
        off += 16
        assert data[off : off + caplen] == payload[:caplen]
        off += caplen
    assert off == len(data)
    assert (os.stat(path).st_mode & 0o777) == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_queue_selection_and_status_off(tmp_path: Path) -> None:
    a, b = pair()
    path = tmp_path / "rx.pcap"
    nf = FilterDump("d0", a, file=str(path), queue="rx", clock=lambda: T0)
    nf.setup(SimpleHost())
    attach(nf)
    a.send([frame(1)])
    b.send([frame(2)])
    nf.enabled = False
    b.send([frame(3)])
    nf.cleanup()
    packets = list(dpkt.pcap.Reader(io.BytesIO(path.read_bytes())))
    assert [bytes(p) for _, p in packets] == [frame(2)]


def test_vnet_header_is_not_captured(tmp_path: Path) -> None:
    a = Recorder("a")
    b = Recorder("b", accepts_vnet=True)
    a.connect(b)
    path = tmp_path / "v.pcap"
    nf = FilterDump("d0", a, file=str(path), clock=lambda: T0)
    nf.setup(SimpleHost())
    attach(nf)
    a.send(vnet.add_headers([frame(7, 80)]), vnet=True)
    assert b.vnet_flags == [True]
    nf.cleanup()
    ((_, pkt),) = list(dpkt.pcap.Reader(io.BytesIO(path.read_bytes())))
    assert bytes(pkt) == frame(7, 80)


def test_cannot_open_text(tmp_path: Path) -> None:
    a, _ = pair()
    nf = FilterDump("d0", a, file=str(tmp_path / "no" / "x.pcap"))
    with pytest.raises(GenericError) as err:
        nf.setup(SimpleHost())
    assert err.value.desc == (
        f"net dump: can't open {tmp_path}/no/x.pcap: No such file or directory"
    )


def test_header_write_error_text() -> None:
    a, _ = pair()
    nf = FilterDump("d0", a, file="/dev/full")
    with pytest.raises(GenericError) as err:
        nf.setup(SimpleHost())
    assert err.value.desc == "net dump write error: No space left on device"


def test_write_error_stops_dump(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    a, b = pair()
    nf = FilterDump("d0", a, file=str(fifo))
    nf.setup(SimpleHost())  # no loop: synchronous writes
    attach(nf)
    os.close(rfd)
    with caplog.at_level(logging.ERROR):
        a.send([frame(1)])
    assert caplog.messages == ["network dump write error - stopping dump"]
    assert nf.sink is not None and not nf.sink.active
    a.send([frame(2)])  # the filter stays and frames still pass
    assert b.got == [frame(1), frame(2)]
    nf.cleanup()


def test_pcapng_interface_name_direction_and_statistics(tmp_path: Path) -> None:
    a, b = pair()
    path = tmp_path / "x.pcapng"
    nf = FilterDump("d0", a, file=str(path), fmt="pcapng", maxlen=70, clock=lambda: T0)
    nf.setup(SimpleHost())
    attach(nf)
    a.send([frame(1, 100)])
    b.send([frame(2)])
    nf.cleanup()
    data = path.read_bytes()
    reader = dpkt.pcapng.Reader(io.BytesIO(data))
    assert reader.snaplen == 70
    idb = reader.idb
    names = [o.data for o in idb.opts if o.code == 2]
    assert names == [b"a"]
    got = list(reader)
    assert [len(bytes(p)) for _, p in got] == [70, 64]
    assert got[0][0] == pytest.approx(T0 / 1e9)
    # epb_flags: tx (sent by the netdev) is outbound, rx inbound
    flags = [_epb_flags(blk) for blk in _blocks(data) if blk[0] == 6]
    assert flags == [2, 1]
    isb = [blk for blk in _blocks(data) if blk[0] == 5]
    assert len(isb) == 1
    assert nf.properties()[:3] == [("file", str(path)), ("maxlen", "70"), ("format", "pcapng")]


def _blocks(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    pos = 0
    while pos < len(data):
        btype, blen = struct.unpack_from("<II", data, pos)
        out.append((btype, data[pos : pos + blen]))
        pos += blen
    return out


def _epb_flags(block: tuple[int, bytes]) -> int:
    body = block[1]
    caplen = struct.unpack_from("<I", body, 20)[0]
    opt = 28 + caplen + (-caplen & 3)
    code, length, value = struct.unpack_from("<HHI", body, opt)
    assert (code, length) == (2, 4)
    return int(value)


async def test_fifo_without_reader_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    a, _ = pair()
    nf = FilterDump("d0", a, file=str(fifo))
    with pytest.raises(GenericError, match="No such device or address"):
        nf.setup(SimpleHost())


async def test_fifo_never_blocks_and_drops_whole_records(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        a, b = pair()
        nf = FilterDump("d0", a, file=str(fifo), clock=lambda: T0)
        nf.setup(SimpleHost())
        attach(nf)
        assert nf.sink is not None and nf.sink.stream
        big = frame(0, 1500)
        sent = 0
        for _ in range(STREAM_HIGH_WATER // 1500 + 200):  # far beyond pipe + high water
            a.send([big])
            sent += 1
        assert len(b.got) == sent  # the data path never waited
        assert nf.dropped > 0
        got = bytearray()
        for _ in range(20_000):
            try:
                chunk = os.read(rfd, 1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                if nf.sink.active and not nf.sink.backlog:
                    break
                continue
            got += chunk
        nf.cleanup()
        with contextlib.suppress(BlockingIOError):
            got += os.read(rfd, 1 << 20)
        packets = list(dpkt.pcap.Reader(io.BytesIO(bytes(got))))
        assert len(packets) == nf.captured == sent - nf.dropped
        assert all(bytes(p) == big for _, p in packets)
    finally:
        os.close(rfd)


async def test_stream_reader_gone_stops_dump(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    a, _ = pair()
    nf = FilterDump("d0", a, file=str(fifo))
    nf.setup(SimpleHost())
    attach(nf)
    assert nf.sink is not None and nf.sink.stream
    os.close(rfd)
    with caplog.at_level(logging.ERROR):
        a.send([frame(1)])
        await until(lambda: nf.sink is not None and not nf.sink.active)
    assert "network dump write error - stopping dump" in caplog.messages
    nf.cleanup()
