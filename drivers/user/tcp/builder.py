"""Guest-bound TCP frames of one connection, from precomputed header templates.

Owns the bytes we put on the guest's link for a TCP endpoint: ``[virtio_net_hdr_v1]
[Ethernet][IPv4 | IPv6][TCP][options][payload]``. Per connection the headers are laid out
once in a template (addresses, ports, TTL 64, IPv4 DF with id 0 - RFC 6864 allows a fixed
id for atomic datagrams); a frame costs one ``pack_into`` per changing header word group and
one ``bytes.join``. Checksums follow RFC 1071 arithmetic on precomputed partial sums
(``netstack.proto.checksum``): the IPv4 header sum is the template's plus the total length;
the TCP sum is the pseudo-header's plus the few changing words plus the payload's.

Offloads (``vnet=True``): every frame carries a virtio-net header with ``NEEDS_CSUM``
(csum_start at the TCP header, csum_offset 16) and the TCP checksum field holds only the
folded pseudo-header sum (Linux's CHECKSUM_PARTIAL convention), so no payload is ever
summed in Python; :meth:`FrameBuilder.burst` emits one TSO super-frame (gso_type TCPV4 or
TCPV6, gso_size = the MSS) for data longer than the MSS. Without offloads a burst is cut
into MSS-sized frames whose payload sums come from one numpy reduction.

Answers to segments no connection takes are built here too: :func:`reset_for` (RFC 9293
§3.10.7.1), :func:`unreachable_for` (ICMP/ICMPv6 destination unreachable quoting the
guest's packet) and :func:`rejection`, libslirp's choice between them for a failed host
connect.

Frames are padded to ``ETH_ZLEN`` (60 bytes, not counting the virtio-net header) when
they carry an Ethernet header. Invariants: a built IPv4 packet never exceeds 65535 bytes
(callers cap a burst with :meth:`FrameBuilder.max_burst`); option bytes are a multiple of
4 long.
"""

from __future__ import annotations

import errno as errno_mod
import struct
from typing import Final

from netstack.proto import vnet as vnet_hdr
from netstack.proto.checksum import addr_sum, finish, fold, ones_sum, slice_sums
from netstack.proto.ipv4 import DEFAULT_TTL as TTL
from netstack.proto.ipv4 import ETH_ZLEN, ICMP_UNREACH, IP_DF, IPPROTO_ICMP
from netstack.proto.ipv6 import IPPROTO_ICMPV6
from netstack.proto.tcp import (
    ACK,
    ETH_P_IP,
    ETH_P_IPV6,
    FIN,
    IPPROTO_TCP,
    PSH,
    RST,
    SYN,
    TCP,
    Segment,
)
from netstack.proto.vnet import PLAIN_HDR

ICMP6_DST_UNREACH: Final = 1

_U16: Final = struct.Struct("!H")
_TCP_TAIL: Final = struct.Struct("!IIHHHH")  # seq ack off+flags wnd csum urp
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_IPV6: Final = struct.Struct("!IHBB16s16s")
_VNET: Final = struct.Struct("<BBHHHHH")
_PAD: Final = bytes(ETH_ZLEN)
_NOT_LAST: Final = ~(FIN | PSH)


def ethernet_header(dst_mac: bytes, src_mac: bytes, v6: bool) -> bytes:
    """The 14-byte Ethernet header in front of every frame of a connection."""
    return dst_mac + src_mac + (b"\x86\xdd" if v6 else b"\x08\x00")


