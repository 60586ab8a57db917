"""The capture the tool writes: one pcapng section (one interface per capture point) or
one classic pcap stream (all points merged, no direction).

:class:`CaptureWriter` turns packets into bytes and hands them to a ``write`` callable
at once - one call per packet, so a reader at the other end of a pipe (``tshark -r -``,
``wireshark -k -i -``) sees each packet as it happens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from netstack.net.filters.pcap import (
    pcap_file_header,
    pcap_record_header,
    pcapng_interface,
    pcapng_packet,
    pcapng_section_header,
)
from tools.capture.streams import Packet

FORMATS = ("pcapng", "pcap")


@dataclass(frozen=True)
class Interface:
    """One capture point as it appears in the output."""

    name: str
    description: str


class CaptureWriter:
    """Encodes the header once, then each packet, into ``write``."""

    def __init__(
        self,
        write: Callable[[bytes], None],
        interfaces: list[Interface],
        *,
        fmt: str = "pcapng",
        snaplen: int = 65536,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}")
        self._write = write
        self.format = fmt
        self.snaplen = snaplen
        self.packets = 0
        if fmt == "pcap":
            header = pcap_file_header(snaplen)
        else:
            header = pcapng_section_header("netstack-capture") + b"".join(
                pcapng_interface(i.name, snaplen=snaplen, description=i.description)
                for i in interfaces
            )
        write(header)

    def packet(self, if_index: int, pkt: Packet, direction: int) -> None:
        data = pkt.data[: self.snaplen]
        if self.format == "pcap":
            self._write(pcap_record_header(pkt.ts_ns // 1000, len(data), pkt.length) + data)
        else:
            self._write(pcapng_packet(if_index, pkt.ts_ns, data, pkt.length, direction))
        self.packets += 1
