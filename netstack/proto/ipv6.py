"""IPv6 packets on the guest link: header codec, extension-header walk, checksums, frames.

Owns, per RFC 8200: the fixed header (:func:`parse_header`, :func:`ipv6_header`); the walk
over the extension-header chain of a received packet (:func:`walk`) - Hop-by-Hop (only
first), Routing, Fragment, Destination Options and AH are skipped to the upper-layer
header, the options of Hop-by-Hop and Destination Options headers are processed per §4.2
(Pad1, PadN and Router Alert known; an unknown option's two high bits choose skip, discard,
or discard with a Parameter Problem), a Routing header with Segments Left > 0 is refused
with a Parameter Problem pointing at its type (§4.4: no routing type is implemented), ESP
and No Next Header end the walk; the upper-layer checksums with the IPv6 pseudo-header
(§8.1; a zero UDP checksum is invalid); and the guest-bound frames (:func:`frames`), cut
into fragments with a Fragment header when a packet exceeds the link MTU (§4.5; we are the
source of what the NAT relays) and padded to 60 bytes.

Everything is :class:`struct.Struct` work on ``bytes``/``memoryview`` (no dpkt on this
path). Invariants: :func:`walk` never reads past ``end`` and visits at most
:data:`MAX_EXTENSION_HEADERS` headers; every packet :func:`frames` builds is at most the
given MTU and carries a valid header; :func:`walk` reports every refusal as a
:class:`Problem` (the counter name, and the Parameter Problem code and pointer to send, or
None for a silent drop) - it never raises on any input.
"""

from __future__ import annotations

import struct
from typing import Final, Literal, NamedTuple

from netstack.proto.checksum import finish, finish_udp, ones_sum, pseudo_v6

ETH_P_IPV6: Final = 0x86DD
ETH_HLEN: Final = 14
ETH_ZLEN: Final = 60
IPV6_HLEN: Final = 40
UDP_HLEN: Final = 8
FRAG_HLEN: Final = 8
DEFAULT_HOP_LIMIT: Final = 64
MAX_PAYLOAD: Final = 65535
MAX_EXTENSION_HEADERS: Final = 10

IPPROTO_HOPOPTS: Final = 0
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_ROUTING: Final = 43
IPPROTO_FRAGMENT: Final = 44
IPPROTO_ESP: Final = 50
IPPROTO_AH: Final = 51
IPPROTO_ICMPV6: Final = 58
IPPROTO_NONE: Final = 59
IPPROTO_DSTOPTS: Final = 60

#: Parameter Problem codes (RFC 4443 §3.4).
PARAM_HEADER_FIELD: Final = 0
PARAM_NEXT_HEADER: Final = 1
PARAM_OPTION: Final = 2

OPT_PAD1: Final = 0
OPT_PADN: Final = 1
OPT_ROUTER_ALERT: Final = 5
_KNOWN_OPTIONS: Final = frozenset((OPT_PAD1, OPT_PADN, OPT_ROUTER_ALERT))

HEADER = struct.Struct("!IHBB16s16s")
UDP = struct.Struct("!HHHH")
_FRAG = struct.Struct("!BBHI")
_ETH_TYPE: Final = b"\x86\xdd"
_PAD: Final = bytes(ETH_ZLEN)


class Header(NamedTuple):
    """The fixed IPv6 header."""

    tclass: int
    flow: int
    payload_len: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes


class Fragment(NamedTuple):
    """A Fragment header met by :func:`walk`."""

    offset: int  # of this fragment's data within the fragmentable part, in bytes
    more: bool
    ident: int
    next_header: int  # of the fragmentable part
    header_at: int  # where the Fragment header starts in the packet


class Chain(NamedTuple):
    """Where the upper layer starts: protocol, offset, and the Fragment header if any (then
    ``proto``/``offset`` describe the fragment's data, not an upper-layer header);
    ``proto_at`` is where the Next Header field naming ``proto`` sits (for pointers)."""

    proto: int
    offset: int
    fragment: Fragment | None
    proto_at: int = 6