class FrameBuilder:
    """Frames from ``src:sport`` (us, the far end) to ``dst:dport`` (the guest)."""

    __slots__ = (
        "_csum_start",
        "_fixed",
        "_hdr_len",
        "_ip_base",
        "_ip_off",
        "_pad",
        "_pseudo",
        "_tcp_off",
        "_tpl",
        "_vlen",
        "dport",
        "dst",
        "l2",
        "sport",
        "src",
        "v6",
        "vnet",
    )

    def __init__(
        self, src: bytes, dst: bytes, sport: int, dport: int, *, l2: bytes = b"",
        vnet: bool = False,
    ) -> None:  # fmt: skip
        if len(src) != len(dst) or len(src) not in (4, 16):
            raise ValueError("addresses must both be IPv4 or both IPv6")
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.v6 = v6 = len(src) == 16
        self.vnet = vnet
        #: The link-layer header in front of every frame (b"" for bare IP packets).
        self.l2 = l2
        self._vlen = vlen = vnet_hdr.HDR_LEN if vnet else 0
        self._ip_off = vlen + len(l2)
        self._tcp_off = self._ip_off + (40 if v6 else 20)
        self._csum_start = self._tcp_off - vlen
        self._hdr_len = self._csum_start + 20
        self._pad = bool(l2)
        if v6:
            ip = _IPV6.pack(0x60000000, 0, IPPROTO_TCP, TTL, src, dst)
            self._ip_base = 0
        else:
            ip = _IPV4.pack(0x45, 0, 0, 0, IP_DF, TTL, IPPROTO_TCP, 0, src, dst)
            self._ip_base = addr_sum(src) + addr_sum(dst) + 0x4500 + IP_DF
            self._ip_base += (TTL << 8) | IPPROTO_TCP
        self._pseudo = addr_sum(src) + addr_sum(dst) + IPPROTO_TCP
        self._fixed = self._pseudo + sport + dport
        tcp = TCP.pack(sport, dport, 0, 0, 0x50, 0, 0, 0, 0)
        self._tpl = bytearray(vlen) + l2 + ip + tcp

    def max_burst(self, mss: int) -> int:
        """The most payload one :meth:`burst` may carry: a multiple of ``mss`` below the
        64 KiB IP limit when offloading (every TSO segment but the last is full), 64
        segments' worth otherwise."""
        if not self.vnet:
            return 64 * mss
        room = 65535 - 20 - (0 if self.v6 else 20)
        return max(mss, room // mss * mss) if mss <= room else room

    def _lengths(self, tpl: bytearray, tcp_len: int) -> None:
        if self.v6:
            _U16.pack_into(tpl, self._ip_off + 4, tcp_len)
        else:
            total = 20 + tcp_len
            _U16.pack_into(tpl, self._ip_off + 2, total)
            _U16.pack_into(tpl, self._ip_off + 10, finish(self._ip_base + total))

    def frame(
        self, seq: int, ack: int, flags: int, wnd: int,
        payload: bytes | memoryview = b"", options: bytes = b"",
    ) -> bytes:  # fmt: skip
        """One frame (``seq``/``ack`` already reduced mod 2**32, ``wnd`` the raw field)."""
        tpl = self._tpl
        olen = len(options)
        plen = len(payload)
        tcp_len = 20 + olen + plen
        self._lengths(tpl, tcp_len)
        offflags = ((20 + olen) << 10) | flags
        if self.vnet:
            csum = fold(self._pseudo + tcp_len)
            _VNET.pack_into(tpl, 0, vnet_hdr.NEEDS_CSUM, 0, self._hdr_len + olen, 0,
                            self._csum_start, 16, 0)  # fmt: skip
        else:
            total = self._fixed + tcp_len + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16)
            total += (ack & 0xFFFF) + offflags + wnd
            if olen:
                total += ones_sum(options)
            if plen:
                total += ones_sum(payload)
            csum = finish(total)
        _TCP_TAIL.pack_into(tpl, self._tcp_off + 4, seq, ack, offflags, wnd, csum, 0)
        out = b"".join((tpl, options, payload))
        if self._pad and len(out) - self._vlen < ETH_ZLEN:
            out += _PAD[: ETH_ZLEN - len(out) + self._vlen]
        return out

    def burst(
        self, seq: int, ack: int, flags: int, wnd: int, data: memoryview, mss: int
    ) -> list[bytes]:
        """Frames carrying ``data`` from ``seq`` on: one (TSO) frame when offloading,
        else ``mss``-sized frames; FIN and PSH in ``flags`` go on the last one only."""
        n = len(data)
        if n <= mss:
            return [self.frame(seq, ack, flags, wnd, data)]
        if self.vnet:
            return [self._gso_frame(seq, ack, flags, wnd, data, mss)]
        count = -(-n // mss)
        sums = slice_sums(data, mss, count)
        tpl = self._tpl
        tcp_off4 = self._tcp_off + 4
        pack = _TCP_TAIL.pack_into
        base = self._fixed + (ack >> 16) + (ack & 0xFFFF) + wnd
        out: list[bytes] = []
        append = out.append
        join = b"".join
        full_len = -1
        for i in range(count):
            chunk = data[i * mss : (i + 1) * mss]
            tcp_len = 20 + len(chunk)
            if tcp_len != full_len:
                self._lengths(tpl, tcp_len)
                full_len = tcp_len
            f = flags if i == count - 1 else flags & _NOT_LAST
            s = (seq + i * mss) & 0xFFFFFFFF
            offflags = 0x5000 | f
            csum = finish(base + tcp_len + (s >> 16) + (s & 0xFFFF) + offflags + sums[i])
            pack(tpl, tcp_off4, s, ack, offflags, wnd, csum, 0)
            append(join((tpl, chunk)))
        return out

    def _gso_frame(
        self, seq: int, ack: int, flags: int, wnd: int, data: memoryview, mss: int
    ) -> bytes:
        tpl = self._tpl
        tcp_len = 20 + len(data)
        self._lengths(tpl, tcp_len)
        gso = vnet_hdr.GSO_TCPV6 if self.v6 else vnet_hdr.GSO_TCPV4
        _VNET.pack_into(tpl, 0, vnet_hdr.NEEDS_CSUM, gso, self._hdr_len, mss,
                        self._csum_start, 16, 0)  # fmt: skip
        offflags = 0x5000 | flags
        csum = fold(self._pseudo + tcp_len)
        _TCP_TAIL.pack_into(tpl, self._tcp_off + 4, seq, ack, offflags, wnd, csum, 0)
        return b"".join((tpl, data))


def reset_for(seg: Segment, *, l2: bytes = b"", vnet: bool = False) -> bytes | None:
    """RFC 9293 §3.10.7.1: the RST answering ``seg`` when no connection owns it (None
    for a RST: never answer one). ``l2`` is the guest-bound Ethernet header."""
    if seg.flags & RST:
        return None
    b = FrameBuilder(seg.dst, seg.src, seg.dport, seg.sport, l2=l2, vnet=vnet)
    if seg.flags & ACK:
        return b.frame(seg.ack, 0, RST, 0)
    length = len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
    return b.frame(0, (seg.seq + length) & 0xFFFFFFFF, RST | ACK, 0)


def quoted_packet(seg: Segment, ttl: int = TTL) -> bytes:
    """The guest's IP packet ``seg`` came in, rebuilt for an ICMP error to quote (header
    and TCP header with options; the quoted TCP checksum is left 0)."""
    doff = 20 + len(seg.options)
    tcp = TCP.pack(seg.sport, seg.dport, seg.seq, seg.ack, doff << 2, seg.flags, seg.wnd, 0, 0)
    tcp += seg.options + bytes(seg.payload[:8])
    if seg.v6:
        return _IPV6.pack(0x60000000, len(tcp), IPPROTO_TCP, ttl, seg.src, seg.dst) + tcp
    total = 20 + len(tcp)
    hdr = bytearray(_IPV4.pack(0x45, 0, total, 0, IP_DF, ttl, IPPROTO_TCP, 0, seg.src, seg.dst))
    _U16.pack_into(hdr, 10, finish(ones_sum(hdr)))
    return bytes(hdr) + tcp


def unreachable_for(seg: Segment, code: int, *, l2: bytes = b"", src: bytes | None = None) -> bytes:
    """ICMP destination unreachable (IPv4 type 3 / ICMPv6 type 1) with ``code``, quoting
    ``seg``, sent to the guest from ``src`` (default: the address the guest tried)."""
    src = src if src is not None else seg.dst
    quote = quoted_packet(seg)
    if seg.v6:
        body = bytes((ICMP6_DST_UNREACH, code, 0, 0, 0, 0, 0, 0)) + quote
        total = ones_sum(src + seg.src) + IPPROTO_ICMPV6 + len(body) + ones_sum(body)
        body = body[:2] + _U16.pack(finish(total)) + body[4:]
        ip = _IPV6.pack(0x60000000, len(body), IPPROTO_ICMPV6, TTL, src, seg.src)
    else:
        body = bytes((ICMP_UNREACH, code, 0, 0, 0, 0, 0, 0)) + quote
        body = body[:2] + _U16.pack(finish(ones_sum(body))) + body[4:]
        hdr = bytearray(
            _IPV4.pack(0x45, 0, 20 + len(body), 0, 0, TTL, IPPROTO_ICMP, 0, src, seg.src)
        )
        _U16.pack_into(hdr, 10, finish(ones_sum(hdr)))
        ip = bytes(hdr)
    out = l2 + ip + body
    if l2 and len(out) < ETH_ZLEN:
        out += _PAD[: ETH_ZLEN - len(out)]
    return out


def unreachable_frame(
    syn: Segment, code: int, *, l2: bytes = b"", vnet: bool = False, src: bytes | None = None
) -> bytes:
    """ICMP destination unreachable about ``syn`` (with a plain virtio-net header when
    ``vnet``: the ICMP checksum is complete)."""
    frame = unreachable_for(syn, code, l2=l2, src=src)
    return PLAIN_HDR + frame if vnet else frame


def rejection(syn: Segment, err: int, *, l2: bytes = b"", vnet: bool = False) -> bytes | None:
    """libslirp's answer to a guest SYN whose host connect failed with ``err``: RST for
    ECONNREFUSED (and anything that is not a routing error), ICMP network unreachable
    for ENETUNREACH, ICMP host unreachable (IPv6: address unreachable) for EHOSTUNREACH
    and ETIMEDOUT."""
    if err == errno_mod.ENETUNREACH:
        return unreachable_frame(syn, 0, l2=l2, vnet=vnet)
    if err in (errno_mod.EHOSTUNREACH, errno_mod.ETIMEDOUT, errno_mod.EHOSTDOWN):
        return unreachable_frame(syn, 3 if syn.v6 else 1, l2=l2, vnet=vnet)
    return reset_for(syn, l2=l2, vnet=vnet)


__all__ = [
    "ETH_P_IP",
    "ETH_P_IPV6",
    "FrameBuilder",
    "ethernet_header",
    "quoted_packet",
    "rejection",
    "reset_for",
    "unreachable_for",
    "unreachable_frame",
]
