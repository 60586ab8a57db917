"""The capture session: what the tool asks the daemon over QMP, and the streams it reads.

Plan (see the package docstring for the why):

* a netdev is one *capture point*: a ``filter-dump`` with ``queue=all``,
  ``format=pcapng`` (beyond QEMU; the daemon stamps each frame with its direction) and
  ``file=`` a FIFO the tool reads. A daemon without ``format`` (QEMU itself) gets two
  classic-pcap filter-dumps per netdev, ``queue=rx`` and ``queue=tx``, so the direction is
  still known;
* a hub (``hub:N``) is one point per port: ``queue=rx`` on the port, i.e. every frame
  entering the hub, once, at the port it came in by;
* every point's FIFO is created in a private 0700 directory and opened for reading
  before the filter exists; a dummy writer held across ``object-add`` keeps the FIFO from
  reporting end-of-file before the daemon has opened it. After that, end-of-file means
  the daemon closed the capture (``object-del``, netdev deleted, daemon gone).

:class:`CaptureSession` owns the object ids, FIFOs and read transports; :meth:`close`
removes the daemon's objects, waits (bounded) for the last bytes, and removes the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from netstack.net.filters.pcap import FLAG_INBOUND, FLAG_OUTBOUND
from tools.capture.output import Interface
from tools.capture.streams import CaptureStreamReader, Packet, StreamError

Execute = Callable[[str, Mapping[str, object]], Awaitable[object]]
PacketSink = Callable[["CapturePoint", list[Packet]], None]

DRAIN_TIMEOUT: Final = 2.0
#: Bound on each QMP command while detaching (a daemon that stopped answering).
DETACH_TIMEOUT: Final = 5.0
_HUB_RE: Final = re.compile(r"^hub (\d+)$")
_CLIENT_RE: Final = re.compile(r"^([^:\s]+): index=\d+,type=([\w-]+)")


class CaptureError(Exception):
    """A target cannot be captured (the message is for the user)."""


@dataclass
class NetworkView:
    """What ``info network`` shows: clients (name, type) and each hub's ports."""

    clients: list[tuple[str, str]] = field(default_factory=list)
    hubs: dict[int, list[str]] = field(default_factory=dict)


def parse_info_network(text: str) -> NetworkView:
    view = NetworkView()
    hub: int | None = None
    for raw in text.replace("\r", "").split("\n"):
        if not raw or raw == "filters:" or raw.startswith("  - "):
            continue
        m = _HUB_RE.match(raw)
        if m:
            hub = int(m.group(1))
            view.hubs.setdefault(hub, [])
            continue
        if raw.startswith(" \\ "):
            rest = raw[3:]
            if hub is not None:
                port, _, peer = rest.partition(": ")
                view.hubs[hub].append(port)
                view.clients.append((port, "hubport"))
                rest = peer
            cm = _CLIENT_RE.match(rest)
            if cm:
                view.clients.append((cm.group(1), cm.group(2)))
            continue
        hub = None
        cm = _CLIENT_RE.match(raw)
        if cm:
            view.clients.append((cm.group(1), cm.group(2)))
    return view


@dataclass
class CapturePoint:
    """One filter-dump in the daemon and the FIFO it writes."""

    netdev: str
    queue: str
    if_index: int
    #: Direction of every frame when the stream cannot say (0: take it from the stream).
    direction: int
    object_id: str = ""
    fifo: str = ""
    reader: CaptureStreamReader = field(default_factory=CaptureStreamReader)
    transport: asyncio.ReadTransport | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None


class _FifoProtocol(asyncio.Protocol):
    def __init__(self, point: CapturePoint, sink: PacketSink) -> None:
        self.point = point
        self.sink = sink

    def data_received(self, data: bytes) -> None:
        point = self.point
        if point.error is not None:
            return
        try:
            packets = point.reader.feed(data)
        except StreamError as exc:
            point.error = str(exc)
            return
        if packets:
            self.sink(point, packets)

    def eof_received(self) -> bool | None:
        self.point.closed.set()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.point.closed.set()


