"""Guest TCP through the user netdev, in-process: a NicClient plays the guest with hand-built
segments (scapy), real loopback sockets play the host.

Covers the wiring of the TCP splicer into the user netdev: the NAT policy (host address ->
127.0.0.1, DNS address port 53 -> the DNS upstream's TCP port, ``restrict=on`` refused),
handshake, data both ways, orderly close, RST for a closed port, ``info usernet`` TCP rows.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import drivers
from drivers.user import control as user_control
from drivers.user.client import UserNetClient
from netstack import qapi
from netstack.daemon import Netstack
from netstack.net.nic import NicClient
from netstack.proto import vnet

MAC = bytes.fromhex("525400123456")
MAC_TEXT = "52:54:00:12:34:56"
ROUTER_MAC = "52:55:0a:00:02:02"
GUEST = "10.0.2.15"
ISS = 1000


class Guest:
    """One guest TCP connection driven by hand."""

    def __init__(self, nic: NicClient, dst: str, dport: int, sport: int = 40000) -> None:
        self.nic, self.dst, self.dport, self.sport = nic, dst, dport, sport
        self.seq = ISS
        self.ack = 0

    def frame(self, flags: str, payload: bytes = b"", **kw: Any) -> bytes:
        return bytes(
            Ether(dst=ROUTER_MAC, src=MAC_TEXT)
            / IP(src=GUEST, dst=self.dst)
            / TCP(
                sport=self.sport,
                dport=self.dport,
                seq=self.seq,
                ack=self.ack,
                flags=flags,
                window=65535,
                **kw,
            )
            / payload
        )

    async def send(
        self, flags: str, payload: bytes = b"", want: Callable[[TCP], bool] | None = None,
        **kw: Any,
    ) -> TCP | None:  # fmt: skip
        self.nic.send([self.frame(flags, payload, **kw)])
        if "S" in flags:
            self.seq += 1
        self.seq += len(payload) + (1 if "F" in flags else 0)
        return None if want is None else await self.wait(want)

    async def wait(self, want: Callable[[TCP], bool], timeout: float = 3.0) -> TCP:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            for raw in self.nic.drain():
                pkt = Ether(raw)
                if TCP in pkt and pkt[TCP].dport == self.sport and want(pkt[TCP]):
                    assert pkt.src == ROUTER_MAC and pkt.dst == MAC_TEXT
                    assert pkt[IP].src == self.dst and pkt[IP].dst == GUEST
                    return pkt[TCP]
            await asyncio.sleep(0.005)
        raise AssertionError("no matching segment")


async def make(spec: str) -> tuple[Netstack, NicClient]:
    ns = Netstack(drivers.registry())
    await ns.netdev_add(qapi.parse_netdev_cli(spec))
    await ns.netdev_add(qapi.parse_netdev_cli("hubport,id=hu,hubid=0,netdev=u0"))
    nic = NicClient("nic0", MAC)
    ns.add_client(nic)
    ns.hub(0).add_port("hn").connect(nic)
    return ns, nic


class EchoServer:
    """A TCP server on 127.0.0.1 that upper-cases what it reads until EOF."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.got = b""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            self.got += data
            w.write(data.upper())
            await w.drain()
        w.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    srv = EchoServer()
    await srv.start()
    yield srv
    srv.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_data(t: TCP) -> bool:
    return Raw in t


def is_rst(t: TCP) -> bool:
    return bool(t.flags.R)


async def test_handshake_data_close_and_usernet(echo: EchoServer) -> None:
    ns, nic = await make("user,id=u0")
    try:
        g = Guest(nic, "10.0.2.2", echo.port)
        synack = await g.send("S", want=lambda t: t.flags == "SA", options=[("MSS", 1460)])
        assert synack is not None and synack.ack == ISS + 1
        g.ack = synack.seq + 1
        await g.send("A")
        await g.send("PA", b"hello netstack")
        data = await g.wait(has_data)
        assert data[Raw].load == b"HELLO NETSTACK" and data.seq == g.ack
        g.ack += len(data[Raw].load)
        info = user_control.info_usernet(ns)
        assert "TCP[ESTABLISHED]" in info
        row = next(line for line in info.splitlines() if "TCP[" in line)
        assert row.split()[2:6] == [GUEST, "40000", "10.0.2.2", str(echo.port)]
        # orderly close from the guest: the server sees EOF and closes too
        await g.send("FA", want=lambda t: t.ack == g.seq and not t.flags.R)
        fin = await g.wait(lambda t: bool(t.flags.F))
        g.ack = fin.seq + (len(fin[Raw].load) if Raw in fin else 0) + 1
        await g.send("A")
        assert echo.got == b"hello netstack"
        client = ns.find_netdev("u0")
        assert isinstance(client, UserNetClient)
        counters = client.counters()
        assert counters["tcp-connects"] == 1
    finally:
        await ns.close()


