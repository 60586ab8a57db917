"""TCP segments from the guest: parsing frames and L4 bytes, options, and the checksum.

Follows RFC 9293 (TCP header, the MSS option and its defaults 536/1220), RFC 7323 (window
scale option, shift at most 14), RFC 2018 (SACK-permitted and SACK blocks) and the
virtio-net header (``netstack.proto.vnet``): a frame whose header says ``NEEDS_CSUM``
(checksum-partial: the field holds only the pseudo-header sum) or ``DATA_VALID`` is not
checksum-verified, and a TSO super-frame (gso_type TCPV4/TCPV6, IPv4 total length 0 or
0 meaning "the rest of the frame") is simply one big segment.

Parsing is total: any bytes give a :class:`Segment` or a drop-reason string (which the
caller counts); nothing raises. The payload is a zero-copy ``memoryview`` slice of the
frame (frames are immutable ``bytes``, so holding the view is safe). Addresses are
4-byte (IPv4) or 16-byte (IPv6) ``bytes``.
"""

from __future__ import annotations

import struct
from typing import Final, Literal, NamedTuple

from netstack.proto import vnet as vnet_hdr
from netstack.proto.checksum import addrs_sum, fold, ipv4_header_ok, ones_sum

#: Why a frame or segment is not a TCP segment to deliver (a counter name of the caller).
TcpDropReason = Literal[
    "tcp-short",
    "tcp-bad-offset",
    "tcp-bad-checksum",
    "vnet-short",
    "eth-short",
    "ip-malformed",
    "ip-bad-checksum",
    "ip-fragment",
    "not-tcp",
    "not-ip",
]

FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80

IPPROTO_TCP: Final = 6
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
ETH_HLEN: Final = 14
TCP_HLEN: Final = 20

OPT_EOL: Final = 0
OPT_NOP: Final = 1
OPT_MSS: Final = 2
OPT_WSCALE: Final = 3
OPT_SACK_PERM: Final = 4
OPT_SACK: Final = 5
OPT_TIMESTAMP: Final = 8
#: RFC 7323 §2.3: a larger shift is treated as 14.
WSCALE_MAX: Final = 14
#: RFC 9293 §3.7.1 / RFC 8200 §8.3: the MSS assumed when the SYN carries none.
DEFAULT_MSS_V4: Final = 536
DEFAULT_MSS_V6: Final = 1220

TCP: Final = struct.Struct("!HHIIBBHHH")  # sport dport seq ack off flags wnd csum urp
_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_U32X2: Final = struct.Struct("!II")
_IPV6_EXT: Final = (0, 43, 60)  # Hop-by-Hop, Routing, Destination Options
_IPV6_FRAG: Final = 44


class Segment:
    """One TCP segment from the guest: header fields, raw options and the payload."""

    __slots__ = (
        "ack",
        "dport",
        "dst",
        "flags",
        "mac",
        "options",
        "payload",
        "seq",
        "sport",
        "src",
        "wnd",
    )

    def __init__(
        self, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int,
        flags: int, wnd: int, options: bytes, payload: memoryview | bytes, mac: bytes = b"",
    ) -> None:  # fmt: skip
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.wnd = wnd
        self.options = options
        self.payload = payload
        #: The guest's MAC (source of the Ethernet frame), b"" when parsed from L4 bytes.
        self.mac = mac

    @property
    def v6(self) -> bool:
        return len(self.src) == 16

    def __repr__(self) -> str:
        names = "".join(n for bit, n in _FLAG_NAMES if self.flags & bit)
        return (
            f"<Segment {self.sport}->{self.dport} {names} seq={self.seq} ack={self.ack} "
            f"wnd={self.wnd} len={len(self.payload)}>"
        )


_FLAG_NAMES = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"))


class SynOptions(NamedTuple):
    """What a SYN (or SYN-ACK) offered: MSS (None if absent), window shift (None if
    absent), SACK-permitted, timestamps present."""

    mss: int | None
    wscale: int | None
    sack_ok: bool
    timestamps: bool


NO_OPTIONS: Final = SynOptions(None, None, False, False)


def parse_syn_options(opts: bytes | memoryview) -> SynOptions:
    """The SYN options in ``opts`` (malformed tails end the scan, as Linux does)."""
    mss = wscale = None
    sack_ok = timestamps = False
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            break
        size = opts[i + 1]
        if size < 2 or i + size > n:
            break
        if kind == OPT_MSS and size == 4:
            mss = (opts[i + 2] << 8) | opts[i + 3]
        elif kind == OPT_WSCALE and size == 3:
            wscale = min(opts[i + 2], WSCALE_MAX)
        elif kind == OPT_SACK_PERM and size == 2:
            sack_ok = True
        elif kind == OPT_TIMESTAMP and size == 10:
            timestamps = True
        i += size
    return SynOptions(mss, wscale, sack_ok, timestamps)


def parse_sack_blocks(opts: bytes | memoryview) -> list[tuple[int, int]]:
    """The (left, right) edges of the SACK blocks in ``opts`` (wire 32-bit values)."""
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            break
        size = opts[i + 1]
        if size < 2 or i + size > n:
            break
        if kind == OPT_SACK and size >= 10 and (size - 2) % 8 == 0:
            return [_U32X2.unpack_from(opts, j) for j in range(i + 2, i + size, 8)]
        i += size
    return []


