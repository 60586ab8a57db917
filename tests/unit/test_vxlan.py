"""VXLAN: the codec and flow hash (sans-IO), option checks, the too-big replies (checked
with dpkt), and the driver over loopback sockets: head-end replication, learning from
the outer source, per-flow source ports, bad datagrams counted, netdev views."""

from __future__ import annotations

import re
import socket
import struct
from typing import Any

import dpkt
import pytest

from drivers import hubport, vxlan
from drivers.vxlan import VxlanClient
from drivers.vxlan import control as vxlan_control
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.proto.vxlan import (
    HDR_LEN,
    VxlanDecoder,
    flow_hash,
    header,
    too_big_reply,
)
from netstack.qapi import netdev_from_qmp, parse_netdev_cli
from netstack.qmp.hmp import run_hmp
from tests.kit.clock import running
from tests.kit.polling import until
from tests.support import Recorder

pytestmark = pytest.mark.manual_clock

BCAST = b"\xff" * 6
MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def udp_frame(dst: bytes, src: bytes, sport: int, size: int = 100, df: bool = False) -> bytes:
    ip = dpkt.ip.IP(
        src=socket.inet_aton("10.0.0.1"), dst=socket.inet_aton("10.0.0.2"), p=17,
        df=1 if df else 0, data=dpkt.udp.UDP(sport=sport, dport=9, data=bytes(size)),
    )  # fmt: skip
    ip.data.ulen = len(ip.data)
    return bytes(dpkt.ethernet.Ethernet(dst=dst, src=src, type=0x0800, data=ip))


def test_header_and_decoder() -> None:
    assert header(42) == bytes([8, 0, 0, 0, 0, 0, 42, 0])
    assert header(0xFFFFFF)[4:7] == b"\xff\xff\xff"
    with pytest.raises(ValueError):
        header(1 << 24)
    dec = VxlanDecoder(42)
    frame = bytes(14)
    ok = header(42) + frame
    assert dec.inner_start(ok, len(ok)) == HDR_LEN
    reserved = bytes([0x08, 0xAA, 0xBB, 0xCC, 0, 0, 42, 0x77]) + frame  # ignored (RFC)
    assert dec.inner_start(reserved, len(reserved)) == HDR_LEN
    assert dec.inner_start(ok, 21) == -1
    no_i = bytes([0, 0, 0, 0, 0, 0, 42, 0]) + frame
    assert dec.inner_start(no_i, len(no_i)) == -1
    other = header(43) + frame
    assert dec.inner_start(other, len(other)) == -1
    assert dec.drops.as_dict() == {"drop-short": 1, "drop-flags": 1, "drop-vni": 1}
    for n in range(0, 40):  # total: any prefix gives an offset or one drop
        before = dec.drops.total
        r = dec.inner_start(ok, min(n, len(ok)))
        assert (r == HDR_LEN) != (dec.drops.total == before + 1)


def test_flow_hash_is_per_flow() -> None:
    one = udp_frame(MAC_B, MAC_A, 1000)
    assert flow_hash(one) == flow_hash(udp_frame(MAC_B, MAC_A, 1000, size=500))
    hashes = {flow_hash(udp_frame(MAC_B, MAC_A, p)) for p in range(1000, 1064)}
    assert len(hashes) > 60
    assert flow_hash(b"\x00" * 14) == flow_hash(b"\x00" * 60)  # non-IP: Ethernet header


