"""The netstackd command line and process life: errors, help, embedded default, signals,
pidfile, daemonize, log file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)
NETSTACKD = [sys.executable, "-m", "netstack"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NETSTACKD, *args], capture_output=True, text=True, timeout=30, env=env)


def wait_for(path: Path, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_netdev_help_lists_provided_types() -> None:
    out = run("-netdev", "help")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0] == "Available netdev backend types:"
    assert "hubport" in lines[1:]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["-netdev", "hubport,id=x"], "-netdev hubport,id=x: Parameter 'hubid' is missing"),
        (
            ["-netdev", "hubport,id=x,hubid=1,foo=2"],
            "-netdev hubport,id=x,hubid=1,foo=2: Invalid parameter 'foo'",
        ),
        (
            ["-netdev", "nic,id=x"],
            "-netdev nic,id=x: network backend 'nic' is not compiled into this binary",
        ),
        (
            ["-netdev", "hubport,id=x,hubid=0", "-netdev", "hubport,id=x,hubid=1"],
            "Duplicate ID 'x'",
        ),
        (["-bogus"], "-bogus: invalid option"),
        (["-netdev"], "-netdev: requires an argument"),
    ],
)
def test_errors_name_the_option_and_exit_1(args: list[str], text: str) -> None:
    out = run(*args)
    assert out.returncode == 1
    assert text in out.stderr, out.stderr


def test_embedded_default_starts_and_says_what_is_missing(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    proc = subprocess.Popen(
        NETSTACKD, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        qmp = tmp_path / "netstack" / "qmp.sock"
        wait_for(qmp)
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "embedded default running" in banner
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
        text = banner + proc.stdout.read()
        assert f"QMP socket:        {qmp}" in text
        import drivers

        missing = [t for t in ("user", "vhost-user") if t not in drivers.registry()]
        for t in missing:
            assert f"the '{t}' driver" in text
        if not missing:
            assert "qemu-system-x86_64" in text and "vhost-user" in text
        assert proc.returncode == 0
        assert not qmp.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_pidfile_and_logfile(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    log = tmp_path / "log"
    sock = tmp_path / "q.sock"
    proc = subprocess.Popen(
        [
            *NETSTACKD,
            "-pidfile",
            str(pidfile),
            "-D",
            str(log),
            "-name",
            "t1",
            "-netdev",
            "hubport,id=a,hubid=0",
            "-qmp",
            f"unix:{sock},server=on,wait=off",
        ],
    )
    try:
        wait_for(sock)
        assert int(pidfile.read_text()) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not pidfile.exists() and not sock.exists()
        assert log.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_daemonize(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    sock = tmp_path / "q.sock"
    out = run(
        "-daemonize",
        "-pidfile",
        str(pidfile),
        "-netdev",
        "hubport,id=a,hubid=0",
        "-qmp",
        f"unix:{sock},server=on,wait=off",
    )
    assert out.returncode == 0, out.stderr
    # The parent returned only once the daemon was ready.
    assert sock.exists() and pidfile.exists()
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, 0)
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 15
        while pidfile.exists() and time.monotonic() < end:
            time.sleep(0.05)
        assert not pidfile.exists() and not sock.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_daemonize_failure_is_reported(tmp_path: Path) -> None:
    out = run("-daemonize", "-netdev", "hubport,id=x")
    assert out.returncode == 1
    assert "Parameter 'hubid' is missing" in out.stderr
