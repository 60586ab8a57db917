"""Hostile input for :mod:`tests.property.test_user_hostile`: valid guest frames of every
kind the user netdev parses, and what breaks them; hypothesis strategies for frames,
virtio-net headers, TCP options, IPv6 extension header chains and QMP arguments; the
table of hostile QMP requests with the error each must get.

Frames: :func:`templates` (scapy-built once per rig: ARP, IPv4 ICMP/UDP/TCP/DHCP/DNS and
fragments, VLAN, LLDP, IPv6 NDP/MLD/ICMPv6/UDP/DNS/DHCPv6/TCP, extension headers and
fragments), :func:`mutate` (flip, set, truncate, extend, insert, delete bytes, then
optionally :func:`fix_checksums` so a mutation reaches past the checksum checks).

QMP: :func:`rules` builds hostfwd/guestfwd rule texts from their grammar's pieces; every
guestfwd target it can produce touches no file, device or remote peer (:data:`SAFE_TARGETS`,
:func:`safe_arguments` for generated ones). :data:`HOSTILE_QMP` holds requests with the exact
(class, text) each must be answered with - QEMU's text wherever QEMU has one.
"""

from __future__ import annotations

import socket
import struct
from functools import cache
from typing import Any, Final

from hypothesis import strategies as st

from netstack.proto import vnet
from netstack.proto.checksum import finish, ones_sum
from tests.property.hostile_rig import (
    FEC0_2,
    FWD,
    GUEST4,
    GUEST6,
    GUEST_LL,
    GUEST_MAC,
    GW6_MAC,
    GW_MAC,
)

# -- valid frames ----------------------------------------------------------------------------


def templates(echo_port: int, closed_port: int) -> list[bytes]:
    """Valid guest frames of every kind the netdev parses (built once per rig)."""
    return list(_templates(echo_port, closed_port))


