"""hostfwd of the user netdev, in-process: a NicClient plays the guest (scapy frames), real
loopback sockets play the host side.

Covers binding at creation (kernel-chosen ports shown in ``info usernet``, QEMU's test
regex, bind failure text), TCP forwarding (guest MAC known, and learnt by ARP), UDP
forwarding with replies back to the sender, and HMP ``hostfwd_add``/``hostfwd_remove``.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

import drivers.user as user
from drivers import hubport
from drivers.user import control as user_control
from netstack import qapi
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.nic import NicClient
from netstack.qmp.hmp import run_hmp

MAC = bytes.fromhex("525400123456")
MAC_TEXT = "52:54:00:12:34:56"
ROUTER_MAC = "52:55:0a:00:02:02"
GUEST = "10.0.2.15"
QEMU_RE = re.compile(r"TCP.HOST_FORWARD.*127\.0\.0\.1\s+(\d+)\s+10\.")
UDP_RE = re.compile(r"UDP.HOST_FORWARD.*127\.0\.0\.1\s+(\d+)\s+10\.0\.2\.15\s+5353")


async def make(spec: str) -> tuple[Netstack, NicClient]:
    ns = Netstack({"user": user.SPEC, "hubport": hubport.SPEC})
    await ns.netdev_add(qapi.parse_netdev_cli(spec))
    await ns.netdev_add(qapi.parse_netdev_cli("hubport,id=hu,hubid=0,netdev=u0"))
    nic = NicClient("nic0", MAC)
    ns.add_client(nic)
    ns.hub(0).add_port("hn").connect(nic)
    return ns, nic


@pytest.fixture
async def setup() -> AsyncIterator[tuple[Netstack, NicClient]]:
    ns, nic = await make(
        "user,id=u0,hostfwd=tcp:127.0.0.1:0-:22,hostfwd=udp:127.0.0.1:0-:5353,x-dns-upstream=127.0.0.1:9"
    )
    try:
        yield ns, nic
    finally:
        await ns.close()


async def wait_frame(nic: NicClient, want: Callable[[Ether], bool], timeout: float = 3.0) -> Ether:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for raw in nic.drain():
            pkt = Ether(raw)
            if want(pkt):
                return pkt
        await asyncio.sleep(0.01)
    raise AssertionError("no matching frame")


def learn_guest(nic: NicClient) -> None:
    """A guest frame through the gateway, so it learns the guest's MAC."""
    nic.send([bytes(Ether(dst=ROUTER_MAC, src=MAC_TEXT) / IP(src=GUEST, dst="10.0.2.2")
                    / UDP(sport=7, dport=9) / b"x")])  # fmt: skip


def port_of(ns: Netstack, regex: re.Pattern[str]) -> int:
    match = regex.search(user_control.info_usernet(ns))
    assert match is not None, user_control.info_usernet(ns)
    return int(match.group(1))


async def test_rows_with_kernel_chosen_ports(setup: Any) -> None:
    ns, _ = setup
    tcp_port, udp_port = port_of(ns, QEMU_RE), port_of(ns, UDP_RE)
    assert tcp_port > 0 and udp_port > 0
    text = user_control.info_usernet(ns)
    assert re.search(rf"  TCP\[HOST_FORWARD\]\s+\d+\s+127\.0\.0\.1\s+{tcp_port}\s+10\.0\.2\.15"
                     r"\s+22\s+0\s+0", text)  # fmt: skip


async def test_bind_failure_fails_the_netdev() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ns = Netstack({"user": user.SPEC})
        try:
            with pytest.raises(GenericError) as info:
                await ns.netdev_add(
                    qapi.parse_netdev_cli(f"user,id=u0,hostfwd=tcp:127.0.0.1:{port}-:22")
                )
            assert info.value.desc == (
                f"Could not set up host forwarding rule 'tcp:127.0.0.1:{port}-:22'"
            )
            assert ns.find_netdev("u0") is None
        finally:
            await ns.close()


async def tcp_handshake(nic: NicClient) -> Ether:
    """Answer the gateway's SYN towards guest port 22; returns the SYN."""
    syn = await wait_frame(nic, lambda p: TCP in p and p[TCP].flags == "S")
    assert syn.dst == MAC_TEXT and syn[IP].src == "10.0.2.2" and syn[IP].dst == GUEST
    assert syn[TCP].dport == 22
    nic.send([bytes(Ether(dst=ROUTER_MAC, src=MAC_TEXT) / IP(src=GUEST, dst="10.0.2.2")
                    / TCP(sport=22, dport=syn[TCP].sport, flags="SA", seq=1000,
                          ack=syn[TCP].seq + 1, window=65535))])  # fmt: skip
    return syn