#: The counter names of :class:`Problem`: :func:`walk`'s and the fragment checks' reasons.
ProblemReason = Literal[
    "ip6-ext-too-many", "ip6-ext-truncated", "ip6-frag-bad-length", "ip6-frag-nested",
    "ip6-frag-too-long", "ip6-hbh-not-first", "ip6-option-malformed", "ip6-option-unknown",
    "ip6-routing-header",
]  # fmt: skip


class Problem(NamedTuple):
    """Why :func:`walk` refused a packet: counter name; the Parameter Problem code and
    pointer (offset in the packet) to report, or ``code`` None to drop silently."""

    reason: ProblemReason
    code: int | None = None
    pointer: int = 0


def parse_header(packet: bytes | memoryview) -> Header | None:
    """The fixed header of ``packet`` (None if it is shorter than 40 bytes or not v6)."""
    if len(packet) < IPV6_HLEN:
        return None
    first, plen, nh, hlim, src, dst = HEADER.unpack_from(packet)
    if first >> 28 != 6:
        return None
    return Header((first >> 20) & 0xFF, first & 0xFFFFF, plen, nh, hlim, src, dst)


def ipv6_header(
    src: bytes, dst: bytes, next_header: int, payload_len: int,
    hop_limit: int = DEFAULT_HOP_LIMIT, tclass: int = 0, flow: int = 0,
) -> bytes:  # fmt: skip
    return HEADER.pack(
        (6 << 28) | (tclass << 20) | (flow & 0xFFFFF), payload_len, next_header, hop_limit,
        src, dst,
    )  # fmt: skip


def walk(
    packet: bytes | memoryview,
    next_header: int,
    start: int,
    end: int,
    *,
    dst_multicast: bool = False,
    fragmented: bool = False,
) -> Chain | Problem:
    """Skip the extension headers from ``start`` (whose type is ``next_header``) to the
    upper-layer header or a Fragment header, within ``packet[:end]``.

    ``fragmented``: the walk continues inside a reassembled fragmentable part (a second
    Fragment header or a Hop-by-Hop header there is an error)."""
    nh = next_header
    off = start
    field_at = 6  # where the Next Header field naming ``nh`` sits (for pointers)
    for count in range(MAX_EXTENSION_HEADERS + 1):
        if nh == IPPROTO_HOPOPTS and (count or fragmented):
            return Problem("ip6-hbh-not-first", PARAM_NEXT_HEADER, field_at)
        if nh in (IPPROTO_HOPOPTS, IPPROTO_DSTOPTS, IPPROTO_ROUTING):
            if off + 8 > end:
                return Problem("ip6-ext-truncated")
            size = (packet[off + 1] + 1) * 8
            if off + size > end:
                return Problem("ip6-ext-truncated")
            if nh == IPPROTO_ROUTING:
                if packet[off + 3] != 0:
                    return Problem("ip6-routing-header", PARAM_HEADER_FIELD, off + 2)
            else:
                problem = _options(packet, off + 2, off + size, dst_multicast)
                if problem is not None:
                    return problem
        elif nh == IPPROTO_FRAGMENT:
            if fragmented:
                return Problem("ip6-frag-nested")
            if off + FRAG_HLEN > end:
                return Problem("ip6-ext-truncated")
            inner, _res, offflags, ident = _FRAG.unpack_from(packet, off)
            frag = Fragment(offflags & 0xFFF8, bool(offflags & 1), ident, inner, off)
            return Chain(inner, off + FRAG_HLEN, frag, off)
        elif nh == IPPROTO_AH:
            if off + 8 > end:
                return Problem("ip6-ext-truncated")
            size = (packet[off + 1] + 2) * 4
            if off + size > end:
                return Problem("ip6-ext-truncated")
        else:
            return Chain(nh, off, None, field_at)
        field_at = off
        nh = packet[off]
        off += size
    return Problem("ip6-ext-too-many")


def _options(
    packet: bytes | memoryview, start: int, end: int, dst_multicast: bool
) -> Problem | None:
    """Process the TLV options of a Hop-by-Hop or Destination Options header."""
    i = start
    while i < end:
        kind = packet[i]
        if kind == OPT_PAD1:
            i += 1
            continue
        if i + 2 > end or i + 2 + packet[i + 1] > end:
            return Problem("ip6-option-malformed", PARAM_HEADER_FIELD, i)
        if kind not in _KNOWN_OPTIONS:
            action = kind >> 6
            if action == 1 or (action == 3 and dst_multicast):
                return Problem("ip6-option-unknown")
            if action in (2, 3):
                return Problem("ip6-option-unknown", PARAM_OPTION, i)
        i += 2 + packet[i + 1]
    return None


