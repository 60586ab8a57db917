"""What a capture shows of a frame that carries offloads: its checksums completed, and
optionally the TSO/USO super-frame cut into the segments the wire would carry.

Inside the daemon a batch flagged ``vnet`` has a virtio-net header in front of every frame
(:mod:`netstack.proto.vnet`). Its ``NEEDS_CSUM`` flag means the transport checksum field
holds only the pseudo-header sum (Linux's CHECKSUM_PARTIAL); a ``gso_type`` means the frame
is a super-frame of up to 64 KiB that a NIC, the kernel's GSO layer or
:func:`netstack.proto.vnet.to_plain` cuts into ``gso_size`` segments before it reaches a
link. Writing such frames to a capture verbatim (as QEMU's ``net/dump.c`` does: it strips
the header and writes the rest) gives files in which Wireshark, with checksum validation
on, flags every offloaded TCP segment as bad, and shows 14 KB TCP segments that never
crossed any link.

Two views, both header-free:

* :func:`completed` (filter-dump's default): a frame with ``NEEDS_CSUM`` is copied and its
  checksum completed over ``csum_start..end`` (UDP's computed 0 sent as 0xffff); a
  super-frame stays one record, as ``tcpdump`` on a host with GSO shows it, its checksums
  valid for the one large packet it is (the pseudo-header sum in it covers the full
  length, and the IPv4 header checksum is the real one). Frames without offloads are
  passed as views, uncopied.
* :func:`segmented` (filter-dump ``segment=on``, ``netstack-capture --segment``): what
  the wire carries, segment by segment, as a receiver without offloads gets it
  (:func:`netstack.proto.vnet.to_plain`).

Costs fall only on frames that carry offloads, and only while a capture is attached.
A frame whose offload fields are inconsistent is written without its header, unchanged
(a capture shows what passed; it never drops it).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from netstack.errors import RemoteInputError
from netstack.proto import vnet
from netstack.proto.checksum import finish, ones_sum

_HDR = vnet.HDR_LEN


def completed(frames: Sequence[bytes]) -> list[bytes | memoryview]:
    """Frames with virtio-net headers -> header-free frames with complete checksums."""
    out: list[bytes | memoryview] = []
    for frame in frames:
        if len(frame) < _HDR:
            continue
        if not frame[0] & vnet.NEEDS_CSUM:
            out.append(memoryview(frame)[_HDR:])
            continue
        _flags, _gso, _hl, _size, start, offset = vnet.unpack(frame)
        data = bytearray(memoryview(frame)[_HDR:])
        try:
            _complete(data, start, offset)
        except (RemoteInputError, struct.error):
            out.append(memoryview(frame)[_HDR:])
            continue
        out.append(bytes(data))
    return out


def segmented(frames: Sequence[bytes]) -> list[bytes | memoryview]:
    """Frames with virtio-net headers -> the wire frames (checksummed, segmented)."""
    out: list[bytes | memoryview] = []
    for frame in frames:
        if len(frame) < _HDR:
            continue
        if not frame[0] & vnet.NEEDS_CSUM and not frame[1] & ~vnet.GSO_ECN:
            out.append(memoryview(frame)[_HDR:])
            continue
        plain = vnet.to_plain([frame])
        if plain:
            out.extend(plain)
        else:  # inconsistent offload fields: show what passed
            out.append(memoryview(frame)[_HDR:])
    return out


def _complete(data: bytearray, start: int, offset: int) -> None:
    where = start + offset
    if start >= len(data) or where + 2 > len(data):
        raise RemoteInputError("checksum offsets outside the frame")
    end = _packet_end(data, start)
    value = finish(ones_sum(memoryview(data)[start:end]))
    if value == 0 and offset == 6:  # UDP: a computed 0 is sent as all ones (RFC 768)
        value = 0xFFFF
    struct.pack_into("!H", data, where, value)


def _packet_end(data: bytearray, start: int) -> int:
    """Where the IP packet ends (Ethernet padding after it is not summed; it is zeros
    for our own frames but need not be for others'). The frame's end if unsure."""
    off = 12
    ethertype = int.from_bytes(data[off : off + 2], "big")
    while ethertype in (vnet.ETH_P_8021Q, vnet.ETH_P_8021AD) and off + 6 <= len(data):
        off += 4
        ethertype = int.from_bytes(data[off : off + 2], "big")
    l3 = off + 2
    if ethertype == vnet.ETH_P_IP and l3 + 4 <= len(data):
        end = l3 + int.from_bytes(data[l3 + 2 : l3 + 4], "big")
    elif ethertype == vnet.ETH_P_IPV6 and l3 + 6 <= len(data):
        plen = int.from_bytes(data[l3 + 4 : l3 + 6], "big")
        end = l3 + 40 + plen if plen else len(data)
    else:
        return len(data)
    return end if start < end <= len(data) else len(data)
