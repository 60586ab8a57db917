"""tap life cycle against the kernel: scripts, inherited fds, errors, and what is left
behind (nothing) when a netdev is deleted or the daemon is killed.

Scripts are real executables the test writes; they record their arguments, their network
namespace and whether the interface exists while they run. fd passing is tested both
ways: a tap fd handed to the in-process daemon (``fd=N``), and one inherited by a
``netstackd`` subprocess. The subprocess (:data:`RUNNER`, the CLI's ``serve`` with the
tap, bridge and hubport drivers) is also killed with SIGKILL: its taps are not
persistent, so the kernel removes them with the last fd.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from drivers import hubport, tap
from drivers.tap import tun
from drivers.tap.netns import call_in_netns, open_netns
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.qapi import parse_netdev_cli
from tests.interop.test_tap_netns import ADDR_A, ADDR_B, ping
from tests.kit.netns import ip, link_exists, netns, require_root

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]

RUNNER = r"""
import asyncio, sys
from drivers import bridge, hubport, tap
from netstack import cli
registry = {"tap": tap.SPEC, "bridge": bridge.SPEC, "hubport": hubport.SPEC}
sys.exit(asyncio.run(cli.serve(cli.parse_argv(sys.argv[1:]), registry, banner="READY")))
"""


def daemon() -> Netstack:
    require_root()
    return Netstack({"tap": tap.SPEC, "hubport": hubport.SPEC})


async def wait_gone(ns: str, ifname: str, timeout: float = 3.0) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while link_exists(ns, ifname):
        if loop.time() > end:
            return False
        await asyncio.sleep(0.05)
    return True


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def ns_inode(ns: str) -> int:
    return os.stat(f"/var/run/netns/{ns}").st_ino


# -- scripts ---------------------------------------------------------------------------------


async def test_scripts_run_in_order_inside_the_namespace(tmp_path: Path) -> None:
    ns = daemon()
    with netns() as name:
        log = tmp_path / "log"
        record = (
            f'echo "$0 $1 $(stat -L -c %i /proc/self/ns/net)" >> {log}\n'
            f'ip link show "$1" >/dev/null && echo "$0 sees $1" >> {log}\n'
        )
        up = script(tmp_path / "ifup", record + 'ip link set "$1" up\n')
        down = script(tmp_path / "ifdown", record)
        await ns.netdev_add(
            parse_netdev_cli(f"tap,id=t0,ifname=st0,script={up},downscript={down},x-netns={name}")
        )
        # netdev_add completed after the script: its record is there, the link is up
        lines = log.read_text().splitlines()
        assert lines == [f"{up} st0 {ns_inode(name)}", f"{up} sees st0"]
        assert "UP" in ip("-n", name, "link", "show", "st0")
        assert f"ifname=st0,script={up},downscript={down},x-netns={name}" in ns.info_network()
        ns.netdev_del("t0")
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while len(log.read_text().splitlines()) < 4 and loop.time() < end:
            await asyncio.sleep(0.05)
        # the downscript ran with the interface still there (it holds the fd)
        assert log.read_text().splitlines()[2:] == [
            f"{down} st0 {ns_inode(name)}",
            f"{down} sees st0",
        ]
        assert await wait_gone(name, "st0")
        await ns.close()


@pytest.mark.parametrize(("body", "status"), [("exit 3\n", 768), ("kill -9 $$\n", 9), (None, 256)])
async def test_failing_script_reports_status_and_leaves_nothing(
    tmp_path: Path, body: str | None, status: int
) -> None:
    ns = daemon()
    with netns() as name:
        path = script(tmp_path / "ifup", body) if body else str(tmp_path / "missing")
        with pytest.raises(GenericError) as err:
            await ns.netdev_add(
                parse_netdev_cli(f"tap,id=t0,ifname=sf0,script={path},downscript=no,x-netns={name}")
            )
        assert err.value.desc == f"network script {path} failed with status {status}"
        assert await wait_gone(name, "sf0")
        assert ns.find_netdev("t0") is None and ns.clients == []
        # the id is free again and the same interface can be made
        await ns.netdev_add(
            parse_netdev_cli(f"tap,id=t0,ifname=sf0,script=no,downscript=no,x-netns={name}")
        )
        assert link_exists(name, "sf0")
        await ns.close()
        assert await wait_gone(name, "sf0")


async def test_only_queue_zero_runs_the_scripts(tmp_path: Path) -> None:
    ns = daemon()
    with netns() as name:
        log = tmp_path / "log"
        up = script(tmp_path / "ifup", f'echo "up $1" >> {log}\n')
        await ns.netdev_add(
            parse_netdev_cli(
                f"tap,id=t0,ifname=mq0,script={up},downscript=no,queues=3,x-netns={name}"
            )
        )
        assert log.read_text() == "up mq0\n"
        info = ns.info_network()
        assert f"t0: index=0,type=tap,ifname=mq0,script={up},downscript=no" in info
        assert "t0: index=2,type=tap,ifname=mq0,script=no,downscript=no" in info
        await ns.close()


# -- fds -------------------------------------------------------------------------------------


def open_tap_in(name: str, ifname: str, vnet: bool = True) -> int:
    """A tap made by the test itself (as a management tool would) inside ``name``."""
    nsfd = open_netns(name)
    try:
        fd = call_in_netns(nsfd, lambda: os.open(tun.PATH_NET_TUN, os.O_RDWR))
    finally:
        os.close(nsfd)
    tun.configure(fd, ifname, vnet_hdr=vnet, vnet_required=vnet, multiqueue=False)
    os.set_blocking(fd, True)  # the daemon must make it non-blocking itself
    return fd


@contextmanager
def two_namespaces() -> Iterator[tuple[str, str]]:
    with netns("nsa") as a, netns("nsb") as b:
        yield a, b


def address(ns: str, ifname: str, addr: str) -> None:
    ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
    ip("-n", ns, "link", "set", ifname, "up")


async def test_fd_given_to_the_in_process_daemon() -> None:
    ns = daemon()
    with two_namespaces() as (na, nb):
        fd = open_tap_in(na, "fa")
        await ns.netdev_add(parse_netdev_cli(f"tap,id=a,fd={fd}"))
        await ns.netdev_add(
            parse_netdev_cli(f"tap,id=b,ifname=fb,script=no,downscript=no,x-netns={nb}")
        )
        for spec in ("hubport,id=pa,hubid=0,netdev=a", "hubport,id=pb,hubid=0,netdev=b"):
            await ns.netdev_add(parse_netdev_cli(spec))
        assert f"a: index=0,type=tap,fd={fd}" in ns.info_network()
        a = ns.find_netdev("a")
        assert a is not None and a.accepts_vnet and not os.get_blocking(fd)
        address(na, "fa", ADDR_A)
        address(nb, "fb", ADDR_B)
        await ping(na, ADDR_B)
        ns.netdev_del("a")  # the netdev owned the fd: closing it removes the tap
        assert await wait_gone(na, "fa")
        with pytest.raises(OSError):
            os.fstat(fd)
        await ns.close()


async def test_fd_errors_and_exclusions() -> None:
    ns = daemon()
    null = os.open(os.devnull, os.O_RDWR)
    with pytest.raises(GenericError) as err:
        await ns.netdev_add(parse_netdev_cli(f"tap,id=a,fd={null}"))
    assert (
        err.value.desc == f"Unable to query TUNGETIFF on FD {null}: Inappropriate ioctl for device"
    )
    with pytest.raises(OSError):
        os.fstat(null)  # QEMU closes a refused fd too
    with pytest.raises(GenericError) as err:
        await ns.netdev_add(parse_netdev_cli("tap,id=a,fd=nosuch"))
    assert err.value.desc == "File descriptor named 'nosuch' has not been found"
    with pytest.raises(GenericError) as err:
        await ns.netdev_add(parse_netdev_cli("tap,id=a,fd=3,ifname=x"))
    assert err.value.desc.endswith("are invalid with fd=")
    assert ns.clients == []


async def test_fds_make_one_queue_each() -> None:
    ns = daemon()
    with netns() as name:
        nsfd = open_netns(name)
        try:
            files = call_in_netns(
                nsfd, lambda: [os.open(tun.PATH_NET_TUN, os.O_RDWR) for _ in "ab"]
            )
        finally:
            os.close(nsfd)
        for fd in files:
            tun.configure(fd, "mf0", vnet_hdr=True, vnet_required=True, multiqueue=True)
        await ns.netdev_add(parse_netdev_cli(f"tap,id=m,fds={files[0]}:{files[1]}"))
        queues = [c for c in ns.clients if c.name == "m"]
        assert [(q.queue_index, q.info_str) for q in queues] == [
            (0, f"fd={files[0]}"),
            (1, f"fd={files[1]}"),
        ]
        ns.netdev_del("m")
        assert await wait_gone(name, "mf0")
        # mixed vnet headers are refused (IFF_VNET_HDR is per device: two devices here),
        # and every fd given is closed
        files = [open_tap_in(name, "mf1", vnet=True), open_tap_in(name, "mf2", vnet=False)]
        with pytest.raises(GenericError) as err:
            await ns.netdev_add(parse_netdev_cli(f"tap,id=m,fds={files[0]}:{files[1]}"))
        assert err.value.desc == "vnet_hdr not consistent across given tap fds"
        assert ns.clients == []
        assert await wait_gone(name, "mf1") and await wait_gone(name, "mf2")
        await ns.close()


# -- kernel errors ---------------------------------------------------------------------------


async def test_kernel_errors_carry_qemu_texts() -> None:
    ns = daemon()
    with netns() as name:
        await ns.netdev_add(
            parse_netdev_cli(f"tap,id=a,ifname=busy0,script=no,downscript=no,x-netns={name}")
        )
        with pytest.raises(GenericError) as err:
            await ns.netdev_add(
                parse_netdev_cli(f"tap,id=b,ifname=busy0,script=no,downscript=no,x-netns={name}")
            )
        assert err.value.desc == "could not configure /dev/net/tun (busy0): Device or resource busy"
        # a name longer than IFNAMSIZ - 1 is cut as QEMU's pstrcpy cuts it
        await ns.netdev_add(
            parse_netdev_cli(
                f"tap,id=c,ifname=averyveryverylongname,script=no,downscript=no,x-netns={name}"
            )
        )
        assert link_exists(name, "averyveryverylo")
        with pytest.raises(GenericError) as err:
            await ns.netdev_add(parse_netdev_cli("tap,id=d,script=no,x-netns=netstack-nosuch"))
        assert err.value.desc == (
            "x-netns: cannot open network namespace 'netstack-nosuch': No such file or directory"
        )
        with pytest.raises(GenericError) as err:
            await ns.netdev_add(parse_netdev_cli("tap,id=d,script=no,x-netns=/proc/self/ns/uts"))
        assert err.value.desc == "x-netns: '/proc/self/ns/uts' is not a network namespace"
        await ns.close()
        assert await wait_gone(name, "busy0")


async def test_template_name_and_default_scripts_in_info() -> None:
    ns = daemon()
    with netns() as name:
        await ns.netdev_add(parse_netdev_cli(f"tap,id=a,script=no,x-netns={name}"))
        a = ns.find_netdev("a")
        assert a is not None
        ifname = getattr(a, "ifname", "")
        assert ifname.startswith("tap") and link_exists(name, ifname)
        # no downscript= means QEMU's default, shown in info and run at delete
        assert a.info_str.startswith(f"ifname={ifname},script=no,downscript=/etc/qemu-ifdown")
        assert getattr(a, "counters")()["vnet-hdr-len"] == 12  # noqa: B009
        assert sndbuf(a) == tun.INT_MAX  # no sndbuf=: unlimited
        await ns.netdev_add(
            parse_netdev_cli(
                f"tap,id=b,script=no,downscript=no,sndbuf=1M,poll-us=50,x-netns={name}"
            )
        )
        b = ns.find_netdev("b")
        assert b is not None and sndbuf(b) == 1 << 20
        await ns.close()


def sndbuf(client: object) -> int:
    """``TUNGETSNDBUF`` on a tap client's fd."""
    buf = bytearray(4)
    fcntl.ioctl(getattr(client, "fd"), 0x800454D3, buf, True)  # noqa: B009
    return int.from_bytes(buf, sys.byteorder, signed=True)


