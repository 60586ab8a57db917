"""``smb=`` of the user netdev without Samba: a stand-in smbd (a shell script given with
``x-smbd``) behind the exec forwards, the checks and their texts, the private directory's
life, the guard, the stale-directory sweep and the loopback pair.

The guest is the in-process TCP stack of ``test_user_guestfwd`` (peered with the netdev).
The real smbd is exercised by ``tests/interop/test_user_smb.py``.
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from drivers.user import control as user_control
from drivers.user import smb
from drivers.user.guestfwd import loopback_pair
from tests.kit.polling import until
from tests.unit.test_user_guestfwd import netdev, netdev_error, pid_alive

#: A stand-in for smbd: prints what it was given and the kind of socket on its stdin,
#: then echoes (inetd style: the connection is stdin and stdout).
FAKE_SMBD = """#!/bin/sh
python3 -c 'import socket; s = socket.socket(fileno=0); print(s.family.name, s.type.name)' \
    && printf 'args %s\\n' "$*" && exec cat
"""


@pytest.fixture
def fake_smbd(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "smbd"
    path.parent.mkdir()
    path.write_text(FAKE_SMBD)
    path.chmod(0o755)
    return path


@pytest.fixture
def tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private TMPDIR, so the private directories made here can be counted."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(smb.tempfile, "tempdir", str(path))
    return path


def share(tmp_path: Path) -> Path:
    path = tmp_path / "share"
    path.mkdir(exist_ok=True)
    return path


# -- the configuration and the checks ----------------------------------------------------------


def test_smb_conf_is_qemus() -> None:
    conf = smb.smb_conf("/tmp/p", "/srv/share", "alice")
    assert conf.startswith("[global]\nprivate dir=/tmp/p\ninterfaces=127.0.0.1\n")
    for line in ("bind interfaces only=yes", "ncalrpc dir=/tmp/p/ncalrpc",
                 "log file=/tmp/p/log.smbd", "map to guest = Bad User",
                 "disable spoolss = yes"):  # fmt: skip
        assert f"\n{line}\n" in conf
    assert conf.endswith("[qemu]\npath=/srv/share\nread only=no\nguest ok=yes\nforce user=alice\n")


def test_share_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    afile = tmp_path / "f"
    afile.write_text("x")
    runnable = tmp_path / "run"
    runnable.write_text("x")
    runnable.chmod(0o755)
    for path, reason in (
        (str(tmp_path / "missing"), "No such file or directory"),
        ("", "No such file or directory"),
        (str(afile), "Permission denied"),  # access(R_OK | X_OK) first, as QEMU
        (str(runnable), "Not a directory"),
        (str(afile / "below"), "Not a directory"),
        ("/x\0y", "Invalid argument"),
        ("/" + "a" * 5000, "File name too long"),
    ):
        with pytest.raises(smb.GenericError) as err:
            smb.check_share(path)
        assert err.value.desc == f"Error accessing shared directory '{path}': {reason}"
    for bad in ("a%U", "new\nline", "trailing ", "back\\"):
        (tmp_path / bad).mkdir()
        with pytest.raises(smb.GenericError, match=r"cannot be written to smb\.conf"):
            smb.check_share(str(tmp_path / bad))
    (tmp_path / "rel dir").mkdir()
    assert smb.check_share("rel dir") == str(tmp_path / "rel dir")


def test_find_smbd(tmp_path: Path, fake_smbd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert smb.find_smbd(str(fake_smbd)) == str(fake_smbd)
    monkeypatch.setenv("PATH", str(fake_smbd.parent))
    assert smb.find_smbd("smbd") == str(fake_smbd)  # a bare name: looked up on PATH
    with pytest.raises(smb.GenericError) as err:
        smb.find_smbd(str(tmp_path / "nope"))
    assert err.value.desc == f"Could not find '{tmp_path / 'nope'}', please install it"
    with pytest.raises(smb.GenericError) as err:
        smb.find_smbd("no-such-smbd")
    assert err.value.desc == "Could not find 'no-such-smbd', please install it"
    fake_smbd.chmod(0o644)
    if os.geteuid() != 0:  # root may execute anything with an x bit; none here either way
        with pytest.raises(smb.GenericError, match="not an executable file"):
            smb.find_smbd(str(fake_smbd))
    with pytest.raises(smb.GenericError, match="not an executable file"):
        smb.find_smbd(str(tmp_path))


async def test_user_name_and_relative_smbd(
    tmp_path: Path, tmpdir: Path, fake_smbd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(fake_smbd.parent.parent)
    assert smb.find_smbd("./bin/smbd") == str(fake_smbd)  # absolute: smbd runs elsewhere

    def no_user(uid: int) -> None:
        raise KeyError(uid)

    monkeypatch.setattr(smb.pwd, "getpwuid", no_user)
    assert await netdev_error(f"user,id=u0,smb={share(tmp_path)},x-smbd={fake_smbd}") == (
        "Failed to retrieve user name"
    )
    assert not list(tmpdir.iterdir())


async def test_no_private_directory(
    tmp_path: Path, fake_smbd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smb.tempfile, "tempdir", str(tmp_path / "no-such-tmp"))
    assert await netdev_error(f"user,id=u0,smb={share(tmp_path)},x-smbd={fake_smbd}") == (
        "Could not create samba server dir"
    )


async def test_netdev_errors_leave_nothing(tmp_path: Path, tmpdir: Path, fake_smbd: Path) -> None:
    d = share(tmp_path)
    missing = tmp_path / "no-smbd"
    assert await netdev_error(f"user,id=u0,smb={d},x-smbd={missing}") == (
        f"Could not find '{missing}', please install it"
    )
    assert await netdev_error(f"user,id=u0,smb={d}/x,x-smbd={fake_smbd}") == (
        f"Error accessing shared directory '{d}/x': No such file or directory"
    )
    for server in ("10.0.2.2", "10.0.2.3", "10.0.3.4"):
        assert await netdev_error(f"user,id=u0,smb={d},smbserver={server},x-smbd={fake_smbd}") == (
            "Conflicting/invalid smbserver address"
        )
    # a guestfwd rule holding ADDR:445 (QEMU's guestfwd rules come first)
    assert (
        await netdev_error(
            f"user,id=u0,guestfwd=tcp:10.0.2.4:445-cmd:true,smb={d},x-smbd={fake_smbd}"
        )
        == "Conflicting/invalid smbserver address"
    )
    assert await netdev_error(f"user,id=u0,smb={d},smbserver=nope") == (
        "Failed to parse SMB address"
    )
    assert not list(tmpdir.iterdir())


# -- the exec forwards -------------------------------------------------------------------------


async def test_connections_run_smbd_on_a_loopback_tcp_pair(
    tmp_path: Path, tmpdir: Path, fake_smbd: Path
) -> None:
    d = share(tmp_path)
    async with netdev(f"user,id=u0,smb={d},x-smbd={fake_smbd}") as (ns, client, stack):
        server = client.smb
        assert server is not None
        private = Path(server.private)
        assert private.parent == tmpdir and private.name.startswith("netstack-smb.")
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert f"path={d}\n" in (private / "smb.conf").read_text()
        rows = [r for r in user_control.forwards(client) if r["type"] == "guestfwd"]
        assert [(r["guest-addr"], r["guest-port"], r["rule"]) for r in rows] == [
            ("10.0.2.4", 139, f"smb={d}"), ("10.0.2.4", 445, f"smb={d}"),
        ]  # fmt: skip
        assert rows[0]["target"].endswith(f"{fake_smbd} -l {private} -s {private}/smb.conf")

        a, b = stack.open("10.0.2.4", 445), stack.open("10.0.2.4", 139)
        await until(lambda: a.got.count(b"\n") >= 2 and b.got.count(b"\n") >= 2, timeout=20)
        kind, args = a.got.decode().splitlines()[:2]
        assert kind.startswith("AF_INET SOCK_STREAM")  # smbd needs an inet peer
        assert args == f"args -l {private} -s {private}/smb.conf"
        a.write(b"\x00\x00\x00\x04smb!")
        await until(lambda: a.got.endswith(b"\x00\x00\x00\x04smb!"))
        pids = set(client.guestfwd.children.live)
        assert len(pids) == 2
        assert client.guestfwd.counters()["guestfwd-connections"] == 2
        rows = [r for r in user_control.connections(client) if r["direction"] == "guestfwd"]
        assert sorted(r["remote-port"] for r in rows) == [139, 445], rows
        guard = server.guard_pid
        assert guard is not None and pid_alive(guard)

        ns.netdev_del("u0")
        assert not private.exists()
        assert not any(pid_alive(p) for p in pids)
        assert not pid_alive(guard)
    assert not list(tmpdir.iterdir())


async def test_smbserver_moves_the_forwards(tmp_path: Path, tmpdir: Path, fake_smbd: Path) -> None:
    d = share(tmp_path)
    spec = f"user,id=u0,net=10.5.0.0/16,smb={d},smbserver=10.5.7.7,x-smbd={fake_smbd}"
    async with netdev(spec) as (_ns, client, _stack):
        rows = user_control.forwards(client)
        assert {(r["guest-addr"], r["guest-port"]) for r in rows} == {
            ("10.5.7.7", 139), ("10.5.7.7", 445),
        }  # fmt: skip
        assert rows[0]["rule"] == f"smb={d},smbserver=10.5.7.7"
        # a removed forward stops answering; the directory lives until the netdev goes
        user_control.forward_remove(client, "guestfwd", None, "10.5.7.7", 139)
        assert [r["guest-port"] for r in user_control.forwards(client)] == [445]
        assert client.smb is not None and os.path.isdir(client.smb.private)
    assert not list(tmpdir.iterdir())


async def test_smb_passes_restrict(tmp_path: Path, tmpdir: Path, fake_smbd: Path) -> None:
    """Exec forwards pass ``restrict=on`` (libslirp), so an isolated guest has its share."""
    d = share(tmp_path)
    spec = f"user,id=u0,restrict=on,smb={d},x-smbd={fake_smbd}"
    async with netdev(spec) as (_ns, client, stack):
        conn = stack.open("10.0.2.4", 445)
        await until(lambda: conn.got.count(b"\n") >= 2, timeout=20)
        assert conn.got.startswith(b"AF_INET")
        assert client.counters().get("restrict-refused", 0) == 0


# -- SIGKILL of the daemon: the guard, the sweep ------------------------------------------------


async def test_guard_removes_the_directory_when_the_daemon_is_gone(
    tmp_path: Path, tmpdir: Path, fake_smbd: Path
) -> None:
    d = share(tmp_path)
    async with netdev(f"user,id=u0,smb={d},x-smbd={fake_smbd}") as (_ns, client, _stack):
        server = client.smb
        assert server is not None
        private = Path(server.private)
        # a helper as samba-dcerpcd: a daemon of its own that names the configuration
        helper = await _detached_sleeper(f"{private}/smb.conf")
        # the daemon's end of the guard's pipe closes as it would when the daemon dies
        os.close(server._guard_pipe)
        server._guard_pipe = -1
        await until(lambda: not private.exists(), timeout=20)
        await until(lambda: not running(helper), timeout=10)
        assert server._guard is not None
        assert server._guard.wait(10) == 0


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: whoever adopted it may reap it late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def _detached_sleeper(marker: str) -> int:
    """A process re-parented away from us whose command line holds ``marker``."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", 'sleep 60 "$1" >/dev/null 2>&1 </dev/null & echo $!', "sh", marker,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return int(out)


