"""The length-prefixed frame stream of filter-mirror and filter-redirector (QEMU's ``net/net.c``
``net_fill_rstate``).

Each frame travels as a 4-byte big-endian length N, then - only when the filter has
``vnet_hdr_support=on`` - a 4-byte big-endian virtio-net header length, then the N bytes
of the frame (which start with that many bytes of header). This is QEMU's
``filter_send`` on the way out and ``net_fill_rstate`` on the way in.

:class:`FrameReader` is sans-IO: it takes whatever chunks a stream delivers and returns
the complete frames, whatever the chunking (a frame split over many reads, many frames in
one read). A length above ``NET_BUFSIZE`` (69632) makes the stream unusable, as in QEMU
(:data:`netstack.proto.streamframe.OVERSIZED_MESSAGE`): the reader raises
:class:`OversizedFrame` and must not be fed again.

:mod:`netstack.proto.streamframe` owns the same framing without the vnet header length
field (socket and stream netdevs); this reader adds that field, which only the filters
use.

Deviation: a zero-length frame is returned as soon as its header is complete; QEMU's
reader only finishes it once the next byte arrives.
"""

from __future__ import annotations

import struct
from typing import Final

from netstack.errors import RemoteInputError
from netstack.proto.streamframe import NET_BUFSIZE, OVERSIZED_MESSAGE

_U32: Final = struct.Struct("!I")
_U32X2: Final = struct.Struct("!II")


class OversizedFrame(RemoteInputError):
    """The stream announced a frame longer than ``NET_BUFSIZE``."""


def frame_header(length: int, vnet_hdr_len: int | None) -> bytes:
    """The prefix of one frame: length, plus the vnet header length when not None."""
    if vnet_hdr_len is None:
        return _U32.pack(length)
    return _U32X2.pack(length, vnet_hdr_len)


class FrameReader:
    """Reassembles ``(vnet_hdr_len, frame)`` pairs from a byte stream."""

    __slots__ = ("_buf", "_vnet_hdr")

    def __init__(self, vnet_hdr: bool = False) -> None:
        self._vnet_hdr = vnet_hdr
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add ``data``; return the frames it completed, in stream order."""
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        hdr = 8 if self._vnet_hdr else 4
        pos = 0
        end = len(buf)
        while end - pos >= hdr:
            (length,) = _U32.unpack_from(buf, pos)
            if length > NET_BUFSIZE:
                buf.clear()
                raise OversizedFrame(OVERSIZED_MESSAGE)
            vnet_len = _U32.unpack_from(buf, pos + 4)[0] if self._vnet_hdr else 0
            if end - pos - hdr < length:
                break
            start = pos + hdr
            out.append((vnet_len, bytes(buf[start : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return out