async def tcp_exchange(nic: NicClient, port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        syn = await tcp_handshake(nic)
        sport, seq = syn[TCP].sport, syn[TCP].seq + 1
        nic.send([bytes(Ether(dst=ROUTER_MAC, src=MAC_TEXT) / IP(src=GUEST, dst="10.0.2.2")
                        / TCP(sport=22, dport=sport, flags="PA", seq=1001, ack=seq,
                              window=65535) / b"SSH-2.0-guest\r\n")])  # fmt: skip
        assert await asyncio.wait_for(reader.readexactly(15), 3) == b"SSH-2.0-guest\r\n"
        writer.write(b"hello guest")
        await writer.drain()
        data = await wait_frame(nic, lambda p: TCP in p and Raw in p)
        assert data[Raw].load == b"hello guest" and data[TCP].dport == 22
    finally:
        writer.close()


async def test_tcp_forward_known_mac(setup: Any) -> None:
    ns, nic = setup
    learn_guest(nic)
    await asyncio.sleep(0.05)
    await tcp_exchange(nic, port_of(ns, QEMU_RE))


async def test_tcp_forward_resolves_the_guest_mac(setup: Any) -> None:
    ns, nic = setup
    port = port_of(ns, QEMU_RE)
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        req = await wait_frame(nic, lambda p: ARP in p and p[ARP].op == 1)
        assert req[ARP].pdst == GUEST and req[ARP].psrc == "10.0.2.2"
        nic.send([bytes(Ether(dst=ROUTER_MAC, src=MAC_TEXT)
                        / ARP(op=2, hwsrc=MAC_TEXT, psrc=GUEST, hwdst=ROUTER_MAC,
                              pdst="10.0.2.2"))])  # fmt: skip
        await tcp_handshake(nic)
    finally:
        writer.close()


async def test_udp_forward_and_reply(setup: Any) -> None:
    ns, nic = setup
    port = port_of(ns, UDP_RE)
    learn_guest(nic)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host:
        host.bind(("127.0.0.1", 0))
        host.settimeout(3)
        host.connect(("127.0.0.1", port))
        host.send(b"query")
        got = await wait_frame(nic, lambda p: UDP in p and p[UDP].dport == 5353)
        assert got[IP].src == "10.0.2.2" and got[IP].dst == GUEST
        assert got[UDP].sport == host.getsockname()[1] and got[Raw].load == b"query"
        nic.send([bytes(Ether(dst=ROUTER_MAC, src=MAC_TEXT) / IP(src=GUEST, dst="10.0.2.2")
                        / UDP(sport=5353, dport=got[UDP].sport) / b"answer")])  # fmt: skip
        await asyncio.sleep(0.05)
        assert await asyncio.get_running_loop().run_in_executor(None, host.recv, 100) == b"answer"


async def test_hmp_add_and_remove() -> None:
    ns, _nic = await make("user,id=u0")
    try:
        assert await run_hmp(ns, "hostfwd_add u0 tcp:127.0.0.1:0-:80") == ""
        port = port_of(ns, QEMU_RE)
        assert await run_hmp(ns, "hostfwd_add udp:127.0.0.1:0-:5353") == ""
        uport = port_of(ns, UDP_RE)
        assert await run_hmp(ns, f"hostfwd_add tcp:127.0.0.1:{port}-:81") == (
            f"Could not set up host forwarding rule 'tcp:127.0.0.1:{port}-:81'\n"
        )
        assert await run_hmp(ns, "hostfwd_add tcp:5555-:22") == (
            "Invalid host forwarding rule 'tcp:5555-:22' (Bad host address)\n"
        )
        assert await run_hmp(ns, f"hostfwd_remove u0 udp:127.0.0.1:{port}") == (
            f"host forwarding rule for udp:127.0.0.1:{port} not found\n"
        )
        assert await run_hmp(ns, f"hostfwd_remove u0 tcp:127.0.0.1:{port}") == (
            f"host forwarding rule for tcp:127.0.0.1:{port} removed\n"
        )
        assert QEMU_RE.search(user_control.info_usernet(ns)) is None
        assert await run_hmp(ns, f"hostfwd_remove tcp:127.0.0.1:{port}") == (
            f"host forwarding rule for tcp:127.0.0.1:{port} not found\n"
        )
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        assert await run_hmp(ns, f"hostfwd_remove udp:127.0.0.1:{uport}") == (
            f"host forwarding rule for udp:127.0.0.1:{uport} removed\n"
        )
        assert "HOST_FORWARD" not in user_control.info_usernet(ns)
    finally:
        await ns.close()


async def test_netdev_del_closes_the_listeners(setup: Any) -> None:
    ns, _ = setup
    port = port_of(ns, QEMU_RE)
    ns.netdev_del("u0")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
