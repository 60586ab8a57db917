"""virtio-net headers on frames, and turning offloaded frames into plain ones.

Layout (virtio 1.x, little-endian, ``virtio_net_hdr_v1``; 12 bytes):
``u8 flags, u8 gso_type, u16 hdr_len, u16 gso_size, u16 csum_start, u16 csum_offset,
u16 num_buffers``. Flags: NEEDS_CSUM 1, DATA_VALID 2. GSO types: NONE 0, TCPV4 1, UDP 3,
TCPV6 4, UDP_L4 5, ECN bit 0x80.

Inside the daemon a batch flagged ``vnet`` has this 12-byte header in front of every
frame. :func:`to_plain` serves a receiver that cannot take offloads: it completes a
partial checksum, cuts a TCP or UDP super-frame into wire-sized segments in software, and
strips the header. A frame whose header or headers are inconsistent is dropped (the caller
counts it): nothing raises.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from netstack.proto.checksum import finish, ones_sum, pseudo_v4, pseudo_v6

HDR_LEN = 12
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


def add_headers(frames: Sequence[bytes]) -> list[bytes]:
    """Prefix every frame with a header that requests nothing."""
    return [PLAIN_HDR + f for f in frames]


def to_plain(frames: Sequence[bytes]) -> list[bytes]:
    """Frames with headers -> wire frames without (checksummed, segmented)."""
    out: list[bytes] = []
    for frame in frames:
        if len(frame) < HDR_LEN:
            continue
        flags = frame[0]
        gso = frame[1] & ~GSO_ECN
        if gso == GSO_NONE and not flags & NEEDS_CSUM:
            out.append(frame[HDR_LEN:])
            continue
        try:
            out.extend(_offloaded(frame))
        except (struct.error, IndexError, ValueError):
            continue
    return out


def _offloaded(frame: bytes) -> list[bytes]:
    _flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset, _nb = _HDR.unpack_from(frame)
    data = bytearray(frame[HDR_LEN:])
    gso = gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        _complete_partial(data, csum_start, csum_offset)
        return [bytes(data)]
    if gso in (GSO_TCPV4, GSO_TCPV6):
        return _segment(data, gso_size, tcp=True)
    if gso in (GSO_UDP_L4, GSO_UDP):
        return _segment(data, gso_size, tcp=False)
    raise ValueError("unknown gso type")


def _complete_partial(data: bytearray, start: int, offset: int) -> None:
    where = start + offset
    if where + 2 > len(data) or start >= len(data):
        raise ValueError("checksum offsets outside the frame")
    value = finish(ones_sum(memoryview(data)[start:]))
    if value == 0 and offset == 6:  # UDP: a computed 0 is sent as all ones (RFC 768)
        value = 0xFFFF
    _U16.pack_into(data, where, value)


def _l3_offset(data: bytearray) -> tuple[int, int]:
    off = 12
    ethertype = _U16.unpack_from(data, off)[0]
    while ethertype == ETH_P_8021Q:
        off += 4
        ethertype = _U16.unpack_from(data, off)[0]
    return off + 2, ethertype


def _segment(data: bytearray, mss: int, *, tcp: bool) -> list[bytes]:
    """Cut a super-frame into segments of at most ``mss`` payload bytes each."""
    if mss <= 0:
        raise ValueError("gso_size 0")
    l3, ethertype = _l3_offset(data)
    if ethertype == ETH_P_IP:
        ihl = (data[l3] & 0x0F) * 4
        proto = data[l3 + 9]
        l4 = l3 + ihl
        v4 = True
    elif ethertype == ETH_P_IPV6:
        proto = data[l3 + 6]
        l4 = l3 + 40
        v4 = False
    else:
        raise ValueError("gso on a frame that is not IP")
    if tcp:
        if proto != 6:
            raise ValueError("tcp gso on a non-tcp packet")
        l4_len = (data[l4 + 12] >> 4) * 4
    else:
        if proto != 17:
            raise ValueError("udp gso on a non-udp packet")
        l4_len = 8
    payload_at = l4 + l4_len
    if payload_at > len(data):
        raise ValueError("headers past the frame")
    headers = bytes(data[:payload_at])
    payload = memoryview(data)[payload_at:]
    src = bytes(data[l3 + 12 : l3 + 16]) if v4 else bytes(data[l3 + 8 : l3 + 24])
    dst = bytes(data[l3 + 16 : l3 + 20]) if v4 else bytes(data[l3 + 24 : l3 + 40])
    seq = _U32.unpack_from(data, l4 + 4)[0] if tcp else 0
    ip_id = _U16.unpack_from(data, l3 + 4)[0] if v4 else 0
    tcp_flags = data[l4 + 13] if tcp else 0
    out: list[bytes] = []
    total = len(payload)
    pos = 0
    index = 0
    while True:
        chunk = payload[pos : pos + mss]
        last = pos + mss >= total
        seg = bytearray(headers)
        seg += chunk
        l4_total = l4_len + len(chunk)
        if v4:
            _U16.pack_into(seg, l3 + 2, ihl + l4_total)
            _U16.pack_into(seg, l3 + 4, (ip_id + index) & 0xFFFF)
            _U16.pack_into(seg, l3 + 10, 0)
            _U16.pack_into(seg, l3 + 10, finish(ones_sum(memoryview(seg)[l3 : l3 + ihl])))
        else:
            _U16.pack_into(seg, l3 + 4, l4_total)
        if tcp:
            _U32.pack_into(seg, l4 + 4, (seq + pos) & 0xFFFFFFFF)
            flags = tcp_flags
            if not last:
                flags &= ~0x09  # FIN, PSH only on the last segment
            if index:
                flags &= ~0x80  # CWR only on the first
            seg[l4 + 13] = flags
            csum_at = l4 + 16
        else:
            _U16.pack_into(seg, l4 + 4, l4_total)
            csum_at = l4 + 6
        _U16.pack_into(seg, csum_at, 0)
        pseudo = (pseudo_v4 if v4 else pseudo_v6)(src, dst, proto, l4_total)
        value = finish(ones_sum(memoryview(seg)[l4:], pseudo))
        if not tcp and value == 0:
            value = 0xFFFF
        _U16.pack_into(seg, csum_at, value)
        out.append(bytes(seg))
        pos += mss
        index += 1
        if last:
            return out