def test_too_big_replies() -> None:
    big = udp_frame(MAC_B, MAC_A, 1000, size=1472, df=True)
    reply = too_big_reply(big, 1400)
    assert reply is not None
    eth = dpkt.ethernet.Ethernet(reply)
    assert eth.dst == MAC_A and eth.src == MAC_B
    ip = eth.data
    assert isinstance(ip, dpkt.ip.IP)
    assert socket.inet_ntoa(ip.src) == "10.0.0.2" and socket.inet_ntoa(ip.dst) == "10.0.0.1"
    icmp = ip.data
    assert icmp.type == 3 and icmp.code == 4
    raw = bytes(icmp)
    assert struct.unpack("!H", raw[6:8])[0] == 1400
    assert raw[8:28] == big[14:34]  # quotes the original IP header
    from netstack.proto.checksum import ones_sum

    assert ones_sum(raw) == 0xFFFF and ones_sum(bytes(ip)[:20]) == 0xFFFF  # valid sums
    assert too_big_reply(udp_frame(MAC_B, MAC_A, 1000, size=1472), 1400) is None  # no DF
    ip6 = dpkt.ip6.IP6(
        src=bytes(15) + b"\x01", dst=bytes(15) + b"\x02", nxt=17, hlim=64,
        data=dpkt.udp.UDP(sport=1, dport=2, data=bytes(1500)),
    )  # fmt: skip
    ip6.plen = len(ip6.data)
    frame6 = bytes(dpkt.ethernet.Ethernet(dst=MAC_B, src=MAC_A, type=0x86DD, data=ip6))
    reply6 = too_big_reply(frame6, 1400)
    assert reply6 is not None
    e6 = dpkt.ethernet.Ethernet(reply6)
    assert e6.data.nxt == 58 and e6.data.src == bytes(15) + b"\x02"
    assert len(reply6) - 14 <= 1280
    assert bytes(e6.data.data)[0] == 2 and struct.unpack("!I", bytes(e6.data.data)[4:8])[0] == 1400


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("vni=16777216,local=127.0.0.1", "vni must be in"),
        ("vni=1,local=nowhere", "local 'nowhere' is not an IP address"),
        ("vni=1,local=224.0.0.1", "must be a unicast address"),
        ("vni=1,local=127.0.0.1,remote=::1", "different families"),
        ("vni=1,local=127.0.0.1,remote=239.1.1.1", "is multicast (use group=)"),
        ("vni=1,local=127.0.0.1,group=10.0.0.1", "must be a multicast address"),
        ("vni=1,local=127.0.0.1,srcports=65", "srcports must be at most 64"),
        ("vni=1,local=127.0.0.1,mtu=20", "mtu must be at least 68"),
    ],
)
async def test_option_errors(spec: str, error: str) -> None:
    ns = Netstack({"vxlan": vxlan.SPEC})
    with pytest.raises(GenericError, match=re.escape(error)):
        await ns.netdev_add(parse_netdev_cli(f"vxlan,id=v,{spec}"))
    await ns.close()


def test_required_spelling_and_qmp_list() -> None:
    nd = parse_netdev_cli("vxlan,id=v0,vni=42,local=192.0.2.1,remote=192.0.2.2,dstport=4789")
    assert nd.type == "vxlan" and nd.options.remote == ("192.0.2.2",)  # type: ignore[union-attr]
    nd = parse_netdev_cli("vxlan,id=v0,vni=42,local=192.0.2.1,remote=192.0.2.2,remote=192.0.2.3")
    assert nd.options.remote == ("192.0.2.2", "192.0.2.3")  # type: ignore[union-attr]
    nd = netdev_from_qmp(
        {"id": "v0", "type": "vxlan", "vni": 1, "local": "::1", "remote": ["::2", "::3"]}
    )
    assert nd.options.remote == ("::2", "::3")  # type: ignore[union-attr]


