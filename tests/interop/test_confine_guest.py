"""A real QEMU 7.2 guest over vhost-user, served by a netstackd that dropped root for nobody
and runs under its strictest seccomp sandbox (``spawn=deny,elevateprivileges=deny``).

The guest gets its DHCP lease, pings the gateway and a host address (ICMP through the
kept ``CAP_NET_RAW``), resolves a name through the DNS relay (the test's own upstream),
fetches a file over TFTP and sends TCP through the NAT to a host server; then it connects
to a ``guestfwd ... cmd:`` rule, which needs a process the sandbox forbids: the guest's
connection fails, the daemon counts it and keeps serving the guest (a second ping) and
QMP, and is never killed. ``/proc/PID/status`` shows the daemon as uid 65534 with
``Seccomp: 2``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.interop.daemon_ns import counters, daemon, qmp_client
from tests.interop.test_vhost_user_nat import NAME, NAME_ADDR, DnsResponder
from tests.kit.guests import user_over_vhost_user_argv, vhost_user_qemu_args
from tests.kit.netns import require_root
from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
)

pytestmark = [pytest.mark.qemu, pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]
MAC = "52:54:00:12:34:57"


@asynccontextmanager
async def tcp_sink() -> AsyncIterator[tuple[int, list[bytes]]]:
    got: list[bytes] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.append(await r.read(100))
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], got
    finally:
        srv.close()


async def test_guest_served_by_a_confined_daemon(image: GuestImage) -> None:
    require_root()
    loop = asyncio.get_running_loop()
    dns, _ = await loop.create_datagram_endpoint(DnsResponder, local_addr=("127.0.0.1", 0))
    pub = Path(tempfile.mkdtemp(prefix="netstack-confined-"))
    pub.chmod(0o1777)  # nobody reads the TFTP root and removes its own sockets
    try:
        root = pub / "tftp"
        root.mkdir()
        root.chmod(0o755)  # not mkdir's mode: the process umask may be narrower
        (root / "small.txt").write_bytes(b"hello from a confined daemon\n")
        (root / "small.txt").chmod(0o644)
        sock = pub / "vhost.sock"
        dns_port = dns.get_extra_info("sockname")[1]
        user = (
            f"user,id=nat0,tftp={root},x-dns-upstream=127.0.0.1:{dns_port},"
            "guestfwd=tcp:10.0.2.200:4000-cmd:cat"
        )
        args = [
            *user_over_vhost_user_argv(sock, user, MAC),
            "-run-with", "user=nobody",
            "-sandbox", "on,spawn=deny,elevateprivileges=deny",
        ]  # fmt: skip
        async with tcp_sink() as (port, got):
            with daemon(pub, args) as d:
                st = d.wait_status("Seccomp", "2")
                assert st["Uid"].split()[1] == "65534"
                script = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
ping -c 2 -W 3 10.0.2.2 && echo PING-OK
nslookup {NAME} 10.0.2.3 2>&1 | grep -q {NAME_ADDR} && echo DNS-OK
tftp -g -r small.txt -l /tmp/s 10.0.2.2 && echo "TFTP $(cat /tmp/s)"
echo through-the-nat | nc 10.0.2.2 {port}; echo "OUTBOUND $?"
echo x | nc 10.0.2.200 4000 > /tmp/g; echo "GUESTFWD $? [$(cat /tmp/g)]"
ping -c 1 -W 3 10.0.2.2 && echo PING2-OK
"""
                qemu_args = vhost_user_qemu_args(sock, MAC)
                async with Guest(image, script, qemu_args, name="confined", timeout=200) as g:
                    result = await g.wait()
                result.check()
                out = result.output
                for word in ("DHCP-OK", "PING-OK", "DNS-OK", "TFTP hello from a confined",
                             "OUTBOUND 0", "PING2-OK"):  # fmt: skip
                    assert word in out, out
                assert "GUESTFWD" in out and "[x]" not in out, out
                assert got == [b"through-the-nat\n"]
                async with qmp_client(d.qmp_path) as qmp:
                    c = await counters(qmp, "nat0")
                    assert c["guestfwd-spawn-failed"] >= 1, c
                    leases = await qmp.execute("query-dhcp-leases")
                    assert isinstance(leases, list) and leases[0]["mac-address"] == MAC
                assert d.proc.poll() is None
                assert d.status()["Seccomp"] == "2"
            assert d.proc.returncode == 0, d.output()
    finally:
        dns.close()
        shutil.rmtree(pub, ignore_errors=True)