def test_sweep_removes_only_abandoned_directories(tmp_path: Path) -> None:
    import logging

    log = logging.getLogger("test")
    dead = tmp_path / "netstack-smb.dead"
    alive = tmp_path / "netstack-smb.alive"
    young = tmp_path / "netstack-smb.young"
    old = tmp_path / "netstack-smb.old"
    other = tmp_path / "qemu-smb.other"
    for p in (dead, alive, young, old, other):
        p.mkdir()
    (dead / smb.LOCK_NAME).write_text("")
    (other / smb.LOCK_NAME).write_text("")
    lock = smb._hold_lock(str(alive))
    past = time.time() - smb.STALE_AGE - 10
    os.utime(old, (past, past))
    try:
        removed = smb.sweep_stale(str(tmp_path), log)
        assert sorted(removed) == sorted([str(dead), str(old)])
        assert alive.exists() and young.exists() and other.exists()
        # the lock is held by this open file: another open of it cannot take it
        fd = os.open(alive / smb.LOCK_NAME, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    finally:
        os.close(lock)
    assert smb.sweep_stale(str(tmp_path), log) == [str(alive)]


async def test_a_netdev_sweeps_what_a_killed_daemon_left(
    tmp_path: Path, tmpdir: Path, fake_smbd: Path
) -> None:
    left = tmpdir / "netstack-smb.left"
    left.mkdir()
    (left / smb.LOCK_NAME).write_text("")
    (left / "smb.conf").write_text("")
    d = share(tmp_path)
    async with netdev(f"user,id=u0,smb={d},x-smbd={fake_smbd}") as (_ns, client, _stack):
        assert not left.exists()
        assert client.smb is not None
        assert [p.name for p in tmpdir.iterdir()] == [Path(client.smb.private).name]


# -- the loopback pair -------------------------------------------------------------------------


def test_loopback_pair() -> None:
    ours, theirs = loopback_pair()
    with ours, theirs:
        assert ours.family == theirs.family == socket.AF_INET
        assert ours.getsockname() == theirs.getpeername()
        assert ours.getpeername() == theirs.getsockname()
        ours.sendall(b"ping")
        assert theirs.recv(4) == b"ping"
        assert ours.gettimeout() is None and theirs.gettimeout() is None
