"""Totality of the user netdev's parsers: any bytes from the guest (or an upstream) give a
reply or a counted drop, never an exception (hypothesis, bounded)."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.user.dns import DnsRelay
from drivers.user.options import UserConfig
from drivers.user.tftp import TftpServer
from drivers.user.tftproot import TftpRoot
from drivers.user.v4.dhcp import DhcpServer
from drivers.user.v4.router import Gateway

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUTER = bytes.fromhex("52550a000202")
GUEST_MAC = bytes.fromhex("525400123456")


def ipv4_frame(proto: int, l4: bytes, dst: bytes = b"\x0a\x00\x02\x02", frag: int = 0) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0, b"\x0a\x00\x02\x0f", dst
    )
    words = struct.unpack("!10H", hdr)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    hdr = hdr[:10] + struct.pack("!H", ~total & 0xFFFF) + hdr[12:]
    return ROUTER + GUEST_MAC + b"\x08\x00" + hdr + l4


@SETTINGS
@given(st.binary(max_size=200))
def test_gateway_total_on_frames(data: bytes) -> None:
    g = Gateway(UserConfig(dns_upstreams=((socket.AF_INET, "127.0.0.1", 53),)))
    g.input(data, 0.0)
    g.input(ROUTER + GUEST_MAC + b"\x08\x00" + data, 0.0)
    g.input(ROUTER + GUEST_MAC + b"\x08\x06" + data, 0.0)
    for proto in (1, 17, 6, 99):
        g.input(ipv4_frame(proto, data), 0.0)
        g.input(ipv4_frame(proto, data, frag=0x2000), 0.0)
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(data), 0) + data
    g.input(ipv4_frame(17, udp, dst=b"\x0a\x00\x02\x03"), 0.0)
    for port in (67, 69):
        g.input(ipv4_frame(17, struct.pack("!HHHH", 68, port, 8 + len(data), 0) + data), 0.0)
    g.tick(100.0)


@SETTINGS
@given(st.binary(min_size=236, max_size=600), st.integers(0, 255))
def test_dhcp_total(data: bytes, mtype: int) -> None:
    server = DhcpServer(UserConfig(hostname="h", dnssearch=("a.test",)))
    server.handle(data, 0.0)
    msg = bytearray(data.ljust(240, b"\0"))
    msg[0], msg[1], msg[2] = 1, 1, 6
    msg[236:240] = b"\x63\x82\x53\x63"
    server.handle(bytes(msg) + bytes([53, 1, mtype]) + data[:50], 0.0)


@SETTINGS
@given(st.binary(max_size=300))
def test_dns_total(data: bytes) -> None:
    relay = DnsRelay([(socket.AF_INET, "127.0.0.1", 53)])
    relay.query(b"\x0a\x00\x02\x0f", 1, data, 0.0)
    relay.answer(("127.0.0.1", 53), data, 0.0)
    relay.tick(10.0)


@SETTINGS
@given(st.binary(max_size=120), st.sampled_from([1, 2, 4, 5, 6, 9]))
def test_tftp_total(tmp_path_factory: pytest.TempPathFactory, data: bytes, op: int) -> None:
    root = tmp_path_factory.getbasetemp() / "fuzzroot"
    root.mkdir(exist_ok=True)
    (root / "f").write_bytes(b"x" * 3000)
    server = TftpServer(TftpRoot(str(root)))
    client = (b"\x0a\x00\x02\x0f", 1)
    server.handle(client, struct.pack("!H", op) + data, 0.0)
    server.handle(client, b"\x00\x01f\x00octet\x00" + data, 0.0)
    server.handle(client, data, 0.0)
    server.tick(100.0)
    server.close()
