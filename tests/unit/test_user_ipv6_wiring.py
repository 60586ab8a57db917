"""IPv6 wired into the user netdev, in-process: a Recorder peer plays the guest with frames
scapy builds, real sockets on host loopback (``::1``) play the host.

Covers the wiring, not the machines (their own tests do that): NS -> NA and RS -> RA through
the gateway's MAC filter; echo to the gateway's addresses; DHCPv6 leases merged into
``leases()``/``leases_for()`` with events; UDP to fec0::2 reaching ``::1`` both ways and a
closed port answered with an ICMPv6 port unreachable; the DNS relay at fec0::3; guest TCP
over IPv6 to ``::1`` through the shared splicer (handshake, data, RST); hostfwd with IPv6
host and guest addresses (TCP after neighbor resolution, UDP both ways, HMP remove);
``info usernet`` rows; ``ipv6=off`` / ``ipv4=off``; the final RA at cleanup and the RA
burst after a link flap.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Reply,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptRapidCommit,
)
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from drivers.user import control as user_control
from drivers.user import parse_options
from drivers.user.client import UserNetClient
from drivers.user.v6 import host as v6_host
from drivers.user.v6.nat import UdpSend6, Upstream6
from netstack import qapi
from tests.support import Recorder

GMAC = "52:54:00:12:34:56"
GMAC_B = bytes.fromhex("525400123456")
GUEST = "fec0::5054:ff:fe12:3456"
GUEST_LL = "fe80::5054:ff:fe12:3456"
HOSTMAC = "52:56:00:00:00:02"  # fe80::2 and fec0::2
DNSMAC = "52:56:00:00:00:03"
ISS = 1000


class Peer:
    """The user netdev with a Recorder as its peer (the guest's side)."""

    def __init__(self, spec: str) -> None:
        netdev = qapi.parse_netdev_cli(spec)
        assert isinstance(netdev.options, qapi.NetdevUserOptions)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.user = UserNetClient(
            netdev.id, parse_options(netdev.options), asyncio.get_running_loop(),
            logging.getLogger("test"), lambda n, d: self.events.append((n, dict(d))),
        )  # fmt: skip
        self.guest = Recorder("guest")
        self.user.connect(self.guest)
        self.seen = 0

    def send(self, pkt: Packet, dst: str = HOSTMAC) -> None:
        self.guest.send([bytes(Ether(src=GMAC, dst=dst) / pkt)])

    def take(self) -> list[Packet]:
        new: list[Packet] = [Ether(f) for f in self.guest.got[self.seen :]]
        self.seen = len(self.guest.got)
        return new

    async def wait(self, want: Callable[[Packet], bool], timeout: float = 3.0) -> Packet:
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while loop.time() < until:
            for pkt in self.take():
                if want(pkt):
                    return pkt
            await asyncio.sleep(0.005)
        raise AssertionError("no matching frame")

    def close(self) -> None:
        self.user.cleanup()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer("user,id=u0,x-dns-upstream=127.0.0.1:9")
    yield p
    p.close()


def v6(src: str = GUEST, dst: str = "fec0::2", hlim: int = 64) -> IPv6:
    return IPv6(src=src, dst=dst, hlim=hlim)


async def test_ndp_ra_and_echo_to_the_gateway(peer: Peer) -> None:
    peer.send(v6(GUEST, "ff02::1:ff00:2", 255) / ICMPv6ND_NS(tgt="fec0::2")
              / ICMPv6NDOptSrcLLAddr(lladdr=GMAC), "33:33:ff:00:00:02")  # fmt: skip
    na = await peer.wait(lambda p: ICMPv6ND_NA in p)
    assert na[ICMPv6ND_NA].tgt == "fec0::2" and na.src == HOSTMAC and na.dst == GMAC
    assert na[ICMPv6ND_NA].R == 1 and na[ICMPv6ND_NA].S == 1

    peer.send(v6(GUEST_LL, "ff02::2", 255) / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=GMAC),
              "33:33:00:00:00:02")  # fmt: skip
    ra = await peer.wait(lambda p: ICMPv6ND_RA in p)
    assert ra[IPv6].src == "fe80::2" and ra[ICMPv6ND_RA].routerlifetime == 1800
    assert ra[ICMPv6NDOptPrefixInfo].prefix == "fec0::" and ra[ICMPv6NDOptPrefixInfo].A == 1
    assert ra[ICMPv6NDOptRDNSS].dns == ["fec0::3"]

    for dst, mac, src in (("fec0::2", HOSTMAC, GUEST), ("fec0::3", DNSMAC, GUEST),
                          ("fe80::2", HOSTMAC, GUEST_LL)):  # fmt: skip
        peer.send(v6(src, dst) / ICMPv6EchoRequest(id=7, seq=1, data=b"hi"), mac)
        reply = await peer.wait(lambda p: ICMPv6EchoReply in p)
        assert reply[IPv6].src == dst and reply[ICMPv6EchoReply].data == b"hi"
    counters = peer.user.counters()
    assert counters["icmp6-echo-local"] == 3 and counters.get("ipv6-unsupported", 0) == 0
    # frames to someone else's MAC are not ours
    peer.send(v6() / ICMPv6EchoRequest(), "52:54:00:99:99:99")
    assert peer.user.counters()["eth-not-for-us"] == 1


