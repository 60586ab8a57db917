"""QEMU's stream framing: each Ethernet frame preceded by its length, 4 bytes big-endian.

Spec: ``net/net.c`` ``net_fill_rstate``: the framing of ``-netdev socket``
(listen/connect/stream fd), ``-netdev stream`` and the filter-mirror/redirector chardevs.
A frame of N bytes travels as ``N.to_bytes(4, "big") + frame``; zero-length frames are
legal; a declared length above ``NET_BUFSIZE`` (69632) is a fatal protocol error for the
connection (QEMU prints "serious error: oversized packet received,connection terminated."
and drops it).

This module owns two sans-IO pieces:

* :class:`FrameDecoder` - reassembly. It owns a preallocated receive buffer: the adapter
  reads straight into :meth:`FrameDecoder.buffer` (``sock.recv_into``) and calls
  :meth:`FrameDecoder.commit` with the byte count, which returns every frame completed so
  far. :meth:`FrameDecoder.feed` does the same for bytes from anywhere (tests, pipes).
* :func:`encode_frames` - framing of a whole batch into one ``bytes`` for one write.

Invariants of the decoder: the bytes of an incomplete frame (header included) always sit
at the start of the buffer, so a largest legal frame (4 + 69632 bytes) always fits; the
frames returned are independent ``bytes`` objects, in stream order; splitting a byte stream
into chunks in any way yields the same frames (chunk invariance). After an oversized
header the decoder reports it in :attr:`FrameDecoder.oversized` and discards its buffer;
the caller drops the connection and calls :meth:`FrameDecoder.reset` before reusing it.

Deviations from QEMU, both invisible to a well-behaved peer: QEMU notices an oversized
frame only once more than ``NET_BUFSIZE`` of its body has arrived, this decoder as soon as
the header is complete; QEMU hands a zero-length frame on only when the next byte
arrives, this decoder at once.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

HEADER_LEN: Final = 4
#: QEMU's ``NET_BUFSIZE`` (4096 + 65536), the largest frame; equal to
#: ``netstack.net.queue.NET_BUFSIZE`` (repeated here: ``proto`` depends on nothing above it).
NET_BUFSIZE: Final = 69632
#: Receive buffer of a decoder: several frames per read, and always room for a whole one.
DEFAULT_CAPACITY: Final = 256 * 1024
#: QEMU's message for an oversized frame (its stderr text; note: no space after the comma).
OVERSIZED_MESSAGE: Final = "serious error: oversized packet received,connection terminated."

_HDR = struct.Struct(">I")
_unpack_from = _HDR.unpack_from
_pack = _HDR.pack


class _HeaderCache(dict[int, bytes]):
    """Length headers by frame length, built on first use (bounded)."""

    def __missing__(self, size: int) -> bytes:
        header = _pack(size)
        if len(self) < 8192:
            self[size] = header
        return header


_HEADERS: Final = _HeaderCache()


def frame_header(size: int) -> bytes:
    """The 4-byte big-endian length header of a frame of ``size`` bytes."""
    return _HEADERS[size]


def encode_frames(frames: Sequence[bytes]) -> bytes:
    """The wire form of a batch: every frame preceded by its length header."""
    header = _HEADERS.__getitem__
    parts: list[bytes] = []
    add = parts.append
    for frame in frames:
        add(header(len(frame)))
        add(frame)
    return b"".join(parts)


class FrameDecoder:
    """Reassembles length-prefixed frames from a byte stream (see the module docstring)."""

    __slots__ = ("_buf", "_fill", "_mv", "max_frame", "oversized")

    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_frame: int = NET_BUFSIZE) -> None:
        if capacity < HEADER_LEN + max_frame:
            raise ValueError(f"capacity {capacity} cannot hold a frame of {max_frame} bytes")
        self._buf = bytearray(capacity)
        self._mv = memoryview(self._buf)
        self._fill = 0
        self.max_frame = max_frame
        #: The declared length of the oversized frame that stopped decoding, or None.
        self.oversized: int | None = None

    @property
    def pending(self) -> int:
        """Bytes held of a frame not yet complete (header included)."""
        return self._fill

    def reset(self) -> None:
        """Forget any partial frame and a past error (a new connection starts)."""
        self._fill = 0
        self.oversized = None

    def buffer(self) -> memoryview:
        """The free part of the receive buffer; write into it, then :meth:`commit`."""
        return self._mv[self._fill :]

    def commit(self, nbytes: int) -> list[bytes]:
        """Account ``nbytes`` written into :meth:`buffer`; return the completed frames.

        Frames before an oversized header are returned; :attr:`oversized` is then set and
        the rest of the data is discarded.
        """
        if self.oversized is not None:
            return []
        end = self._fill + nbytes
        buf = self._buf
        mv = self._mv
        limit = self.max_frame
        frames: list[bytes] = []
        add = frames.append
        pos = 0
        while end - pos >= HEADER_LEN:
            (size,) = _unpack_from(buf, pos)
            if size > limit:
                self.oversized = size
                self._fill = 0
                return frames
            start = pos + HEADER_LEN
            stop = start + size
            if stop > end:
                break
            add(bytes(mv[start:stop]))
            pos = stop
        rest = end - pos
        if rest and pos:
            buf[:rest] = bytes(mv[pos:end])
        self._fill = rest
        return frames

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Decode ``data`` (any length); return the frames it completed."""
        frames: list[bytes] = []
        view = memoryview(data).cast("B")
        while view and self.oversized is None:
            free = self.buffer()
            take = min(len(free), len(view))
            free[:take] = view[:take]
            frames += self.commit(take)
            view = view[take:]
        return frames
