"""Net filters against QEMU 7.2 itself: the same frames through QEMU's filters and ours
give the same bytes, and the same object-add requests give the same errors and the same
``info network`` filter lines.

QEMU runs with ``-M none``: two ``socket`` netdevs (UDP) joined on hub 0, so a datagram
the test sends to ``s0`` is a frame that ``s0`` sends (direction tx) and that leaves by
``s1``. Every QEMU process is terminated by PID when its test ends.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpkt
import pytest

import drivers
from netstack.daemon import Netstack
from netstack.errors import NetstackError
from netstack.net.filters import FilterDump, FilterMirror
from netstack.objects import create_object
from netstack.qapi import chardev_add_from_qmp, object_from_qmp
from tests.interop.test_filter_support import qemu
from tests.kit.polling import until
from tests.support import Recorder, frame
from tests.unit.test_filter_support import SimpleHost, read_exactly, unix_chardev

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU"),
]

FRAMES = [frame(1, 60), frame(2, 150), frame(3, 23), frame(4, 1514)]


def records(data: bytes) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """The pcap header and (caplen, len, bytes) per record: everything but timestamps."""
    reader = dpkt.pcap.Reader(io.BytesIO(data))
    out = []
    pos = 24
    for _ in reader:
        caplen = int.from_bytes(data[pos + 8 : pos + 12], "little")
        length = int.from_bytes(data[pos + 12 : pos + 16], "little")
        out.append((caplen, length, data[pos + 16 : pos + 16 + caplen]))
        pos += 16 + caplen
    assert pos == len(data)
    return data[:24], out


async def test_filter_dump_bytes_match_qemu(tmp_path: Path) -> None:
    qpath = tmp_path / "qemu.pcap"
    async with qemu(
        tmp_path, ["-object", f"filter-dump,id=d0,netdev=s0,file={qpath},maxlen=100"]
    ) as q:
        q.send(FRAMES)
        for f in FRAMES:  # each frame crossed the hub: QEMU has written its record
            assert q.from_s1.recvfrom(65536)[0] == f
        await q.execute("object-del", {"id": "d0"})
    ours = tmp_path / "ours.pcap"
    a, b = Recorder("s0"), Recorder("h0")
    a.connect(b)
    nf = FilterDump("d0", a, file=str(ours), maxlen=100)
    nf.setup(SimpleHost())
    a.filters.append(nf)
    for f in FRAMES:
        a.send([f])
    nf.cleanup()
    assert records(ours.read_bytes()) == records(qpath.read_bytes())
    assert records(ours.read_bytes())[0].hex().startswith("d4c3b2a102000400")


@pytest.mark.parametrize("vnet_hdr", [False, True])
async def test_filter_mirror_stream_matches_qemu(tmp_path: Path, vnet_hdr: bool) -> None:
    path = tmp_path / "qemu-mirror.sock"
    opt = "on" if vnet_hdr else "off"
    extra = [
        "-chardev", f"socket,id=c0,path={path},server=on,wait=off",
        "-object", f"filter-mirror,id=m0,netdev=s0,queue=tx,outdev=c0,vnet_hdr_support={opt}",
    ]  # fmt: skip
    size = sum(len(f) + (8 if vnet_hdr else 4) for f in FRAMES)
    async with qemu(tmp_path, extra) as q:
        reader, writer = await asyncio.open_unix_connection(str(path))
        await q.execute("query-status")  # QEMU accepted the client in its main loop
        q.send(FRAMES)
        from_qemu = await read_exactly(reader, size)
        writer.close()
    ours = str(tmp_path / "ours-mirror.sock")
    chardev = await unix_chardev("c0", ours)
    try:
        reader, writer = await asyncio.open_unix_connection(ours)
        a, b = Recorder("s0"), Recorder("h0")
        a.connect(b)
        nf = FilterMirror("m0", a, outdev="c0", queue="tx", vnet_hdr_support=vnet_hdr)
        nf.setup(SimpleHost({"c0": chardev}))
        a.filters.append(nf)
        await until(lambda: bool(nf.out_link and nf.out_link.connections))
        for f in FRAMES:
            a.send([f])
        assert await read_exactly(reader, size) == from_qemu
        nf.cleanup()
        writer.close()
    finally:
        await chardev.close()


REQUESTS: list[dict[str, Any]] = [
    {"qom-type": "filter-dump", "id": "d0", "netdev": "s0", "file": "{tmp}/x.pcap"},
    {"qom-type": "filter-mirror", "id": "m0", "netdev": "s0", "outdev": "c1"},
    {"qom-type": "filter-redirector", "id": "r0", "netdev": "s0", "outdev": "c2"},
    {
        "qom-type": "filter-redirector",
        "id": "r1",
        "netdev": "s0",
        "indev": "c3",
        "vnet_hdr_support": True,
        "queue": "rx",
        "position": "head",
    },
    {
        "qom-type": "filter-buffer",
        "id": "b0",
        "netdev": "s0",
        "interval": 1000,
        "status": "off",
        "insert": "before",
        "position": "id=d0",
    },
    {"qom-type": "filter-dump", "id": "d1", "netdev": "s0", "file": "{tmp}/y", "position": "id=d1"},
    {"qom-type": "filter-dump", "id": "d1", "netdev": "s1", "file": "{tmp}/y", "position": "id=d0"},
    {"qom-type": "filter-dump", "id": "d1", "netdev": "s0", "file": "/nonexistent/y"},
    {"qom-type": "filter-dump", "id": "d0", "netdev": "nosuch", "file": "{tmp}/y"},
    {"qom-type": "filter-dump", "id": "d2", "netdev": "nosuch", "file": "{tmp}/y", "status": "bad"},
    {"qom-type": "filter-dump", "id": "d2", "netdev": "nosuch", "file": "{tmp}/y"},
    {"qom-type": "filter-dump", "id": "d2", "netdev": "s0", "file": "{tmp}/y", "maxlen": 0},
    {"qom-type": "filter-mirror", "id": "m1", "netdev": "s0", "outdev": "c1"},
    {"qom-type": "filter-mirror", "id": "m1", "netdev": "s0", "outdev": "nosuch"},
    {"qom-type": "filter-redirector", "id": "m1", "netdev": "s0", "outdev": "n1", "indev": "n2"},
    {"qom-type": "filter-redirector", "id": "m1", "netdev": "s0", "outdev": "nosuch"},
    {"qom-type": "filter-redirector", "id": "m1", "netdev": "s0", "indev": "c1"},
    {"qom-type": "filter-redirector", "id": "m1", "netdev": "s0"},
    {"qom-type": "filter-redirector", "id": "m1", "netdev": "s0", "indev": "x", "outdev": "x"},
    {"qom-type": "filter-buffer", "id": "m1", "netdev": "s0", "interval": 0},
    {"qom-type": "filter-buffer", "id": "m1", "netdev": "s0"},
    {"qom-type": "filter-dump", "id": "m1", "netdev": "s0", "file": "{tmp}/z", "position": "x"},
    {"qom-type": "filter-dump", "id": "m1", "netdev": "s0", "file": "{tmp}/z", "position": "id=zz"},
    {"qom-type": "filter-dump", "id": "m1", "netdev": "s0", "file": "{tmp}/z", "queue": "up"},
]


def _fill(args: dict[str, Any], tmp: Path) -> dict[str, Any]:
    return {k: v.replace("{tmp}", str(tmp)) if isinstance(v, str) else v for k, v in args.items()}


async def run_all(
    execute: Callable[[dict[str, Any]], Any], tmp: Path
) -> list[tuple[str, str] | None]:
    out: list[tuple[str, str] | None] = []
    for args in REQUESTS:
        try:
            await execute(_fill(args, tmp))
            out.append(None)
        except Exception as exc:  # ExecuteError or NetstackError
            cls = getattr(exc, "error_class", None) or getattr(exc, "qmp_class", "?")
            out.append((str(cls), str(exc) if not isinstance(exc, NetstackError) else exc.desc))
    return out


def _filter_lines(text: str, netdev: str) -> list[str]:
    lines = text.replace("\r", "").split("\n")
    start = next(i for i, line in enumerate(lines) if re.search(rf"(^|: ){netdev}: index=", line))
    out = []
    for line in lines[start + 1 :]:
        if line == "filters:":
            continue
        if not line.startswith("  - "):
            break
        out.append(line)
    return out


async def test_object_add_errors_and_info_network_match_qemu(tmp_path: Path) -> None:
    extra = []
    for cid in ("c1", "c2", "c3"):
        extra += ["-chardev", f"socket,id={cid},path={tmp_path}/{cid}.sock,server=on,wait=off"]
    extra += ["-netdev", "socket,id=u0,udp=127.0.0.1:9,localaddr=127.0.0.1:0"]
    async with qemu(tmp_path, extra) as q:
        theirs = await run_all(lambda a: q.execute("object-add", a), tmp_path)
        info = await q.execute("human-monitor-command", {"command-line": "info network"})
    (tmp_path / "x.pcap").unlink()
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    try:
        for name in ("s0", "s1"):
            ns.add_client(Recorder(name))
        for cid in ("c1", "c2", "c3"):
            spec: dict[str, object] = {
                "id": cid,
                "backend": {
                    "type": "socket",
                    "data": {"addr": {"type": "unix", "data": {"path": f"{tmp_path}/o{cid}.sock"}}},
                },
            }
            await ns.chardev_add(chardev_add_from_qmp(spec))

        async def ours_execute(args: dict[str, Any]) -> None:
            await create_object(ns, object_from_qmp(args))

        ours = await run_all(ours_execute, tmp_path)
        for args, q_res, o_res in zip(REQUESTS, theirs, ours, strict=True):
            assert o_res == q_res, args
        # the s0 lines of QEMU's info network are under hub 0 (h0's peer)
        assert _filter_lines(ns.info_network(), "s0") == _filter_lines(str(info), "s0")
    finally:
        await ns.close()
