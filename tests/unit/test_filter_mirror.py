"""filter-mirror and filter-redirector over real socket chardevs: framing bytes, divert,
inject in each direction, a redirector loop, oversized input, setup errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from netstack.chardev.sockets import SocketChardev
from netstack.errors import DeviceNotFound, GenericError
from netstack.net.filter import NetFilter
from netstack.net.filters import FilterMirror, FilterRedirector
from netstack.net.filters.framing import FrameReader, frame_header
from netstack.proto import vnet
from netstack.qapi import chardev_from_qmp
from tests.kit.polling import until
from tests.support import Recorder, frame
from tests.unit.test_filter_support import SimpleHost, read_exactly, unix_chardev

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def chardevs(tmp_path: Path) -> AsyncIterator[dict[str, SocketChardev]]:
    made = {cid: await unix_chardev(cid, str(tmp_path / f"{cid}.sock")) for cid in ("c0", "c1")}
    yield made
    for chardev in made.values():
        await chardev.close()


async def connect(tmp_path: Path, cid: str) -> Streams:
    return await asyncio.open_unix_connection(str(tmp_path / f"{cid}.sock"))


def pair(b_vnet: bool = False) -> tuple[Recorder, Recorder]:
    a, b = Recorder("a"), Recorder("b", accepts_vnet=b_vnet)
    a.connect(b)
    return a, b


def attach(nf: NetFilter) -> None:
    nf.netdev.filters.append(nf)


async def test_mirror_framing_bytes_and_frame_continues(
    tmp_path: Path, chardevs: dict[str, SocketChardev]
) -> None:
    a, b = pair()
    reader, writer = await connect(tmp_path, "c0")
    nf = FilterMirror("m0", a, outdev="c0", queue="tx")
    nf.setup(SimpleHost(dict(chardevs)))
    attach(nf)
    assert nf.out_link is not None
    await until(lambda: bool(nf.out_link and nf.out_link.connections))
    f23 = frame(1, 23)
    a.send([f23])
    b.send([frame(2)])  # rx: not mirrored with queue=tx
    assert b.got == [f23]
    assert await read_exactly(reader, 27) == b"\x00\x00\x00\x17" + f23
    a.send([b""])  # an empty frame is not sent (QEMU's filter_send)
    a.send([frame(3, 60)])
    assert await read_exactly(reader, 64) == b"\x00\x00\x00\x3c" + frame(3, 60)
    nf.cleanup()
    assert chardevs["c0"].frontend is None
    writer.close()


async def test_mirror_vnet_hdr_support(tmp_path: Path, chardevs: dict[str, SocketChardev]) -> None:
    a, b = pair(b_vnet=True)
    reader, writer = await connect(tmp_path, "c0")
    nf = FilterMirror("m0", a, outdev="c0", vnet_hdr_support=True)
    nf.setup(SimpleHost(dict(chardevs)))
    attach(nf)
    await until(lambda: bool(nf.out_link and nf.out_link.connections))
    f = frame(1, 40)
    a.send([f])
    assert await read_exactly(reader, 8 + 40) == bytes.fromhex("00000028 00000000") + f
    with_hdr = vnet.add_headers([f])[0]
    a.send([with_hdr], vnet=True)
    assert b.vnet_flags[-1] is True
    assert await read_exactly(reader, 8 + 52) == bytes.fromhex("00000034 0000000c") + with_hdr
    nf.cleanup()
    writer.close()


async def test_mirror_without_vnet_support_sends_plain_frames(
    tmp_path: Path, chardevs: dict[str, SocketChardev]
) -> None:
    a, _ = pair(b_vnet=True)
    reader, writer = await connect(tmp_path, "c0")
    nf = FilterMirror("m0", a, outdev="c0")
    nf.setup(SimpleHost(dict(chardevs)))
    attach(nf)
    await until(lambda: bool(nf.out_link and nf.out_link.connections))
    f = frame(5, 50)
    a.send(vnet.add_headers([f]), vnet=True)
    assert await read_exactly(reader, 54) == frame_header(50, None) + f
    nf.cleanup()
    writer.close()


async def test_slow_reader_misses_whole_frames_never_blocks(
    tmp_path: Path, chardevs: dict[str, SocketChardev]
) -> None:
    a, b = pair()
    reader, writer = await connect(tmp_path, "c0")
    nf = FilterMirror("m0", a, outdev="c0", queue="tx")
    nf.setup(SimpleHost(dict(chardevs)))
    attach(nf)
    assert nf.out_link is not None
    await until(lambda: bool(nf.out_link and nf.out_link.connections))
    nf.out_link.high_water = 64 << 10
    big = frame(1, 1500)
    sent = 0
    for _ in range(20_000):  # the test reads nothing: socket buffers fill up
        a.send([big])
        sent += 1
        if nf.dropped:
            break
    assert nf.dropped == 1 and len(b.got) == sent
    nf.cleanup()
    data = await asyncio.wait_for(reader.read(), 10)  # everything up to the close
    frames = FrameReader().feed(data)
    assert len(frames) == sent - 1 and all(f == (0, big) for f in frames)
    writer.close()


async def test_redirector_outdev_diverts(
    tmp_path: Path, chardevs: dict[str, SocketChardev]
) -> None:
    a, b = pair()
    reader, writer = await connect(tmp_path, "c0")
    nf = FilterRedirector("r0", a, outdev="c0", queue="tx")
    nf.setup(SimpleHost(dict(chardevs)))
    attach(nf)
    await until(lambda: bool(nf.out_link and nf.out_link.connections))
    a.send([frame(1), frame(2)])
    assert b.got == []
    assert await read_exactly(reader, 2 * 68) == b"".join(
        frame_header(64, None) + frame(i) for i in (1, 2)
    )
    b.send([frame(3)])  # rx untouched
    assert a.got == [frame(3)]
    nf.cleanup()
    writer.close()


@pytest.mark.parametrize(("queue", "to_a", "to_b"), [("tx", 0, 2), ("rx", 2, 0), ("all", 2, 2)])
async def test_redirector_indev_injects_in_its_direction(
    tmp_path: Path, chardevs: dict[str, SocketChardev], queue: str, to_a: int, to_b: int
) -> None:
    a, b = pair()
    _, writer = await connect(tmp_path, "c1")
    nf = FilterRedirector("r0", a, indev="c1", queue=queue)  # type: ignore[arg-type]
    nf.setup(SimpleHost(dict(chardevs)))
    attach(nf)
    writer.write(b"".join(frame_header(64, None) + frame(i) for i in (1, 2)))
    await writer.drain()
    await until(lambda: nf.injected == 2)
    assert a.got == [frame(1), frame(2)][:to_a]
    assert b.got == [frame(1), frame(2)][:to_b]
    nf.cleanup()
    writer.close()


async def test_redirector_loop_tx_out_rx_in(tmp_path: Path) -> None:
    """QEMU's test-filter-redirector shape: r0 diverts tx to a server chardev, a client
    chardev connected to it feeds r1, which injects the frames back as rx."""
    server = await unix_chardev("srv", str(tmp_path / "loop.sock"))
    spec = chardev_from_qmp(
        "cli",
        {
            "type": "socket",
            "data": {
                "addr": {"type": "unix", "data": {"path": str(tmp_path / "loop.sock")}},
                "server": False,
            },
        },
    )
    client = SocketChardev("cli", spec.options)  # type: ignore[arg-type]
    await client.start()
    host = SimpleHost({"srv": server, "cli": client})
    a, b = pair()
    r0 = FilterRedirector("r0", a, outdev="srv", queue="tx")
    r1 = FilterRedirector("r1", a, indev="cli", queue="rx")
    for nf in (r0, r1):
        nf.setup(host)
        attach(nf)
    await until(lambda: bool(r0.out_link and r0.out_link.connections))
    frames = [frame(i, 60 + i) for i in range(3)]
    a.send(frames)
    await until(lambda: len(a.got) == 3)
    assert a.got == frames and b.got == []
    for nf in (r0, r1):
        nf.cleanup()
    await client.close()
    await server.close()


async def test_oversized_input_closes_connection(
    tmp_path: Path, chardevs: dict[str, SocketChardev], caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = pair()
    reader, writer = await connect(tmp_path, "c1")
    nf = FilterRedirector("r0", a, indev="c1")
    nf.setup(SimpleHost(dict(chardevs)))
    attach(nf)
    with caplog.at_level(logging.ERROR):
        writer.write((69633).to_bytes(4, "big") + bytes(100))
        assert await asyncio.wait_for(reader.read(), 5) == b""
    assert "serious error: oversized packet received,connection terminated." in caplog.messages
    nf.cleanup()
    writer.close()


async def test_setup_errors(chardevs: dict[str, SocketChardev]) -> None:
    a, _ = pair()
    host = SimpleHost(dict(chardevs))
    cases: list[tuple[NetFilter, type[Exception], str]] = [
        (
            FilterMirror("m", a, outdev=None),
            DeviceNotFound,
            "filter-mirror parameter 'outdev' cannot be empty",
        ),
        (FilterMirror("m", a, outdev="nosuch"), DeviceNotFound, "Device 'nosuch' not found"),
        (
            FilterRedirector("r", a),
            GenericError,
            "filter redirector needs 'indev' or 'outdev' at least one property set",
        ),
        (
            FilterRedirector("r", a, indev="x", outdev="x"),
            GenericError,
            "'indev' and 'outdev' could not be same for filter redirector",
        ),
        (
            FilterRedirector("r", a, indev="n1", outdev="n2"),
            DeviceNotFound,
            "IN Device 'n1' not found",
        ),
        (FilterRedirector("r", a, outdev="n2"), DeviceNotFound, "OUT Device 'n2' not found"),
    ]
    for nf, cls, text in cases:
        with pytest.raises(cls) as err:
            nf.setup(host)  # type: ignore[attr-defined]
        assert err.value.desc == text  # type: ignore[attr-defined]
        nf.cleanup()
    holder = FilterMirror("m0", a, outdev="c0")
    holder.setup(host)
    with pytest.raises(GenericError) as busy:
        FilterRedirector("r", a, indev="c0").setup(host)
    assert busy.value.desc == "Device 'c0' is in use"
    holder.cleanup()
    assert all(c.frontend is None for c in chardevs.values())