@cache
def _templates(echo_port: int, closed_port: int) -> tuple[bytes, ...]:
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.dhcp6 import (
        DUID_LL,
        DHCP6_InfoRequest,
        DHCP6_Solicit,
        DHCP6OptClientId,
        DHCP6OptElapsedTime,
        DHCP6OptIA_NA,
        DHCP6OptOptReq,
    )
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import (
        ICMPv6DestUnreach,
        ICMPv6EchoRequest,
        ICMPv6MLReport2,
        ICMPv6ND_NA,
        ICMPv6ND_NS,
        ICMPv6ND_RS,
        ICMPv6NDOptSrcLLAddr,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrFragment,
        IPv6ExtHdrHopByHop,
        IPv6ExtHdrRouting,
    )
    from scapy.layers.l2 import ARP, Dot1Q, Ether

    g = "52:54:00:12:34:56"
    e4 = Ether(dst="52:55:0a:00:02:02", src=g)
    e6 = Ether(dst="52:56:00:00:00:02", src=g)
    syn_opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("WScale", 7)]
    duid = DUID_LL(lladdr=g)
    out = [
        e4 / ARP(op=1, hwsrc=g, psrc=GUEST4, pdst=FWD),
        Ether(dst="ff:ff:ff:ff:ff:ff", src=g) / ARP(op=2, hwsrc=g, psrc=GUEST4, pdst="10.0.2.2"),
        e4 / IP(src=GUEST4, dst="10.0.2.2") / ICMP(id=7, seq=1) / (b"p" * 40),
        e4 / IP(src=GUEST4, dst=FWD) / ICMP(id=7, seq=2),
        e4 / IP(src=GUEST4, dst="192.0.2.99", ttl=2) / ICMP(id=8, seq=1),
        e4 / IP(src=GUEST4, dst="10.0.2.2") / UDP(sport=5000, dport=echo_port) / b"udp",
        e4 / IP(src=GUEST4, dst="10.0.2.3") / UDP(sport=5001, dport=53)
        / DNS(rd=1, qd=DNSQR(qname="example.com")),
        Ether(dst="ff:ff:ff:ff:ff:ff", src=g) / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex("525400123456"), xid=9)
        / DHCP(options=[("message-type", "discover"), "end"]),
        e4 / IP(src=GUEST4, dst="10.0.2.2", flags="MF", id=99) / UDP(sport=5002, dport=9)
        / (b"f" * 64),
        e4 / IP(src=GUEST4, dst="10.0.2.2", frag=3, id=99) / (b"g" * 24),
        e4 / IP(src=GUEST4, dst="10.0.2.2") / TCP(sport=41000, dport=echo_port, flags="S",
                                                  seq=1, options=syn_opts),
        e4 / IP(src=GUEST4, dst="10.0.2.2") / TCP(sport=41001, dport=closed_port, flags="S"),
        e4 / IP(src=GUEST4, dst=FWD) / TCP(sport=41002, dport=7, flags="S", seq=5),
        e4 / IP(src=GUEST4, dst="10.0.2.2") / TCP(sport=41003, dport=echo_port, flags="PA",
                                                  seq=9, ack=9) / b"data",
        e4 / IP(src=GUEST4, dst="10.0.2.2", options=b"\x94\x04\x00\x00")
        / TCP(sport=41004, dport=echo_port, flags="S"),
        e4 / Dot1Q(vlan=5) / IP(src=GUEST4, dst="10.0.2.2") / ICMP(),
        Ether(dst="01:80:c2:00:00:0e", src=g, type=0x88CC) / (b"\x02\x07\x04" + b"l" * 40),
        Ether(dst="33:33:ff:00:00:02", src=g) / IPv6(src="::", dst="ff02::1:ff00:2", hlim=255)
        / ICMPv6ND_NS(tgt="fec0::2"),
        Ether(dst="33:33:00:00:00:02", src=g) / IPv6(src=GUEST_LL, dst="ff02::2", hlim=255)
        / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=g),
        e6 / IPv6(src=GUEST_LL, dst="fe80::2", hlim=255)
        / ICMPv6ND_NA(tgt=GUEST6, R=0, S=1, O=1),
        Ether(dst="33:33:00:00:00:16", src=g) / IPv6(src=GUEST_LL, dst="ff02::16", hlim=1)
        / IPv6ExtHdrHopByHop(options=[]) / ICMPv6MLReport2(),
        e6 / IPv6(src=GUEST6, dst="2001:db8::1") / ICMPv6EchoRequest(id=3, seq=4),
        e6 / IPv6(src=GUEST6, dst="fec0::2") / ICMPv6DestUnreach() / IPv6(src="fec0::2",
                                                                         dst=GUEST6),
        e6 / IPv6(src=GUEST6, dst="fec0::2") / UDP(sport=6000, dport=echo_port) / b"u6",
        e6 / IPv6(src=GUEST6, dst="fec0::3") / UDP(sport=6001, dport=53)
        / DNS(rd=1, qd=DNSQR(qname="example.com", qtype="AAAA")),
        Ether(dst="33:33:00:01:00:02", src=g) / IPv6(src=GUEST_LL, dst="ff02::1:2")
        / UDP(sport=546, dport=547) / DHCP6_Solicit(trid=5)
        / DHCP6OptClientId(duid=duid) / DHCP6OptIA_NA(iaid=1) / DHCP6OptElapsedTime(),
        Ether(dst="33:33:00:01:00:02", src=g) / IPv6(src=GUEST_LL, dst="ff02::1:2")
        / UDP(sport=546, dport=547) / DHCP6_InfoRequest(trid=6)
        / DHCP6OptClientId(duid=duid) / DHCP6OptOptReq(reqopts=[23, 24]),
        e6 / IPv6(src=GUEST6, dst="fec0::2") / TCP(sport=42000, dport=echo_port, flags="S",
                                                   options=syn_opts),
        e6 / IPv6(src=GUEST6, dst="fec0::2") / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt() / TCP(sport=42001, dport=echo_port, flags="S"),
        e6 / IPv6(src=GUEST6, dst="fec0::2") / IPv6ExtHdrRouting(addresses=[], segleft=0)
        / UDP(sport=6002, dport=9) / b"r",
        e6 / IPv6(src=GUEST6, dst="fec0::2") / IPv6ExtHdrFragment(id=1, m=1, offset=0)
        / UDP(sport=6003, dport=9) / (b"x" * 40),
        e6 / IPv6(src=GUEST6, dst="fec0::2") / IPv6ExtHdrFragment(id=1, m=0, offset=6)
        / (b"y" * 16),
        e6 / IPv6(src=GUEST6, dst="fec0::2") / IPv6ExtHdrFragment(id=2, m=0, offset=0)
        / ICMPv6EchoRequest(id=5),
    ]  # fmt: skip
    return tuple(bytes(p) for p in out)


def fix_checksums(frame: bytearray) -> None:
    """Recompute the IPv4 header checksum and the TCP/UDP/ICMP/ICMPv6 checksum of an
    (already mutated) frame where its headers allow, so mutations reach past them."""
    if len(frame) < 34:
        return
    etype = (frame[12] << 8) | frame[13]
    if etype == 0x0800 and frame[14] >> 4 == 4:
        ihl = (frame[14] & 15) * 4
        if ihl < 20 or 14 + ihl > len(frame):
            return
        frame[24:26] = b"\0\0"
        frame[24:26] = struct.pack("!H", finish(ones_sum(bytes(frame[14 : 14 + ihl]))))
        total = (frame[16] << 8) | frame[17]
        end = min(len(frame), 14 + total)
        l4 = 14 + ihl
        proto = frame[23]
        if ((frame[20] << 8) | frame[21]) & 0x3FFF:
            return
        pseudo = bytes(frame[26:34]) + struct.pack("!BBH", 0, proto, max(0, end - l4))
        _l4_checksum(frame, proto, l4, end, pseudo)
    elif etype == 0x86DD and len(frame) >= 54:
        end = min(len(frame), 54 + ((frame[18] << 8) | frame[19]))
        proto = frame[20]
        pseudo = bytes(frame[22:54]) + struct.pack("!IxxxB", max(0, end - 54), proto)
        _l4_checksum(frame, proto, 54, end, pseudo)


