"""Hot-path IPv4 codecs: Ethernet, IPv4, UDP, ICMP and ARP headers (the user netdev's).

Owns building guest-bound frames - the IPv4 header with its checksum, UDP with its
pseudo-header checksum, fragmentation of datagrams larger than the guest MTU (RFC 791:
fragment payloads are multiples of 8 bytes, every fragment but the last has MF set, the
fragment offset counts 8-byte units) and padding of short frames to ``ETH_ZLEN`` (60
bytes, as QEMU's slirp backend pads for peers that need it) - and the small parsers the
router uses on guest frames. Everything is precompiled :class:`struct.Struct` work over
``bytes``/``memoryview`` (no dpkt here: this is the per-packet path, TFTP data included).

Addresses are 4-byte ``bytes`` throughout. Invariants: every frame built here is at least
60 bytes long; every IPv4 header built here is 20 bytes (no options) with a valid checksum;
no fragment's IP packet is larger than the ``mtu`` it was built for.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

from netstack.proto.checksum import (
    addr_sum,
    finish,
    finish_udp,
    ipv4_header_checksum,
    ipv4_header_ok,
    ones_sum,
)

ETH_P_IP: Final = 0x0800
ETH_P_ARP: Final = 0x0806
ETH_P_IPV6: Final = 0x86DD
ETH_HLEN: Final = 14
ETH_ZLEN: Final = 60
IP_HLEN: Final = 20
UDP_HLEN: Final = 8
IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IP_MF: Final = 0x2000
IP_DF: Final = 0x4000
IP_OFFMASK: Final = 0x1FFF
#: The largest IPv4 datagram.
IP_MAXPACKET: Final = 65535
DEFAULT_TTL: Final = 64
#: RFC 1812: ICMP errors carry as much of the offending datagram as fits in 576 bytes.
ICMP_ERROR_MAX: Final = 576

ICMP_ECHOREPLY: Final = 0
ICMP_UNREACH: Final = 3
ICMP_ECHO: Final = 8
ICMP_TIMXCEED: Final = 11
UNREACH_NET: Final = 0
UNREACH_HOST: Final = 1
UNREACH_PROTOCOL: Final = 2
UNREACH_PORT: Final = 3

BROADCAST_MAC: Final = b"\xff" * 6
BROADCAST_IP: Final = b"\xff" * 4
ZERO_IP: Final = b"\0" * 4

ETH = struct.Struct("!6s6sH")
IPV4 = struct.Struct("!BBHHHBBH4s4s")
UDP = struct.Struct("!HHHH")
ICMP_HDR = struct.Struct("!BBHHH")  # type, code, checksum, id, seq (echo) / unused
ARP = struct.Struct("!HHBBH6s4s6s4s")
_ETH_TYPE_IP = b"\x08\x00"
_PAD = bytes(ETH_ZLEN)


def virtual_mac(addr: bytes) -> bytes:
    """The MAC slirp gives a virtual address: ``52:55`` followed by the 4 address bytes."""
    return b"\x52\x55" + addr


def ipv4_header(
    src: bytes, dst: bytes, proto: int, total: int, ident: int, frag: int = 0,
    ttl: int = DEFAULT_TTL, tos: int = 0,
) -> bytes:  # fmt: skip
    """A 20-byte IPv4 header with its checksum."""
    hdr = IPV4.pack(0x45, tos, total, ident, frag, ttl, proto, 0, src, dst)
    csum = ipv4_header_checksum(hdr)
    return IPV4.pack(0x45, tos, total, ident, frag, ttl, proto, csum, src, dst)


#: Whether the IPv4 header at ``frame[start:start + ihl]`` checks out.
header_ok = ipv4_header_ok


def udp_segment(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """UDP header (with the pseudo-header checksum) followed by ``payload``."""
    ulen = UDP_HLEN + len(payload)
    initial = addr_sum(src) + addr_sum(dst) + IPPROTO_UDP + ulen + sport + dport + ulen
    return UDP.pack(sport, dport, ulen, finish_udp(ones_sum(payload, initial))) + payload


def icmp_message(icmp_type: int, code: int, rest: bytes, body: bytes | memoryview) -> bytes:
    """An ICMP message: type, code, checksum, 4 bytes ``rest`` and ``body``."""
    msg = bytes([icmp_type, code, 0, 0]) + rest + body
    value = finish(ones_sum(msg))
    return msg[:2] + value.to_bytes(2, "big") + msg[4:]


def frames(
    dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, proto: int,
    l4: bytes, ident: int, mtu: int, ttl: int = DEFAULT_TTL, tos: int = 0,
) -> list[bytes]:  # fmt: skip
    """Ethernet frames carrying one IPv4 datagram, fragmented to ``mtu`` when needed."""
    eth = dst_mac + src_mac + _ETH_TYPE_IP
    total = IP_HLEN + len(l4)
    if total <= mtu:
        frame = eth + ipv4_header(src, dst, proto, total, ident, 0, ttl, tos) + l4
        if len(frame) < ETH_ZLEN:
            frame += _PAD[len(frame) :]
        return [frame]
    return fragment_frames(eth, src, dst, proto, l4, ident, mtu, ttl, tos)


def fragment_frames(
    eth: bytes, src: bytes, dst: bytes, proto: int, l4: bytes, ident: int, mtu: int,
    ttl: int = DEFAULT_TTL, tos: int = 0, first_offset: int = 0, last: bool = True,
) -> list[bytes]:  # fmt: skip
    """Frames for ``l4`` split into fragments that fit ``mtu`` (RFC 791 §3.2).

    ``first_offset`` and ``last`` re-fragment a fragment: offsets continue from it and MF
    stays set on the final piece unless ``last``."""
    step = (mtu - IP_HLEN) & ~7
    if step <= 0:
        raise ValueError(f"mtu {mtu} leaves no room for fragment data")
    view = memoryview(l4)
    size = len(l4)
    out: list[bytes] = []
    append = out.append
    for off in range(0, size, step):
        chunk = view[off : off + step]
        more = off + step < size or not last
        frag = (IP_MF if more else 0) | ((first_offset + off) >> 3)
        hdr = ipv4_header(src, dst, proto, IP_HLEN + len(chunk), ident, frag, ttl, tos)
        frame = eth + hdr + chunk
        if len(frame) < ETH_ZLEN:
            frame += _PAD[len(frame) :]
        append(frame)
    return out


def arp_packet(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes, eth_dst: bytes) -> bytes:
    """An Ethernet ARP frame (IPv4 over Ethernet), padded to 60 bytes."""
    body = ARP.pack(1, ETH_P_IP, 6, 4, op, sha, spa, tha, tpa)
    frame = eth_dst + sha + b"\x08\x06" + body
    return frame + _PAD[len(frame) :]


def icmp_error_body(datagram: bytes | memoryview) -> bytes:
    """What an ICMP error quotes of ``datagram``: as much as fits a 576-byte message."""
    return bytes(datagram[: ICMP_ERROR_MAX - IP_HLEN - 8])


def may_send_icmp_error(ip_header: bytes | memoryview, ip_payload: bytes | memoryview) -> bool:
    """RFC 1122 §3.2.2: no ICMP error about an ICMP error, a non-first fragment, or a
    datagram from or to a broadcast/multicast/unspecified address."""
    if IPV4.unpack_from(ip_header)[4] & IP_OFFMASK:
        return False
    src, dst = bytes(ip_header[12:16]), bytes(ip_header[16:20])
    for addr in (src, dst):
        if addr in (ZERO_IP, BROADCAST_IP) or addr[0] >= 224:
            return False
    if ip_header[9] == IPPROTO_ICMP:
        return len(ip_payload) > 0 and ip_payload[0] in (ICMP_ECHO, ICMP_ECHOREPLY, 13, 14)
    return True


def quote_udp(
    src: bytes, dst: bytes, sport: int, dport: int, payload_head: bytes, ttl: int = DEFAULT_TTL
) -> bytes:
    """A reconstructed guest UDP datagram (header + the start of its payload), as an ICMP
    error about it would quote it; the UDP checksum is left 0."""
    ulen = UDP_HLEN + len(payload_head)
    udp = UDP.pack(sport, dport, ulen, 0) + payload_head
    return ipv4_header(src, dst, IPPROTO_UDP, IP_HLEN + len(udp), 0, 0, ttl) + udp


def pad_all(batch: Sequence[bytes]) -> list[bytes]:
    """Frames shorter than 60 bytes padded with zeros; others unchanged."""
    return [f if len(f) >= ETH_ZLEN else f + _PAD[len(f) :] for f in batch]