# -- a netstackd process ---------------------------------------------------------------------


def start_daemon(args: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        pass_fds=pass_fds,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "READY" not in line:
        proc.kill()
        rest = proc.communicate(timeout=10)[0]
        raise AssertionError(f"netstackd did not start: {line}{rest}")
    return proc


async def test_fd_inherited_by_a_daemon_process_and_sigkill_leaves_nothing() -> None:
    require_root()
    with two_namespaces() as (na, nb):
        fd = open_tap_in(na, "ka", vnet=False)
        proc = start_daemon(
            [
                "-netdev", f"tap,id=a,fd={fd}",
                "-netdev", f"tap,id=b,ifname=kb,script=no,downscript=no,x-netns={nb}",
                "-netdev", "hubport,id=pa,hubid=0,netdev=a",
                "-netdev", "hubport,id=pb,hubid=0,netdev=b",
            ],
            pass_fds=(fd,),
        )  # fmt: skip
        try:
            os.close(fd)  # only the daemon holds the tap now
            address(na, "ka", ADDR_A)
            address(nb, "kb", ADDR_B)
            await ping(na, ADDR_B)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert await wait_gone(na, "ka")
            assert await wait_gone(nb, "kb")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


async def test_daemon_process_reports_tap_errors_like_qemu(tmp_path: Path) -> None:
    require_root()
    with netns() as name:
        bad = script(tmp_path / "ifup", "exit 1\n")
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, "-netdev",
             f"tap,id=a,ifname=eb0,script={bad},x-netns={name}"],
            capture_output=True, text=True, timeout=30, cwd=REPO,
        )  # fmt: skip
        assert proc.returncode == 1
        assert proc.stderr.strip() == (
            f"netstackd: -netdev tap,id=a,ifname=eb0,script={bad},x-netns={name}: "
            f"network script {bad} failed with status 256"
        )
        assert not link_exists(name, "eb0")


async def test_daemon_stopping_cleanly_runs_downscripts_and_removes_taps(tmp_path: Path) -> None:
    require_root()
    with netns() as name:
        log = tmp_path / "log"
        down = script(
            tmp_path / "ifdown", f'ip link show "$1" >/dev/null && echo "down $1" >> {log}\n'
        )
        proc = start_daemon(
            ["-netdev", f"tap,id=a,ifname=sa0,script=no,downscript={down},queues=2,x-netns={name}"]
        )
        try:
            assert link_exists(name, "sa0")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            assert await wait_gone(name, "sa0")
            loop = asyncio.get_running_loop()
            end = loop.time() + 5
            while not log.exists() and loop.time() < end:
                await asyncio.sleep(0.05)
            assert log.read_text() == "down sa0\n"  # once (queue 0), with the tap still there
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