async def test_dhcpv6_lease_in_the_lease_views(peer: Peer) -> None:
    peer.send(v6(GUEST_LL, "ff02::1:2") / UDP(sport=546, dport=547)
              / DHCP6_Solicit(trid=5) / DHCP6OptClientId(duid=DUID_LL(lladdr=GMAC))
              / DHCP6OptRapidCommit() / DHCP6OptIA_NA(iaid=1), "33:33:00:01:00:02")  # fmt: skip
    reply = await peer.wait(lambda p: DHCP6_Reply in p)
    address = reply[DHCP6OptIAAddress].addr
    leases = user_control.leases(peer.user)
    assert [(x["ip-address"], x["state"], x["netdev"]) for x in leases] == [
        (address, "bound", "u0")
    ]
    assert (address, 64) in user_control.addresses_for(peer.user, GMAC_B)
    assert (GUEST_LL, 64) in user_control.addresses_for(peer.user, GMAC_B)  # seen in its traffic
    granted = [d for n, d in peer.events if n == "DHCP_LEASE_GRANTED"]
    assert granted and granted[0]["ip-address"] == address and granted[0]["netdev"] == "u0"


async def test_udp_to_host_loopback_and_port_unreachable(peer: Peer) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as server:
        server.bind(("::1", 0))
        server.setblocking(False)
        port = server.getsockname()[1]
        peer.send(v6() / UDP(sport=4000, dport=port) / b"over v6")
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(server, 2048), 3)
        assert data == b"over v6" and addr[0] == "::1"
        server.sendto(b"and back", addr)
        back = await peer.wait(lambda p: UDP in p and p[UDP].dport == 4000)
        assert back[IPv6].src == "fec0::2" and back[IPv6].dst == GUEST
        assert back[UDP].sport == port and back[Raw].load == b"and back"
        info = user_control.usernet_info(peer.user)
        row = next(line for line in info.splitlines() if "UDP[" in line)
        assert row.split()[3:7] == [GUEST, "4000", "fec0::2", str(port)]
        assert user_control.connections(peer.user)[0]["family"] == "ipv6"
    # the server is gone: the host's port unreachable comes back as ICMPv6
    peer.send(v6() / UDP(sport=4000, dport=port) / b"anyone?")
    err = await peer.wait(lambda p: ICMPv6DestUnreach in p)
    assert err[IPv6].src == "fec0::2" and err[ICMPv6DestUnreach].code == 4
    assert peer.user.counters()["udp6-host-error-1-4"] == 1


async def test_dns_relay_at_the_ipv6_dns_address() -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as upstream:
        upstream.bind(("::1", 0))
        upstream.setblocking(False)
        p = Peer(f"user,id=u0,x-dns-upstream=[::1]:{upstream.getsockname()[1]}")
        try:
            query = DNS(id=0x1234, rd=1, qd=DNSQR(qname="example.test", qtype="AAAA"))
            p.send(v6(GUEST, "fec0::3") / UDP(sport=5353, dport=53) / query, DNSMAC)
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(upstream, 2048), 3)
            relayed = DNS(data)
            assert relayed.qd[0].qname == b"example.test."
            answer = DNS(id=relayed.id, qr=1, rd=1, ra=1, qd=relayed.qd)
            upstream.sendto(bytes(answer), addr)
            got = await p.wait(lambda x: UDP in x and x[UDP].sport == 53)
            assert got[IPv6].src == "fec0::3" and got[UDP].dport == 5353
            assert got[DNS].id == 0x1234 and got[DNS].qr == 1
            assert p.user.counters()["dns6-answers"] == 1
            # other ports at the DNS address are dropped
            p.send(v6(GUEST, "fec0::3") / UDP(sport=5353, dport=54) / b"x", DNSMAC)
            assert p.user.counters()["udp6-dns-other-port"] == 1
        finally:
            p.close()


