"""Capture file encodings: classic pcap exactly as QEMU's ``net/dump.c`` writes it, and pcapng.

Classic pcap (libpcap format, microsecond timestamps), all fields in host byte order:

* file header, 24 bytes: ``u32 magic 0xa1b2c3d4, u16 2, u16 4, i32 thiszone 0,
  u32 sigfigs 0, u32 snaplen, u32 linktype`` - on x86 the bytes start
  ``d4 c3 b2 a1 02 00 04 00`` (``net/dump.c``);
* record header, 16 bytes: ``i32 sec, i32 usec, u32 caplen, u32 len`` followed by
  ``caplen`` bytes of frame; QEMU stores the seconds in an ``int32_t``, so they wrap the
  same way here (packed modulo 2**32).

pcapng (IETF draft-ietf-opsawg-pcapng), host byte order with the byte-order magic telling
readers which one: a Section Header Block, one Interface Description Block per interface
(``if_name``, optional ``if_description``, ``if_tsresol`` 9 = nanoseconds), Enhanced
Packet Blocks carrying ``epb_flags`` with the direction (1 inbound, 2 outbound), and
Interface Statistics Blocks (``isb_ifrecv``, ``isb_ifdrop``).

Everything here is a pure function from numbers to ``bytes`` (precompiled
:class:`struct.Struct`); the writers and readers that use them own the I/O. dpkt's pcap
writer is deliberately not used: it always writes ``caplen == len`` (no ``maxlen``
truncation) and rounds float timestamps, so it cannot reproduce QEMU's records.
"""

from __future__ import annotations

import struct
from typing import Final

PCAP_MAGIC: Final = 0xA1B2C3D4
PCAP_MAGIC_NS: Final = 0xA1B23C4D
PCAP_VERSION: Final = (2, 4)
LINKTYPE_ETHERNET: Final = 1
#: filter-dump's default ``maxlen`` (QEMU ``filter_dump_instance_init``).
DEFAULT_SNAPLEN: Final = 65536

PCAP_FILE_HDR: Final = struct.Struct("=IHHiIII")
PCAP_REC_HDR: Final = struct.Struct("=IIII")

# -- pcapng ------------------------------------------------------------------------------

BT_SHB: Final = 0x0A0D0D0A
BT_IDB: Final = 0x00000001
BT_EPB: Final = 0x00000006
BT_ISB: Final = 0x00000005
BYTE_ORDER_MAGIC: Final = 0x1A2B3C4D

OPT_ENDOFOPT: Final = 0
OPT_COMMENT: Final = 1
SHB_USERAPPL: Final = 4
IF_NAME: Final = 2
IF_DESCRIPTION: Final = 3
IF_TSRESOL: Final = 9
EPB_FLAGS: Final = 2
ISB_IFRECV: Final = 4
ISB_IFDROP: Final = 5

#: ``epb_flags`` bits 0-1: the frame's direction as seen by the interface.
FLAG_INBOUND: Final = 1
FLAG_OUTBOUND: Final = 2

_BLOCK_HDR: Final = struct.Struct("=II")
_U32: Final = struct.Struct("=I")
_OPT_HDR: Final = struct.Struct("=HH")
_SHB_BODY: Final = struct.Struct("=IHHq")
_IDB_BODY: Final = struct.Struct("=HHI")
_EPB_HEAD: Final = struct.Struct("=IIIIIII")  # type, len, if, ts hi, ts lo, caplen, len
_EPB_FLAGS_TAIL: Final = struct.Struct("=HHIHHI")  # epb_flags opt, end of opt, total len
_EPB_PLAIN_TAIL: Final = struct.Struct("=I")
_ISB_BODY: Final = struct.Struct("=III")
_PAD: Final = (b"", b"\0\0\0", b"\0\0", b"\0")


