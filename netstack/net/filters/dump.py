"""filter-dump: capture the frames passing a netdev into a pcap file (QEMU's ``net/dump.c``).

QEMU behaviour (``net/dump.c``): the file is opened ``O_CREAT|O_TRUNC|O_WRONLY`` mode 0644
(failure: ``net dump: can't open FILE: REASON``), a 24-byte pcap header with ``snaplen =
maxlen`` is written at once, then one record per frame seen in the filter's direction(s):
wall-clock timestamp in µs, ``caplen = min(len, maxlen)``, ``len``, and the frame without
its virtio-net header. A failed write logs ``network dump write error - stopping dump``,
closes the file and ends the capture (the filter stays, passing frames).

Beyond QEMU:

* ``format=pcapng``: a pcapng stream whose interface is named after the netdev (IDB
  ``if_name``), with nanosecond timestamps and the direction in each packet's
  ``epb_flags`` (``rx``, frames sent *to* the netdev, is inbound; ``tx``, frames the
  netdev sends, is outbound); on close an Interface Statistics Block reports the frames
  captured and dropped.
* Faithful records for offloaded frames (:mod:`.wireview`): QEMU strips the virtio-net
  header and writes the rest, so frames with a partial checksum or a TSO super-frame
  show bad checksums in Wireshark. Here such frames are written with their checksums
  completed; ``segment=on`` writes the segments the wire carries instead of the
  super-frame.
* ``file`` may name a FIFO (or any non-regular file): it is opened non-blocking, so that
  a FIFO without a reader fails at once (``... No such device or address``) instead of
  hanging the daemon, and writes never block the loop: bytes the reader has not taken yet
  are kept (up to :data:`STREAM_HIGH_WATER`) and flushed when the FIFO is writable; past
  that, whole records are dropped and counted. This is how ``netstack-capture`` streams
  captures out of the daemon. Regular files are written synchronously, as QEMU does.

Invariant: a record is written whole or not at all, so a reader never sees a torn record,
except after a write error (which ends the capture) and at the end of a stream target
that was still behind when the filter was deleted (the last bytes are written best
effort, without blocking).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from netstack.errors import GenericError
from netstack.net.filter import Direction, NetFilter, QueueSel
from netstack.net.filters import wireview
from netstack.net.filters.pcap import (
    DEFAULT_SNAPLEN,
    FLAG_INBOUND,
    FLAG_OUTBOUND,
    PCAP_REC_HDR,
    pcap_file_header,
    pcapng_interface,
    pcapng_packet_parts,
    pcapng_section_header,
    pcapng_statistics,
)

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.net.filters.host import FilterHost

FORMATS: Final = ("pcap", "pcapng")
WRITE_ERROR_TEXT: Final = "network dump write error - stopping dump"
#: Bytes a stream target (FIFO, socket) may lag behind before records are dropped.
STREAM_HIGH_WATER: Final = 4 << 20
_IOV_MAX: Final = 1024


class DumpSink:
    """The open capture file: synchronous for regular files, non-blocking for streams."""

    def __init__(self, path: str, log: logging.Logger) -> None:
        self.path = path
        self.log = log
        self.fd = -1
        self.stream = False
        self._pending = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, header: bytes) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise GenericError(f"net dump: can't open {self.path}: {exc.strerror}") from exc
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)
        else:
            try:
                self._loop = asyncio.get_running_loop()
                self.stream = True
            except RuntimeError:  # no loop (synchronous use): block like QEMU
                os.set_blocking(fd, True)
        self.fd = fd
        try:
            self._write_now([header], len(header))
        except OSError as exc:
            self.close()
            raise GenericError(f"net dump write error: {exc.strerror}") from exc

    @property
    def active(self) -> bool:
        return self.fd >= 0

    @property
    def backlog(self) -> int:
        """Bytes accepted for a stream target that it has not taken yet."""
        return len(self._pending)

    def write(self, parts: Sequence[bytes | memoryview], size: int) -> bool:
        """Write one unit (whole records); False if dropped or the capture stopped."""
        if self.fd < 0:
            return False
        try:
            if not self.stream:
                self._write_now(parts, size)
                return True
            if self._pending:
                if len(self._pending) + size > STREAM_HIGH_WATER:
                    return False
                for part in parts:
                    self._pending += part
                return True
            done = self._write_some(parts)
        except OSError:
            self._fail()
            return False
        if done < size:
            rest = b"".join(bytes(p) for p in parts)[done:]
            self._pending += rest
            assert self._loop is not None
            self._loop.add_writer(self.fd, self._flush)
        return True

    def _write_now(self, parts: Sequence[bytes | memoryview], size: int) -> None:
        done = 0
        for start in range(0, len(parts), _IOV_MAX):
            done += os.writev(self.fd, parts[start : start + _IOV_MAX])
        if done != size:
            raise OSError(0, "short write")

    def _write_some(self, parts: Sequence[bytes | memoryview]) -> int:
        done = 0
        for start in range(0, len(parts), _IOV_MAX):
            chunk = parts[start : start + _IOV_MAX]
            try:
                n = os.writev(self.fd, chunk)
            except BlockingIOError:
                return done
            done += n
            if n < sum(len(p) for p in chunk):
                break
        return done

    def _flush(self) -> None:
        if self.fd < 0:
            return
        try:
            n = os.write(self.fd, self._pending)
        except BlockingIOError:
            return
        except OSError:
            self._fail()
            return
        del self._pending[:n]
        if not self._pending and self._loop is not None:
            self._loop.remove_writer(self.fd)

    def _fail(self) -> None:
        self.log.error(WRITE_ERROR_TEXT)
        self.close()

    def close(self, trailer: bytes = b"") -> None:
        if self.fd < 0:
            return
        if self.stream and self._loop is not None:
            self._loop.remove_writer(self.fd)
        with contextlib.suppress(OSError):
            if trailer and not self._pending:
                os.write(self.fd, trailer)
            elif self._pending:
                os.write(self.fd, self._pending)  # best effort, non-blocking
        self._pending.clear()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1


class FilterDump(NetFilter):
    """Write every frame the filter sees to ``file`` (pcap, or pcapng beyond QEMU)."""

    qom_type = "filter-dump"

    def __init__(
        self,
        filter_id: str,
        netdev: NetClient,
        *,
        file: str,
        maxlen: int = DEFAULT_SNAPLEN,
        fmt: str = "pcap",
        segment: bool = False,
        clock: Callable[[], int] = time.time_ns,
        queue: QueueSel = "all",
        enabled: bool = True,
        position: str = "tail",
        insert: str = "behind",
    ) -> None:
        super().__init__(filter_id, netdev, queue, enabled, position, insert)
        if fmt not in FORMATS:
            raise GenericError(f"Parameter 'format' does not accept value '{fmt}'")
        self.file = file
        self.maxlen = maxlen
        self.format = fmt
        self.segment = segment
        self.clock = clock
        self.captured = 0
        #: Frames a stream target could not take (records dropped whole).
        self.dropped = 0
        self.sink: DumpSink | None = None

    def setup(self, host: FilterHost) -> None:
        self.sink = DumpSink(self.file, host.log)
        self.sink.open(self._header())

    def _header(self) -> bytes:
        if self.format == "pcap":
            return pcap_file_header(self.maxlen)
        name = self.netdev.name
        return pcapng_section_header() + pcapng_interface(
            name,
            snaplen=self.maxlen,
            description=f"netdev {name} (filter-dump {self.id}, queue={self.queue})",
        )

    def receive(
        self, sender: NetClient, direction: Direction, frames: Sequence[bytes], vnet: bool
    ) -> Sequence[bytes]:
        sink = self.sink
        if sink is None or not sink.active:
            return frames
        now = self.clock()
        maxlen = self.maxlen
        records: Sequence[bytes | memoryview] = frames
        if vnet:
            records = wireview.segmented(frames) if self.segment else wireview.completed(frames)
        parts: list[bytes | memoryview] = []
        size = 0
        if self.format == "pcap":
            sec = (now // 1_000_000_000) & 0xFFFFFFFF
            usec = (now // 1000) % 1_000_000
            pack = PCAP_REC_HDR.pack
            for data in records:
                length = len(data)
                caplen = length if length <= maxlen else maxlen
                parts.append(pack(sec, usec, caplen, length))
                parts.append(data if caplen == length else data[:caplen])
                size += 16 + caplen
        else:
            flags = FLAG_INBOUND if direction == "rx" else FLAG_OUTBOUND
            for data in records:
                length = len(data)
                kept = data if length <= maxlen else memoryview(data)[:maxlen]
                head, tail = pcapng_packet_parts(0, now, kept, length, flags)
                parts += (head, kept, tail)
                size += len(head) + len(kept) + len(tail)
        if sink.write(parts, size):
            self.captured += len(records)
        elif sink.active:
            self.dropped += len(records)
        return frames

    def properties(self) -> list[tuple[str, str]]:
        props = [("file", self.file), ("maxlen", str(self.maxlen))]
        if self.format != "pcap":
            props.append(("format", self.format))
        if self.segment:
            props.append(("segment", "on"))
        return props + super().properties()

    def cleanup(self) -> None:
        if self.sink is None:
            return
        trailer = b""
        if self.format == "pcapng":
            seen = self.captured + self.dropped
            trailer = pcapng_statistics(0, self.clock(), seen, self.dropped)
        self.sink.close(trailer)
