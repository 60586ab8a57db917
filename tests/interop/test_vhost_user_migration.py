"""Live migration of a real QEMU 7.2 guest (TCG, 256 MiB) attached over vhost-user, between
two QEMUs attached to two sockets of the same back end, and back again.

* Peer first: DPDK testpmd's vhost PMD (two ports, ``macswap`` on each port's own traffic)
  is the back end; the guest sends pings the back end echoes, so both rings carry traffic
  while the VM moves: both migrations complete and traffic flows at the destination port.
* QEMU's own ``-netdev user`` on the same machine, guest, workload and hops, with no
  vhost-user back end at all: what QEMU 7.2 under TCG does to a migrated guest by itself
  (its TCP connections to the host do not survive a move: only progress is checked).
* netstackd: the ports of both sockets and the user netdev share hub 0. While the VM moves
  (A to B, then back to a third QEMU on A) it downloads a throttled 6 MiB file from an HTTP
  server on the host's 127.0.0.1 (as 10.0.2.2), uploads ~2 MiB of text to it (busybox wget
  sizes ``--post-file`` with strlen, so no NUL bytes), and fetches small
  files in a loop: every MD5 matches, the DHCP lease renews to the same address and the
  daemon still holds one lease for the MAC. QEMU would refuse ``migrate`` at once without
  LOG_SHMFD and LOG_ALL, so completion also shows the dirty log was accepted; a page the
  back end wrote but did not log would show as a wrong MD5 in the guest.
* A guest lost after a hop (a kernel crash, a ring error its virtio driver reports, a
  stall) makes the run xfail, with the console printed as evidence: QEMU 7.2 under TCG
  loses migrated guests in each of these ways with its own ``-netdev user`` as well
  (docs/migration.md, "Guest crashes after a hop"). Everything else fails: a migration
  QEMU does not complete, and, once the guest got through, a wrong MD5, a lease that
  changed, a dirty log refused or out of range.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import drivers
from netstack.daemon import Netstack
from netstack.qapi import check_id, parse_chardev_cli, parse_netdev_cli
from netstack.qmp.server import monitor_add
from tests.kit.polling import until
from tools.guest import UDHCPC_SCRIPT_PATH, Guest, GuestImage, HostUnavailable, build, ensure_qemu
from tools.migrate.qemu import MigrationResult, migrate, qmp_connect, vm_args
from tools.migrate.web import Web
from tools.vhost_user_frontend import testpmd

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(420)]
MAC = "52:54:00:12:34:56"

NAT_SCRIPT = """
addr() {{ ip -4 -o addr show eth0 | grep -o 'inet [0-9.]*'; }}
udhcpc -i eth0 -q -n -t 6 -T 2 -s {udhcpc} && echo "LEASE1 $(addr)"
dd if=/dev/urandom bs=64k count=12 2>/dev/null | od -x > /tmp/up && echo "UPMD5 $(md5sum < /tmp/up)"
(wget -q -O - http://10.0.2.2:{port}/big | md5sum | sed 's/^/BIG /') &
(wget -q -O - --post-file /tmp/up http://10.0.2.2:{port}/up | sed 's/^/UPRESULT /') &
echo MIG-GO
n=0
while [ $n -lt 600 ] && [ "$(wget -q -O - http://10.0.2.2:{port}/ctl)" != stop ]; do
  echo "SMALL $n $(wget -q -O - http://10.0.2.2:{port}/small | md5sum)"
  n=$((n+1))
done
wait
udhcpc -i eth0 -q -n -t 6 -T 2 -s {udhcpc} && echo "LEASE2 $(addr)"
echo MIG-DONE
"""

# Against testpmd (no IP stack behind it): pings to a neighbour the back end bounces back.
PING_SCRIPT = """
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up
ip neigh replace 10.0.2.2 lladdr 52:54:00:12:34:02 dev eth0
(ping -q -i 0.02 -c 100000 10.0.2.2 >/dev/null 2>&1) &
echo MIG-GO
n=0
while [ $n -lt 600 ] && [ ! -e /tmp/never ]; do echo "TICK $n"; n=$((n+1)); sleep 0.2; done
"""


#: One TCG thread for the vCPU and the rest of QEMU (it made no clear difference to how
#: often QEMU 7.2 loses migrated guests: docs/migration.md).
TCG = "tcg,thread=single"

#: The phase before any migration (see :meth:`Moves.progress`).
BEFORE = "before the first hop"

#: How a guest kernel's crash starts on the console.
GUEST_CRASH = re.compile(
    r"Kernel panic|BUG: |general protection fault|Oops: |invalid opcode: |stack segment: "
)


@pytest.fixture(scope="module")
def image() -> GuestImage:
    try:
        ensure_qemu(install=False)
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")
    return build()


class Moves:
    """Two migrations of one guest: A -> B, then B -> a new QEMU on A."""

    def __init__(
        self,
        image: GuestImage,
        tmp: Path,
        script: str,
        socks: tuple[Path, Path],
        *,
        user_netdev: bool = False,
    ):
        self.image = image
        self.tmp = tmp
        self.script = script
        self.socks = socks
        self.user_netdev = user_netdev  # QEMU's own -netdev user instead of vhost-user
        self.results: list[MigrationResult] = []
        self.guests: list[Guest] = []

    def guest(self, n: int, sock: Path, incoming: bool) -> Guest:
        qmp = self.tmp / f"qmp{n}.sock"
        uri = f"unix:{self.tmp / f'mig{n}.sock'}" if incoming else None
        args = vm_args(sock, qmp, MAC, incoming=uri)
        if self.user_netdev:  # the same machine, with QEMU's own back end and no chardev
            at = args.index("-chardev")
            args = args[:at] + args[at + 2 :]
            args[args.index("-netdev") + 1] = "user,id=net0"
        g = Guest(
            self.image,
            self.script,
            args,
            name=f"mig{n}",
            timeout=300,
            wait_ifaces=("eth0",),
            # A loaded host makes TCG so slow that Linux's boot-time check of the timer
            # interrupt fails ("IO-APIC + timer doesn't work!", a panic): skip it.
            append="no_timer_check",
            accel=TCG,
        )
        self.guests.append(g)
        return g

    async def hop(self, src: int, dst: int) -> MigrationResult:
        # The destination listens once QEMU has started, seconds later on a loaded machine.
        incoming = self.tmp / f"mig{dst}.sock"
        await until(incoming.exists, 60)
        client = await qmp_connect(self.tmp / f"qmp{src}.sock")
        try:
            result = await migrate(client, f"unix:{incoming}", timeout=120)
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()
        self.results.append(result)
        return result

    async def run(self, after_each: float = 2.0) -> Guest:
        """Boot on A, move to B, move back to A; returns the final guest."""
        a, b = self.socks
        g0 = self.guest(0, a, False)
        g1 = self.guest(1, b, True)
        await g0.start()
        await g1.start()
        await self.progress(g0, "MIG-GO", 0, BEFORE, 180)
        await asyncio.sleep(0.5)
        first = await self.hop(0, 1)
        assert first.ok, (first, g0.console[-2000:])
        await self.progress(g1, r"(SMALL|TICK) \d+", len(g1.console), "after the first hop")
        await asyncio.sleep(after_each)
        await g0.stop()  # frees socket A (the source stays paused after a migration)
        g2 = self.guest(2, a, True)
        await g2.start()
        mark = len(g1.console)
        try:
            second = await self.hop(1, 2)
        except Exception:  # e.g. its QMP socket is gone: did the guest die meanwhile?
            await self.progress(g1, "(?!)", mark, "after the first hop", 0)
            raise
        assert second.ok, (second, g1.console[-2000:])
        await self.progress(g2, r"(SMALL|TICK) \d+", len(g2.console), "after the second hop")
        return g2

    @staticmethod
    async def progress(g: Guest, pattern: str, since: int, when: str, timeout: float = 60) -> None:
        """Until ``g`` prints ``pattern``. A guest lost after a hop (a kernel crash, a ring
        error its virtio driver reports, a stall) is xfailed with its console printed: QEMU
        7.2 under TCG loses migrated guests in all these ways with its own ``-netdev user``
        too (``test_migration_with_qemu_user_netdev``, docs/migration.md). Before any hop
        only a kernel crash is; anything else fails."""
        try:
            await g.wait_for(pattern, timeout, since=since)
            return
        except Exception as exc:
            await g.stop()
            console = g.console
            print(f"\n--- console of {g.name} ({when}) ---\n{console[-6000:]}")
            if when != BEFORE:
                pytest.xfail(f"guest lost {when} (QEMU 7.2 TCG)")
            if GUEST_CRASH.search(console, since):
                pytest.xfail(f"guest kernel crashed {when} (TCG)")
            raise AssertionError(f"{exc} {when}\n{console[-3000:]}") from None

    async def close(self) -> None:
        for g in self.guests:
            await g.stop()


@pytest.fixture
async def web() -> AsyncIterator[Web]:
    server = Web(big=6 << 20, rate=768 << 10)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_migration_with_qemu_user_netdev(image: GuestImage, tmp_path: Path, web: Web) -> None:
    """The same guest, workload and hops with QEMU's own ``-netdev user``: the reference for
    what QEMU 7.2 under TCG does to a migrated guest without any vhost-user back end (its
    TCP connections to the host do not survive a move, so only progress is checked)."""
    socks = (tmp_path / "a.sock", tmp_path / "b.sock")
    script = NAT_SCRIPT.format(udhcpc=UDHCPC_SCRIPT_PATH, port=web.port)
    moves = Moves(image, tmp_path, script, socks, user_netdev=True)
    try:
        await moves.run()
    finally:
        await moves.close()
    assert all(r.ok for r in moves.results), moves.results
    for r in moves.results:
        print(f"\n-netdev user: downtime {r.downtime_ms} ms, total {r.total_ms} ms")


async def test_migration_with_dpdk_vhost_pmd(image: GuestImage, tmp_path: Path) -> None:
    if not testpmd.available():
        pytest.skip("dpdk-testpmd unavailable (apt-get install dpdk-dev)")
    socks = (tmp_path / "a.sock", tmp_path / "b.sock")
    vdevs = [f"net_vhost{i},iface={s},queues=1" for i, s in enumerate(socks)]
    pmd = testpmd.Testpmd(vdevs, "macswap", extra=["--port-topology=loop"], wait_for=socks)
    moves = Moves(image, tmp_path, PING_SCRIPT, socks)
    async with pmd:
        try:
            await moves.run()
        finally:
            await moves.close()
        stats = pmd.stats()
    assert all(r.ok for r in moves.results), moves.results
    assert stats[1].rx_packets > 0 and stats[1].tx_packets > 0, stats  # traffic at B
    for r in moves.results:
        print(f"\ndpdk vhost PMD: downtime {r.downtime_ms} ms, total {r.total_ms} ms")


async def test_migration_same_daemon_keeps_nat_and_lease(
    image: GuestImage, tmp_path: Path, web: Web
) -> None:
    socks = (tmp_path / "a.sock", tmp_path / "b.sock")
    qmp = tmp_path / "daemon-qmp.sock"
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    moves = Moves(
        image, tmp_path, NAT_SCRIPT.format(udhcpc=UDHCPC_SCRIPT_PATH, port=web.port), socks
    )
    try:
        for name, sock in zip("ab", socks, strict=True):
            await ns.chardev_add(
                parse_chardev_cli(f"socket,id=c{name},path={sock},server=on,wait=off"),
                from_cli=True,
            )
        for spec in (
            "user,id=nat0",
            "vhost-user,id=vma,chardev=ca",
            "vhost-user,id=vmb,chardev=cb",
            "hubport,id=h0,hubid=0,netdev=nat0",
            "hubport,id=h1,hubid=0,netdev=vma",
            "hubport,id=h2,hubid=0,netdev=vmb",
        ):
            netdev = parse_netdev_cli(spec)
            check_id(netdev.id)
            await ns.netdev_add(netdev)
        await monitor_add(ns, "qmp", f"unix:{qmp},server=on,wait=off", False, 0)
        try:
            final = await moves.run()
            web.stop_flag = True
            await moves.progress(final, "MIG-DONE", len(final.console), "at the end", 120)
        finally:
            await moves.close()
        out = "".join(g.console for g in moves.guests)
        assert f"BIG {web.big_md5}" in out, out[-3000:]
        up = re.search(r"^UPMD5 (\w+)", out, re.M)
        assert up is not None and f"UPRESULT {up.group(1)}" in out, out[-3000:]
        assert web.uploads == [up.group(1)]
        smalls = re.findall(r"^SMALL \d+ (\S*)", out, re.M)
        assert smalls and set(smalls) == {web.small_md5}, smalls
        lease1 = re.search(r"^LEASE1 inet ([\d.]+)", out, re.M)
        lease2 = re.search(r"^LEASE2 inet ([\d.]+)", out, re.M)
        assert lease1 and lease2 and lease1.group(1) == lease2.group(1), out[-3000:]
        client = await qmp_connect(qmp)
        try:
            leases = await client.execute("query-dhcp-leases")
            netdevs = {n["id"]: n for n in await client.execute("query-netdev")}  # type: ignore[union-attr]
        finally:
            await client.disconnect()
        for port in ("vma", "vmb"):  # each was a source once: its log was used, all in range
            c = netdevs[port]["counters"]
            assert c["log-bases"] >= 1 and c["log-bits-set"] > 0, c
            assert c["log-refused"] == 0 and c["log-out-of-range"] == 0, c
        mine = [le for le in leases if le["mac-address"] == MAC]  # type: ignore[union-attr]
        assert len(mine) == 1 and mine[0]["ip-address"] == lease1.group(1), leases
        for r in moves.results:
            print(f"\nnetstackd: downtime {r.downtime_ms} ms, total {r.total_ms} ms")
    finally:
        await ns.close()