def _l4_checksum(frame: bytearray, proto: int, l4: int, end: int, pseudo: bytes) -> None:
    at = {6: 16, 17: 6, 1: 2, 58: 2}.get(proto)
    if at is None or l4 + at + 2 > end:
        return
    frame[l4 + at : l4 + at + 2] = b"\0\0"
    body = bytes(frame[l4:end])
    value = finish(ones_sum(body if proto == 1 else pseudo + body))
    frame[l4 + at : l4 + at + 2] = struct.pack("!H", value or (0xFFFF if proto == 17 else 0))


Mutation = tuple[str, int, int, bytes]


def mutations() -> st.SearchStrategy[list[Mutation]]:
    one = st.tuples(
        st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]),
        st.integers(0, 4096),
        st.integers(0, 255),
        st.binary(max_size=64),
    )
    return st.lists(one, min_size=1, max_size=5)


def mutate(frame: bytes, muts: list[Mutation], fix: bool) -> bytes:
    out = bytearray(frame)
    for kind, pos, value, blob in muts:
        at = pos % (len(out) + 1)
        if kind == "flip" and out:
            out[at % len(out)] ^= value or 1
        elif kind == "set" and out:
            out[at % len(out)] = value
        elif kind == "truncate":
            del out[at:]
        elif kind == "extend":
            out += blob
        elif kind == "insert":
            out[at:at] = blob
        elif kind == "delete":
            del out[at : at + value % 16 + 1]
    if fix:
        fix_checksums(out)
    return bytes(out)


ETHERTYPES: Final = [0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8, 0x88CC, 0x0000, 0xFFFF]
DST_MACS: Final = [GW_MAC, GW6_MAC, b"\xff" * 6, bytes.fromhex("333300000001"),
                   bytes.fromhex("3333ff000002"), bytes.fromhex("525400000000")]  # fmt: skip


@st.composite
def random_frames(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=300))
    if draw(st.booleans()):
        return body
    dst = draw(st.sampled_from(DST_MACS))
    src = draw(st.sampled_from([GUEST_MAC, GW_MAC, b"\x01" * 6, bytes(6)]))
    etype = draw(st.sampled_from(ETHERTYPES))
    return dst + src + etype.to_bytes(2, "big") + body


# -- virtio-net headers ---------------------------------------------------------------------

U16S: Final = st.one_of(
    st.integers(0, 0xFFFF), st.sampled_from([0, 1, 14, 20, 34, 54, 60, 74, 1460, 0xFFFF])
)
GSO_TYPES: Final = [vnet.GSO_NONE, vnet.GSO_TCPV4, vnet.GSO_UDP, vnet.GSO_TCPV6,
                    vnet.GSO_UDP_L4, vnet.GSO_TCPV4 | vnet.GSO_ECN, vnet.GSO_TCPV6 | 0x80,
                    2, 6, 0x7F, 0xFF]  # fmt: skip


@st.composite
def vnet_headers(draw: st.DrawFn) -> bytes:
    flags = draw(st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(0, 255)))
    gso_type = draw(st.one_of(st.sampled_from(GSO_TYPES), st.integers(0, 255)))
    hdr_len, gso_size, csum_start, csum_offset = (draw(U16S) for _ in range(4))
    if draw(st.booleans()):  # near-valid offsets: the checksum field of TCP or UDP
        csum_start = draw(st.sampled_from([34, 54, 38, 74, 0, 13, 14]))
        csum_offset = draw(st.sampled_from([16, 6, 2, 0, 0xFFFF, 60]))
    return vnet.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


# -- TCP options ----------------------------------------------------------------------------


