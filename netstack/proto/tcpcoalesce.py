"""Receive coalescing: consecutive segments of one IPv4 TCP flow merged into one TSO
super-frame with a virtio-net header (GRO in software), for receivers that take offloads.

What a NIC driver's GRO does before the stack sees the frames, done on a batch a tunnel
endpoint decapsulated: a run of frames merges when each is an untagged IPv4/TCP segment
without IP options or fragmentation, with payload, and only ACK (plus PSH on the run's
last) set; all of the run share Ethernet and IP addresses, ports, ack number, window,
TCP options and the fields Linux's ``tcp_gro_receive`` compares; sequence numbers are
contiguous; every segment but the last carries exactly the first one's payload size
(``gso_size``); the merged IP packet stays below 64 KiB. Each merged segment's IPv4 and
TCP checksums are verified first (the outer UDP checksum of VXLAN over IPv4 is usually
zero, so nothing else would catch corruption); a segment that fails is passed on as it
is, where the receiver drops it.

The super-frame keeps the first segment's headers with the total length, the IPv4 header
checksum and PSH (from the last) updated; its virtio-net header asks for TCPV4
segmentation with ``gso_size`` and NEEDS_CSUM over the TCP header, the checksum field
holding the pseudo-header sum (Linux's CHECKSUM_PARTIAL convention), exactly what
:func:`netstack.proto.vnet.to_plain` turns back into the original segments.

Every other frame gets a header that asks for nothing. Nothing here raises on any input.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from netstack.proto.checksum import finish, fold, ones_sum, pseudo_v4, slice_sums
from netstack.proto.vnet import GSO_TCPV4, NEEDS_CSUM, PLAIN_HDR, pack

#: The largest merged IP packet.
MAX_IP_LEN = 65535 - 14 - 40
_TCP_ACK, _TCP_PSH = 0x10, 0x08
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _segment(f: bytes) -> tuple[bytes, int, int, int] | None:
    """(flow key, seq, payload length, header length) of a mergeable segment, or None."""
    if len(f) < 54 or f[12:14] != b"\x08\x00" or f[14] != 0x45 or f[23] != 6:
        return None
    if f[20] & 0x3F or f[21]:  # MF or a fragment offset
        return None
    if 14 + _U16.unpack_from(f, 16)[0] != len(f):  # padding or truncation
        return None
    flags = f[47]
    if flags & ~_TCP_PSH != _TCP_ACK:
        return None
    hlen = 34 + (f[46] >> 4) * 4
    plen = len(f) - hlen
    if plen <= 0 or hlen < 54:
        return None
    key = f[:16] + f[20:24] + f[26:38] + f[42:47] + f[48:50] + f[52:hlen]
    return key, _U32.unpack_from(f, 38)[0], plen, hlen


def _valid(run: list[bytes], hlen: int, mss: int, payload: bytes) -> bool:
    """Every segment's IPv4 header and TCP checksum is right. The payload sums come from
    one numpy reduction over the joined payload (``mss``-byte slices, as the segments
    are), so per segment only its header words are summed in Python."""
    sums = slice_sums(memoryview(payload), mss, len(run))
    for f, payload_sum in zip(run, sums, strict=True):
        if ones_sum(f[14:34]) != 0xFFFF:
            return False
        tcp_len = len(f) - 34
        head = ones_sum(f[34:hlen], pseudo_v4(f[26:30], f[30:34], 6, tcp_len))
        if fold(head + payload_sum) != 0xFFFF:
            return False
    return True


def coalesce(frames: Sequence[bytes]) -> list[bytes]:
    """Plain frames -> frames with virtio-net headers, runs merged (see module docstring)."""
    out: list[bytes] = []
    append = out.append
    n = len(frames)
    i = 0
    while i < n:
        f = frames[i]
        first = _segment(f)
        i += 1
        if first is None or f[47] & _TCP_PSH:
            append(PLAIN_HDR + f)
            continue
        key, seq, mss, hlen = first
        run = [f]
        total = len(f) - 14
        nxt = (seq + mss) & 0xFFFFFFFF
        while i < n:
            g = frames[i]
            seg = _segment(g)
            if seg is None or seg[0] != key or seg[1] != nxt or seg[2] > mss:
                break
            if total + seg[2] > MAX_IP_LEN:
                break
            run.append(g)
            total += seg[2]
            nxt = (nxt + seg[2]) & 0xFFFFFFFF
            i += 1
            if seg[2] < mss or g[47] & _TCP_PSH:
                break
        if len(run) == 1:
            append(PLAIN_HDR + f)
            continue
        payload = b"".join(x[hlen:] for x in run)
        if not _valid(run, hlen, mss, payload):
            out.extend(PLAIN_HDR + x for x in run)
            continue
        out.append(_merge(run, hlen, mss, payload))
    return out


def _merge(run: list[bytes], hlen: int, mss: int, payload: bytes) -> bytes:
    head = bytearray(run[0][:hlen])
    ip_len = hlen - 14 + len(payload)
    _U16.pack_into(head, 16, ip_len)
    head[24:26] = b"\0\0"
    _U16.pack_into(head, 24, finish(ones_sum(head[14:34])))
    head[47] = run[-1][47]  # PSH travels with the last segment
    tcp_len = ip_len - 20
    first = run[0]
    _U16.pack_into(head, 50, fold(pseudo_v4(first[26:30], first[30:34], 6, tcp_len)))
    vhdr = pack(NEEDS_CSUM, GSO_TCPV4, hlen, mss, 34, 16)
    return vhdr + bytes(head) + payload
