"""virtio-net header helpers and software offloads (``netstack.proto.vnet``), frame by frame.

Frames are built with scapy; every checksum is checked by letting scapy recompute it.
"""

from __future__ import annotations

import struct

import pytest
from scapy.all import (  # type: ignore[attr-defined]
    IP,
    TCP,
    UDP,
    Dot1AD,
    Dot1Q,
    Ether,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    Raw,
    defragment,
    raw,
)

from netstack.proto import vnet
from netstack.proto.checksum import fold, ones_sum

ETH = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def partial(frame: bytes, l3: int, l4: int, csum_off: int, v4: bool) -> bytes:
    """Put the pseudo-header sum into the L4 checksum field (Linux CHECKSUM_PARTIAL)."""
    b = bytearray(frame)
    addrs = b[l3 + 12 : l3 + 20] if v4 else b[l3 + 8 : l3 + 40]
    proto = b[l3 + 9] if v4 else (b[l4 - 8] if l4 - l3 > 40 else b[l3 + 6])
    struct.pack_into("!H", b, l4 + csum_off, fold(ones_sum(bytes(addrs)) + proto + len(b) - l4))
    return bytes(b)


def tso(pkt, mss: int, l4: int, v4: bool = True, l3: int = 14) -> list[bytes]:  # type: ignore[no-untyped-def]
    frame = partial(raw(pkt), l3, l4, 16, v4)
    gso = vnet.GSO_TCPV4 if v4 else vnet.GSO_TCPV6
    return vnet.to_plain([vnet.pack(vnet.NEEDS_CSUM, gso, 0, mss, l4, 16) + frame])


def checksums_ok(frame: bytes) -> bool:
    pkt = Ether(frame)
    fresh = Ether(frame)
    for layer in (IP, TCP, UDP):
        if layer in fresh:
            del fresh[layer].chksum
    fresh = Ether(raw(fresh))
    return all(pkt[layer].chksum == fresh[layer].chksum for layer in (IP, TCP, UDP) if layer in pkt)


def test_pack_unpack_and_plain_headers() -> None:
    hdr = vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4 | vnet.GSO_ECN, 66, 1448, 34, 16)
    assert len(hdr) == vnet.HDR_LEN == 12
    assert vnet.unpack(hdr) == (1, 0x81, 66, 1448, 34, 16)
    assert vnet.add_headers([b"ab"]) == [bytes(12) + b"ab"]
    assert vnet.to_plain([vnet.PLAIN_HDR + b"xyz", vnet.pack(vnet.DATA_VALID) + b"q"]) == [
        b"xyz",
        b"q",
    ]


@pytest.mark.parametrize("v4", [True, False])
def test_partial_checksum_is_completed(v4: bool) -> None:
    ip = IP(src="10.0.0.1", dst="10.0.0.2") if v4 else IPv6(src="fd::1", dst="fd::2")
    l4 = 34 if v4 else 54
    for l4_layer, off in ((TCP(sport=1, dport=2), 16), (UDP(sport=1, dport=2), 6)):
        frame = partial(raw(Ether(**ETH) / ip / l4_layer / (b"p" * 301)), 14, l4, off, v4)
        (out,) = vnet.to_plain([vnet.pack(vnet.NEEDS_CSUM, 0, 0, 0, l4, off) + frame])
        assert checksums_ok(out)


def test_udp_checksum_zero_is_sent_as_ffff() -> None:
    # payload chosen so that the UDP checksum computes to 0 -> must become 0xffff
    base = Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2, chksum=0)
    body = bytearray(b"\0\0")
    frame = raw(base / Raw(bytes(body)))
    want = fold(ones_sum(frame[34:]) + ones_sum(frame[26:34]) + 17 + len(frame) - 34)
    struct.pack_into("!H", body, 0, ~want & 0xFFFF)  # makes the sum 0xffff, the checksum 0
    frame = partial(raw(base / Raw(bytes(body))), 14, 34, 6, True)
    (out,) = vnet.to_plain([vnet.pack(vnet.NEEDS_CSUM, 0, 0, 0, 34, 6) + frame])
    assert out[40:42] == b"\xff\xff"


def test_tso_segments_carry_the_right_flags_ids_and_sequence() -> None:
    payload = bytes(range(256)) * 20  # 5120 bytes
    pkt = (
        Ether(**ETH)
        / IP(src="10.0.0.1", dst="10.0.0.2", id=65534, flags="DF")
        / TCP(sport=1000, dport=80, seq=0xFFFFFF00, flags="FPAC")
        / payload
    )
    segs = tso(pkt, 1448, 34)
    assert len(segs) == 4
    parsed = [Ether(s) for s in segs]
    assert [p[IP].id for p in parsed] == [65534, 65535, 0, 1]
    assert [p[TCP].seq for p in parsed] == [(0xFFFFFF00 + i * 1448) & 0xFFFFFFFF for i in range(4)]
    assert [str(p[TCP].flags) for p in parsed] == ["AC", "A", "A", "FPA"]
    assert [len(p[TCP].payload) for p in parsed] == [1448, 1448, 1448, 776]
    assert all(p[IP].flags == "DF" and checksums_ok(raw(p)) for p in parsed)
    assert b"".join(bytes(p[TCP].payload) for p in parsed) == payload