async def test_closed_port_gets_rst() -> None:
    ns, nic = await make("user,id=u0")
    try:
        g = Guest(nic, "10.0.2.2", closed_port())
        rst = await g.send("S", want=is_rst)
        assert rst is not None and rst.ack == ISS + 1
        # a segment for no connection at all: RST too
        g.sport = 40001
        g.ack = 5
        rst = await g.send("A", want=is_rst)
        assert rst is not None and rst.seq == 5
    finally:
        await ns.close()


async def test_restrict_refuses(echo: EchoServer) -> None:
    ns, nic = await make("user,id=u0,restrict=on")
    try:
        g = Guest(nic, "10.0.2.2", echo.port)
        rst = await g.send("S", want=is_rst)
        assert rst is not None and rst.ack == ISS + 1
        await asyncio.sleep(0.05)
        assert echo.got == b"" and "TCP[" not in user_control.info_usernet(ns)
    finally:
        await ns.close()


async def test_dns_over_tcp_goes_to_the_upstream(echo: EchoServer) -> None:
    ns, nic = await make(f"user,id=u0,x-dns-upstream=127.0.0.1:{echo.port}")
    try:
        g = Guest(nic, "10.0.2.3", 53)
        synack = await g.send("S", want=lambda t: t.flags == "SA")
        assert synack is not None
        g.ack = synack.seq + 1
        await g.send("A")
        await g.send("PA", b"\x00\x02ab")
        data = await g.wait(has_data)
        assert data[Raw].load == b"\x00\x02AB"
        await g.send("RA")
    finally:
        await ns.close()


class VnetNic(NicClient):
    """A guest NIC that takes virtio-net headers (offloads), as tap vnet_hdr or vhost-user
    with TSO/CSUM negotiated do."""

    accepts_vnet = True


async def test_offloads_tso_both_ways(echo: EchoServer) -> None:
    """A checksum-partial TSO super-frame from the guest is taken whole (no checksum
    check, one segment of 40 KB); host data comes back as TSO super-frames with
    NEEDS_CSUM for a NIC that takes offloads."""
    ns = Netstack(drivers.registry())
    try:
        await ns.netdev_add(qapi.parse_netdev_cli("user,id=u0"))
        await ns.netdev_add(qapi.parse_netdev_cli("hubport,id=hu,hubid=0,netdev=u0"))
        nic = VnetNic("nic0", MAC)
        ns.add_client(nic)
        ns.hub(0).add_port("hn").connect(nic)
        g = Guest(nic, "10.0.2.2", echo.port)

        def plain(raw: bytes) -> bytes:
            return raw[vnet.HDR_LEN :]

        def send_vnet(frame: bytes, gso: int = 0, mss: int = 0) -> None:
            hdr = vnet.pack(vnet.NEEDS_CSUM, gso, 54, mss, 34, 16)
            nic.send([hdr + frame], True)

        # handshake with plain (header-less) vnet frames
        nic.send([bytes(vnet.HDR_LEN) + g.frame("S", options=[("MSS", 1460)])], True)
        g.seq += 1
        synack = await wait_vnet(nic, g, lambda t: t.flags == "SA")
        g.ack = synack.seq + 1
        nic.send([bytes(vnet.HDR_LEN) + g.frame("A")], True)
        payload = bytes(range(256)) * 160  # 40 KB: one TSO super-frame
        frame = bytearray(g.frame("PA", payload))
        frame[50:52] = b"\x12\x34"  # a partial checksum: must not be verified
        send_vnet(bytes(frame), vnet.GSO_TCPV4, 1460)
        g.seq += len(payload)
        got = b""
        for _ in range(200):
            got = echo.got
            if len(got) >= len(payload):
                break
            await asyncio.sleep(0.01)
        assert got == payload
        # the upper-cased echo comes back as super-frames with NEEDS_CSUM (the initial
        # window's worth: the test does not ACK)
        back = b""
        frames: list[bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while len(back) < 10 * 1460 and loop.time() < deadline:
            for raw in nic.drain():
                pkt = Ether(plain(raw))
                if TCP in pkt and Raw in pkt[TCP] and pkt[TCP].seq == g.ack + len(back):
                    frames.append(raw)
                    back += pkt[TCP][Raw].load
            await asyncio.sleep(0.005)
        assert len(back) >= 10 * 1460 and back == payload.upper()[: len(back)]
        assert any(raw[1] == vnet.GSO_TCPV4 and len(raw) > 10_000 for raw in frames)
        assert all(raw[0] & vnet.NEEDS_CSUM for raw in frames)
        client = ns.find_netdev("u0")
        assert isinstance(client, UserNetClient)
        assert client.counters().get("internal-error", 0) == 0
    finally:
        await ns.close()


async def wait_vnet(nic: NicClient, g: Guest, want: Callable[[TCP], bool]) -> TCP:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3.0
    while loop.time() < deadline:
        for raw in nic.drain():
            pkt = Ether(raw[vnet.HDR_LEN :])
            if TCP in pkt and pkt[TCP].dport == g.sport and want(pkt[TCP]):
                return pkt[TCP]
        await asyncio.sleep(0.005)
    raise AssertionError("no matching segment")
