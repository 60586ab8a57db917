"""Least privilege: ``-run-with user=``/``-runas``, ``-sandbox``, and private files.

Against real peers: QEMU 7.2's own ``-runas`` and ``-sandbox`` error texts (the binary is
run with the same arguments); the kernel's view of the running daemon
(``/proc/PID/status``: ``Uid``, ``CapEff``, ``Seccomp: 2``); Linux namespaces behind taps
as guests, whose connections go through the NAT of a dropped, sandboxed daemon; and
another user (``setpriv`` to nobody, ``socat``) trying the daemon's sockets.

* dropped to nobody and sandboxed, the daemon serves guests and QMP, a later
  ``netdev_add`` of a user netdev and of a tap (``CAP_NET_ADMIN`` kept) works, one that
  needs ``setns`` (``x-netns``) fails with a clear error, and the daemon carries on;
* with ``spawn=deny`` a guest connection to a ``guestfwd=...-cmd:`` rule (it needs
  ``fork``/``execve``) and a ``netdev_add`` of a tap with ``script=`` fail cleanly; the
  daemon keeps serving that guest and QMP (never killed);
* every socket of the embedded default and of explicit ``-qmp``/``-chardev`` paths is
  0600 (its runtime directory 0700), the pid file 0644, the log 0600, and nobody else can
  connect.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError

from netstack.privileges import CAP_NET_ADMIN, CAP_NET_RAW
from tests.interop.daemon_ns import (
    configure_ns,
    connections,
    counters,
    daemon,
    echo_server,
    qmp_client,
    tap_args,
)
from tests.kit.netns import link_exists, netns, require_root, unique_name

pytestmark = [pytest.mark.timeout(300)]

QEMU = shutil.which("qemu-system-x86_64")
NOBODY = 65534


def netstackd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "netstack", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def qemu(*args: str) -> subprocess.CompletedProcess[str]:
    assert QEMU is not None
    return subprocess.run(
        [QEMU, *args, "-M", "none", "-display", "none", "-nodefaults"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _text(done: subprocess.CompletedProcess[str], prog: str) -> str:
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{prog}: ")
    return lines[0][len(prog) + 2 :]


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed")
@pytest.mark.parametrize(
    "args",
    [
        ("-runas", "nosuchuser-ns"),
        ("-runas", "12:"),
        ("-runas", ":12"),
        ("-runas", "12:34x"),
        ("-runas", "4294967295:0"),
        ("-runas", ""),
        ("-sandbox", "maybe"),
        ("-sandbox", "help"),
        ("-sandbox", "on,foo=bar"),
        ("-sandbox", "on,obsolete=maybe"),
        ("-sandbox", "on,elevateprivileges=sometimes"),
        ("-sandbox", "on,spawn=never"),
        ("-sandbox", "on,resourcecontrol=x"),
    ],
)
def test_errors_are_qemus(args: tuple[str, str]) -> None:
    ours, theirs = netstackd(*args), qemu(*args)
    assert ours.returncode == theirs.returncode == 1
    assert _text(ours, "netstackd") == _text(theirs, "qemu-system-x86_64")


@pytest.mark.parametrize(
    ("arg", "text"),
    [
        ("user=nosuchuser-ns", 'User "nosuchuser-ns" doesn\'t exist (and is not <uid>:<gid>)'),
        ("chroot=/var/empty", "chroot is not supported by netstackd"),
        ("foo=1", "Invalid parameter 'foo'"),
        ("async-teardown=maybe", "Parameter 'async-teardown' expects 'on' or 'off'"),
    ],
)
def test_run_with_errors(arg: str, text: str) -> None:
    done = netstackd("-run-with", arg)
    assert done.returncode == 1
    assert _text(done, "netstackd") == f"-run-with {arg}: {text}"


def test_run_with_help() -> None:
    done = netstackd("-run-with", "help")
    assert done.returncode == 0 and not done.stderr  # QEMU: 1 (docs/config-files.md)
    assert done.stdout.splitlines() == [
        "run-with options:", "  async-teardown=<bool (on/off)>", "  chroot=<str>", "  user=<str>",
    ]  # fmt: skip


def _status_caps(status: dict[str, str]) -> int:
    return int(status["CapEff"], 16)


async def test_dropped_and_sandboxed_daemon_serves() -> None:
    require_root()
    ifname, later = unique_name("cfd"), unique_name("cfl")
    # sticky and world-writable like /tmp: the owner of a socket file may remove it
    with _public_dir(0o1777) as tmp_path, netns("cfd", ipv6=False) as ns:
        args = [
            *tap_args("nat0", 0, ns, ifname),
            "-chardev", f"socket,id=vh0,path={tmp_path}/vh0.sock,server=on,wait=off",
            "-netdev", "vhost-user,id=vm0,chardev=vh0",
            "-run-with", "user=nobody", "-sandbox", "on",
        ]  # fmt: skip
        with daemon(tmp_path, args) as d:
            configure_ns(ns, ifname)
            st = d.wait_status("Seccomp", "2")
            assert st["Uid"].split() == [str(NOBODY)] * 4
            assert _status_caps(st) == (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW)
            async with echo_server() as port, qmp_client(d.qmp_path) as qmp:
                async with connections(ns, port, 20) as out:
                    assert out["ok"] == 20, out
                await qmp.execute("netdev_add", {"type": "user", "id": "nat9"})
                await qmp.execute(
                    "netdev_add",
                    {"type": "tap", "id": "t9", "ifname": later, "script": "no",
                     "downscript": "no"},
                )  # fmt: skip
                assert link_exists(None, later)
                with pytest.raises(ExecuteError) as err:
                    await qmp.execute(
                        "netdev_add",
                        {"type": "tap", "id": "t8", "ifname": unique_name("cfn"),
                         "script": "no", "downscript": "no", "x-netns": ns},
                    )  # fmt: skip
                assert "Operation not permitted" in str(err.value), str(err.value)
                await qmp.execute("netdev_del", {"id": "t9"})
                async with connections(ns, port, 20) as out:
                    assert out["ok"] == 20, out
                assert await qmp.execute("query-version")
            assert d.proc.poll() is None
        assert d.proc.returncode == 0, d.output()
        assert not (tmp_path / "vh0.sock").exists() and not d.qmp_path.exists()


async def test_spawn_denied_fails_cleanly(tmp_path: Path) -> None:
    require_root()
    ifname = unique_name("cfs")
    script = tmp_path / "up.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    guestfwd = ",guestfwd=tcp:10.0.2.200:4000-cmd:cat"
    with netns("cfs", ipv6=False) as ns:
        args = [*tap_args("nat0", 0, ns, ifname, guestfwd), "-sandbox", "on,spawn=deny"]
        with daemon(tmp_path, args) as d:
            configure_ns(ns, ifname)
            d.wait_status("Seccomp", "2")
            probe = (
                "import socket\ns=socket.create_connection(('10.0.2.200',4000),timeout=10)\n"
                "s.sendall(b'x')\nprint(repr(s.recv(1)))"
            )
            done = await asyncio.to_thread(
                subprocess.run, ["ip", "netns", "exec", ns, sys.executable, "-c", probe],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode != 0 and "x" not in done.stdout, done
            assert "refused" in done.stderr or "reset" in done.stderr.lower(), done.stderr
            async with echo_server() as port, qmp_client(d.qmp_path) as qmp:
                c = await counters(qmp, "nat0")
                assert c["guestfwd-spawn-failed"] >= 1, c
                with pytest.raises(ExecuteError) as err:
                    await qmp.execute(
                        "netdev_add",
                        {"type": "tap", "id": "t8", "ifname": unique_name("cfx"),
                         "script": str(script), "downscript": "no"},
                    )  # fmt: skip
                assert f"network script {script} failed" in str(err.value), str(err.value)
                async with connections(ns, port, 10) as out:
                    assert out["ok"] == 10, out
                assert await qmp.execute("query-version")
            assert d.proc.poll() is None
            assert "cannot run '/bin/sh -c cat'" in d.output()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextmanager
def _public_dir(mode: int = 0o755) -> Iterator[Path]:
    """A directory everyone may enter (so only the files' own modes guard them)."""
    path = Path(tempfile.mkdtemp(prefix="netstack-modes-"))
    path.chmod(mode)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _connect_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         "socat", "-u", "OPEN:/dev/null", f"UNIX-CONNECT:{path}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None, "netstackd exited"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sockets_and_files_are_private() -> None:
    require_root()
    if shutil.which("setpriv") is None or shutil.which("socat") is None:
        pytest.skip("setpriv or socat missing")
    with _public_dir() as pub:
        # the embedded default (no options) under XDG_RUNTIME_DIR
        env = dict(os.environ, XDG_RUNTIME_DIR=str(pub))
        proc = subprocess.Popen([sys.executable, "-m", "netstack"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            rundir = pub / "netstack"
            _wait_for(rundir / "qmp.sock", proc)
            _wait_for(rundir / "vhost-user.sock", proc)
            assert _mode(rundir) == 0o700
            assert _mode(rundir / "qmp.sock") == 0o600
            assert _mode(rundir / "vhost-user.sock") == 0o600
            assert "Permission denied" in _connect_as_nobody(rundir / "qmp.sock").stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        # explicit paths in a directory others may enter
        args = [
            "-qmp", f"unix:{pub}/q.sock,server=on,wait=off",
            "-chardev", f"socket,id=vh0,path={pub}/v.sock,server=on,wait=off",
            "-netdev", "vhost-user,id=vm0,chardev=vh0",
            "-chardev", f"socket,id=c1,path={pub}/c.sock,server=on,wait=off",
            "-netdev", f"stream,id=s0,server=on,addr.type=unix,addr.path={pub}/s.sock",
            "-pidfile", f"{pub}/pid", "-D", f"{pub}/log",
        ]  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "netstack", *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for name in ("q.sock", "v.sock", "c.sock", "s.sock", "pid", "log"):
                _wait_for(pub / name, proc)
            for name in ("q.sock", "v.sock", "c.sock"):
                assert _mode(pub / name) == 0o600, name
                done = _connect_as_nobody(pub / name)
                assert done.returncode != 0 and "Permission denied" in done.stderr, done
            assert _mode(pub / "s.sock") & 0o077 == 0
            assert "Permission denied" in _connect_as_nobody(pub / "s.sock").stderr
            assert _mode(pub / "pid") == 0o644
            assert _mode(pub / "log") == 0o600
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
