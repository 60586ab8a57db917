"""``netstack-capture`` end to end: the tool as a process, attached over QMP to a real
QEMU (the classic-pcap fallback) and to a netstack daemon process (pcapng), its output
piped into ``tshark -r -`` while traffic flows; detaching on SIGINT and on a closed
stdout removes everything it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.test_filter_support import Qemu, free_udp_port, qemu, tshark_fields
from tests.support import frame

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("frame.len", "eth.dst", "frame.interface_name", "frame.packet_flags_direction")

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="no tshark")
needs_qemu = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU"),
]


def tool_argv(qmp: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tools.capture", "-s", qmp, *args]


async def spawn_piped_to_tshark(argv: list[str]) -> tuple[Any, Any]:
    """Start the tool with its stdout piped into ``tshark -r - -T fields``."""
    rfd, wfd = os.pipe()
    tshark_argv = ["tshark", "-r", "-", "-T", "fields"]
    for name in FIELDS:
        tshark_argv += ["-e", name]
    try:
        tool = await asyncio.create_subprocess_exec(
            *argv, stdout=wfd, stderr=subprocess.PIPE, cwd=REPO
        )
        tshark = await asyncio.create_subprocess_exec(
            *tshark_argv, stdin=rfd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
    finally:
        os.close(rfd)
        os.close(wfd)
    return tool, tshark


async def capture_objects(q: Qemu) -> list[str]:
    children = await q.execute("qom-list", {"path": "/objects"})
    return [c["name"] for c in children if c["name"].startswith("netstack-capture")]


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


@contextlib.asynccontextmanager
async def reaped(*procs: Any) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.parametrize("marks", [needs_qemu])
async def test_tool_against_qemu_into_tshark(tmp_path: Path, marks: Any) -> None:
    async with qemu(tmp_path, []) as q:
        qmp = str(tmp_path / "qmp.sock")
        tool, tshark = await spawn_piped_to_tshark(tool_argv(qmp, "-q", "-c", "4", "s0"))
        async with reaped(tool, tshark):
            # QEMU has no pcapng 'format': two classic filter-dumps (rx and tx) per netdev
            await wait_for(lambda: _count_is(q, 2))
            frames = [frame(i, 60 + 100 * i, dst=bytes.fromhex("02000000000b")) for i in range(4)]
            q.send(frames)
            out, _ = await asyncio.wait_for(tshark.communicate(), 30)
            assert await asyncio.wait_for(tool.wait(), 10) == 0
        rows = [line.split("\t") for line in out.decode().splitlines()]
        assert rows == [[str(len(f)), "02:00:00:00:00:0b", "s0", "0x00000002"] for f in frames]
        assert await capture_objects(q) == []


async def _count_is(q: Qemu, n: int) -> bool:
    return len(await capture_objects(q)) == n


async def test_tool_sigint_and_filter_against_qemu(tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no QEMU")
    out = tmp_path / "cap.pcapng"
    async with qemu(tmp_path, []) as q:
        qmp = str(tmp_path / "qmp.sock")
        argv = tool_argv(qmp, "-w", str(out), "-f", "ether[17] = 2", "hub:0")
        tool = await asyncio.create_subprocess_exec(*argv, stderr=subprocess.PIPE, cwd=REPO)
        async with reaped(tool):
            await wait_for(lambda: _count_is(q, 2))  # one per hub port (h0, h1)
            q.send([frame(i) for i in range(4)])
            await wait_for(lambda: _file_has(out, 2 * 96))
            tool.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(tool.communicate(), 10)
            assert tool.returncode == 0
        assert "1 packets captured, 3 not matching the filter" in err.decode()
        assert await capture_objects(q) == []
    rows = tshark_fields(str(out), *FIELDS)
    # frame 2 entered hub 0 by port h0 (from s0): inbound on h0
    assert rows == [["64", "ff:ff:ff:ff:ff:ff", "h0", "0x00000001"]]


async def _file_has(path: Path, size: int) -> bool:
    return path.exists() and path.stat().st_size >= size


@pytest.mark.parametrize("marks", [needs_qemu])
async def test_tool_detaches_when_stdout_closes(tmp_path: Path, marks: Any) -> None:
    async with qemu(tmp_path, []) as q:
        qmp = str(tmp_path / "qmp.sock")
        tool = await asyncio.create_subprocess_exec(
            *tool_argv(qmp, "-q", "s0"), stdout=subprocess.PIPE, cwd=REPO
        )
        async with reaped(tool):
            assert tool.stdout is not None
            header = await asyncio.wait_for(tool.stdout.readexactly(4), 10)
            assert header == bytes.fromhex("0a0d0d0a")  # pcapng section header
            await wait_for(lambda: _count_is(q, 2))
            tool.stdout.feed_eof()
            transport = tool._transport  # the pipe's read end is closed by closing it
            transport.get_pipe_transport(1).close()
            assert await asyncio.wait_for(tool.wait(), 10) == 0
        assert await capture_objects(q) == []


# -- against a netstack daemon process ---------------------------------------------------


def _daemon_ready() -> str | None:
    try:
        import drivers
        import netstack.qmp.monitor  # noqa: F401
    except Exception as exc:  # the QMP server is still being finished
        return f"netstack's QMP monitor does not import: {exc}"
    if "socket" not in drivers.registry():
        return "netstack has no 'socket' netdev driver yet (needed to inject traffic)"
    return None


async def test_tool_against_netstack_daemon_into_tshark(tmp_path: Path) -> None:
    reason = _daemon_ready()
    if reason is not None:
        pytest.skip(reason)
    qmp = str(tmp_path / "qmp.sock")
    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src.bind(("127.0.0.1", 0))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    s0_port, s1_port = free_udp_port(), free_udp_port()
    daemon_argv = [
        sys.executable, "-c", "import sys; from netstack.cli import main; sys.exit(main())",
        "-netdev", f"socket,id=s0,udp=127.0.0.1:{src.getsockname()[1]},"
                   f"localaddr=127.0.0.1:{s0_port}",
        "-netdev", "hubport,id=h0,hubid=0,netdev=s0",
        "-netdev", f"socket,id=s1,udp=127.0.0.1:{sink.getsockname()[1]},"
                   f"localaddr=127.0.0.1:{s1_port}",
        "-netdev", "hubport,id=h1,hubid=0,netdev=s1",
        "-qmp", f"unix:{qmp},server=on,wait=off",
    ]  # fmt: skip
    daemon = await asyncio.create_subprocess_exec(*daemon_argv, cwd=REPO)
    async with reaped(daemon):
        for _ in range(250):
            if os.path.exists(qmp):
                break
            await asyncio.sleep(0.02)
        tool, tshark = await spawn_piped_to_tshark(tool_argv(qmp, "-q", "-c", "3", "s0", "s1"))
        async with reaped(tool, tshark):
            await asyncio.sleep(1.0)  # let the tool attach (its FIFOs are private)
            frames = [frame(i, 100 + i, dst=bytes.fromhex("02000000000b")) for i in range(3)]
            for f in frames:
                src.sendto(f, ("127.0.0.1", s0_port))
            out, _ = await asyncio.wait_for(tshark.communicate(), 30)
            assert await asyncio.wait_for(tool.wait(), 10) == 0
        daemon.send_signal(signal.SIGTERM)
        await asyncio.wait_for(daemon.wait(), 10)
    src.close()
    sink.close()
    rows = [line.split("\t") for line in out.decode().splitlines()]
    # each frame: sent by s0 (outbound on s0), then sent to s1 (inbound on s1); -c 3
    assert rows[0] == ["100", "02:00:00:00:00:0b", "s0", "0x00000002"]
    assert ["100", "02:00:00:00:00:0b", "s1", "0x00000001"] in rows