class GuestTcp:
    """One guest TCP connection over IPv6, driven by hand."""

    def __init__(self, peer: Peer, dst: str, dport: int, sport: int = 40000) -> None:
        self.peer, self.dst, self.dport, self.sport = peer, dst, dport, sport
        self.seq, self.ack = ISS, 0

    def send(self, flags: str, payload: bytes = b"") -> None:
        tcp = TCP(sport=self.sport, dport=self.dport, seq=self.seq, ack=self.ack, flags=flags,
                  window=65535)  # fmt: skip
        self.peer.send(v6(GUEST, self.dst) / tcp / payload)
        self.seq += len(payload) + (1 if "S" in flags else 0) + (1 if "F" in flags else 0)

    async def wait(self, want: Callable[[Any], bool]) -> Any:
        pkt = await self.peer.wait(
            lambda p: TCP in p and p[TCP].dport == self.sport and want(p[TCP])
        )
        assert pkt.src == HOSTMAC and pkt.dst == GMAC
        assert pkt[IPv6].src == self.dst and pkt[IPv6].dst == GUEST
        return pkt[TCP]


async def test_tcp_to_host_loopback(peer: Peer) -> None:
    got = bytearray()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            got.extend(data)
            w.write(data.upper())
            await w.drain()
        w.close()

    server = await asyncio.start_server(serve, "::1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        g = GuestTcp(peer, "fec0::2", port)
        g.send("S")
        synack = await g.wait(lambda t: t.flags == "SA")
        assert synack.ack == ISS + 1
        g.ack = synack.seq + 1
        g.send("A")
        g.send("PA", b"hello v6")
        data = await g.wait(lambda t: Raw in t)
        assert data[Raw].load == b"HELLO V6"
        g.ack += len(data[Raw].load)
        row = next(
            x for x in user_control.usernet_info(peer.user).splitlines() if "TCP[ESTABLISHED]" in x
        )
        assert row.split()[2:6] == [GUEST, "40000", "fec0::2", str(port)]
        g.send("FA")
        await g.wait(lambda t: bool(t.flags.F))
        assert bytes(got) == b"hello v6"
        # a closed port: RST; outside the prefix nobody owns: refused too
        closed = GuestTcp(peer, "fec0::2", free_port6(), sport=40001)
        closed.send("S")
        rst = await closed.wait(lambda t: bool(t.flags.R))
        assert rst.ack == ISS + 1
        assert peer.user.counters()["tcp-connects"] == 2
    finally:
        server.close()


def free_port6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return int(s.getsockname()[1])


async def test_hostfwd_ipv6_tcp_and_udp(peer: Peer) -> None:
    loop = asyncio.get_running_loop()
    user = peer.user
    assert user_control.hostfwd(user, "hostfwd_add", ["tcp:[::1]:0-[fec0::15]:22"]) == ""
    assert user_control.hostfwd(user, "hostfwd_add", ["udp:[::1]:0-[fec0::15]:53"]) == ""
    rows = {f["protocol"]: f for f in user_control.forwards(user)}
    assert rows["tcp"]["host-addr"] == "::1" and rows["tcp"]["guest-addr"] == "fec0::15"
    tcp_port, udp_port = rows["tcp"]["host-port"], rows["udp"]["host-port"]
    assert f"::1 {tcp_port:5d}        fec0::15    22" in user_control.usernet_info(user)

    # TCP: the guest's MAC is unknown, so a Neighbor Solicitation goes out first
    client = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    client.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(client, ("::1", tcp_port)), 3)
        ns = await peer.wait(lambda p: ICMPv6ND_NS in p)
        assert ns[ICMPv6ND_NS].tgt == "fec0::15" and ns[IPv6].src == "fec0::2"
        peer.send(v6("fec0::15", "fec0::2", 255) / ICMPv6ND_NA(tgt="fec0::15", S=1, O=1))
        syn = await peer.wait(lambda p: TCP in p and p[TCP].flags == "S", timeout=5)
        assert syn[IPv6].src == "fec0::2" and syn[IPv6].dst == "fec0::15"
        assert syn.src == HOSTMAC and syn.dst == GMAC and syn[TCP].dport == 22
        sport = syn[TCP].sport
        peer.send(IPv6(src="fec0::15", dst="fec0::2") / TCP(sport=22, dport=sport, seq=5000,
                  ack=syn[TCP].seq + 1, flags="SA", window=65535))  # fmt: skip
        peer.send(IPv6(src="fec0::15", dst="fec0::2") / TCP(sport=22, dport=sport, seq=5001,
                  ack=syn[TCP].seq + 1, flags="PA", window=65535) / b"SSH-2.0-x\r\n")  # fmt: skip
        data = await asyncio.wait_for(loop.sock_recv(client, 100), 3)
        assert data == b"SSH-2.0-x\r\n"
    finally:
        client.close()

    # UDP: a datagram to the guest, and its answer back to the sender
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
        sender.setblocking(False)
        sender.sendto(b"query", ("::1", udp_port))
        dgram = await peer.wait(lambda p: UDP in p and p[UDP].dport == 53)
        assert dgram[IPv6].src == "fec0::2" and dgram[IPv6].dst == "fec0::15"
        peer.send(IPv6(src="fec0::15", dst="fec0::2") / UDP(sport=53, dport=dgram[UDP].sport)
                  / b"answer")  # fmt: skip
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(sender, 100), 3)
        assert data == b"answer"

    assert user_control.hostfwd(user, "hostfwd_remove", [f"tcp:[::1]:{tcp_port}"]) == (
        f"host forwarding rule for tcp:[::1]:{tcp_port} removed\n"
    )
    assert user_control.hostfwd(user, "hostfwd_remove", ["tcp:[::1:]:1"]) == "invalid format\n"
    # an IPv6 host socket into the guest's IPv4 address is a rule too; [::] is IPv6 only,
    # so an IPv4 rule can take the same port
    port = free_port6()
    assert user_control.hostfwd(user, "hostfwd_add", [f"tcp:[::]:{port}-:22"]) == ""
    assert user_control.forwards(user)[-1]["guest-addr"] == "10.0.2.15"
    assert user_control.hostfwd(user, "hostfwd_add", [f"tcp::{port}-[fec0::15]:22"]) == ""
    assert [(f["host-addr"], f["host-port"]) for f in user_control.forwards(user)[-2:]] == [
        ("::", port), ("0.0.0.0", port)]  # fmt: skip


