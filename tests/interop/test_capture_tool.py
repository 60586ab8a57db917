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
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.test_filter_support import Qemu, qemu, tshark_fields
from tests.support import frame

REPO = Path(__file__).resolve().parents[2]
FIELDS = ("frame.len", "eth.dst", "frame.interface_name", "frame.packet_flags_direction")

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="no tshark")
qemu_only = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU")


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
    from qemu.qmp import ExecuteError

    try:
        children = await q.execute("qom-list", {"path": "/objects"})
    except ExecuteError:  # QEMU creates /objects with the first user-created object
        return []
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


@pytest.mark.qemu
@qemu_only
async def test_tool_against_qemu_into_tshark(tmp_path: Path) -> None:
    async with qemu(tmp_path, []) as q:
        qmp = str(tmp_path / "tool-qmp.sock")
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


@pytest.mark.qemu
@qemu_only
async def test_tool_sigint_and_filter_against_qemu(tmp_path: Path) -> None:
    out = tmp_path / "cap.pcapng"
    async with qemu(tmp_path, []) as q:
        qmp = str(tmp_path / "tool-qmp.sock")
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


@pytest.mark.qemu
@qemu_only
async def test_tool_detaches_when_stdout_closes(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with qemu(tmp_path, []) as q:
        qmp = str(tmp_path / "tool-qmp.sock")
        rfd, wfd = os.pipe()
        try:
            tool = await asyncio.create_subprocess_exec(
                *tool_argv(qmp, "-q", "s0"), stdout=wfd, cwd=REPO
            )
        finally:
            os.close(wfd)
        async with reaped(tool):
            try:
                header = await loop.run_in_executor(None, os.read, rfd, 4)
                assert header == bytes.fromhex("0a0d0d0a")  # pcapng section header
                await wait_for(lambda: _count_is(q, 2))
            finally:
                os.close(rfd)  # the reader goes away: the tool must notice and detach
            assert await asyncio.wait_for(tool.wait(), 10) == 0
        assert await capture_objects(q) == []


# -- against a netstack daemon process ---------------------------------------------------


async def test_tool_against_netstack_daemon_into_tshark(tmp_path: Path) -> None:
    """netstackd from its command line: hubport ``a`` (hub 0) peered with hubport ``x``
    (hub 1); a filter-redirector on ``a`` injects the frames the test writes into a
    socket chardev as if ``a`` had sent them. The tool captures ``a`` into tshark."""
    qmp = str(tmp_path / "qmp.sock")
    inject = str(tmp_path / "inject.sock")
    daemon_argv = [
        sys.executable, "-c", "import sys; from netstack.cli import main; sys.exit(main())",
        "-netdev", "hubport,id=x,hubid=1",
        "-netdev", "hubport,id=a,hubid=0,netdev=x",
        "-chardev", f"socket,id=inj,path={inject},server=on,wait=off",
        "-object", "filter-redirector,id=r0,netdev=a,indev=inj,queue=tx",
        "-qmp", f"unix:{qmp},server=on,wait=off",
    ]  # fmt: skip
    daemon = await asyncio.create_subprocess_exec(*daemon_argv, cwd=REPO)
    async with reaped(daemon):
        for _ in range(500):
            if os.path.exists(qmp) or daemon.returncode is not None:
                break
            await asyncio.sleep(0.02)
        assert os.path.exists(qmp), "the daemon did not start its QMP monitor"
        tool, tshark = await spawn_piped_to_tshark(tool_argv(qmp, "-q", "-c", "3", "a"))
        async with reaped(tool, tshark):
            _, writer = await asyncio.open_unix_connection(inject)
            frames = [frame(i, 100 + i, dst=bytes.fromhex("02000000000b")) for i in range(3)]
            # the tool attaches asynchronously: repeat until it has seen three frames
            for _ in range(100):
                writer.write(b"".join(len(f).to_bytes(4, "big") + f for f in frames))
                await writer.drain()
                if tool.returncode is not None:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tool.wait(), 0.1)
            out, _ = await asyncio.wait_for(tshark.communicate(), 30)
            assert await asyncio.wait_for(tool.wait(), 10) == 0
            writer.close()
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 10) == 0
    rows = [line.split("\t") for line in out.decode().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row[1:] == ["02:00:00:00:00:0b", "a", "0x00000002"]  # sent by a: outbound
        assert row[0] in ("100", "101", "102")
