"""Network scripts and the bridge helper protocol, with real child processes (no root).

The "tap fd" handed to scripts and helpers here is one end of a pipe: what is checked is
the process contract (argv, inherited and closed fds, exit statuses, SCM_RIGHTS), which
does not depend on what the fd is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from drivers.tap.helper import run_helper
from drivers.tap.scripts import run_script, start_downscript
from netstack.errors import GenericError


def executable(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


async def test_script_gets_ifname_and_the_tap_fd_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stray_r, stray_w = os.pipe()
    os.set_inheritable(stray_w, True)  # even an inheritable fd must not reach the script
    tap_r, tap_w = os.pipe()
    script = executable(
        tmp_path / "ifup",
        f'#!/bin/sh\necho "$# $1" > {out}\nls /proc/self/fd >> {out}\n',
    )
    try:
        await run_script(script, "tap7", tap_w)
        lines = out.read_text().split()
        assert lines[:2] == ["1", "tap7"]
        fds = {int(x) for x in lines[2:]}
        assert tap_w in fds and stray_w not in fds and stray_r not in fds
    finally:
        for fd in (stray_r, stray_w, tap_r, tap_w):
            os.close(fd)


@pytest.mark.parametrize(
    ("body", "status"),
    [("exit 0", 0), ("exit 1", 256), ("exit 255", 65280), ("kill -TERM $$", 15)],
)
async def test_script_status_is_qemus_raw_wait_status(
    tmp_path: Path, body: str, status: int
) -> None:
    script = executable(tmp_path / "s", f"#!/bin/sh\n{body}\n")
    if status == 0:
        await run_script(script, "tap0", 0)
        return
    with pytest.raises(GenericError) as err:
        await run_script(script, "tap0", 0)
    assert err.value.desc == f"network script {script} failed with status {status}"


async def test_unrunnable_scripts_fail_like_a_child_exit_1(tmp_path: Path) -> None:
    not_exec = tmp_path / "plain"
    not_exec.write_text("#!/bin/sh\n")
    for path in (str(tmp_path / "missing"), str(not_exec)):
        with pytest.raises(GenericError) as err:
            await run_script(path, "tap0", 0)
        assert err.value.desc == f"network script {path} failed with status 256"


async def test_downscript_starts_at_once_holds_the_fd_and_logs_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = tmp_path / "gate"
    out = tmp_path / "out"
    r, w = os.pipe()
    script = executable(
        tmp_path / "ifdown",
        f'#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.01; done\necho "$1" > {out}\nexit 2\n',
    )
    loop = asyncio.get_running_loop()
    log = logging.getLogger("tap-test")
    proc = start_downscript(script, "tap3", w, None, log, loop)
    assert proc is not None
    os.close(w)  # our copy is gone; the script still holds the write end
    os.set_blocking(r, False)
    with pytest.raises(BlockingIOError):
        os.read(r, 1)  # not EOF: the fd lives while the downscript runs
    gate.touch()
    end = loop.time() + 5
    with caplog.at_level(logging.ERROR, "tap-test"):
        while "failed with status 512" not in caplog.text and loop.time() < end:
            await asyncio.sleep(0.02)
    assert out.read_text() == "tap3\n"
    assert f"network script {script} failed with status 512" in caplog.text
    assert os.read(r, 1) == b""  # and the fd died with the script
    os.close(r)


HELPER = """#!{python}
import os, socket, sys
args = sys.argv[1:]
with open({record!r}, "w") as f:
    f.write(" ".join(args))
mode = {mode!r}
fd = int([a for a in args if a.startswith("--fd=")][0][5:])
sock = socket.socket(fileno=fd)
if mode in ("ok", "fail-after"):
    r, w = os.pipe()
    socket.send_fds(sock, [b"\\0"], [w])
sys.exit(1 if mode in ("fail", "fail-after") else 0)
"""


def helper(tmp_path: Path, mode: str) -> tuple[str, Path]:
    record = tmp_path / f"argv-{mode}"
    path = executable(
        tmp_path / f"helper-{mode}",
        HELPER.format(python=sys.executable, record=str(record), mode=mode),
    )
    return path, record


async def test_helper_hands_over_an_fd(tmp_path: Path) -> None:
    path, record = helper(tmp_path, "ok")
    fd = await run_helper(path, "br7")
    try:
        assert os.fstat(fd)  # a live fd of ours
        args = record.read_text().split()
        assert args[0] == "--use-vnet" and args[1].startswith("--fd=") and args[2] == "--br=br7"
    finally:
        os.close(fd)


async def test_helper_command_with_spaces_runs_through_the_shell(tmp_path: Path) -> None:
    path, record = helper(tmp_path, "ok")
    fd = await run_helper(f"{path} --extra", "br8")
    os.close(fd)
    args = record.read_text().split()
    assert args[0] == "--extra" and args[1] == "--use-vnet" and args[3] == "--br=br8"
    fd = await run_helper(f"{path} --br=mine", "br8")
    os.close(fd)
    assert record.read_text().split()[0] == "--br=mine"
    assert "--br=br8" not in record.read_text()


@pytest.mark.parametrize(
    ("mode", "text"),
    [
        ("fail", "bridge helper failed"),
        ("fail-after", "bridge helper failed"),
        ("silent", "failed to recv file descriptor"),
    ],
)
async def test_helper_failures(tmp_path: Path, mode: str, text: str) -> None:
    path, _record = helper(tmp_path, mode)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(GenericError) as err:
        await run_helper(path, "br0")
    assert err.value.desc == text
    assert set(os.listdir("/proc/self/fd")) <= before  # nothing leaked, fd included


async def test_missing_helper_is_a_failed_helper(tmp_path: Path) -> None:
    with pytest.raises(GenericError) as err:
        await run_helper(str(tmp_path / "nope"), "br0")
    assert err.value.desc == "bridge helper failed"
