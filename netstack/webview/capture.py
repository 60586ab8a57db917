"""Captures the web view starts for the browser: a pcapng file assembled in memory.

A browser cannot open a FIFO on the daemon's host, so the web view does what
``netstack-capture`` does on its behalf: it makes a FIFO in a private 0700 directory,
opens it for reading, and creates a ``filter-dump`` object (``queue=all``,
``format=pcapng``, ``file=`` the FIFO) through the same ``object-add`` path QMP uses, so
the capture shows in ``info network`` and ``query-netdev`` like any other filter. The
bytes the filter writes are kept in memory until the page stops the capture, then served
once or more as an ``application/vnd.tcpdump.pcapng`` download (the pcapng stream of
``netstack/net/filters/dump.py``: one interface named after the netdev, nanosecond
timestamps, each packet's direction in ``epb_flags``, an Interface Statistics Block at
the end).

Bounds: at most :data:`MAX_RUNNING` captures at once and :data:`MAX_KEPT` finished ones
(the oldest finished capture is forgotten first); a capture stops by itself after
``seconds`` (at most :data:`MAX_SECONDS`) or when its file reaches :data:`MAX_BYTES`
(``truncated`` is then true) or when the daemon closes the FIFO (the netdev was deleted:
``error`` says so); the daemon side drops records whole when the web view falls behind
(``dropped``). Stopping deletes the filter, reads what it still flushed
(bounded wait) and removes the FIFO and its directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from netstack.errors import ControlError, NetstackError

MAX_RUNNING: Final = 4
MAX_KEPT: Final = 8
MAX_SECONDS: Final = 3600
MAX_BYTES: Final = 64 << 20
DRAIN_TIMEOUT: Final = 2.0

#: ``object-add`` (QMP arguments) and ``object-del`` as the daemon implements them.
AddObject = Callable[[dict[str, object]], Awaitable[None]]
DelObject = Callable[[str], None]
FindObject = Callable[[str], Any]


class CaptureRefused(ControlError):
    """A capture that cannot start (the text is shown to the operator)."""


@dataclass
class Capture:
    """One capture: its filter, FIFO, and the bytes read so far."""

    id: str
    netdev: str
    object_id: str
    started: float
    seconds: int | None
    filename: str
    data: bytearray = field(default_factory=bytearray)
    running: bool = True
    truncated: bool = False
    captured: int = 0
    dropped: int = 0
    error: str | None = None
    finished: float | None = None
    fifo_dir: str = ""
    transport: asyncio.ReadTransport | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None

    def status(self) -> dict[str, Any]:
        end = self.finished if self.finished is not None else time.monotonic()
        out: dict[str, Any] = {
            "id": self.id,
            "netdev": self.netdev,
            "state": "running" if self.running else "stopped",
            "bytes": len(self.data),
            "frames": self.captured,
            "dropped": self.dropped,
            "truncated": self.truncated,
            "elapsed": round(end - self.started, 1),
            "filename": self.filename,
        }
        if self.seconds is not None:
            out["seconds"] = self.seconds
        if self.error is not None:
            out["error"] = self.error
        return out


class _FifoReader(asyncio.Protocol):
    """Reads the FIFO into the capture; a full buffer or the daemon closing the FIFO
    (the netdev, and so the filter, deleted) stops the capture."""

    def __init__(self, capture: Capture, on_full: Callable[[Capture], None]) -> None:
        self.capture = capture
        self.on_full = on_full

    def data_received(self, data: bytes) -> None:
        cap = self.capture
        room = MAX_BYTES - len(cap.data)
        if len(data) > room:
            # Whole records only would need parsing; a cut file still opens in tshark up
            # to its last whole block, and the status says it was truncated.
            cap.data += data[: max(room, 0)]
            if not cap.truncated:
                cap.truncated = True
                self.on_full(cap)
            return
        cap.data += data

    def eof_received(self) -> bool | None:
        self._ended()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()

    def _ended(self) -> None:
        cap = self.capture
        if not cap.closed.is_set():
            cap.closed.set()
            if cap.running:
                self.on_full(cap)


class CaptureManager:
    """The web view's captures, created and deleted through the daemon's object table."""

    def __init__(
        self, add_object: AddObject, del_object: DelObject, find_object: FindObject
    ) -> None:
        self._add = add_object
        self._del = del_object
        self._find = find_object
        self._ids = itertools.count(1)
        self.captures: dict[str, Capture] = {}
        self._tasks: set[asyncio.Task[Capture]] = set()

    def get(self, capture_id: str) -> Capture | None:
        return self.captures.get(capture_id)

    async def start(self, netdev: str, seconds: int | None = None) -> Capture:
        if not netdev or len(netdev) > 128:
            raise CaptureRefused("a netdev id is required")
        if seconds is not None and not 1 <= seconds <= MAX_SECONDS:
            raise CaptureRefused(f"seconds must be between 1 and {MAX_SECONDS}")
        running = [c for c in self.captures.values() if c.running]
        if len(running) >= MAX_RUNNING:
            raise CaptureRefused(f"at most {MAX_RUNNING} captures may run at once")
        number = next(self._ids)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in netdev)
        cap = Capture(
            id=f"c{number}",
            netdev=netdev,
            object_id=f"webview-capture{os.getpid()}-{number}",
            started=time.monotonic(),
            seconds=seconds,
            filename=f"netstack-{safe}-c{number}-{stamp}.pcapng",
        )
        cap.fifo_dir = tempfile.mkdtemp(prefix="netstack-webview-")
        fifo = os.path.join(cap.fifo_dir, "capture.pcapng")
        os.mkfifo(fifo, 0o600)
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # A writer held across object-add: the FIFO must not read as ended before the
        # daemon's filter has opened it.
        keep = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            await self._add(
                {
                    "qom-type": "filter-dump",
                    "id": cap.object_id,
                    "netdev": netdev,
                    "file": fifo,
                    "queue": "all",
                    "format": "pcapng",
                }
            )
        except NetstackError as exc:
            os.close(rfd)
            shutil.rmtree(cap.fifo_dir, ignore_errors=True)
            raise CaptureRefused(_describe(netdev, exc.desc)) from exc
        finally:
            os.close(keep)
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(rfd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: _FifoReader(cap, self._stop_soon), pipe)
        cap.transport = transport
        if seconds is not None:
            cap.timer = loop.call_later(seconds, self._stop_soon, cap)
        self.captures[cap.id] = cap
        self._forget_old()
        return cap

    def _stop_soon(self, cap: Capture) -> None:
        task = asyncio.get_running_loop().create_task(self.stop(cap))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, cap: Capture) -> Capture:
        """Delete the filter, read its last bytes, release the FIFO; idempotent."""
        if not cap.running:
            return cap
        cap.running = False
        if cap.timer is not None:
            cap.timer.cancel()
        nf = self._find(cap.object_id)
        if nf is not None:
            try:
                self._del(cap.object_id)
            except NetstackError as exc:
                cap.error = exc.desc
            cap.captured = int(getattr(nf, "captured", 0))
            cap.dropped = int(getattr(nf, "dropped", 0))
        else:
            cap.error = f"the capture ended: netdev {cap.netdev} was deleted"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cap.closed.wait(), DRAIN_TIMEOUT)
        if cap.transport is not None:
            cap.transport.close()
            cap.transport = None
        shutil.rmtree(cap.fifo_dir, ignore_errors=True)
        cap.finished = time.monotonic()
        return cap

    def refresh(self, cap: Capture) -> None:
        """Update a running capture's frame counts from its filter."""
        if not cap.running:
            return
        nf = self._find(cap.object_id)
        if nf is not None:
            cap.captured = int(getattr(nf, "captured", 0))
            cap.dropped = int(getattr(nf, "dropped", 0))

    def _forget_old(self) -> None:
        done = sorted(
            (c for c in self.captures.values() if not c.running),
            key=lambda c: c.finished or 0.0,
        )
        for cap in done[: max(0, len(done) - MAX_KEPT)]:
            del self.captures[cap.id]

    async def close(self) -> None:
        for cap in list(self.captures.values()):
            await self.stop(cap)
        self.captures.clear()


def _describe(netdev: str, text: str) -> str:
    if text == "Parameter 'netdev' expects a network backend id":
        return f"no such netdev: {netdev}"
    return text