def test_tso_ipv6_with_extension_header_and_vlan_tags() -> None:
    payload = b"z" * 3000
    pkt = (
        Ether(**ETH)
        / Dot1AD(vlan=5)
        / Dot1Q(vlan=7)
        / IPv6(src="fd::1", dst="fd::2")
        / IPv6ExtHdrHopByHop()
        / TCP(sport=1, dport=2, flags="PA")
        / payload
    )
    segs = tso(pkt, 1000, 14 + 8 + 40 + 8, v4=False, l3=22)
    assert len(segs) == 3
    for s in segs:
        p = Ether(s)
        assert p[IPv6].plen == 8 + 20 + len(p[TCP].payload)
        fresh = Ether(s)
        del fresh[TCP].chksum
        assert Ether(raw(fresh))[TCP].chksum == p[TCP].chksum
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in segs) == payload


def test_uso_makes_one_datagram_per_segment() -> None:
    payload = b"u" * 2500
    pkt = Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=6) / payload
    frame = partial(raw(pkt), 14, 34, 6, True)
    segs = vnet.to_plain([vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_UDP_L4, 0, 1000, 34, 6) + frame])
    assert [len(Ether(s)[UDP].payload) for s in segs] == [1000, 1000, 500]
    assert all(
        checksums_ok(s) and Ether(s)[UDP].len == 8 + len(Ether(s)[UDP].payload) for s in segs
    )


@pytest.mark.parametrize("v4", [True, False])
def test_ufo_sends_ip_fragments_of_one_datagram(v4: bool) -> None:
    payload = bytes(range(256)) * 12
    ip = IP(src="10.0.0.1", dst="10.0.0.2", id=77) if v4 else IPv6(src="fd::1", dst="fd::2")
    l4 = 34 if v4 else 54
    original = raw(Ether(**ETH) / ip / UDP(sport=5, dport=6) / payload)  # scapy's checksum
    frame = partial(original, 14, l4, 6, v4)
    segs = vnet.to_plain([vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_UDP, 0, 1400, l4, 6) + frame])
    assert len(segs) == 3
    if v4:
        frags = [Ether(s)[IP] for s in segs]
        assert [f.flags.MF for f in frags] == [1, 1, 0] and {f.id for f in frags} == {77}
        assert all(checksums_ok(s) for s in segs[1:])  # IP header checksums
        whole = IP(raw(defragment(frags)[0]))
    else:
        body = b""
        for s in segs:
            fh = Ether(s)[IPv6ExtHdrFragment]
            assert fh.offset * 8 == len(body) and fh.m == (s is not segs[-1])
            body += bytes(fh.payload)
        whole = IPv6(raw(IPv6(src="fd::1", dst="fd::2", nh=17) / Raw(body)))
    udp = UDP(raw(whole.payload))
    assert bytes(udp.payload) == payload
    assert udp.chksum == Ether(original)[UDP].chksum  # completed over the whole datagram


@pytest.mark.parametrize(
    "header",
    [
        vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 0, 0, 34, 16),  # gso_size 0
        vnet.pack(vnet.NEEDS_CSUM, 0, 0, 0, 5000, 16),  # csum_start outside
        vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_UDP_L4, 0, 100, 34, 6),  # USO on TCP
        vnet.pack(vnet.NEEDS_CSUM, 9, 0, 100, 34, 16),  # unknown GSO type
    ],
)
def test_inconsistent_frames_are_dropped(header: bytes) -> None:
    pkt = raw(Ether(**ETH) / IP(src="1.1.1.1", dst="2.2.2.2") / TCP() / (b"x" * 500))
    assert vnet.to_plain([header + pkt, b"short", vnet.PLAIN_HDR + b"ok"]) == [b"ok"]


def test_gso_on_non_ip_is_dropped() -> None:
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    assert vnet.to_plain([vnet.pack(1, vnet.GSO_TCPV4, 0, 100, 14, 16) + arp]) == []


def test_ethernet_padding_is_not_payload() -> None:
    payload = b"p" * 3000
    pkt = Ether(**ETH) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="A") / payload
    frame = partial(raw(pkt), 14, 34, 16, True) + bytes(7)  # trailing pad
    segs = vnet.to_plain([vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 0, 1448, 34, 16) + frame])
    assert b"".join(bytes(Ether(s)[TCP].payload) for s in segs) == payload
    assert all(checksums_ok(s) for s in segs)