@st.composite
def tcp_options(draw: st.DrawFn) -> bytes:
    """Option bytes: well-known kinds with lying lengths and odd values, or raw garbage."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=40))
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 8, 19, 28, 29, 30, 34, 253, 254, 255]))
        if kind in (0, 1):
            out += bytes([kind])
            continue
        body = draw(st.binary(max_size=36))
        if kind == 5 and draw(st.booleans()):  # SACK blocks, possibly absurd
            edges = draw(st.lists(st.integers(0, 0xFFFFFFFF), min_size=2, max_size=8))
            body = b"".join(e.to_bytes(4, "big") for e in edges)
        length = draw(st.one_of(st.just(len(body) + 2), st.integers(0, 255)))
        out += bytes([kind, length]) + body
    return out[:40]  # what a data offset can cover


DOFF: Final = st.one_of(st.none(), st.integers(0, 15))


# -- IPv6 extension header chains ------------------------------------------------------------

EXT_TYPES: Final = [0, 43, 60, 44, 51, 50, 135, 139, 140, 253, 254]
V6_DSTS: Final = ["fec0::2", "fec0::3", "fe80::2", "ff02::1", "ff02::1:2", "2001:db8::1",
                  "fec0::99", "::1"]  # fmt: skip


@st.composite
def ext_header(draw: st.DrawFn) -> tuple[int, bytes]:
    """(type, header without its next-header byte): options, routing, fragment, junk."""
    kind = draw(st.sampled_from(EXT_TYPES))
    if kind in (0, 60):
        opts = b""
        for _ in range(draw(st.integers(0, 4))):
            otype = draw(st.sampled_from([0, 1, 5, 0xC2, 0x3E, 0x7F, 0x80, 0xC0, 0xFF]))
            data = draw(st.binary(max_size=12))
            opts += b"\0" if otype == 0 else bytes([otype, draw(st.one_of(
                st.just(len(data)), st.integers(0, 255)))]) + data  # fmt: skip
        body = opts + bytes(-(len(opts) + 2) % 8)
    elif kind == 43:
        rtype = draw(st.sampled_from([0, 2, 3, 4, 253]))
        addrs = draw(st.integers(0, 2))
        body = bytes([rtype, draw(st.integers(0, 3))]) + bytes(4) + draw(
            st.sampled_from([FEC0_2, bytes(16)])) * addrs  # fmt: skip
    elif kind == 44:
        offset, more = draw(st.integers(0, 8191)), draw(st.booleans())
        body = bytes([0]) + struct.pack("!HI", (offset << 3) | more, draw(st.integers(0, 3)))
    else:
        body = draw(st.binary(max_size=30))
        body += bytes(-(len(body) + 2) % 8)
    hlen = (len(body) + 2) // 8 - 1
    if draw(st.integers(0, 4)) == 0:
        hlen = draw(st.integers(0, 255))  # a lying length
    return kind, bytes([max(0, min(hlen, 255))]) + body


@st.composite
def v6_chain_frames(draw: st.DrawFn) -> bytes:
    dst_text = draw(st.sampled_from(V6_DSTS))
    src_text = draw(st.sampled_from([GUEST6, GUEST_LL, "::", GUEST6]))
    src = socket.inet_pton(socket.AF_INET6, src_text)
    dst = socket.inet_pton(socket.AF_INET6, dst_text)
    upper = draw(st.sampled_from(["tcp", "udp", "echo", "ns", "none", "junk"]))
    if upper == "tcp":
        proto, l4 = 6, bytearray(struct.pack("!HHIIBBHHH", 43000, 9, 1, 0, 0x50, 0x02, 65535,
                                             0, 0))  # fmt: skip
    elif upper == "udp":
        data = draw(st.binary(max_size=40))
        proto, l4 = 17, bytearray(struct.pack("!HHHH", 6100, draw(st.sampled_from([9, 53, 547])),
                                              8 + len(data), 0) + data)  # fmt: skip
    elif upper == "echo":
        proto, l4 = (
            58,
            bytearray(b"\x80\x00\x00\x00\x00\x01\x00\x01" + draw(st.binary(max_size=20))),
        )
    elif upper == "ns":
        proto, l4 = 58, bytearray(b"\x87\x00\x00\x00" + bytes(4) + FEC0_2)
    elif upper == "none":
        proto, l4 = 59, bytearray(draw(st.binary(max_size=8)))
    else:
        proto, l4 = draw(st.integers(0, 255)), bytearray(draw(st.binary(max_size=40)))
    at = {6: 16, 17: 6, 58: 2}.get(proto)
    if at is not None and len(l4) >= at + 2:
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), proto)
        l4[at : at + 2] = finish(ones_sum(pseudo + bytes(l4))).to_bytes(2, "big")
    chain = draw(st.lists(ext_header(), max_size=6))
    body = bytes(l4)
    nh = proto
    for kind, rest in reversed(chain):
        body = bytes([nh]) + rest + body
        nh = kind
    plen = len(body)
    if draw(st.integers(0, 3)) == 0:
        plen = draw(st.integers(0, 0xFFFF))
    hlim = draw(st.sampled_from([255, 64, 1, 0]))
    ip = struct.pack("!IHBB", 6 << 28, plen, nh, hlim) + src + dst
    mac = (b"\x33\x33" + dst[12:]) if dst[0] == 0xFF else GW6_MAC
    return mac + GUEST_MAC + b"\x86\xdd" + ip + body


# -- QMP ------------------------------------------------------------------------------------

#: guestfwd targets that touch no file, device or remote peer (no guest connects in the
#: QMP tests, so ``cmd:`` runs nothing).
SAFE_TARGETS: Final = [
    "cmd:true",
    "cmd:",
    "null",
    "chardev:nope",
    "chardev:",
    "ringbuf",
    "mon:null",
    "",
    "\x00",
    "zz",
    "null,logappend=on",
    "socket,id=x",
]
_UNSAFE: Final = (
    "file",
    "pipe",
    "serial",
    "tty",
    "parallel",
    "stdio",
    "pty",
    "/",
    "unix",
    "udp",
    "tcp",
    "log",
    "vc",
    "msmouse",
    "braille",
)
ADDRS: Final = [
    "",
    "127.0.0.1",
    "0.0.0.0",
    "10.0.2.15",
    "10.0.2.100",
    "10.0.2.2",
    "[::1]",
    "[::]",
    "[fec0::15]",
    "[::1",
    "::1]",
    "[]",
    "1.2.3.4.5",
    "0x7f.1",
    "\x00",
    "255.255.255.255",
    "[fe80::1%lo]",
]
PORTS: Final = [
    "0",
    "1",
    "22",
    "65535",
    "65536",
    "-1",
    "0x10",
    "010",
    "",
    "99999999999999999999",
    " 5",
    "5 ",
    "+5",
    "1x",
]
VALID_PORTS: Final = ["0", "1", "22", "65535", "0x10", "010"]
GF_SERVERS: Final = ["", "10.0.2.100", "10.0.2.4", "10.0.2.101", "10.0.2.2", "10.0.3.1", "x",
                     "0x0a000264", "[fec0::4]"]  # fmt: skip


@st.composite
def rules(draw: st.DrawFn) -> str:
    """hostfwd/guestfwd rule texts from their grammar's pieces, valid ones often, with
    noise now and then."""
    port = st.sampled_from(VALID_PORTS) | st.sampled_from(PORTS)
    if draw(st.booleans()):
        proto = draw(st.sampled_from(["tcp", "udp", "", "tcp", "udp", "unix", "sctp"]))
        a1, a2 = draw(st.sampled_from(ADDRS)), draw(st.sampled_from(ADDRS))
        rule = f"{proto}:{a1}:{draw(port)}-{a2}:{draw(port)}"
    else:
        proto = draw(st.sampled_from(["tcp", "", "tcp", "udp"]))
        server = draw(st.sampled_from(GF_SERVERS))
        rule = f"{proto}:{server}:{draw(port)}-{draw(st.sampled_from(SAFE_TARGETS))}"
    if draw(st.integers(0, 5)) == 0:
        noise = draw(st.text(max_size=4))
        at = draw(st.integers(0, len(rule)))
        rule = rule[:at] + noise + rule[at:]
    return rule


def safe_arguments(arguments: Any) -> bool:
    """Whether a generated request's rule (if any) names no chardev that would touch
    files, devices or peers (a guestfwd target is what follows the first ``-``)."""
    if not isinstance(arguments, dict) or not isinstance(arguments.get("rule"), str):
        return True
    target = arguments["rule"].partition("-")[2]
    return not any(word in target for word in _UNSAFE)


MEMBERS: Final = ["netdev", "rule", "type", "protocol", "host-addr", "host-port", "guest-addr",
                  "guest-port", "id", "arguments"]  # fmt: skip
SCALARS: Final = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.integers(-2, 70000),
    st.floats(allow_nan=False), st.text(max_size=12), rules(),
    st.sampled_from(["u0", "u6", "lone", "nope", "", "hostfwd", "guestfwd", "tcp", "udp",
                     "::1", "[::1]", "10.0.2.100", "127.0.0.1", "x" * 10_000]),
)  # fmt: skip
VALUES: Final = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=6), inner, max_size=3), max_leaves=5,
)  # fmt: skip
FWD_ADD: Final = "user-forward-add"
FWD_DEL: Final = "user-forward-remove"
QMP_COMMANDS: Final = [FWD_ADD, FWD_DEL, "query-user-forwards", "query-user-connections"]
NETDEV_NAMES: Final = st.sampled_from(["u0", "u0", "u6", "lone", "nope"])
#: Requests: any members and values, any arguments, and well-formed ones with hostile rules,
#: ports and addresses.
QMP_CALLS: Final = st.one_of(
    st.tuples(st.sampled_from(QMP_COMMANDS), st.dictionaries(
        st.sampled_from(MEMBERS) | st.text(max_size=8), VALUES, max_size=6)),
    st.tuples(st.sampled_from(QMP_COMMANDS), VALUES),
    st.tuples(st.just(FWD_ADD), st.fixed_dictionaries(
        {"netdev": NETDEV_NAMES, "rule": rules()},
        optional={"type": st.sampled_from(["hostfwd", "guestfwd"])})),
    st.tuples(st.just(FWD_DEL), st.fixed_dictionaries(
        {"netdev": NETDEV_NAMES, "type": st.just("hostfwd"), "host-port": VALUES},
        optional={"protocol": VALUES, "host-addr": st.sampled_from(ADDRS) | VALUES})),
    st.tuples(st.just(FWD_DEL), st.fixed_dictionaries(
        {"netdev": NETDEV_NAMES, "type": st.just("guestfwd"), "guest-port": VALUES},
        optional={"guest-addr": st.sampled_from(GF_SERVERS) | VALUES})),
)  # fmt: skip


# -- QMP: the table --------------------------------------------------------------------------

LONG: Final = "x" * 100_000
NOT_FOUND = ("DeviceNotFound", "Device 'nope' not found")
NOT_USER = ("GenericError", "Device 'lone' is not a user netdev")


def gerr(desc: str) -> tuple[str, str]:
    return "GenericError", desc


def bad_hostfwd(rule: str, why: str) -> tuple[str, str]:
    return gerr(f"Invalid host forwarding rule '{rule}' ({why})")


def no_device(port: int) -> tuple[str, str]:
    return gerr(f"Could not open guest forwarding device 'guestfwd.tcp.{port}'")


def gf(rule: str) -> dict[str, str]:
    return {"netdev": "u0", "type": "guestfwd", "rule": rule}


def hf(rule: Any) -> dict[str, Any]:
    return {"netdev": "u0", "rule": rule}


def rm(kind: str, **members: Any) -> dict[str, Any]:
    return {"netdev": "u0", "type": kind, **{k.replace("_", "-"): v for k, v in members.items()}}


#: (command, arguments, (error class, error text)): every one an error, nothing changes.
HOSTILE_QMP: Final[list[tuple[str, Any, tuple[str, str]]]] = [
    # wrong types, missing and extra members, unknown and non-user netdevs
    (FWD_ADD, hf(5), gerr("Invalid parameter type for 'rule', expected: string")),
    (FWD_ADD, hf(None), gerr("Invalid parameter type for 'rule', expected: string")),
    (FWD_ADD, hf(["tcp::0-:22"]), gerr("Invalid parameter type for 'rule', expected: string")),
    (FWD_ADD, {"netdev": ["u0"], "rule": "tcp::0-:1"},
     gerr("Invalid parameter type for 'netdev', expected: string")),
    (FWD_ADD, {"netdev": "u0"}, gerr("Parameter 'rule' is missing")),
    (FWD_ADD, {"rule": "tcp::0-:1"}, gerr("Parameter 'netdev' is missing")),
    (FWD_ADD, {**hf("tcp::0-:1"), "extra": 1}, gerr("Parameter 'extra' is unexpected")),
    (FWD_ADD, {**hf("tcp::0-:1"), "type": "GUESTFWD"},
     gerr("Parameter 'type' does not accept value 'GUESTFWD'")),
    (FWD_ADD, {**hf("tcp::0-:1"), "type": 1},
     gerr("Invalid parameter type for 'type', expected: string")),
    (FWD_ADD, [1], gerr("QMP input member 'arguments' must be an object")),
    (FWD_ADD, {"netdev": "nope", "rule": "tcp::0-:1"}, NOT_FOUND),
    (FWD_ADD, {"netdev": "", "rule": "tcp::0-:1"}, ("DeviceNotFound", "Device '' not found")),
    (FWD_ADD, {"netdev": "u0\x00", "rule": "tcp::0-:1"},
     ("DeviceNotFound", "Device 'u0\x00' not found")),
    (FWD_ADD, {"netdev": "lone", "rule": "tcp::0-:1"}, NOT_USER),
    # hostfwd rules: ports, addresses, brackets, NUL, length
    (FWD_ADD, hf("tcp:127.0.0.1:-1-:22"), bad_hostfwd("tcp:127.0.0.1:-1-:22", "Bad host port")),
    (FWD_ADD, hf("tcp:127.0.0.1:65536-:22"),
     bad_hostfwd("tcp:127.0.0.1:65536-:22", "Bad host port")),
    (FWD_ADD, hf("tcp::99999999999999999999999-:22"),
     bad_hostfwd("tcp::99999999999999999999999-:22", "Bad host port")),
    (FWD_ADD, hf("tcp::0-:-22"), bad_hostfwd("tcp::0-:-22", "Bad guest port")),
    (FWD_ADD, hf("tcp::0-:0"), bad_hostfwd("tcp::0-:0", "Bad guest port")),
    (FWD_ADD, hf("sctp::0-:1"), bad_hostfwd("sctp::0-:1", "Bad protocol name")),
    (FWD_ADD, hf("tcp"), bad_hostfwd("tcp", "No : separators")),
    (FWD_ADD, hf(""), bad_hostfwd("", "No : separators")),
    (FWD_ADD, hf("tcp:1.2.3.4.5:0-:22"), bad_hostfwd("tcp:1.2.3.4.5:0-:22", "Bad host address")),
    (FWD_ADD, hf("tcp:127.0.0.1\x00:0-:22"),
     bad_hostfwd("tcp:127.0.0.1\x00:0-:22", "Bad host address")),
    (FWD_ADD, hf("tcp::0-10.0.2.15\x00:22"),
     bad_hostfwd("tcp::0-10.0.2.15\x00:22", "Bad guest address")),
    (FWD_ADD, hf("tcp:[::1:0-:22"), bad_hostfwd("tcp:[::1:0-:22", "Bad host address")),
    (FWD_ADD, hf("tcp:[::1]]:0-:22"), bad_hostfwd("tcp:[::1]]:0-:22", "Bad host address")),
    (FWD_ADD, hf("tcp:[[::1]]:0-:22"), bad_hostfwd("tcp:[[::1]]:0-:22", "Bad host address")),
    (FWD_ADD, hf("tcp:[]:0-:22"), bad_hostfwd("tcp:[]:0-:22", "Bad host address")),
    (FWD_ADD, hf("tcp:[::1]0-:22"), bad_hostfwd("tcp:[::1]0-:22", "Bad host address")),
    (FWD_ADD, hf("tcp:[::1%lo]:0-:22"), bad_hostfwd("tcp:[::1%lo]:0-:22", "Bad host address")),
    (FWD_ADD, hf("tcp:[127.0.0.1]:0-:22"),
     bad_hostfwd("tcp:[127.0.0.1]:0-:22", "Bad host address")),
    (FWD_ADD, hf("tcp::0-[fec0::15:22"), bad_hostfwd("tcp::0-[fec0::15:22", "Bad guest address")),
    (FWD_ADD, hf("tcp::0-[fec0::15]22"), bad_hostfwd("tcp::0-[fec0::15]22", "Bad guest address")),
    (FWD_ADD, hf("tcp::0-[fec0::15]"), bad_hostfwd("tcp::0-[fec0::15]", "Bad guest address")),
    (FWD_ADD, hf("tcp:" + LONG), bad_hostfwd("tcp:" + LONG, "Missing : separator")),
    (FWD_ADD, hf("tcp::0-:" + "9" * 4000), bad_hostfwd("tcp::0-:" + "9" * 4000, "Bad guest port")),
    (FWD_ADD, hf("tcp::0x" + "f" * 5000 + "-:1"),
     bad_hostfwd("tcp::0x" + "f" * 5000 + "-:1", "Bad host port")),
    (FWD_ADD, hf("unix:/tmp/netstack_hostile-:22"),
     gerr("Could not set up host forwarding rule 'unix:/tmp/netstack_hostile-:22'")),
    (FWD_ADD, {"netdev": "u6", "rule": "tcp:127.0.0.1:0-[fec0::15]:22"},
     gerr("Could not set up host forwarding rule 'tcp:127.0.0.1:0-[fec0::15]:22'")),
    # guestfwd rules: syntax, conflicts, chardev specs that cannot serve, NUL, length
    (FWD_ADD, gf("udp::5-cmd:true"), gerr("Invalid guest forwarding rule 'udp::5-cmd:true'")),
    (FWD_ADD, gf("tcp::0-cmd:true"), gerr("Invalid guest forwarding rule 'tcp::0-cmd:true'")),
    (FWD_ADD, gf("tcp::65536-cmd:true"),
     gerr("Invalid guest forwarding rule 'tcp::65536-cmd:true'")),
    (FWD_ADD, gf("tcp::-1-cmd:true"), gerr("Invalid guest forwarding rule 'tcp::-1-cmd:true'")),
    (FWD_ADD, gf("tcp:[fec0::4]:5-cmd:true"),
     gerr("Invalid guest forwarding rule 'tcp:[fec0::4]:5-cmd:true'")),
    (FWD_ADD, gf("tcp:10.0.2.2:5-cmd:true"),
     gerr("Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.2:5-cmd:true'")),
    (FWD_ADD, gf("tcp:10.0.3.4:5-cmd:true"),
     gerr("Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.3.4:5-cmd:true'")),
    (FWD_ADD, gf("tcp:10.0.2.100:1-cmd:cat\x00rm"),
     gerr("Invalid guest forwarding rule 'tcp:10.0.2.100:1-cmd:cat\x00rm'")),
    (FWD_ADD, gf("tcp:10.0.2.100:2-file:/tmp/netstack-hostile\x00b"),
     gerr("Invalid guest forwarding rule 'tcp:10.0.2.100:2-file:/tmp/netstack-hostile\x00b'")),
    (FWD_ADD, gf("tcp:10.0.2.100:3-\x00"),
     gerr("Invalid guest forwarding rule 'tcp:10.0.2.100:3-\x00'")),
    ("netdev_add", {"type": "user", "id": "u9", "guestfwd": [{"str": f"tcp:{FWD}:2-cmd:a\x00b"}]},
     gerr(f"Invalid guest forwarding rule 'tcp:{FWD}:2-cmd:a\x00b'")),
    ("netdev_add", {"type": "user", "id": "u9", "guestfwd": [{"str": f"tcp:{FWD}:2-file:/x\x00"}]},
     gerr(f"Invalid guest forwarding rule 'tcp:{FWD}:2-file:/x\x00'")),
    (FWD_ADD, gf("tcp:10.0.2.100:4-"), no_device(4)),
    (FWD_ADD, gf("tcp:10.0.2.100:5-chardev:"), no_device(5)),
    (FWD_ADD, gf("tcp:10.0.2.100:6-chardev:nope"), no_device(6)),
    (FWD_ADD, gf("tcp:10.0.2.100:7-" + LONG), no_device(7)),
    (FWD_ADD, gf("tcp:10.0.2.100:8-socket,id=x"), no_device(8)),
    (FWD_ADD, gf("tcp:10.0.2.100:9-mon:null"), no_device(9)),
    (FWD_ADD, gf("tcp:10.0.2.100:10-bogus:thing"), no_device(10)),
    # user-forward-remove: the union, ports, addresses
    (FWD_DEL, {"netdev": "u0", "host-port": 1}, gerr("Parameter 'type' is missing")),
    (FWD_DEL, rm("hostfwd"), gerr("Parameter 'host-port' is missing")),
    (FWD_DEL, rm("bogus", guest_port=1), gerr("Parameter 'type' does not accept value 'bogus'")),
    (FWD_DEL, rm("hostfwd", host_port=-1), gerr("Parameter 'host-port' expects uint16")),
    (FWD_DEL, rm("hostfwd", host_port=65536), gerr("Parameter 'host-port' expects uint16")),
    (FWD_DEL, rm("hostfwd", host_port=1 << 70), gerr("Parameter 'host-port' expects uint64")),
    (FWD_DEL, rm("hostfwd", host_port=1.5), gerr("Parameter 'host-port' expects uint64")),
    (FWD_DEL, rm("hostfwd", host_port=True), gerr("Parameter 'host-port' expects uint64")),
    (FWD_DEL, rm("hostfwd", host_port="22"), gerr("Parameter 'host-port' expects uint64")),
    (FWD_DEL, rm("guestfwd", guest_port=-5), gerr("Parameter 'guest-port' expects uint16")),
    (FWD_DEL, rm("hostfwd", host_port=1, guest_port=2),
     gerr("Parameter 'guest-port' is unexpected")),
    (FWD_DEL, rm("guestfwd", guest_port=1, host_addr="::1"),
     gerr("Parameter 'host-addr' is unexpected")),
    (FWD_DEL, rm("hostfwd", host_port=1, protocol="sctp"),
     gerr("Parameter 'protocol' does not accept value 'sctp'")),
    (FWD_DEL, rm("hostfwd", host_port=1, host_addr=5),
     gerr("Invalid parameter type for 'host-addr', expected: string")),
    (FWD_DEL, rm("hostfwd", host_port=1, host_addr="nowhere"),
     gerr("Parameter 'host-addr' expects an IP address")),
    (FWD_DEL, rm("hostfwd", host_port=1, host_addr="1.2.3.4\x00"),
     gerr("Parameter 'host-addr' expects an IP address")),
    (FWD_DEL, rm("hostfwd", host_port=1, host_addr="[]"),
     gerr("Parameter 'host-addr' expects an IP address")),
    (FWD_DEL, rm("hostfwd", host_port=1, host_addr=LONG),
     gerr("Parameter 'host-addr' expects an IP address")),
    (FWD_DEL, rm("guestfwd", guest_port=1, guest_addr="fec0::4"),
     gerr("Parameter 'guest-addr' expects an IPv4 address")),
    (FWD_DEL, rm("guestfwd", guest_port=1, guest_addr="\x00"),
     gerr("Parameter 'guest-addr' expects an IPv4 address")),
    (FWD_DEL, rm("hostfwd", host_port=22), gerr("host forwarding rule for tcp::22 not found")),
    (FWD_DEL, rm("guestfwd", guest_port=22), gerr("guest forwarding rule for tcp::22 not found")),
    (FWD_DEL, {"netdev": "lone", "type": "guestfwd", "guest-port": 1}, NOT_USER),
    (FWD_DEL, {"netdev": "nope", "type": "hostfwd", "host-port": 1}, NOT_FOUND),
    # the queries
    ("query-user-forwards", {"netdev": 3},
     gerr("Invalid parameter type for 'netdev', expected: string")),
    ("query-user-forwards", {"netdev": "lone"}, NOT_USER),
    ("query-user-forwards", {"netdev": "nope"}, NOT_FOUND),
    ("query-user-forwards", {"extra": 3}, gerr("Parameter 'extra' is unexpected")),
    ("query-user-connections", {"netdev": None},
     gerr("Invalid parameter type for 'netdev', expected: string")),
    ("query-user-connections", {"netdev": "lone"}, NOT_USER),
    ("query-user-connections", {"netdev": "u0", "x": 1}, gerr("Parameter 'x' is unexpected")),
]  # fmt: skip
