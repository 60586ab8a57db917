"""virtio-net headers on frames, and turning offloaded frames into plain ones.

Layout (virtio 1.x, little-endian, ``virtio_net_hdr_v1``; 12 bytes):
``u8 flags, u8 gso_type, u16 hdr_len, u16 gso_size, u16 csum_start, u16 csum_offset,
u16 num_buffers``. Flags: NEEDS_CSUM 1, DATA_VALID 2. GSO types: NONE 0, TCPV4 1, UDP 3,
TCPV6 4, UDP_L4 5, ECN bit 0x80. The legacy ``virtio_net_hdr`` is the first 10 bytes.

Inside the daemon a batch flagged ``vnet`` has this 12-byte header in front of every
frame. :func:`to_plain` serves a receiver that cannot take offloads, doing in software
what a NIC (or the kernel's GSO layer) would do:

* ``NEEDS_CSUM`` without GSO: the checksum at ``csum_start + csum_offset`` is completed
  over ``csum_start..end`` (the field holds the pseudo-header sum, Linux's
  CHECKSUM_PARTIAL convention); a UDP result of 0 is sent as 0xffff (RFC 768);
* TCPV4 / TCPV6 (TSO): cut into segments of ``gso_size`` payload bytes; per segment the
  sequence number advances, FIN and PSH stay on the last segment only and CWR on the
  first only, the IPv4 id increments, lengths and all checksums are recomputed;
* UDP_L4 (USO): cut into UDP datagrams of ``gso_size`` payload bytes each;
* UDP (UFO): the one UDP datagram is sent as IP fragments of at most ``gso_size`` bytes
  (rounded down to a multiple of 8) - IPv4 fragments sharing the id, or IPv6 fragments
  with a Fragment header (RFC 8200 §4.5) after the unfragmentable part.

Headers are located by parsing (802.1Q/802.1ad tags, IPv4 options, IPv6 Hop-by-Hop,
Routing and Destination Options headers); the IP length bounds the payload (Ethernet
padding behind the packet is not cut into segments). Segment checksums are computed incrementally:
one numpy reduction sums every segment's payload at once, and each segment adds its few
changed header words (RFC 1624 arithmetic on the ones'-complement sum), so the per-segment
Python work is a header copy, a few ``pack_into`` and one concatenation.

A frame whose header or headers are inconsistent is dropped: nothing raises (inside, the
parsers raise :class:`~netstack.errors.RemoteInputError`, which :func:`to_plain` catches).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence

from netstack.errors import RemoteInputError
from netstack.proto.checksum import finish, finish_udp, ones_sum, slice_sums

HDR_LEN = 12
HDR_LEN_LEGACY = 10
NEEDS_CSUM = 1
DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

_HDR = struct.Struct("<BBHHHHH")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

#: A header that asks for nothing.
PLAIN_HDR = bytes(HDR_LEN)

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_IPV6_EXT = (0, 43, 60)  # Hop-by-Hop, Routing, Destination Options
_IPV6_FRAG = 44
_TCP_FIN_PSH = 0x09
_TCP_CWR = 0x80

_frag_ids = itertools.count(0x4E530000)


def pack(
    flags: int = 0,
    gso_type: int = GSO_NONE,
    hdr_len: int = 0,
    gso_size: int = 0,
    csum_start: int = 0,
    csum_offset: int = 0,
) -> bytes:
    """A 12-byte header."""
    return _HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 0)


def unpack(frame: bytes | bytearray | memoryview) -> tuple[int, int, int, int, int, int]:
    """``(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)`` of a frame."""
    return _HDR.unpack_from(frame)[:6]


def add_headers(frames: Sequence[bytes]) -> list[bytes]:
    """Prefix every frame with a header that requests nothing."""
    return [PLAIN_HDR + f for f in frames]


def to_plain(frames: Sequence[bytes]) -> list[bytes]:
    """Frames with headers -> wire frames without (checksummed, segmented)."""
    out: list[bytes] = []
    for frame in frames:
        if len(frame) < HDR_LEN:
            continue
        if not frame[1] & ~GSO_ECN and not frame[0] & NEEDS_CSUM:
            out.append(frame[HDR_LEN:])
            continue
        try:
            out.extend(_offloaded(frame))
        except (RemoteInputError, struct.error, IndexError):
            continue
    return out


def _offloaded(frame: bytes) -> list[bytes]:
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset, _nb = _HDR.unpack_from(frame)
    gso = gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        data = bytearray(memoryview(frame)[HDR_LEN:])
        _complete_partial(data, csum_start, csum_offset)
        return [bytes(data)]
    if gso_size == 0:
        raise RemoteInputError("gso_size 0")
    data_view = memoryview(frame)[HDR_LEN:]
    net = _locate(data_view)
    if gso in (GSO_TCPV4, GSO_TCPV6):
        if net.proto != IPPROTO_TCP:
            raise RemoteInputError("tcp gso on a non-tcp packet")
        return _segment_tcp(data_view, net, gso_size)
    if gso == GSO_UDP_L4:
        if net.proto != IPPROTO_UDP:
            raise RemoteInputError("udp gso on a non-udp packet")
        return _segment_udp(data_view, net, gso_size)
    if gso == GSO_UDP:
        if net.proto != IPPROTO_UDP:
            raise RemoteInputError("ufo on a non-udp packet")
        data = bytearray(data_view)
        if flags & NEEDS_CSUM:
            _complete_partial(data, csum_start, csum_offset)
        return _fragment(data, net, gso_size)
    raise RemoteInputError("unknown gso type")


def _complete_partial(data: bytearray, start: int, offset: int) -> None:
    where = start + offset
    if where + 2 > len(data) or start >= len(data):
        raise RemoteInputError("checksum offsets outside the frame")
    value = finish(ones_sum(memoryview(data)[start:]))
    if value == 0 and offset == 6:  # UDP: a computed 0 is sent as all ones (RFC 768)
        value = 0xFFFF
    _U16.pack_into(data, where, value)


class _Net:
    """Where the network and transport headers of a frame are."""

    __slots__ = ("ihl", "l3", "l4", "proto", "v4")

    def __init__(self, l3: int, l4: int, proto: int, v4: bool, ihl: int) -> None:
        self.l3, self.l4, self.proto, self.v4, self.ihl = l3, l4, proto, v4, ihl


def _locate(data: memoryview) -> _Net:
    off = 12
    ethertype = _U16.unpack_from(data, off)[0]
    while ethertype in (ETH_P_8021Q, ETH_P_8021AD):
        off += 4
        ethertype = _U16.unpack_from(data, off)[0]
    l3 = off + 2
    if ethertype == ETH_P_IP:
        if data[l3] >> 4 != 4:
            raise RemoteInputError("not IPv4")
        ihl = (data[l3] & 0x0F) * 4
        if ihl < 20:
            raise RemoteInputError("bad IHL")
        return _Net(l3, l3 + ihl, data[l3 + 9], True, ihl)
    if ethertype == ETH_P_IPV6:
        if data[l3] >> 4 != 6:
            raise RemoteInputError("not IPv6")
        proto = data[l3 + 6]
        l4 = l3 + 40
        for _ in range(8):
            if proto not in _IPV6_EXT:
                break
            proto = data[l4]
            l4 += (data[l4 + 1] + 1) * 8
        if proto == _IPV6_FRAG or proto in _IPV6_EXT:
            raise RemoteInputError("gso on a fragment or too many extension headers")
        return _Net(l3, l4, proto, False, 0)
    raise RemoteInputError("gso on a frame that is not IP")


def _ip_end(data: memoryview, net: _Net) -> int:
    """Where the IP packet ends: Ethernet padding behind it is not payload. (A length that
    does not fit, or IPv6's 0 for jumbograms, means the frame's end.)"""
    if net.v4:
        end = net.l3 + _U16.unpack_from(data, net.l3 + 2)[0]
    else:
        plen = _U16.unpack_from(data, net.l3 + 4)[0]
        end = net.l3 + 40 + plen if plen else len(data)
    return end if net.l4 <= end <= len(data) else len(data)


def _addr_sum(data: memoryview, net: _Net) -> int:
    if net.v4:
        return ones_sum(data[net.l3 + 12 : net.l3 + 20])
    return ones_sum(data[net.l3 + 8 : net.l3 + 40])


def _ipv4_base(data: memoryview, net: _Net) -> tuple[int, int]:
    """(sum of the IPv4 header with total length, id and checksum zeroed, original id)."""
    iph = bytearray(data[net.l3 : net.l4])
    ip_id = _U16.unpack_from(iph, 4)[0]
    iph[2:6] = b"\0\0\0\0"
    iph[10:12] = b"\0\0"
    return ones_sum(iph), ip_id


def _segment_tcp(data: memoryview, net: _Net, mss: int) -> list[bytes]:
    l3, l4 = net.l3, net.l4
    doff = (data[l4 + 12] >> 4) * 4
    payload_at = l4 + doff
    if doff < 20 or payload_at > len(data):
        raise RemoteInputError("bad TCP header")
    payload = data[payload_at : _ip_end(data, net)]
    total = len(payload)
    count = max(1, -(-total // mss))
    headers = bytes(data[:payload_at])
    seq0 = _U32.unpack_from(data, l4 + 4)[0]
    word12 = _U16.unpack_from(data, l4 + 12)[0]
    flags0 = word12 & 0xFF
    tcp = bytearray(data[l4:payload_at])
    tcp[4:8] = b"\0\0\0\0"
    tcp[12:14] = b"\0\0"
    tcp[16:18] = b"\0\0"
    fixed = ones_sum(tcp) + _addr_sum(data, net) + IPPROTO_TCP
    if net.v4:
        ip_base, ip_id = _ipv4_base(data, net)
    else:
        ip_base = ip_id = 0
        ext_len = l4 - l3 - 40
    sums = slice_sums(payload, mss, count) if total else [0]
    pack16 = _U16.pack_into
    out: list[bytes] = []
    append = out.append
    for i in range(count):
        start = i * mss
        chunk = payload[start : start + mss]
        l4_len = doff + len(chunk)
        seg = bytearray(headers)
        if net.v4:
            tot = net.ihl + l4_len
            ident = (ip_id + i) & 0xFFFF
            pack16(seg, l3 + 2, tot)
            pack16(seg, l3 + 4, ident)
            pack16(seg, l3 + 10, finish(ip_base + tot + ident))
        else:
            pack16(seg, l3 + 4, ext_len + l4_len)
        seq = (seq0 + start) & 0xFFFFFFFF
        _U32.pack_into(seg, l4 + 4, seq)
        flags = flags0
        if i != count - 1:
            flags &= ~_TCP_FIN_PSH
        if i:
            flags &= ~_TCP_CWR
        seg[l4 + 13] = flags
        csum = fixed + (seq >> 16) + (seq & 0xFFFF) + ((word12 & 0xFF00) | flags)
        pack16(seg, l4 + 16, finish(csum + l4_len + sums[i]))
        append(bytes(seg) + chunk)
    return out


def _segment_udp(data: memoryview, net: _Net, mss: int) -> list[bytes]:
    l3, l4 = net.l3, net.l4
    payload_at = l4 + 8
    if payload_at > len(data):
        raise RemoteInputError("bad UDP header")
    payload = data[payload_at : _ip_end(data, net)]
    total = len(payload)
    count = max(1, -(-total // mss))
    headers = bytes(data[:payload_at])
    fixed = ones_sum(data[l4 : l4 + 4]) + _addr_sum(data, net) + IPPROTO_UDP
    if net.v4:
        ip_base, ip_id = _ipv4_base(data, net)
    else:
        ip_base = ip_id = 0
        ext_len = l4 - l3 - 40
    sums = slice_sums(payload, mss, count) if total else [0]
    pack16 = _U16.pack_into
    out: list[bytes] = []
    for i in range(count):
        chunk = payload[i * mss : (i + 1) * mss]
        udp_len = 8 + len(chunk)
        seg = bytearray(headers)
        if net.v4:
            tot = net.ihl + udp_len
            ident = (ip_id + i) & 0xFFFF
            pack16(seg, l3 + 2, tot)
            pack16(seg, l3 + 4, ident)
            pack16(seg, l3 + 10, finish(ip_base + tot + ident))
        else:
            pack16(seg, l3 + 4, ext_len + udp_len)
        pack16(seg, l4 + 4, udp_len)
        csum = finish_udp(fixed + 2 * udp_len + sums[i])
        pack16(seg, l4 + 6, csum)
        out.append(bytes(seg) + chunk)
    return out


def _fragment(data: bytearray, net: _Net, size: int) -> list[bytes]:
    """UFO: the IP packet in ``data`` as fragments carrying at most ``size`` bytes."""
    l3, l4 = net.l3, net.l4
    step = size & ~7
    if step <= 0:
        raise RemoteInputError("fragment size below 8")
    body = memoryview(data)[l4 : _ip_end(memoryview(data), net)]
    total = len(body)
    if total <= size:
        return [bytes(data)]
    out: list[bytes] = []
    if net.v4:
        head = bytes(data[:l4])
        for off in range(0, total, step):
            piece = body[off : off + step]
            more = off + step < total
            seg = bytearray(head)
            _U16.pack_into(seg, l3 + 2, net.ihl + len(piece))
            _U16.pack_into(seg, l3 + 6, (0x2000 if more else 0) | (off >> 3))
            _U16.pack_into(seg, l3 + 10, 0)
            _U16.pack_into(seg, l3 + 10, finish(ones_sum(memoryview(seg)[l3:l4])))
            out.append(bytes(seg) + piece)
        return out
    # IPv6: Fragment header after the unfragmentable part (the extension headers found)
    next_hdr_at = _ipv6_last_next_header(data, l3, l4)
    ident = next(_frag_ids) & 0xFFFFFFFF
    for off in range(0, total, step):
        piece = body[off : off + step]
        more = off + step < total
        seg = bytearray(data[:l4])
        seg[next_hdr_at] = _IPV6_FRAG
        frag = struct.pack("!BBHI", IPPROTO_UDP, 0, off | (1 if more else 0), ident)
        _U16.pack_into(seg, l3 + 4, (l4 - l3 - 40) + 8 + len(piece))
        out.append(bytes(seg) + frag + piece)
    return out


def _ipv6_last_next_header(data: bytearray, l3: int, l4: int) -> int:
    """Offset of the Next Header byte that names the transport protocol."""
    at = l3 + 6
    pos = l3 + 40
    while pos < l4:
        at = pos
        pos += (data[pos + 1] + 1) * 8
    return at
