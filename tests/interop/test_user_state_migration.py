"""A real QEMU 7.2 guest moves between two netstackd "hosts" (two network namespaces) while a
download through the user netdev's NAT is in progress, and the download completes with the
right MD5: the TCP connection moved with TCP_REPAIR, the lease with the state blob.

Topology (every name carries this test's tag and pid; all deleted in teardown)::

    host A (ns A)  veth 10.1.0.1/30 ----- 10.1.0.2  server (ns S)
    host B (ns B)  veth 10.2.0.1/30 ----- 10.2.0.2  10.3.0.1/32: throttled HTTP server
    10.99.0.1/32 on lo in A and B: the address the VM's connections leave from (it moves
    with the VM: S routes it to A, to a blackhole while the state moves, then to B)

Each host runs a netstackd (``-netdev user`` + ``vhost-user`` on hub 0) in its namespace;
QEMU runs outside (its vhost-user and migration sockets are unix paths). The migration is
driven by ``python -m tools.migrate``'s sequence (destination started with ``-S``).
Without CAP_NET_ADMIN the socket cannot be put in repair mode: see the last test.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.guest import UDHCPC_SCRIPT_PATH, Guest, GuestImage, HostUnavailable, build, ensure_qemu
from tools.migrate.__main__ import run as migrate_run
from tools.migrate.qemu import vm_args
from tools.migrate.web import Web

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(300)]
MAC = "52:54:00:12:34:56"
TAG = f"mgu{os.getpid() % 100000}"
NS_A, NS_B, NS_S = f"{TAG}a", f"{TAG}b", f"{TAG}s"
BIG, RATE = 6 << 20, 640 << 10
REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
udhcpc -i eth0 -q -n -t 6 -T 2 -s {udhcpc} && echo LEASE-OK
echo MIG-GO
wget -q -O - http://10.3.0.1:8080/big | md5sum | sed 's/^/BIG /'
udhcpc -i eth0 -q -n -t 6 -T 2 -s {udhcpc} && echo "LEASE2 $(ip -4 -o addr show eth0)"
echo MIG-DONE
"""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def image() -> GuestImage:
    try:
        ensure_qemu(install=False)
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    return build()


@pytest.fixture
def hosts() -> Iterator[None]:
    try:
        for ns in (NS_A, NS_B, NS_S):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for side, ns, net in (("a", NS_A, "10.1.0"), ("b", NS_B, "10.2.0")):
            host_if, srv_if = f"{TAG}{side}h", f"{TAG}{side}s"
            sh("ip", "link", "add", host_if, "netns", ns, "type", "veth", "peer", srv_if,
               "netns", NS_S)  # fmt: skip
            sh("ip", "-n", ns, "addr", "add", f"{net}.1/30", "dev", host_if)
            sh("ip", "-n", ns, "link", "set", host_if, "up")
            sh("ip", "-n", NS_S, "addr", "add", f"{net}.2/30", "dev", srv_if)
            sh("ip", "-n", NS_S, "link", "set", srv_if, "up")
            sh("ip", "-n", ns, "addr", "add", "10.99.0.1/32", "dev", "lo")
            sh("ip", "-n", ns, "route", "add", "10.3.0.1/32", "via", f"{net}.2", "src", "10.99.0.1")
        sh("ip", "-n", NS_S, "addr", "add", "10.3.0.1/32", "dev", "lo")
        sh("ip", "-n", NS_S, "route", "add", "10.99.0.1/32", "via", "10.1.0.1")
        yield
    finally:
        for ns in (NS_A, NS_B, NS_S):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


class Proc:
    """A process started here, stopped by PID."""

    def __init__(self, argv: list[str], log: Path) -> None:
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        self.log = log

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


async def wait_path(path: Path, proc: Proc, timeout: float = 20) -> None:
    for _ in range(int(timeout * 20)):
        if path.exists():
            return
        if proc.proc.poll() is not None:
            raise AssertionError(proc.log.read_text())
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never appeared: {proc.log.read_text()}")


def daemon(ns: str, tmp: Path, name: str) -> Proc:
    argv = [
        "ip", "netns", "exec", ns, sys.executable, "-m", "netstack",
        "-chardev", f"socket,id=c0,path={tmp / f'{name}.vhost'},server=on,wait=off",
        "-netdev", "user,id=u0",
        "-netdev", "vhost-user,id=vm0,chardev=c0",
        "-netdev", "hubport,id=h0,hubid=0,netdev=u0",
        "-netdev", "hubport,id=h1,hubid=0,netdev=vm0",
        "-qmp", f"unix:{tmp / f'{name}.qmp'},server=on,wait=off",
    ]  # fmt: skip
    return Proc(argv, tmp / f"{name}.log")