async def test_ipv6_off_and_ipv4_off() -> None:
    p = Peer("user,id=u0,ipv6=off")
    try:
        p.send(v6(GUEST_LL, "ff02::2", 255) / ICMPv6ND_RS(), "33:33:00:00:00:02")
        p.send(v6() / ICMPv6EchoRequest(), HOSTMAC)  # not even a MAC of the gateway's
        counters = p.user.counters()
        assert counters["ipv6-unsupported"] == 1 and counters["eth-not-for-us"] == 1
        assert p.take() == []
        assert "Could not set up" in user_control.hostfwd(
            p.user, "hostfwd_add", ["tcp:[::1]:0-[fec0::15]:22"]
        )
    finally:
        p.close()
    p = Peer("user,id=u0,ipv6=on")  # QEMU's quirk: ipv6=on alone disables IPv4
    try:
        assert not p.user.cfg.ipv4
        p.send(ARP(op=1, hwsrc=GMAC, psrc="10.0.2.15", pdst="10.0.2.2"), "ff:ff:ff:ff:ff:ff")
        assert p.user.counters()["ipv4-disabled"] == 1
        p.send(v6() / ICMPv6EchoRequest(id=1), HOSTMAC)
        assert ICMPv6EchoReply in (await p.wait(lambda x: ICMPv6EchoReply in x))
        assert "Could not set up" in user_control.hostfwd(p.user, "hostfwd_add", ["tcp::0-:22"])
    finally:
        p.close()


async def test_final_ra_at_cleanup_and_ras_after_a_link_flap(peer: Peer) -> None:
    peer.send(v6(GUEST_LL, "ff02::2", 255) / ICMPv6ND_RS(), "33:33:00:00:00:02")
    await peer.wait(lambda p: ICMPv6ND_RA in p)
    peer.user.link_down = True
    peer.user.link_status_changed()
    peer.user.link_down = False
    peer.user.link_status_changed()
    ra = await peer.wait(lambda p: ICMPv6ND_RA in p)  # the restarted burst's first RA
    assert ra[ICMPv6ND_RA].routerlifetime == 1800
    peer.user.cleanup()
    final = [p for p in peer.take() if ICMPv6ND_RA in p]
    assert final and final[-1][ICMPv6ND_RA].routerlifetime == 0


async def test_ipv6_host_actions_leave_through_the_one_outbox(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The IPv6 router and NAT write their host work into the netdev's one outbox, as
    classes of the IPv6 side's own; the client's pump runs it (no lists of their own, no
    second pump) and the outbox is empty after the batch."""
    user = peer.user
    side = user.v6
    assert side is not None and side.router.outbox is user.outbox
    assert not hasattr(side, "pump") and "actions" not in vars(side.nat)
    ran: list[type] = []

    def recording(action: object, now: float) -> None:
        ran.append(type(action))
        side.act(action, now)

    for cls in v6_host.ACTIONS:  # the pump's dispatch: IPv6 actions to the IPv6 side
        assert user._executors[cls] == side.act
        monkeypatch.setitem(user._executors, cls, recording)
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as server:
        server.bind(("::1", 0))
        server.setblocking(False)
        port = server.getsockname()[1]
        peer.send(v6() / UDP(sport=4001, dport=port) / b"via the pump")
        assert not user.outbox  # drained by the batch's pump
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(server, 2048), 3)
        assert data == b"via the pump"
    query = DNS(id=7, rd=1, qd=DNSQR(qname="example.test", qtype="AAAA"))
    peer.send(v6(GUEST, "fec0::3") / UDP(sport=5353, dport=53) / query, DNSMAC)
    assert ran == [UdpSend6, Upstream6]
    assert not user.outbox
