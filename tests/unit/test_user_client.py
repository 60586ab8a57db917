"""The user netdev's net client in a daemon, in-process: a NicClient plays the guest; real
sockets on loopback play the host (a UDP echo server, a DNS upstream, a closed port).

Covers the adapter (fds, timer, batches, a failed creation releasing everything), the
daemon's ``UserNetClient`` protocol (``info usernet``, HMP ``hostfwd_*``,
``guest-network-get-interfaces`` via ``leases_for``), the lease table and the QMP events.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import dpkt
import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether

import drivers.user as user
from drivers import hubport
from drivers.user import control as user_control
from drivers.user.client import UserNetClient
from drivers.user.options import UserConfig
from netstack import qapi
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.nic import NicClient
from netstack.qmp.hmp import run_hmp

MAC = bytes.fromhex("525400123456")
MAC_TEXT = "52:54:00:12:34:56"
ROUTER_MAC = "52:55:0a:00:02:02"
GUEST = "10.0.2.15"


class Echo(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        if data[:2] and len(data) >= 12 and data[2] & 0x80 == 0:
            try:  # a DNS query: answer it
                q = dpkt.dns.DNS(data)
                r = dpkt.dns.DNS(
                    id=q.id,
                    qd=q.qd,
                    an=[
                        dpkt.dns.DNS.RR(
                            name=q.qd[0].name, type=1, cls=1, ttl=5, rdata=b"\xc0\x00\x02\x07"
                        )
                    ],
                )
                r.qr = dpkt.dns.DNS_R
                self.transport.sendto(bytes(r), addr)
                return
            except Exception:
                pass
        self.transport.sendto(b"echo:" + data, addr)


async def udp_server() -> tuple[asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def setup(
    tmp_path: Any,
) -> AsyncIterator[tuple[Netstack, NicClient, list[tuple[str, Any]], int]]:
    server, port = await udp_server()
    ns = Netstack({"user": user.SPEC, "hubport": hubport.SPEC})
    events: list[tuple[str, Any]] = []
    ns.add_listener(lambda name, data: events.append((name, data)))
    (tmp_path / "boot.bin").write_bytes(b"B" * 700)
    spec = f"user,id=u0,tftp={tmp_path},x-dns-upstream=127.0.0.1:{port},hostname=vm1"
    await ns.netdev_add(qapi.parse_netdev_cli(spec))
    await ns.netdev_add(qapi.parse_netdev_cli("hubport,id=hu,hubid=0,netdev=u0"))
    nic = NicClient("nic0", MAC)
    ns.add_client(nic)
    ns.hub(0).add_port("hn").connect(nic)
    try:
        yield ns, nic, events, port
    finally:
        await ns.close()
        server.close()


async def exchange(nic: NicClient, frame: bytes, want: Any, timeout: float = 3.0) -> Ether:
    """Send ``frame`` from the guest NIC; return the first received frame ``want`` accepts."""
    nic.send([frame])
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for raw in nic.drain():
            pkt = Ether(raw)
            if want(pkt):
                return pkt
        await asyncio.sleep(0.01)
    raise AssertionError("no matching frame")


def guest_udp(dst: str, dport: int, payload: bytes, sport: int = 5555) -> bytes:
    return bytes(
        Ether(dst=ROUTER_MAC, src=MAC_TEXT)
        / IP(src=GUEST, dst=dst)
        / UDP(sport=sport, dport=dport)
        / payload
    )


def dhcp_frame(kind: str, **extra: Any) -> bytes:
    opts: list[Any] = [("message-type", kind), *extra.items(), "end"]
    return bytes(
        Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC_TEXT)
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=MAC, xid=77)
        / DHCP(options=opts)
    )


async def test_dhcp_lease_events_and_guest_interfaces(setup: Any) -> None:
    ns, nic, events, _ = setup
    offer = await exchange(nic, dhcp_frame("discover"), lambda p: BOOTP in p)
    assert (
        offer[BOOTP].yiaddr == GUEST
        and offer.src == ROUTER_MAC
        and offer.dst == "ff:ff:ff:ff:ff:ff"
    )
    ack = await exchange(
        nic, dhcp_frame("request", requested_addr=GUEST, server_id="10.0.2.2"), lambda p: BOOTP in p
    )
    assert ("message-type", 5) in ack[DHCP].options and ("hostname", b"vm1") in ack[DHCP].options
    (granted,) = [d for n, d in events if n == "DHCP_LEASE_GRANTED"]
    assert granted["netdev"] == "u0" and granted["ip-address"] == GUEST
    assert granted["mac-address"] == MAC_TEXT
    (iface,) = ns.guest_network_interfaces()
    assert iface["ip-addresses"] == [{"ip-address-type": "ipv4", "ip-address": GUEST, "prefix": 24}]
    (u0,) = [nc for nc in ns.clients if isinstance(nc, UserNetClient)]
    assert [le["ip-address"] for le in user_control.leases(u0)] == [GUEST] and user_control.leases(
        u0
    )[0]["netdev"] == "u0"


async def test_udp_nat_dns_and_usernet(setup: Any) -> None:
    ns, nic, _, port = setup
    rep = await exchange(nic, guest_udp("10.0.2.2", port, b"hi"), lambda p: UDP in p)
    assert rep[IP].src == "10.0.2.2" and rep[UDP].sport == port and rep[UDP].dport == 5555
    assert bytes(rep[UDP])[8 : rep[UDP].len] == b"echo:hi"
    # a closed port: the host's ICMP error comes back as port unreachable
    dead = closed_port()
    err = await exchange(
        nic, guest_udp("10.0.2.2", dead, b"knock", sport=6666), lambda p: ICMP in p
    )
    assert (err[ICMP].type, err[ICMP].code) == (3, 3) and err[IP].src == "10.0.2.2"
    # DNS through 10.0.2.3 to the configured upstream
    query = bytes(dpkt.dns.DNS(id=31, qd=[dpkt.dns.DNS.Q(name="x.test", type=1, cls=1)]))
    rep = await exchange(nic, guest_udp("10.0.2.3", 53, query, sport=7777), lambda p: UDP in p)
    answer = dpkt.dns.DNS(bytes(rep[UDP])[8 : rep[UDP].len])
    assert (
        answer.id == 31 and answer.an[0].rdata == b"\xc0\x00\x02\x07" and rep[IP].src == "10.0.2.3"
    )
    text = await run_hmp(ns, "info usernet")
    lines = text.splitlines()
    assert lines[0] == "Hub 0 (u0):"
    assert (
        lines[1]
        == "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ"
    )
    assert lines[2].startswith("  UDP[240 sec]") or lines[2].startswith("  UDP[239 sec]")
    assert f"10.0.2.15  6666        10.0.2.2 {dead:5d}     0     0" in lines[2]
    assert f"10.0.2.15  5555        10.0.2.2 {port:5d}     0     0" in lines[3]


async def test_tftp_through_the_client(setup: Any) -> None:
    _, nic, _, _ = setup
    got = await exchange(
        nic,
        guest_udp("10.0.2.2", 69, b"\x00\x01boot.bin\x00octet\x00", sport=4000),
        lambda p: UDP in p,
    )
    assert got[UDP].sport == 69 and bytes(got[UDP])[8:12] == b"\x00\x03\x00\x01"


async def test_hmp_hostfwd(setup: Any) -> None:
    ns, *_ = setup
    assert await run_hmp(ns, "hostfwd_add tcp:127.0.0.1:0-:22") == ""  # bound (see hostfwd tests)
    assert await run_hmp(ns, "hostfwd_add u0 tcp:5555-:22") == (
        "Invalid host forwarding rule 'tcp:5555-:22' (Bad host address)\n"
    )
    assert (
        await run_hmp(ns, "hostfwd_remove tcp::2222")
        == "host forwarding rule for tcp::2222 not found\n"
    )
    assert await run_hmp(ns, "hostfwd_remove u0 tcp::22x") == "invalid format\n"
    assert await run_hmp(ns, "hostfwd_remove sctp::1") == "invalid format\n"
    assert await run_hmp(ns, "hostfwd_add nope tcp::1-:2") == "unrecognized netdev id 'nope'\n"


async def test_cleanup_closes_every_socket(setup: Any) -> None:
    ns, nic, _, port = setup
    before = len(os.listdir("/proc/self/fd"))
    for sport in range(3000, 3010):
        await exchange(nic, guest_udp("10.0.2.2", port, b"x", sport=sport), lambda p: UDP in p)
    (u0,) = [nc for nc in ns.clients if isinstance(nc, UserNetClient)]
    assert u0.counters()["udp-sockets"] == 10
    assert len(os.listdir("/proc/self/fd")) >= before + 10
    ns.netdev_del("u0")
    assert len(os.listdir("/proc/self/fd")) <= before


async def test_info_without_hub_and_icmp_unavailable() -> None:
    loop = asyncio.get_running_loop()
    import logging

    nc = UserNetClient(
        "solo",
        UserConfig(dns_upstreams=((socket.AF_INET, "127.0.0.1", 9),)),
        loop,
        logging.getLogger("test"),
        icmp_mode="none",
    )
    nic = NicClient("nic0", MAC)
    nic.connect(nc)
    try:
        assert user_control.usernet_info(nc).startswith("Hub -1 (solo):\n")
        nic.send(
            [bytes(Ether(dst=ROUTER_MAC, src=MAC_TEXT) / IP(src=GUEST, dst="192.0.2.1") / ICMP())]
        )
        assert nc.counters()["icmp-relay-unavailable"] == 1
        nc.receive([b"\x00" * 5, b"junk" * 30], False)
        assert nc.counters()["eth-short"] == 1 and nc.stats.malformed >= 1
        assert nc.info_str == "net=10.0.2.0,restrict=off"
    finally:
        nc.cleanup()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def failing_specs(busy_port: int, closed: int) -> dict[str, tuple[str, str]]:
    """netdev specs whose creation fails after earlier rules opened fds (hostfwd listeners:
    TCP, UDP, IPv6), and the error each gives. Rules are taken last to first, as in QEMU."""
    ok = ("hostfwd=tcp:127.0.0.1:0-:22,hostfwd=udp:127.0.0.1:0-:53,"
          "hostfwd=tcp:[::1]:0-[fec0::15]:22,guestfwd=tcp:10.0.2.100:80-cmd:cat")  # fmt: skip
    return {
        "hostfwd-port-in-use": (
            f"user,id=u0,hostfwd=tcp:127.0.0.1:{busy_port}-:80,{ok}",
            f"Could not set up host forwarding rule 'tcp:127.0.0.1:{busy_port}-:80'",
        ),
        "guestfwd-conflict": (
            f"user,id=u0,{ok},guestfwd=tcp:10.0.2.100:80-cmd:true",
            "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.100:80-cmd:cat'",
        ),
        "guestfwd-chardev-fails": (
            f"user,id=u0,guestfwd=tcp:10.0.2.101:81-tcp:127.0.0.1:{closed},{ok}",
            "Could not open guest forwarding device 'guestfwd.tcp.81'",
        ),
    }


@pytest.mark.parametrize("case", ["hostfwd-port-in-use", "guestfwd-conflict",
                                  "guestfwd-chardev-fails"])  # fmt: skip
async def test_failed_netdev_add_leaves_no_fd_open(case: str) -> None:
    """A netdev whose rules fail (a hostfwd port in use, a conflicting guestfwd - both in
    the client's constructor - or a guestfwd chardev that does not open, in ``create``)
    fails with QEMU's text and releases everything the earlier parts had opened."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        spec, error = failing_specs(busy.getsockname()[1], closed_port())[case]
        ns = Netstack({"user": user.SPEC})
        try:
            await ns.netdev_add(qapi.parse_netdev_cli("user,id=warm"))
            ns.netdev_del("warm")  # the loop's and the daemon's own fds exist from here on
            before = open_fds()
            with pytest.raises(GenericError) as info:
                await ns.netdev_add(qapi.parse_netdev_cli(spec))
            assert info.value.desc == error
            await asyncio.sleep(0.05)  # background chardev closes
            assert ns.find_netdev("u0") is None
            assert open_fds() <= before, "an fd was left behind"
        finally:
            await ns.close()