async def test_download_survives_the_move_between_hosts(
    image: GuestImage, hosts: None, tmp_path: Path
) -> None:
    web = Web(big=BIG)
    server = Proc(
        [
            "ip", "netns", "exec", NS_S, sys.executable, "-c",
            "from tools.migrate.web import main; main()", "10.3.0.1", "8080", str(BIG),
            str(RATE),
        ],
        tmp_path / "web.log",
    )  # fmt: skip
    da, db = daemon(NS_A, tmp_path, "a"), daemon(NS_B, tmp_path, "b")
    guests: list[Guest] = []
    try:
        await wait_path(tmp_path / "a.qmp", da)
        await wait_path(tmp_path / "b.qmp", db)
        script = SCRIPT.format(udhcpc=UDHCPC_SCRIPT_PATH)
        uri = f"unix:{tmp_path / 'mig.sock'}"
        src = Guest(image, script, vm_args(tmp_path / "a.vhost", tmp_path / "qa", MAC),
                    name="hosta", timeout=240)  # fmt: skip
        dst_args = [*vm_args(tmp_path / "b.vhost", tmp_path / "qb", MAC, incoming=uri), "-S"]
        dst = Guest(image, script, dst_args, name="hostb", timeout=240)
        guests += [src, dst]
        await src.start()
        await dst.start()
        await src.wait_for("MIG-GO", 120)
        await asyncio.sleep(2.0)  # the download is under way
        outcome = await migrate_run(
            str(tmp_path / "qa"), str(tmp_path / "qb"), uri,
            str(tmp_path / "a.qmp"), str(tmp_path / "b.qmp"),
            before_export=f"ip -n {NS_S} route replace blackhole 10.99.0.1/32",
            after_import=f"ip -n {NS_S} route replace 10.99.0.1/32 via 10.2.0.1",
        )  # fmt: skip
        assert outcome.ok, (outcome, da.log.read_text()[-2000:], db.log.read_text()[-2000:])
        assert outcome.exported["tcp"] >= 1 and outcome.imported["leases"] == 1, outcome
        try:
            await dst.wait_for("MIG-DONE", 60)
        except Exception:
            from tools.migrate.__main__ import _call

            conns = await _call(str(tmp_path / "b.qmp"), "query-user-connections")
            netdev = await _call(str(tmp_path / "b.qmp"), "query-netdev")
            raise AssertionError(
                f"{conns}\n{netdev}\n{dst.console[-1500:]}\n{db.log.read_text()[-3000:]}"
                f"\n{server.log.read_text()[-1000:]}"
            ) from None
        out = src.console + dst.console
        assert f"BIG {web.big_md5}" in out, out[-2000:]
        assert re.search(r"LEASE2 .*inet 10\.0\.2\.15/", out), out[-2000:]
        print(
            f"\ntwo hosts: downtime {outcome.migration and outcome.migration.downtime_ms} ms,"
            f" VM stood still {outcome.stood_still_ms:.0f} ms, moved {outcome.imported}"
        )
    finally:
        for g in guests:
            await g.stop()
        for p in (da, db, server):
            p.stop()


def test_without_cap_net_admin_the_socket_does_not_move(tmp_path: Path) -> None:
    """Repair mode needs CAP_NET_ADMIN: without it dump() says so and leaves the
    connection working (the export counts it in tcp-not-moved)."""
    code = """
import socket
from drivers.user import tcp_repair
srv = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(srv.getsockname())
s, _ = srv.accept()
try:
    tcp_repair.dump(c)
except tcp_repair.RepairError as exc:
    print("REFUSED", exc)
c.sendall(b"still-alive")
print("GOT", s.recv(100).decode())
"""
    if subprocess.run(["which", "setpriv"], capture_output=True).returncode:
        pytest.skip("setpriv (util-linux) unavailable")
    done = subprocess.run(
        ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert "REFUSED TCP_REPAIR needs CAP_NET_ADMIN" in done.stdout, done.stdout + done.stderr
    assert "GOT still-alive" in done.stdout
