"""VXLAN (RFC 7348) encapsulation, the source-port flow hash and path-MTU replies: sans-IO.

Every Ethernet frame travels in a UDP datagram (destination port 4789 by default) behind
this 8-byte header::

    u8 flags (0x08: the I bit, "VNI valid") | u24 reserved | u24 VNI | u8 reserved

Transmit: :func:`header` is computed once per netdev. Receive: :meth:`VxlanDecoder.inner_start`
checks a datagram and returns where its inner frame starts, or -1 with exactly one drop
counter incremented: shorter than header plus an Ethernet header, I bit clear, or another
VNI. Reserved bits are ignored, as the RFC says ("ignored on receipt"); the Linux kernel
is stricter and drops datagrams with unknown flag bits unless an extension (GBP, GPE) is
configured - no valid sender sets them.

Source port entropy (RFC 7348 §5: "a hash of fields from the inner packet"):
:func:`flow_hash` hashes the inner IPv4/IPv6 addresses and the TCP/UDP ports (Ethernet
addresses and type for anything else), so one flow always leaves from one source port
and different flows spread over the underlay's ECMP paths and the receiver's RSS queues.

Path MTU: VXLAN adds :data:`OVERHEAD_V4` (or :data:`OVERHEAD_V6`) bytes of outer IP, UDP
and VXLAN headers. When an inner IP packet larger than the configured overlay MTU must not
be fragmented (IPv4 with DF, every IPv6 packet), :func:`too_big_reply` builds the ICMP
"fragmentation needed" / ICMPv6 "packet too big" frame that tells its sender the MTU, as
the Linux bridge + vxlan path does (``skb_tunnel_check_pmtu``): addressed back to the
sender, from the destination it tried to reach, quoting the start of the packet.
"""

from __future__ import annotations

import struct
import zlib

from netstack.proto.checksum import finish, ones_sum, pseudo_v6

#: IANA-assigned UDP port of VXLAN.
VXLAN_PORT = 4789
#: VXLAN header length.
HDR_LEN = 8
#: The I flag: the VNI field is valid.
FLAG_I = 0x08
#: Largest VNI (24 bits).
VNI_MAX = (1 << 24) - 1
#: Outer IPv4 + UDP + VXLAN header bytes added to each inner frame (Ethernet included).
OVERHEAD_V4 = 20 + 8 + HDR_LEN
OVERHEAD_V6 = 40 + 8 + HDR_LEN
#: Ethernet header length of an inner frame.
ETH_HLEN = 14

_HDR = struct.Struct("!B3xI")


def header(vni: int) -> bytes:
    """The 8-byte VXLAN header carrying ``vni``."""
    if not 0 <= vni <= VNI_MAX:
        raise ValueError(f"VNI must be in 0..{VNI_MAX}, not {vni}")
    return _HDR.pack(FLAG_I, vni << 8)


class VxlanDrops:
    """Received datagrams dropped, per reason (all monotonic)."""

    __slots__ = ("bad_flags", "other_vni", "short")

    def __init__(self) -> None:
        self.short = 0
        self.bad_flags = 0
        self.other_vni = 0

    @property
    def total(self) -> int:
        return self.short + self.bad_flags + self.other_vni

    def as_dict(self) -> dict[str, int]:
        return {
            "drop-short": self.short,
            "drop-flags": self.bad_flags,
            "drop-vni": self.other_vni,
        }


class VxlanDecoder:
    """Checks received datagrams for one VNI (see the module docstring)."""

    __slots__ = ("drops", "vni_word")

    def __init__(self, vni: int) -> None:
        header(vni)  # validates
        self.vni_word = vni << 8
        self.drops = VxlanDrops()

    def inner_start(self, data: bytes | bytearray | memoryview, n: int) -> int:
        """Where the inner frame of datagram ``data[:n]`` starts, or -1 (counted)."""
        if n < HDR_LEN + ETH_HLEN:
            self.drops.short += 1
            return -1
        flags, word = _HDR.unpack_from(data, 0)
        if not flags & FLAG_I:
            self.drops.bad_flags += 1
            return -1
        if word & 0xFFFFFF00 != self.vni_word:
            self.drops.other_vni += 1
            return -1
        return HDR_LEN


def flow_hash(frame: bytes) -> int:
    """A 32-bit hash of the inner frame's flow (addresses, protocol and ports)."""
    etype = frame[12:14]
    if etype == b"\x08\x00" and len(frame) >= 34:
        proto = frame[23]
        h = zlib.crc32(frame[26:34], proto)
        if proto in (6, 17) and not (frame[20] & 0x3F or frame[21]):  # not a fragment
            ports = 14 + (frame[14] & 0x0F) * 4
            return zlib.crc32(frame[ports : ports + 4], h)
        return h
    if etype == b"\x86\xdd" and len(frame) >= 54:
        proto = frame[20]
        h = zlib.crc32(frame[22:54], proto)
        if proto in (6, 17):
            return zlib.crc32(frame[54:58], h)
        return h
    return zlib.crc32(frame[:14])


# -- path MTU ----------------------------------------------------------------------------------

_IPV4_QUOTE = 576 - 20 - 8  # RFC 1812: the reply fits in 576 bytes
_IPV6_QUOTE = 1280 - 40 - 8  # RFC 4443: the reply fits in the minimum MTU


def inner_ip_len(frame: bytes) -> int:
    """The inner IP packet's length (-1 when the frame carries no IPv4/IPv6 packet)."""
    etype = frame[12:14]
    if etype == b"\x08\x00" or etype == b"\x86\xdd":
        return len(frame) - ETH_HLEN
    return -1


def too_big_reply(frame: bytes, mtu: int) -> bytes | None:
    """The ICMP reply for an inner packet larger than ``mtu`` that must not be fragmented,
    or None when fragmenting is allowed (IPv4 without DF) or it is not an IP packet."""
    etype = frame[12:14]
    eth = frame[6:12] + frame[0:6] + etype
    if etype == b"\x08\x00" and len(frame) >= 34:
        if not frame[20] & 0x40:  # DF clear: the packet may be fragmented on the way
            return None
        l4 = 14 + (frame[14] & 0x0F) * 4
        if frame[23] == 1 and len(frame) > l4 and frame[l4] not in (0, 8):
            return None  # never answer an ICMP error with one
        quote = frame[14 : 14 + _IPV4_QUOTE]
        icmp = bytearray(struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quote)
        struct.pack_into("!H", icmp, 2, finish(ones_sum(icmp)))
        total = 20 + len(icmp)
        hdr4 = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 1, 0, frame[30:34], frame[26:30]
            )
        )
        struct.pack_into("!H", hdr4, 10, finish(ones_sum(hdr4)))
        return eth + bytes(hdr4) + bytes(icmp)
    if etype == b"\x86\xdd" and len(frame) >= 54:
        if frame[20] == 58 and len(frame) > 54 and frame[54] < 128:
            return None  # an ICMPv6 error: no reply
        src, dst = frame[38:54], frame[22:38]
        quote = frame[14 : 14 + _IPV6_QUOTE]
        icmp6 = bytearray(struct.pack("!BBHI", 2, 0, 0, mtu) + quote)
        csum = finish(ones_sum(icmp6, pseudo_v6(src, dst, 58, len(icmp6))))
        struct.pack_into("!H", icmp6, 2, csum)
        hdr6 = struct.pack("!IHBB16s16s", 0x60000000, len(icmp6), 58, 255, src, dst)
        return eth + hdr6 + bytes(icmp6)
    return None