# -- checksums -----------------------------------------------------------------------------


def checksum_ok(src: bytes, dst: bytes, proto: int, segment: bytes | memoryview) -> bool:
    """Whether an upper-layer segment's checksum holds (for UDP, zero never does)."""
    return ones_sum(segment, pseudo_v6(src, dst, proto, len(segment))) == 0xFFFF


def with_checksum(src: bytes, dst: bytes, proto: int, segment: bytes, at: int) -> bytes:
    """``segment`` (checksum field at ``at`` zero) with its checksum filled in."""
    total = ones_sum(segment, pseudo_v6(src, dst, proto, len(segment)))
    value = finish_udp(total) if proto == IPPROTO_UDP else finish(total)
    return segment[:at] + value.to_bytes(2, "big") + segment[at + 2 :]


def udp_segment(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header with its (mandatory) checksum followed by ``payload``."""
    seg = UDP.pack(sport, dport, UDP_HLEN + len(payload), 0) + payload
    return with_checksum(src, dst, IPPROTO_UDP, seg, 6)


def icmp6_message(src: bytes, dst: bytes, icmp_type: int, code: int, body: bytes) -> bytes:
    """An ICMPv6 message (type, code, checksum, ``body``) for ``src`` -> ``dst``."""
    return with_checksum(src, dst, IPPROTO_ICMPV6, bytes((icmp_type, code, 0, 0)) + body, 2)


def quote_udp(
    src: bytes, dst: bytes, sport: int, dport: int, head: bytes,
    hop_limit: int = DEFAULT_HOP_LIMIT,
) -> bytes:  # fmt: skip
    """A reconstructed guest UDP datagram (header + the start of its payload), as an ICMPv6
    error about it quotes it (for the NAT, which no longer has the original)."""
    udp = UDP.pack(sport, dport, UDP_HLEN + len(head), 0) + head
    return ipv6_header(src, dst, IPPROTO_UDP, len(udp), hop_limit) + udp


# -- frames --------------------------------------------------------------------------------


def packets(
    src: bytes, dst: bytes, proto: int, l4: bytes, mtu: int, ident: int,
    hop_limit: int = DEFAULT_HOP_LIMIT, tclass: int = 0,
) -> list[bytes]:  # fmt: skip
    """IPv6 packets carrying ``l4``: one when it fits ``mtu``, else fragments (RFC 8200
    §4.5: every fragment's data but the last a multiple of 8 bytes). ``l4`` larger than
    the IPv6 payload limit raises ValueError (a caller bug, never guest input)."""
    size = len(l4)
    if IPV6_HLEN + size <= mtu:
        return [ipv6_header(src, dst, proto, size, hop_limit, tclass) + l4]
    if size > MAX_PAYLOAD - FRAG_HLEN:
        raise ValueError(f"{size} bytes do not fit an IPv6 packet")
    step = (mtu - IPV6_HLEN - FRAG_HLEN) & ~7
    view = memoryview(l4)
    out: list[bytes] = []
    for off in range(0, size, step):
        chunk = view[off : off + step]
        more = 1 if off + step < size else 0
        frag = _FRAG.pack(proto, 0, off | more, ident)
        head = ipv6_header(src, dst, IPPROTO_FRAGMENT, FRAG_HLEN + len(chunk), hop_limit, tclass)
        out.append(head + frag + chunk)
    return out


def frame(dst_mac: bytes, src_mac: bytes, packet: bytes) -> bytes:
    """An Ethernet frame around an IPv6 packet, padded to 60 bytes."""
    out = dst_mac + src_mac + _ETH_TYPE + packet
    if len(out) < ETH_ZLEN:
        out += _PAD[len(out) :]
    return out


def source_of(packet: bytes) -> bytes:
    return packet[8:24]


def destination_of(packet: bytes) -> bytes:
    return packet[24:40]


def multicast_destination(packet: bytes) -> bool:
    return packet[24] == 0xFF