def syn_options(mss: int, wscale: int | None, sack_ok: bool) -> bytes:
    """Options for a SYN or SYN-ACK we send: MSS, then SACK-permitted and window scale
    in the layout Linux uses (padded with NOPs to 32-bit words)."""
    out = bytes((OPT_MSS, 4)) + _U16.pack(mss)
    if sack_ok:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2))
    if wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    return out


def sack_option(blocks: list[tuple[int, int]]) -> bytes:
    """A SACK option (at most 4 blocks without timestamps), NOP-padded to 32 bits."""
    blocks = blocks[:4]
    return bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(blocks))) + b"".join(
        _U32X2.pack(left & 0xFFFFFFFF, right & 0xFFFFFFFF) for left, right in blocks
    )


def pseudo_sum(src: bytes, dst: bytes, length: int) -> int:
    """Unfolded ones'-complement sum of the TCP pseudo-header (IPv4 or IPv6)."""
    return addrs_sum(src, dst) + IPPROTO_TCP + length


def parse_l4(
    src: bytes, dst: bytes, l4: bytes | memoryview, *, verify: bool = True, mac: bytes = b""
) -> Segment | TcpDropReason:
    """A TCP segment from the bytes after the IP header(s); ``verify`` checks the
    checksum over the pseudo-header of ``src``/``dst``."""
    n = len(l4)
    if n < TCP_HLEN:
        return "tcp-short"
    sport, dport, seq, ack, off, flags, wnd, _csum, _urp = TCP.unpack_from(l4)
    doff = (off >> 4) * 4
    if doff < TCP_HLEN or doff > n:
        return "tcp-bad-offset"
    if verify and ones_sum(l4, fold(pseudo_sum(src, dst, n))) != 0xFFFF:
        return "tcp-bad-checksum"
    view = l4 if isinstance(l4, memoryview) else memoryview(l4)
    options = bytes(view[TCP_HLEN:doff]) if doff > TCP_HLEN else b""
    return Segment(src, dst, sport, dport, seq, ack, flags, wnd, options, view[doff:], mac)


def parse_frame(frame: bytes, vnet: bool = False) -> Segment | TcpDropReason:
    """A TCP segment from an Ethernet frame (with a 12-byte virtio-net header in front
    when ``vnet``); IPv4 without fragments or IPv6 with Hop-by-Hop/Routing/Destination
    headers. Returns a drop reason for anything else."""
    view = memoryview(frame)
    verify = True
    gso = False
    if vnet:
        if len(view) < vnet_hdr.HDR_LEN:
            return "vnet-short"
        vflags, gso_type = view[0], view[1] & ~vnet_hdr.GSO_ECN
        if vflags & (vnet_hdr.NEEDS_CSUM | vnet_hdr.DATA_VALID):
            verify = False
        gso = gso_type in (vnet_hdr.GSO_TCPV4, vnet_hdr.GSO_TCPV6)
        view = view[vnet_hdr.HDR_LEN :]
    n = len(view)
    if n < ETH_HLEN + 20:
        return "eth-short"
    etype = (view[12] << 8) | view[13]
    mac = bytes(view[6:12])
    if etype == ETH_P_IP:
        if view[14] >> 4 != 4:
            return "ip-malformed"
        ihl = (view[14] & 15) * 4
        total = (view[16] << 8) | view[17]
        if gso and total == 0:
            total = n - ETH_HLEN
        if ihl < 20 or total < ihl or ETH_HLEN + total > n:
            return "ip-malformed"
        if not ipv4_header_ok(view, 14, ihl):
            return "ip-bad-checksum"
        if ((view[20] << 8) | view[21]) & 0x3FFF:
            return "ip-fragment"
        if view[23] != IPPROTO_TCP:
            return "not-tcp"
        src, dst = bytes(view[26:30]), bytes(view[30:34])
        return parse_l4(src, dst, view[14 + ihl : 14 + total], verify=verify, mac=mac)
    if etype == ETH_P_IPV6:
        if n < ETH_HLEN + 40 or view[14] >> 4 != 6:
            return "ip-malformed"
        plen = (view[18] << 8) | view[19]
        if gso and plen == 0:
            plen = n - ETH_HLEN - 40
        end = ETH_HLEN + 40 + plen
        if end > n:
            return "ip-malformed"
        proto = view[20]
        at = ETH_HLEN + 40
        for _ in range(8):
            if proto not in _IPV6_EXT:
                break
            if at + 2 > end:
                return "ip-malformed"
            proto = view[at]
            at += (view[at + 1] + 1) * 8
        if proto == _IPV6_FRAG:
            return "ip-fragment"
        if proto != IPPROTO_TCP or at > end:
            return "not-tcp"
        src, dst = bytes(view[22:38]), bytes(view[38:54])
        return parse_l4(src, dst, view[at:end], verify=verify, mac=mac)
    return "not-ip"


def seq_diff(a: int, b: int) -> int:
    """``a - b`` in sequence space (signed, RFC 1982 style)."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000
