"""A real QEMU 7.2 guest attached over vhost-user reaches the user NAT: DHCP, ping, DNS and
TFTP through the daemon, and the daemon reports the lease over QMP (query-dhcp-leases,
guest-network-get-interfaces, query-rx-filter of the vhost-user port)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from pathlib import Path

import dpkt
import pytest
from qemu.qmp import QMPClient

import drivers
from netstack.daemon import Netstack
from netstack.qmp.server import monitor_add
from tests.kit.guests import attach_user_over_vhost_user, vhost_user_qemu_args
from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(300)]
MAC = "52:54:00:12:34:56"
NAME, NAME_ADDR = "vm.netstack.example", "192.0.2.77"


class DnsResponder(asyncio.DatagramProtocol):
    """Answers A queries for NAME (the test's own upstream: never the machine's resolver)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = dpkt.dns.DNS(data)
        r = dpkt.dns.DNS(id=q.id, qd=q.qd, an=[], ns=[], ar=[])
        r.op = dpkt.dns.DNS_RA | (q.op & dpkt.dns.DNS_RD)
        r.qr = dpkt.dns.DNS_R
        if q.qd and q.qd[0].name.rstrip(".") == NAME:
            r.an = [
                dpkt.dns.DNS.RR(
                    name=q.qd[0].name,
                    type=dpkt.dns.DNS_A,
                    cls=1,
                    ttl=60,
                    rdata=socket.inet_aton(NAME_ADDR),
                )
            ]
        else:
            r.rcode = dpkt.dns.DNS_RCODE_NXDOMAIN
        self.transport.sendto(bytes(r), addr)  # type: ignore[attr-defined]


async def test_guest_over_vhost_user_uses_the_nat(image: GuestImage, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    dns_transport, _ = await loop.create_datagram_endpoint(
        DnsResponder, local_addr=("127.0.0.1", 0)
    )
    dns_port = dns_transport.get_extra_info("sockname")[1]
    root = tmp_path / "tftp"
    root.mkdir()
    (root / "small.txt").write_bytes(b"hello over vhost-user\n")
    (root / "random.bin").write_bytes(os.urandom(1 << 20))
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in root.iterdir()}

    sock = tmp_path / "vhost.sock"
    qmp = tmp_path / "qmp.sock"
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    try:
        user = f"user,id=nat0,tftp={root},x-dns-upstream=127.0.0.1:{dns_port}"
        await attach_user_over_vhost_user(ns, sock, user, MAC)
        await monitor_add(ns, "qmp", f"unix:{qmp},server=on,wait=off", False, 0)

        script = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
ping -c 2 -W 3 10.0.2.2 && echo PING-OK
nslookup {NAME} 10.0.2.3 2>&1 | grep -q {NAME_ADDR} && echo DNS-OK
tftp -g -r small.txt -l /tmp/s 10.0.2.2 && echo "SMALL $(md5sum < /tmp/s)"
tftp -g -b 1468 -r random.bin -l /tmp/r 10.0.2.2 && echo "BIG $(md5sum < /tmp/r)"
"""
        args = vhost_user_qemu_args(sock, MAC)
        async with Guest(image, script, args, name="vunat", timeout=200) as g:
            result = await g.wait()
        result.check()
        out = result.output
        assert "DHCP-OK" in out and "PING-OK" in out and "DNS-OK" in out, out
        assert f"SMALL {md5['small.txt']}" in out, out
        assert f"BIG {md5['random.bin']}" in out, out

        client = QMPClient("t")
        await client.connect(str(qmp))
        try:
            leases = await client.execute("query-dhcp-leases")
            assert any(
                le["mac-address"] == MAC and le["ip-address"] == "10.0.2.15" for le in leases
            ), leases
            ifaces = await client.execute("guest-network-get-interfaces")
            (vm,) = [i for i in ifaces if i["name"] == "vm0"]
            assert vm["hardware-address"] == MAC
            assert {"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24} in (
                vm["ip-addresses"]
            )
            (rx,) = await client.execute("query-rx-filter", {"name": "vm0"})
            assert rx["main-mac"] == MAC
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()
    finally:
        dns_transport.close()
        await ns.close()