def pcap_file_header(snaplen: int = DEFAULT_SNAPLEN, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """The 24-byte global header QEMU writes (µs magic, v2.4, thiszone 0, sigfigs 0)."""
    return PCAP_FILE_HDR.pack(PCAP_MAGIC, *PCAP_VERSION, 0, 0, snaplen, linktype)


def pcap_record_header(ts_us: int, caplen: int, length: int) -> bytes:
    """A 16-byte record header for a frame of ``length`` bytes, ``caplen`` of them kept."""
    return PCAP_REC_HDR.pack((ts_us // 1_000_000) & 0xFFFFFFFF, ts_us % 1_000_000, caplen, length)


def pad4(n: int) -> bytes:
    """Zero padding that brings ``n`` bytes up to a multiple of 4."""
    return _PAD[n & 3]


def option(code: int, value: bytes) -> bytes:
    """One pcapng option (code, length, value padded to 32 bits)."""
    return _OPT_HDR.pack(code, len(value)) + value + pad4(len(value))


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return _BLOCK_HDR.pack(block_type, total) + body + _U32.pack(total)


def _options(opts: list[bytes]) -> bytes:
    return b"".join(opts) + _OPT_HDR.pack(OPT_ENDOFOPT, 0) if opts else b""


def pcapng_section_header(user_appl: str | None = "netstack") -> bytes:
    """A Section Header Block of unknown section length."""
    opts = [option(SHB_USERAPPL, user_appl.encode())] if user_appl else []
    return _block(BT_SHB, _SHB_BODY.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + _options(opts))


def pcapng_interface(
    name: str,
    *,
    snaplen: int = DEFAULT_SNAPLEN,
    linktype: int = LINKTYPE_ETHERNET,
    description: str | None = None,
    tsresol: int = 9,
) -> bytes:
    """An Interface Description Block; timestamps in units of ``10**-tsresol`` s."""
    opts = [option(IF_NAME, name.encode())]
    if description:
        opts.append(option(IF_DESCRIPTION, description.encode()))
    if tsresol != 6:
        opts.append(option(IF_TSRESOL, bytes((tsresol,))))
    return _block(BT_IDB, _IDB_BODY.pack(linktype, 0, snaplen) + _options(opts))


def pcapng_packet_parts(
    if_id: int, ts: int, data: bytes | memoryview, length: int, flags: int = 0
) -> tuple[bytes, bytes]:
    """An Enhanced Packet Block around ``data`` as (head, tail): write head, data, tail.

    ``ts`` is in the interface's resolution; ``flags`` (direction) is stored as an
    ``epb_flags`` option when non-zero. Splitting the block lets writers hand the frame to
    ``writev`` without copying it.
    """
    caplen = len(data)
    padded = caplen + (-caplen & 3)
    if flags:
        total = 32 + padded + 12
        tail = pad4(caplen) + _EPB_FLAGS_TAIL.pack(EPB_FLAGS, 4, flags, 0, 0, total)
    else:
        total = 32 + padded
        tail = pad4(caplen) + _EPB_PLAIN_TAIL.pack(total)
    head = _EPB_HEAD.pack(
        BT_EPB, total, if_id, (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF, caplen, length
    )
    return head, tail


def pcapng_packet(if_id: int, ts: int, data: bytes, length: int, flags: int = 0) -> bytes:
    """An Enhanced Packet Block as one ``bytes``."""
    head, tail = pcapng_packet_parts(if_id, ts, data, length, flags)
    return head + data + tail


def pcapng_statistics(if_id: int, ts: int, received: int, dropped: int) -> bytes:
    """An Interface Statistics Block with ``isb_ifrecv`` and ``isb_ifdrop``."""
    opts = [
        option(ISB_IFRECV, struct.pack("=Q", received)),
        option(ISB_IFDROP, struct.pack("=Q", dropped)),
    ]
    body = _ISB_BODY.pack(if_id, (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF) + _options(opts)
    return _block(BT_ISB, body)
