"""``-netdev user,smb=DIR`` against Debian's Samba: ``smbclient`` in a network namespace
behind a tap served by the user NAT reaches the private smbd at 10.0.2.4.

Topology (the namespace is made and deleted here)::

    ns: us0 10.0.2.100/24  <- tap t0 (x-netns) -> hub 0 <- user nat0,smb=DIR

Covered: the share ``qemu`` is listed, a file is read (content checked) and one written
(it lands in DIR with its content) over port 445, and over 139 (NetBIOS session); the
forwards as ``query-user-forwards`` lists them and the connections ``info usernet`` shows;
``netdev_del`` with a connection open leaves no smbd and no private directory; the same
after SIGKILL of a ``netstackd`` process (the smbds die with it, the guard removes the
directory); the error texts for a bad DIR and a bad ``smbserver`` equal QEMU 7.2's
(``netdev_add`` to ``qemu-system-x86_64 -machine none``); a missing smbd is a clean error.
Every process started here is killed by PID, every namespace deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import drivers
from drivers.user import control as user_control
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.qapi import parse_netdev_cli
from tests.daemon_proc import running_daemon
from tests.kit.netns import ip, netns, require_root, run_in
from tests.kit.qemu import netdev_add_errors, qemu_monitor

pytestmark = [pytest.mark.timeout(240)]

IFNAME = "us0"
GUEST_ADDR = "10.0.2.100"
SMB_SERVER = "10.0.2.4"
CONTENT = b"hello from the host's shared directory\n" * 100
UPLOAD = b"written by smbclient in the namespace\n" * 50


def need_samba() -> None:
    require_root()
    for tool in ("smbclient",):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (tools/setup-deps.sh: samba, smbclient)")
    if not os.path.exists("/usr/sbin/smbd") and shutil.which("smbd") is None:
        pytest.skip("smbd not installed (tools/setup-deps.sh: samba)")


def our_processes(marker: str) -> list[int]:
    """PIDs whose command line mentions ``marker`` (a private directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


def share_dir(tmp: Path) -> Path:
    share = tmp / "share dir"  # a blank in the path: libslirp's command splitting breaks it
    share.mkdir()
    (share / "hello.txt").write_bytes(CONTENT)
    return share


def setup_guest(ns: str) -> None:
    ip("-n", ns, "addr", "add", f"{GUEST_ADDR}/24", "dev", IFNAME)
    ip("-n", ns, "link", "set", IFNAME, "up")


@contextlib.asynccontextmanager
async def served(
    tmp: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[Netstack, str]]:
    need_samba()
    caplog.set_level(logging.WARNING, logger="netstack")
    with netns("nsmb", ipv6=False) as ns:
        daemon = Netstack(drivers.registry())
        try:
            for spec in (
                f"user,id=nat0,smb={share_dir(tmp)}",
                f"tap,id=t0,ifname={IFNAME},script=no,downscript=no,x-netns={ns}",
                "hubport,id=h0,hubid=0,netdev=nat0",
                "hubport,id=h1,hubid=0,netdev=t0",
            ):
                await daemon.netdev_add(parse_netdev_cli(spec))
            setup_guest(ns)
            yield daemon, ns
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert not errors, [r.getMessage() for r in errors]
        finally:
            await daemon.close()


async def smbclient(ns: str, commands: str, *args: str, timeout: float = 90) -> str:
    rc, out = await run_in(
        ns, "smbclient", "-N", f"//{SMB_SERVER}/qemu", *args, "-c", commands, timeout=timeout
    )
    assert rc == 0, out
    return out


def private_dir(client: Any) -> str:
    assert client.smb is not None
    return str(client.smb.private)


@pytest.mark.root
async def test_smbclient_lists_gets_and_puts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with served(tmp_path, caplog) as (daemon, ns):
        client = daemon.find_netdev("nat0")
        assert client is not None
        private = private_dir(client)
        assert os.path.isdir(private) and os.path.isfile(os.path.join(private, "smb.conf"))
        rows = [r for r in user_control.forwards(client) if r["rule"].startswith("smb=")]
        assert [(r["type"], r["guest-addr"], r["guest-port"]) for r in rows] == [
            ("guestfwd", SMB_SERVER, 139), ("guestfwd", SMB_SERVER, 445),
        ]  # fmt: skip
        assert all(private in r["target"] and r["target"].startswith("cmd:") for r in rows)

        rc, out = await run_in(ns, "smbclient", "-N", "-L", f"//{SMB_SERVER}", timeout=90)
        assert rc == 0 and "qemu" in out, out

        got = tmp_path / "got.txt"
        upload = tmp_path / "upload.txt"
        upload.write_bytes(UPLOAD)
        out = await smbclient(ns, f"ls; get hello.txt {got}; put {upload} up.txt")
        assert "hello.txt" in out, out
        assert got.read_bytes() == CONTENT
        assert (tmp_path / "share dir" / "up.txt").read_bytes() == UPLOAD

        # NetBIOS session service (port 139) is served too, as in QEMU
        out = await smbclient(ns, "ls", "-p", "139")
        assert "up.txt" in out, out

        counters = client.counters()
        assert counters["guestfwd-children"] >= 3, counters
        assert counters.get("guestfwd-spawn-failed", 0) == 0, counters
        text = user_control.usernet_info(client)
        assert text.startswith("Hub 0 (nat0):"), text
    assert not os.path.exists(private)
    assert not our_processes(private)


#: smbclient's commands on a pipe kept open: it lists the share and holds the connection.
HOLD = b"ls\n"


def smbds(private: str, guard: int | None) -> list[int]:
    """The processes serving ``private`` but its guard (smbd, samba-dcerpcd, rpcd_*)."""
    return [p for p in our_processes(private) if p != guard]


async def wait_for(check: Any, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


@pytest.mark.root
async def test_netdev_del_with_a_connection_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with served(tmp_path, caplog) as (daemon, ns):
        client = daemon.find_netdev("nat0")
        assert client is not None
        private = private_dir(client)
        guard = client.smb.guard_pid
        assert guard is not None and guard in our_processes(private)
        # an RPC (share enumeration) starts samba-dcerpcd, a daemon smbd spawns on demand
        rc, out = await run_in(ns, "smbclient", "-N", "-L", f"//{SMB_SERVER}", timeout=90)
        assert rc == 0 and "qemu" in out, out
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, "smbclient", "-N", f"//{SMB_SERVER}/qemu",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert proc.stdin is not None
            proc.stdin.write(HOLD)

            def established() -> bool:
                return any(
                    r["direction"] == "guestfwd" and r["remote-port"] == 445
                    and r["state"] == "ESTABLISHED"
                    for r in user_control.connections(client)
                )  # fmt: skip

            assert await wait_for(established), user_control.connections(client)

            def serving() -> set[str]:
                return {_comm(p) for p in smbds(private, guard)}

            assert await wait_for(lambda: {"smbd", "samba-dcerpcd"} <= serving()), serving()
            assert "10.0.2.4" in user_control.usernet_info(client)
            daemon.netdev_del("nat0")
            assert not os.path.exists(private)
            assert not our_processes(private)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


@pytest.mark.root
def test_sigkill_leaves_no_smbd_and_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A netstackd process killed with SIGKILL while an smbd serves a connection."""
    need_samba()
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    with netns("nsmk", ipv6=False) as ns:
        args = [
            "-netdev", f"user,id=nat0,smb={share_dir(tmp_path)}",
            "-netdev", f"tap,id=t0,ifname={IFNAME},script=no,downscript=no,x-netns={ns}",
            "-netdev", "hubport,id=h0,hubid=0,netdev=nat0",
            "-netdev", "hubport,id=h1,hubid=0,netdev=t0",
        ]  # fmt: skip
        with running_daemon(tmp_path, args) as d:
            (private,) = tmpdir.glob("netstack-smb.*")  # made before QMP listens
            setup_guest(ns)
            listing = subprocess.run(
                ["ip", "netns", "exec", ns, "smbclient", "-N", "-L", f"//{SMB_SERVER}"],
                capture_output=True, timeout=90,
            )  # fmt: skip
            assert listing.returncode == 0, listing
            holder = subprocess.Popen(
                ["ip", "netns", "exec", ns, "smbclient", "-N", f"//{SMB_SERVER}/qemu"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                assert holder.stdin is not None
                holder.stdin.write(HOLD)
                holder.stdin.flush()
                marker = str(private / "smb.conf")
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    names = [_comm(p) for p in our_processes(marker)]
                    if "smbd" in names:
                        break
                    time.sleep(0.1)
                # smbd, and whichever helpers it has forked (cleanupd, samba-dcerpcd)
                assert "smbd" in names, names
                d.stop(signal.SIGKILL)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    if not our_processes(str(private)) and not private.exists():
                        break
                    time.sleep(0.1)
                assert not our_processes(str(private))
                assert not private.exists()
            finally:
                holder.kill()
                holder.wait(10)
                if holder.stdin is not None:
                    holder.stdin.close()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


async def test_missing_smbd_is_a_clean_error(tmp_path: Path) -> None:
    daemon = Netstack(drivers.registry())
    try:
        missing = tmp_path / "no" / "smbd"
        with pytest.raises(GenericError) as err:
            await daemon.netdev_add(parse_netdev_cli(f"user,id=u0,smb={tmp_path},x-smbd={missing}"))
        assert err.value.desc == f"Could not find '{missing}', please install it"
        assert daemon.find_netdev("u0") is None
        await daemon.netdev_add(parse_netdev_cli("user,id=u0"))  # the id is free again
    finally:
        await daemon.close()


# -- error texts against QEMU 7.2 ----------------------------------------------------------------


def _cases(tmp: Path) -> list[dict[str, Any]]:
    afile = tmp / "a-file"
    afile.write_text("x")
    return [
        {"smb": str(tmp / "missing")},
        {"smb": ""},
        {"smb": "/etc/passwd"},
        {"smb": str(tmp), "smbserver": "10.0.2.2"},
        {"smb": str(tmp), "smbserver": "10.0.2.3"},
        {"smb": str(tmp), "smbserver": "192.168.1.4"},
        {"smb": str(tmp), "smbserver": "bogus"},
        {"smb": str(tmp), "smbserver": "10.0.2.77"},
        {"smb": str(tmp), "net": "10.9.0.0/16"},
        {"smb": str(tmp), "smbserver": "10.0.2.4", "hostfwd": [{"str": "x"}]},
    ]


async def _qemu_errors(tmp: Path, cases: list[dict[str, Any]]) -> list[str | None]:
    async with qemu_monitor(tmp, name="smb-errors") as qmp:
        return await netdev_add_errors(qmp, [{"type": "user", **args} for args in cases])


async def _our_errors(cases: list[dict[str, Any]]) -> list[str | None]:
    from netstack.qapi import netdev_from_qmp

    daemon = Netstack(drivers.registry())
    out: list[str | None] = []
    try:
        for n, args in enumerate(cases):
            try:
                await daemon.netdev_add(netdev_from_qmp({"id": f"u{n}", "type": "user", **args}))
            except GenericError as exc:
                out.append(str(exc.desc))
                continue
            out.append(None)
            daemon.netdev_del(f"u{n}")
    finally:
        await daemon.close()
    return out


@pytest.mark.qemu
async def test_error_texts_match_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 unavailable")
    if not os.path.exists("/usr/sbin/smbd"):
        pytest.skip("QEMU needs /usr/sbin/smbd (samba) to get past its smbd check")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    cases = _cases(tmp_path)
    want = await asyncio.wait_for(_qemu_errors(tmp_path, cases), 120)
    qemu_left = sorted(p.name for p in tmpdir.iterdir())
    got = await _our_errors(cases)
    assert got == want, "\n".join(
        f"{c}: qemu {w!r} / ours {g!r}" for c, w, g in zip(cases, want, got, strict=True)
    )
    assert all(name.startswith("qemu-smb.") for name in qemu_left)
    assert not list(tmpdir.glob("netstack-smb.*"))  # nothing of ours left behind