class CaptureSession:
    """Capture points on a daemon, reached through ``execute`` (a QMP client's)."""

    def __init__(
        self,
        execute: Execute,
        sink: PacketSink,
        *,
        snaplen: int = 65536,
        prefix: str | None = None,
        segment: bool = False,
    ) -> None:
        self._execute = execute
        self._sink = sink
        self.snaplen = snaplen
        #: Ask the daemon for wire segments instead of offloaded super-frames.
        self.segment = segment
        self.prefix = prefix or f"netstack-capture-{os.getpid()}"
        self.points: list[CapturePoint] = []
        self.interfaces: list[Interface] = []
        self.pcapng: bool | None = None
        self._dir: str | None = None
        self._count = 0
        self._rfds: dict[str, int] = {}

    # -- planning ------------------------------------------------------------------------

    async def network(self) -> NetworkView:
        try:
            text = await self._execute("human-monitor-command", {"command-line": "info network"})
        except Exception as exc:
            raise CaptureError(f"cannot read 'info network': {exc}") from exc
        return parse_info_network(str(text))

    async def plan(self, targets: list[str]) -> None:
        """Turn ``targets`` (netdev ids, ``hub:N``) into interfaces; nothing is created."""
        view: NetworkView | None = None
        for target in targets:
            if target.startswith("hub:"):
                if view is None:
                    view = await self.network()
                try:
                    hub_id = int(target[4:])
                except ValueError:
                    raise CaptureError(f"{target}: expected hub:<number>") from None
                ports = view.hubs.get(hub_id)
                if not ports:
                    raise CaptureError(f"{target}: no such hub, or it has no ports")
                for port in ports:
                    self._interface(port, f"hub {hub_id} port {port}: frames entering the hub")
                    self._point(port, "rx", FLAG_INBOUND)
            else:
                self._interface(target, f"netdev {target}")
                self._point(target, "all", 0)

    def _interface(self, name: str, description: str) -> None:
        self.interfaces.append(Interface(name, description))

    def _point(self, netdev: str, queue: str, direction: int) -> None:
        self.points.append(CapturePoint(netdev, queue, len(self.interfaces) - 1, direction))

    # -- attaching -----------------------------------------------------------------------

    async def attach(self) -> None:
        """Create the FIFOs and the daemon's filters; on failure undo everything."""
        self._dir = tempfile.mkdtemp(prefix="netstack-capture-")
        loop = asyncio.get_running_loop()
        try:
            for point in list(self.points):
                for made in await self._attach_point(point):
                    await self._connect(loop, made)
        except BaseException:
            await self.close(drain=False)
            raise

    async def _attach_point(self, point: CapturePoint) -> list[CapturePoint]:
        if self.pcapng is not False:
            try:
                await self._add_filter(point, pcapng=True)
                self.pcapng = True
                return [point]
            except CaptureError as exc:
                if self.pcapng or "'format'" not in str(exc):
                    raise
                self.pcapng = False
        if point.queue != "all":
            await self._add_filter(point, pcapng=False)
            return [point]
        # Classic pcap carries no direction: one filter per direction.
        rx = point
        rx.queue, rx.direction = "rx", FLAG_INBOUND
        tx = CapturePoint(point.netdev, "tx", point.if_index, FLAG_OUTBOUND)
        self.points.insert(self.points.index(rx) + 1, tx)
        await self._add_filter(rx, pcapng=False)
        await self._add_filter(tx, pcapng=False)
        return [rx, tx]

    async def _add_filter(self, point: CapturePoint, *, pcapng: bool) -> None:
        assert self._dir is not None
        self._count += 1
        point.object_id = f"{self.prefix}-{self._count}"
        point.fifo = os.path.join(self._dir, f"{self._count}-{point.netdev}-{point.queue}")
        os.mkfifo(point.fifo, 0o600)
        rfd = os.open(point.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        keep = os.open(point.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        args: dict[str, object] = {
            "qom-type": "filter-dump",
            "id": point.object_id,
            "netdev": point.netdev,
            "file": point.fifo,
            "maxlen": self.snaplen,
            "queue": point.queue,
        }
        if pcapng:
            args["format"] = "pcapng"
            if self.segment:
                args["segment"] = True
        try:
            await self._execute("object-add", args)
        except Exception as exc:
            os.close(rfd)
            point.object_id = ""
            raise CaptureError(_describe(point.netdev, exc)) from exc
        finally:
            os.close(keep)
        self._rfds[point.object_id] = rfd

    async def _connect(self, loop: asyncio.AbstractEventLoop, point: CapturePoint) -> None:
        rfd = self._rfds.pop(point.object_id)
        pipe = os.fdopen(rfd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: _FifoProtocol(point, self._deliver), pipe
        )
        point.transport = transport

    def _deliver(self, point: CapturePoint, packets: list[Packet]) -> None:
        self._sink(point, packets)

    # -- flow control --------------------------------------------------------------------

    def pause(self) -> None:
        for point in self.points:
            if point.transport is not None and not point.transport.is_closing():
                point.transport.pause_reading()

    def resume(self) -> None:
        for point in self.points:
            if point.transport is not None and not point.transport.is_closing():
                point.transport.resume_reading()

    async def wait_all_closed(self) -> None:
        await asyncio.gather(*(p.closed.wait() for p in self.points if p.object_id))

    # -- detaching -----------------------------------------------------------------------

    async def close(self, *, drain: bool = True) -> None:
        """Delete the daemon's filters, read what they still flush, remove the FIFOs."""
        for point in self.points:
            if point.object_id:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self._execute("object-del", {"id": point.object_id}), DETACH_TIMEOUT
                    )
        if drain:
            self.resume()
            live = [p.closed.wait() for p in self.points if p.transport is not None]
            if live:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*live), DRAIN_TIMEOUT)
        for point in self.points:
            if point.transport is not None:
                point.transport.close()
                point.transport = None
            point.object_id = ""
        for rfd in self._rfds.values():
            with contextlib.suppress(OSError):
                os.close(rfd)
        self._rfds.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def daemon_dropped(self) -> int:
        return sum(p.reader.dropped or 0 for p in self.points)


def _describe(netdev: str, exc: Exception) -> str:
    text = str(exc)
    if text == "Parameter 'netdev' expects a network backend id":
        return f"{netdev}: no such netdev"
    return f"{netdev}: {text}"
