"""The user netdev's DHCP server, sans-IO with a manual clock: libslirp's behaviour as the
baseline (pool, options and their order, NAK, BOOTP) and what goes beyond it (lease
expiry, renewal times, RELEASE/DECLINE/INFORM, the parameter request list, several guests,
events, malformed input)."""

from __future__ import annotations

import socket
from typing import Any

import dpkt
import pytest

from drivers.user.options import UserConfig
from drivers.user.v4 import dhcp
from drivers.user.v4.dhcp import DhcpServer, encode_search

MAC_A = bytes.fromhex("525400123456")
MAC_B = bytes.fromhex("525400abcdef")
HOST = socket.inet_aton("10.0.2.2")


def ip(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


def message(
    mtype: int | None,
    mac: bytes = MAC_A,
    *,
    xid: int = 0x1234,
    ciaddr: int = 0,
    opts: list[tuple[int, bytes]] | None = None,
    op: int = 1,
    hln: int = 6,
) -> bytes:
    all_opts = ([(53, bytes([mtype]))] if mtype is not None else []) + (opts or [])
    msg = dpkt.dhcp.DHCP(
        op=op, hrd=1, hln=hln, xid=xid, ciaddr=ciaddr, chaddr=mac + bytes(10), opts=all_opts
    )
    return bytes(msg)


def decode(payload: bytes) -> tuple[Any, list[tuple[int, bytes]]]:
    msg = dpkt.dhcp.DHCP(payload)
    return msg, [(code, bytes(data)) for code, data in msg.opts]


def one(
    server: DhcpServer, payload: bytes, now: float = 0.0
) -> tuple[Any, dict[int, bytes], list[int], dhcp.DhcpReply]:
    (reply,) = server.handle(payload, now)
    msg, opts = decode(reply.payload)
    merged: dict[int, bytes] = {}
    for code, data in opts:  # RFC 3396: repeated instances concatenate
        merged[code] = merged.get(code, b"") + data
    return msg, merged, [c for c, _ in opts], reply


def lease(server: DhcpServer, mac: bytes = MAC_A, now: float = 0.0, req: str | None = None) -> str:
    """DISCOVER + REQUEST; returns the bound address."""
    extra = [(50, socket.inet_aton(req))] if req else []
    offer, *_ = one(server, message(dhcp.DISCOVER, mac, opts=extra), now)
    addr = offer.yiaddr.to_bytes(4, "big")
    ack, opts, _, _ = one(server, message(dhcp.REQUEST, mac, opts=[(50, addr), (54, HOST)]), now)
    assert opts[53] == bytes([dhcp.ACK])
    return socket.inet_ntoa(ack.yiaddr.to_bytes(4, "big"))


FULL = UserConfig(
    hostname="vm1",
    domainname="example.test",
    tftp_server_name="boot.test",
    dnssearch=("example.test", "lab.example.test"),
    bootfile="pxelinux.0",
)


def test_offer_like_libslirp() -> None:
    server = DhcpServer(FULL)
    msg, opts, order, reply = one(server, message(dhcp.DISCOVER))
    assert (reply.dst_mac, reply.dst_ip) == (b"\xff" * 6, b"\xff" * 4)  # always broadcast
    assert len(reply.payload) >= 548  # a whole BOOTP message, zero padded
    assert (msg.op, msg.xid, msg.hln, bytes(msg.chaddr)) == (2, 0x1234, 6, MAC_A)
    assert msg.yiaddr == ip("10.0.2.15") and msg.siaddr == ip("10.0.2.2")
    assert bytes(msg.file).rstrip(b"\0") == b"pxelinux.0"
    # libslirp's options in libslirp's order, plus renewal and rebinding times
    assert order == [53, 54, 51, 58, 59, 1, 3, 6, 12, 15, 66, 119]
    assert opts[53] == bytes([dhcp.OFFER]) and opts[54] == HOST
    assert opts[1] == socket.inet_aton("255.255.255.0") and opts[3] == HOST
    assert opts[6] == socket.inet_aton("10.0.2.3")
    assert int.from_bytes(opts[51], "big") == 86400
    assert int.from_bytes(opts[58], "big") == 43200 and int.from_bytes(opts[59], "big") == 75600
    assert opts[12] == b"vm1" and opts[15] == b"example.test" and opts[66] == b"boot.test"
    assert opts[119] == encode_search(("example.test", "lab.example.test"))


def test_search_list_encoding_rfc3397() -> None:
    # RFC 3397 section 3's example
    assert encode_search(("eng.apple.com", "marketing.apple.com")) == (
        b"\x03eng\x05apple\x03com\x00\x09marketing\xc0\x04"
    )
    assert encode_search(("ok.test", "bad..name", "x" * 64 + ".test")) == b"\x02ok\x04test\x00"


def test_ack_lease_events_and_views() -> None:
    server = DhcpServer(FULL)
    host_name = [(12, b"guest-a"), (61, b"\x01" + MAC_A)]
    one(server, message(dhcp.DISCOVER))
    msg, opts, _, reply = one(
        server,
        message(dhcp.REQUEST, opts=[(50, socket.inet_aton("10.0.2.15")), (54, HOST), *host_name]),
        5.0,
    )
    assert opts[53] == bytes([dhcp.ACK]) and msg.yiaddr == ip("10.0.2.15")
    assert reply.dst_ip == b"\xff" * 4
    assert server.events == [
        (
            "DHCP_LEASE_GRANTED",
            {
                "mac-address": "52:54:00:12:34:56",
                "ip-address": "10.0.2.15",
                "lease-time": 86400,
                "renewal": False,
                "hostname": "guest-a",
            },
        )
    ]
    assert server.leases_for(MAC_A) == [("10.0.2.15", 24)] and server.leases_for(MAC_B) == []
    assert server.leases(105.0) == [
        {
            "mac-address": "52:54:00:12:34:56",
            "ip-address": "10.0.2.15",
            "state": "bound",
            "expires-in": 86300,
            "hostname": "guest-a",
            "client-id": "01525400123456",
        }
    ]


def test_several_guests_each_keep_their_lease() -> None:
    server = DhcpServer(UserConfig())
    assert lease(server, MAC_A) == "10.0.2.15"
    assert lease(server, MAC_B) == "10.0.2.16"
    assert lease(server, MAC_A) == "10.0.2.15"  # a MAC keeps its slot
    assert server.leases_for(MAC_B) == [("10.0.2.16", 24)]
    # a requested free address is honoured
    mac_c = bytes.fromhex("525400000003")
    assert lease(server, mac_c, req="10.0.2.20") == "10.0.2.20"


def test_nak_for_unavailable_addresses() -> None:
    server = DhcpServer(UserConfig())
    lease(server, MAC_A)
    for addr in ("10.0.2.15", "10.0.2.99", "192.168.1.10"):  # taken, outside the pool, foreign
        msg, opts, _, reply = one(
            server, message(dhcp.REQUEST, MAC_B, opts=[(50, socket.inet_aton(addr))])
        )
        assert opts[53] == bytes([dhcp.NAK]) and opts[54] == HOST
        assert opts[56] == b"requested address not available"
        assert msg.yiaddr == 0 and reply.dst_ip == b"\xff" * 4


def test_parameter_request_list_is_honoured() -> None:
    server = DhcpServer(FULL)
    prl = bytes([6, 119, 3, 15])  # no 12, no 66; 1 not asked for
    _, opts, order, _ = one(server, message(dhcp.DISCOVER, opts=[(55, prl)]))
    assert order == [53, 54, 51, 58, 59, 1, 6, 119, 3, 15]
    assert 12 not in opts and 66 not in opts


def test_siaddr_from_a_literal_tftp_server_name() -> None:
    msg, opts, _, _ = one(DhcpServer(UserConfig(tftp_server_name="10.0.2.9")), message(1))
    assert msg.siaddr == ip("10.0.2.9") and opts[66] == b"10.0.2.9"
    msg, _, _, _ = one(DhcpServer(UserConfig(tftp_server_name="boot.test")), message(1))
    assert msg.siaddr == ip("10.0.2.2")


def test_restrict_leaves_out_router_and_dns() -> None:
    _, opts, _, _ = one(DhcpServer(UserConfig(restrict=True)), message(dhcp.DISCOVER))
    assert 3 not in opts and 6 not in opts and 1 in opts


def test_mtu_option_and_http_bootfile() -> None:
    server = DhcpServer(UserConfig(mtu=9000, bootfile="http://boot/x.efi"))
    _, opts, _, _ = one(server, message(dhcp.DISCOVER))
    assert opts[26] == (9000).to_bytes(2, "big") and opts[60] == b"HTTPClient"
    _, opts, _, _ = one(DhcpServer(UserConfig()), message(dhcp.DISCOVER))
    assert 26 not in opts and 60 not in opts


def test_renewal_is_unicast_and_reported() -> None:
    server = DhcpServer(UserConfig())
    lease(server, MAC_A)
    server.events.clear()
    msg, opts, _, reply = one(server, message(dhcp.REQUEST, ciaddr=ip("10.0.2.15")), 43200.0)
    assert opts[53] == bytes([dhcp.ACK]) and msg.ciaddr == ip("10.0.2.15")
    assert (reply.dst_mac, reply.dst_ip) == (MAC_A, socket.inet_aton("10.0.2.15"))
    assert server.events[0][1]["renewal"] is True
    # the renewal restarted the lease: still bound a day after the first grant
    server.expire(86400.0)
    assert server.leases_for(MAC_A) == [("10.0.2.15", 24)]


def test_lease_expiry_frees_the_slot() -> None:
    server = DhcpServer(UserConfig(), lease_time=100, pool_size=2)
    lease(server, MAC_A, now=0.0)
    lease(server, MAC_B, now=10.0)
    server.events.clear()
    deadline = server.next_deadline()
    assert deadline is not None and deadline <= 100.0  # may wake early, never late
    server.expire(99.0)
    assert server.leases_for(MAC_A)
    server.expire(100.0)
    assert server.leases_for(MAC_A) == []
    assert server.events == [
        (
            "DHCP_LEASE_RELEASED",
            {"mac-address": "52:54:00:12:34:56", "ip-address": "10.0.2.15", "reason": "expired"},
        )
    ]
    # the pool is full of B and A's expired slot: a new guest gets A's old address
    mac_c = bytes.fromhex("525400000003")
    assert lease(server, mac_c, now=101.0) == "10.0.2.15"
    # ...and A, back later, finds nothing free
    assert server.handle(message(dhcp.DISCOVER, MAC_A), 102.0) == []
    assert server.counters["dhcp-pool-exhausted"] == 1


def test_offers_are_held_briefly() -> None:
    server = DhcpServer(UserConfig(), pool_size=1)
    one(server, message(dhcp.DISCOVER, MAC_A), 0.0)
    assert server.handle(message(dhcp.DISCOVER, MAC_B), 1.0) == []  # reserved for A
    server.expire(dhcp.OFFER_HOLD)
    offer, *_ = one(server, message(dhcp.DISCOVER, MAC_B), dhcp.OFFER_HOLD)
    assert offer.yiaddr == ip("10.0.2.15")


def test_request_for_another_server_withdraws_the_offer() -> None:
    server = DhcpServer(UserConfig(), pool_size=1)
    one(server, message(dhcp.DISCOVER, MAC_A))
    other = [(50, socket.inet_aton("10.0.2.15")), (54, socket.inet_aton("10.9.9.9"))]
    assert server.handle(message(dhcp.REQUEST, MAC_A, opts=other), 1.0) == []
    offer, *_ = one(server, message(dhcp.DISCOVER, MAC_B), 2.0)
    assert offer.yiaddr == ip("10.0.2.15")


def test_release_and_decline() -> None:
    server = DhcpServer(UserConfig())
    lease(server, MAC_A)
    server.events.clear()
    assert server.handle(message(dhcp.RELEASE, ciaddr=ip("10.0.2.15")), 1.0) == []
    assert server.leases_for(MAC_A) == []
    assert server.events[-1][1]["reason"] == "release"
    assert lease(server, MAC_A, now=2.0) == "10.0.2.15"  # the last owner gets it back
    # DECLINE: the address is quarantined; the guest gets another one
    server.handle(message(dhcp.DECLINE, opts=[(50, socket.inet_aton("10.0.2.15"))]), 3.0)
    assert server.events[-1][1]["reason"] == "decline"
    assert lease(server, MAC_A, now=4.0) == "10.0.2.16"
    assert lease(server, MAC_B, now=5.0) == "10.0.2.17"
    server.expire(3.0 + dhcp.DECLINE_HOLD)
    mac_c = bytes.fromhex("525400000003")
    assert lease(server, mac_c, now=3.0 + dhcp.DECLINE_HOLD, req="10.0.2.15") == "10.0.2.15"
    # a RELEASE for someone else's address is ignored
    server.handle(message(dhcp.RELEASE, MAC_B, ciaddr=ip("10.0.2.16")), 700.0)
    assert server.leases_for(MAC_A) == [("10.0.2.16", 24)]


def test_inform() -> None:
    server = DhcpServer(FULL)
    msg, opts, _, reply = one(server, message(dhcp.INFORM, ciaddr=ip("10.0.2.50")))
    assert opts[53] == bytes([dhcp.ACK]) and msg.yiaddr == 0 and 51 not in opts
    assert (reply.dst_mac, reply.dst_ip) == (MAC_A, socket.inet_aton("10.0.2.50"))
    assert opts[6] == socket.inet_aton("10.0.2.3")


def test_plain_bootp_is_a_request() -> None:
    server = DhcpServer(UserConfig())
    msg, opts, _, _ = one(server, message(None))
    assert opts[53] == bytes([dhcp.ACK]) and msg.yiaddr == ip("10.0.2.15")
    # without the magic cookie (BOOTP without vendor extensions) too
    raw = bytearray(message(None, MAC_B))
    raw[236:240] = bytes(4)
    msg, _, _, _ = one(server, bytes(raw))
    assert msg.yiaddr == ip("10.0.2.16")


def test_option_area_limits() -> None:
    long_search = tuple(f"domain{i}.example-{i}.test" for i in range(20))
    server = DhcpServer(UserConfig(dnssearch=long_search, hostname="h" * 200))
    _, opts, _, reply = one(server, message(dhcp.DISCOVER))
    assert len(reply.payload) == 548 and 119 not in opts
    assert server.counters["dhcp-option-omitted"] >= 1
    # a client that takes 1500-byte messages gets everything (119 split across instances)
    _, opts, _, reply = one(server, message(dhcp.DISCOVER, opts=[(57, (1500).to_bytes(2, "big"))]))
    assert opts[119] == encode_search(long_search) and opts[12] == b"h" * 200
    assert len(reply.payload) <= 1500 - 28


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01" * 100,
        message(dhcp.DISCOVER, op=2),
        message(dhcp.DISCOVER, hln=16),
        message(None, opts=[(53, b"\x01\x03")]),
        message(dhcp.INFORM),  # INFORM without ciaddr
    ],
)
def test_malformed_messages_are_counted(payload: bytes) -> None:
    server = DhcpServer(UserConfig())
    assert server.handle(payload, 0.0) == []
    assert server.counters["dhcp-malformed"] == 1


def test_pool_exhaustion() -> None:
    server = DhcpServer(UserConfig())
    for i in range(16):
        assert lease(server, bytes.fromhex(f"5254000000{i:02x}")) == f"10.0.2.{15 + i}"
    assert server.handle(message(dhcp.DISCOVER, MAC_B), 0.0) == []
    assert server.counters["dhcp-pool-exhausted"] == 1