class Wire:
    """A UDP socket on loopback that plays a remote VTEP."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def drain(self) -> list[tuple[bytes, Any]]:
        out = []
        while True:
            try:
                out.append(self.sock.recvfrom(65536))
            except BlockingIOError:
                return out


async def settle(cond: Any = None) -> None:
    """Until ``cond()`` holds (I/O served, time standing still); without one, until the
    loop has nothing left to do (sends are synchronous, so what was sent has arrived)."""
    if cond is None:
        await running().settle()
    else:
        await until(cond)


async def test_driver_over_loopback() -> None:
    r1, r2 = Wire(), Wire()
    ns = Netstack({"vxlan": vxlan.SPEC, "hubport": hubport.SPEC})
    # two remotes on one address: different ports are not expressible, so the second
    # remote is 127.0.0.2 (also loopback) with the same dstport
    r2.sock.close()
    r2.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r2.sock.bind(("127.0.0.2", r1.port))
    r2.sock.setblocking(False)
    nd = parse_netdev_cli(
        f"vxlan,id=vx,vni=7,local=127.0.0.1,localport=0,remote=127.0.0.1,remote=127.0.0.2,"
        f"dstport={r1.port},srcports=4,ageing=60"
    )
    (vx,) = await ns.netdev_add(nd)
    assert isinstance(vx, VxlanClient)
    port = vx._rx[0].getsockname()[1]
    guest = Recorder("g")
    guest.connect(vx)
    # flood: one copy to each remote
    guest.send([udp_frame(BCAST, MAC_A, 1)])
    await settle()
    got1, got2 = r1.drain(), r2.drain()
    assert len(got1) == len(got2) == 1
    assert got1[0][0][:8] == header(7) and got1[0][0][8:] == udp_frame(BCAST, MAC_A, 1)
    # a station behind r2 speaks: learned behind 127.0.0.2
    r2.sock.sendto(header(7) + udp_frame(MAC_A, MAC_B, 5), ("127.0.0.1", port))
    await settle(lambda: len(guest.got) == 1)
    assert guest.got == [udp_frame(MAC_A, MAC_B, 5)]
    # unicast to the learned MAC goes to r2 only; many flows use several source ports
    guest.send([udp_frame(MAC_B, MAC_A, p) for p in range(1000, 1032)])
    await settle()
    to_r2 = r2.drain()
    assert r1.drain() == [] and len(to_r2) == 32
    assert len({addr[1] for _data, addr in to_r2}) >= 3
    same = {addr[1] for _d, addr in to_r2 if _d[8:] == udp_frame(MAC_B, MAC_A, 1000)}
    assert len(same) == 1
    # one flow's equal-size frames leave in one segmentation-offload send, and arrive as
    # separate datagrams, byte-exact, the shorter last one included
    run = [udp_frame(MAC_B, MAC_A, 7, size=1000)] * 20 + [udp_frame(MAC_B, MAC_A, 7, size=10)]
    guest.send(run)
    await settle()
    got = r2.drain()
    assert [d[8:] for d, _a in got] == run
    assert len({a for _d, a in got}) == 1 and vx.counters()["gso-sends"] >= 1
    # garbage is counted, never delivered
    for bad in (b"x", bytes(30), header(8) + bytes(14)):
        r1.sock.sendto(bad, ("127.0.0.1", port))
    await settle(lambda: vx.stats.malformed == 3)
    assert vx.counters()["drop-short"] == 1 and vx.counters()["drop-flags"] == 1
    assert vx.counters()["drop-vni"] == 1 and len(guest.got) == 1
    rows = vxlan_control.tunnel_fdb(ns, "vx")
    assert {(r["mac"], r["remote"], r["static"]) for r in rows} == {
        ("00:00:00:00:00:00", "127.0.0.1", True),
        ("00:00:00:00:00:00", "127.0.0.2", True),
        ("02:00:00:00:00:02", "127.0.0.2", False),
    }
    text = await run_hmp(ns, "info fdb")
    assert " 02:00:00:00:00:02 dst 127.0.0.2 port " in text and " vni 7 age " in text
    info = ns.query_netdev("vx")[0]
    assert info["info"].startswith("vxlan: vni=7 local=127.0.0.1:")
    assert info["counters"]["fdb-entries"] == 1 and info["options"]["remote"] == [
        "127.0.0.1",
        "127.0.0.2",
    ]
    # the learned entry ages out after ``ageing`` seconds: unicast floods again
    await running().advance(30)
    assert len(vxlan_control.tunnel_fdb(ns, "vx")) == 3
    await running().advance(30.5)
    assert len(vxlan_control.tunnel_fdb(ns, "vx")) == 2
    guest.send([udp_frame(MAC_B, MAC_A, 9)])
    await settle()
    assert len(r1.drain()) == 1 and len(r2.drain()) == 1
    r2.sock.sendto(header(7) + udp_frame(MAC_A, MAC_B, 5), ("127.0.0.1", port))
    await settle(lambda: len(guest.got) == 2)
    # link down flushes what was learned
    ns.set_link("vx", False)
    assert [r["static"] for r in vxlan_control.tunnel_fdb(ns, "vx")] == [True, True]
    with pytest.raises(GenericError, match="has no forwarding table"):
        guest2 = Recorder("other")
        ns.add_client(guest2)
        vxlan_control.tunnel_fdb(ns, "other")
    await ns.close()
    r1.sock.close()
    r2.sock.close()


async def test_mtu_refuses_df_packets_with_icmp_and_sends_the_rest() -> None:
    r1 = Wire()
    ns = Netstack({"vxlan": vxlan.SPEC})
    (vx,) = await ns.netdev_add(
        parse_netdev_cli(
            f"vxlan,id=vx,vni=7,local=127.0.0.1,localport=0,remote=127.0.0.1,"
            f"dstport={r1.port},mtu=1400"
        )
    )
    assert isinstance(vx, VxlanClient)
    guest = Recorder("g")
    guest.connect(vx)
    guest.send([udp_frame(MAC_B, MAC_A, 1, size=1400, df=True)])
    await settle(lambda: len(guest.got) == 1)
    icmp = dpkt.ethernet.Ethernet(guest.got[0]).data.data
    assert (icmp.type, icmp.code) == (3, 4)
    assert vx.counters()["frag-needed"] == 1 and r1.drain() == []
    guest.send([udp_frame(MAC_B, MAC_A, 1, size=1400)])  # no DF: goes, fragmented below
    await settle()
    assert len(r1.drain()) == 1 and vx.counters()["oversize"] == 1
    await ns.close()
    r1.sock.close()
