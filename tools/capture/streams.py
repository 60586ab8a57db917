"""Sans-IO readers of capture streams: pcap (either byte order, µs or ns) and pcapng.

:class:`CaptureStreamReader` takes the bytes of one stream in any chunking and returns
:class:`Packet` records; it detects the format from the first four bytes. pcapng support
covers what capture streams carry: Section Header (either byte order), Interface
Description (``if_tsresol``), Enhanced Packet (``epb_flags`` direction), Simple Packet,
and Interface Statistics (``isb_ifrecv``/``isb_ifdrop``) blocks; other blocks are
skipped. Timestamps come out in nanoseconds since the epoch.

Malformed input raises :class:`StreamError` (the caller drops that stream); a block
longer than :data:`MAX_BLOCK` is malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from netstack.net.filters.pcap import (
    BT_EPB,
    BT_IDB,
    BT_ISB,
    BT_SHB,
    BYTE_ORDER_MAGIC,
    EPB_FLAGS,
    IF_TSRESOL,
    ISB_IFDROP,
    ISB_IFRECV,
    PCAP_MAGIC,
    PCAP_MAGIC_NS,
)

BT_SPB: Final = 0x00000003
MAX_BLOCK: Final = 16 << 20


class StreamError(Exception):
    """The stream is not a capture this reader understands."""


@dataclass(slots=True)
class Packet:
    """One captured frame: ``data`` (``caplen`` bytes) of a ``length``-byte frame."""

    ts_ns: int
    data: bytes
    length: int
    #: pcapng ``epb_flags`` direction bits: 0 unknown, 1 inbound, 2 outbound.
    direction: int = 0
    if_id: int = 0


def _units_to_ns(tsresol: int) -> tuple[int, int]:
    """(multiplier, divisor) turning timestamp units of ``tsresol`` into nanoseconds."""
    if tsresol & 0x80:
        return 1_000_000_000, 1 << (tsresol & 0x7F)
    exp = tsresol
    if exp <= 9:
        return 10 ** (9 - exp), 1
    return 1, 10 ** (exp - 9)


class CaptureStreamReader:
    """pcap or pcapng bytes in, packets out."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.format: str | None = None
        self._order = "<"
        self.linktype: int | None = None
        self.snaplen: int | None = None
        self._pcap_ns = False
        self._if_scale: list[tuple[int, int]] = []
        #: From the last Interface Statistics Block, if any.
        self.received: int | None = None
        self.dropped: int | None = None

    def feed(self, data: bytes) -> list[Packet]:
        self._buf += data
        if self.format is None:
            if len(self._buf) < 4:
                return []
            self._detect()
        if self.format == "pcap":
            return self._pcap()
        return self._pcapng()

    def _detect(self) -> None:
        head = bytes(self._buf[:4])
        for order in ("<", ">"):
            (magic,) = struct.unpack(order + "I", head)
            if magic in (PCAP_MAGIC, PCAP_MAGIC_NS):
                self.format, self._order, self._pcap_ns = "pcap", order, magic == PCAP_MAGIC_NS
                return
        if struct.unpack("<I", head)[0] == BT_SHB:
            self.format = "pcapng"
            return
        raise StreamError(f"not a pcap or pcapng stream (starts {head.hex()})")

    # -- pcap --------------------------------------------------------------------------

    def _pcap(self) -> list[Packet]:
        buf = self._buf
        o = self._order
        pos = 0
        if self.linktype is None:
            if len(buf) < 24:
                return []
            _, _, _, _, _, self.snaplen, self.linktype = struct.unpack_from(o + "IHHiIII", buf)
            pos = 24
        out: list[Packet] = []
        rec = struct.Struct(o + "IIII")
        scale = 1 if self._pcap_ns else 1000
        while len(buf) - pos >= 16:
            sec, frac, caplen, length = rec.unpack_from(buf, pos)
            if caplen > MAX_BLOCK:
                raise StreamError(f"pcap record of {caplen} bytes")
            if len(buf) - pos - 16 < caplen:
                break
            data = bytes(buf[pos + 16 : pos + 16 + caplen])
            out.append(Packet(sec * 1_000_000_000 + frac * scale, data, length))
            pos += 16 + caplen
        del buf[:pos]
        return out

    # -- pcapng ------------------------------------------------------------------------

    def _pcapng(self) -> list[Packet]:
        buf = self._buf
        out: list[Packet] = []
        pos = 0
        while len(buf) - pos >= 12:
            (btype,) = struct.unpack_from(self._order + "I", buf, pos)
            if btype == BT_SHB:
                (magic,) = struct.unpack_from("<I", buf, pos + 8)
                self._order = "<" if magic == BYTE_ORDER_MAGIC else ">"
                if struct.unpack_from(self._order + "I", buf, pos + 8)[0] != BYTE_ORDER_MAGIC:
                    raise StreamError("bad pcapng byte-order magic")
            (blen,) = struct.unpack_from(self._order + "I", buf, pos + 4)
            if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                raise StreamError(f"bad pcapng block length {blen}")
            if len(buf) - pos < blen:
                break
            block = bytes(buf[pos : pos + blen])
            pos += blen
            packet = self._block(btype, block)
            if packet is not None:
                out.append(packet)
        del buf[:pos]
        return out

    def _options(self, data: bytes, start: int, end: int) -> dict[int, bytes]:
        opts: dict[int, bytes] = {}
        o = self._order
        while start + 4 <= end:
            code, length = struct.unpack_from(o + "HH", data, start)
            if code == 0:
                break
            opts[code] = data[start + 4 : start + 4 + length]
            start += 4 + length + (-length & 3)
        return opts

    def _block(self, btype: int, block: bytes) -> Packet | None:
        o = self._order
        end = len(block) - 4
        if btype == BT_SHB:
            self._if_scale = []
            return None
        if btype == BT_IDB:
            linktype, _, snaplen = struct.unpack_from(o + "HHI", block, 8)
            if self.linktype is None:
                self.linktype, self.snaplen = linktype, snaplen
            opts = self._options(block, 16, end)
            tsresol = opts.get(IF_TSRESOL, b"\x06")[0]
            self._if_scale.append(_units_to_ns(tsresol))
            return None
        if btype == BT_EPB:
            if_id, hi, lo, caplen, length = struct.unpack_from(o + "IIIII", block, 8)
            if 28 + caplen > end:
                raise StreamError("pcapng packet overruns its block")
            mul, div = self._scale(if_id)
            data = block[28 : 28 + caplen]
            opts = self._options(block, 28 + caplen + (-caplen & 3), end)
            flags = opts.get(EPB_FLAGS)
            direction = struct.unpack(o + "I", flags)[0] & 3 if flags and len(flags) == 4 else 0
            ts = ((hi << 32) | lo) * mul // div
            return Packet(ts, data, length, direction, if_id)
        if btype == BT_SPB:
            (length,) = struct.unpack_from(o + "I", block, 8)
            caplen = min(length, end - 12)
            return Packet(0, block[12 : 12 + caplen], length)
        if btype == BT_ISB:
            opts = self._options(block, 20, end)
            if ISB_IFRECV in opts:
                self.received = struct.unpack(o + "Q", opts[ISB_IFRECV])[0]
            if ISB_IFDROP in opts:
                self.dropped = struct.unpack(o + "Q", opts[ISB_IFDROP])[0]
        return None

    def _scale(self, if_id: int) -> tuple[int, int]:
        if if_id >= len(self._if_scale):
            raise StreamError(f"packet for undeclared interface {if_id}")
        return self._if_scale[if_id]
