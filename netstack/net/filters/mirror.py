"""filter-mirror and filter-redirector: frames to and from chardevs (``net/filter-mirror.c``).

filter-mirror copies every frame it sees to the chardev ``outdev`` and lets it continue.
filter-redirector diverts frames to ``outdev`` (they are consumed; with no ``outdev`` they
pass) and injects frames read from ``indev`` into the netdev's filter chain, after
itself, in its direction: ``queue=tx`` as if the netdev had sent them (they go on to the
netdev's peer), ``queue=rx`` as if the peer had sent them (they reach the netdev), and
``queue=all`` both ways, as QEMU does.

Stream format: :mod:`.framing` (4-byte BE length, plus a 4-byte BE vnet header length when
``vnet_hdr_support=on``). Setup checks, texts and classes are QEMU's: mirror ``outdev``
missing -> DeviceNotFound ``filter-mirror parameter 'outdev' cannot be empty``, unknown ->
DeviceNotFound ``Device 'X' not found``; redirector with neither -> ``filter redirector needs
'indev' or 'outdev' at least one property set``, same id -> ``'indev' and 'outdev' could not
be same for filter redirector``, unknown -> DeviceNotFound ``IN Device 'X' not found`` /
``OUT Device 'X' not found`` (``indev`` first); a chardev with a front end -> ``Device 'X' is
in use``.

Deviations: inside the daemon a batch carries a virtio-net header only when both ends
negotiated offloads, so with ``vnet_hdr_support=off`` such frames are turned into plain
wire frames (checksums completed, super-frames segmented) instead of being sent with the
header bytes QEMU would leave in; with ``vnet_hdr_support=on`` the header length field
says per frame whether a header (12 bytes) is present. Writes never block (see
:mod:`.chardev_link`). After an oversized frame the input connection is closed rather than
left unread, and a later connection to ``indev`` is read again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from netstack.errors import DeviceNotFound, GenericError
from netstack.net.filter import Direction, NetFilter, QueueSel
from netstack.net.filters.chardev_link import ChardevLink
from netstack.net.filters.framing import FrameReader, OversizedFrame, frame_header
from netstack.proto import vnet as vnet_hdr

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.net.filters.host import FilterHost


def _bool(value: bool) -> str:
    return "true" if value else "false"


class _ChardevFilter(NetFilter):
    """Common part: framing frames onto an output link."""

    def __init__(
        self,
        filter_id: str,
        netdev: NetClient,
        *,
        vnet_hdr_support: bool = False,
        queue: QueueSel = "all",
        enabled: bool = True,
        position: str = "tail",
        insert: str = "behind",
    ) -> None:
        super().__init__(filter_id, netdev, queue, enabled, position, insert)
        self.vnet_hdr_support = vnet_hdr_support
        self.out_link: ChardevLink | None = None
        self.in_link: ChardevLink | None = None
        #: Frames a slow ``outdev`` reader missed (see :mod:`.chardev_link`).
        self.dropped = 0
        self.log: logging.Logger | None = None

    def _open(self, host: FilterHost, chardev: Any, reader: bool) -> ChardevLink:
        link = ChardevLink(chardev, self._on_input if reader else None)
        link.open()
        self.log = host.log
        return link

    def _on_input(self, data: bytes) -> bool:
        return False

    def send_frames(self, frames: Sequence[bytes], vnet: bool) -> int:
        """Write the non-empty ``frames`` to ``outdev``; returns how many were framed."""
        link = self.out_link
        if link is None:
            return 0
        if vnet and not self.vnet_hdr_support:
            frames = vnet_hdr.to_plain(frames)
            vnet = False
        hdr_len: int | None = None
        if self.vnet_hdr_support:
            hdr_len = vnet_hdr.HDR_LEN if vnet else 0
        parts: list[bytes] = []
        for frame in frames:
            if frame:
                parts.append(frame_header(len(frame), hdr_len))
                parts.append(frame)
        count = len(parts) // 2
        if not link.write(parts):
            self.dropped += count
        return count

    def cleanup(self) -> None:
        for link in (self.in_link, self.out_link):
            if link is not None:
                link.close()
        self.in_link = self.out_link = None


class FilterMirror(_ChardevFilter):
    """Copy each frame to ``outdev``; the frame continues."""

    qom_type = "filter-mirror"

    def __init__(
        self,
        filter_id: str,
        netdev: NetClient,
        *,
        outdev: str | None,
        vnet_hdr_support: bool = False,
        queue: QueueSel = "all",
        enabled: bool = True,
        position: str = "tail",
        insert: str = "behind",
    ) -> None:
        super().__init__(
            filter_id,
            netdev,
            vnet_hdr_support=vnet_hdr_support,
            queue=queue,
            enabled=enabled,
            position=position,
            insert=insert,
        )
        self.outdev = outdev

    def setup(self, host: FilterHost) -> None:
        if self.outdev is None:
            raise DeviceNotFound("filter-mirror parameter 'outdev' cannot be empty")
        chardev = host.chardev(self.outdev)
        if chardev is None:
            raise DeviceNotFound(f"Device '{self.outdev}' not found")
        self.out_link = self._open(host, chardev, reader=False)

    def receive(
        self, sender: NetClient, direction: Direction, frames: Sequence[bytes], vnet: bool
    ) -> Sequence[bytes]:
        self.send_frames(frames, vnet)
        return frames

    def properties(self) -> list[tuple[str, str]]:
        return [
            ("vnet_hdr_support", _bool(self.vnet_hdr_support)),
            ("outdev", self.outdev or ""),
            *super().properties(),
        ]


class FilterRedirector(_ChardevFilter):
    """Divert frames to ``outdev``; inject frames read from ``indev``."""

    qom_type = "filter-redirector"

    def __init__(
        self,
        filter_id: str,
        netdev: NetClient,
        *,
        indev: str | None = None,
        outdev: str | None = None,
        vnet_hdr_support: bool = False,
        queue: QueueSel = "all",
        enabled: bool = True,
        position: str = "tail",
        insert: str = "behind",
    ) -> None:
        super().__init__(
            filter_id,
            netdev,
            vnet_hdr_support=vnet_hdr_support,
            queue=queue,
            enabled=enabled,
            position=position,
            insert=insert,
        )
        self.indev = indev
        self.outdev = outdev
        self.reader = FrameReader(vnet_hdr_support)
        self.injected = 0

    def setup(self, host: FilterHost) -> None:
        if self.indev is None and self.outdev is None:
            raise GenericError(
                "filter redirector needs 'indev' or 'outdev' at least one property set"
            )
        if self.indev is not None and self.indev == self.outdev:
            raise GenericError("'indev' and 'outdev' could not be same for filter redirector")
        if self.indev is not None:
            chardev = host.chardev(self.indev)
            if chardev is None:
                raise DeviceNotFound(f"IN Device '{self.indev}' not found")
            self.in_link = self._open(host, chardev, reader=True)
        if self.outdev is not None:
            chardev = host.chardev(self.outdev)
            if chardev is None:
                raise DeviceNotFound(f"OUT Device '{self.outdev}' not found")
            self.out_link = self._open(host, chardev, reader=False)

    def receive(
        self, sender: NetClient, direction: Direction, frames: Sequence[bytes], vnet: bool
    ) -> Sequence[bytes]:
        if self.out_link is None:
            return frames
        self.send_frames(frames, vnet)
        # QEMU's receive returns the frame's size: an empty frame is "not consumed".
        return [f for f in frames if not f]

    # -- input ---------------------------------------------------------------------------

    def _on_input(self, data: bytes) -> bool:
        try:
            items = self.reader.feed(data)
        except OversizedFrame as exc:
            if self.log is not None:
                self.log.error("%s", exc)
            self.reader = FrameReader(self.vnet_hdr_support)
            return False
        start = 0
        while start < len(items):
            hdr_len = items[start][0]
            end = start + 1
            while end < len(items) and items[end][0] == hdr_len:
                end += 1
            self.inject([frame for _, frame in items[start:end]], hdr_len)
            start = end
        return True

    def inject(self, frames: list[bytes], vnet_hdr_len: int = 0) -> None:
        """Pass frames read from ``indev`` along the chain after this filter."""
        vnet = vnet_hdr_len == vnet_hdr.HDR_LEN
        if vnet_hdr_len and not vnet:
            frames = [f[vnet_hdr_len:] for f in frames]
        self.injected += len(frames)
        if self.queue in ("all", "tx"):
            self._inject_from(self.netdev, "tx", frames, vnet)
        if self.queue in ("all", "rx"):
            peer = self.netdev.peer
            if peer is not None:
                self._inject_from(peer, "rx", frames, vnet)

    def _inject_from(
        self, sender: NetClient, direction: Direction, frames: Sequence[bytes], vnet: bool
    ) -> None:
        receiver = sender.peer
        if receiver is None or sender.deleted:
            return
        if vnet and not receiver.accepts_vnet:
            frames = vnet_hdr.to_plain(frames)
            vnet = False
        if frames:
            self.pass_to_next(sender, direction, frames, vnet)

    def properties(self) -> list[tuple[str, str]]:
        return [
            ("vnet_hdr_support", _bool(self.vnet_hdr_support)),
            ("indev", self.indev or ""),
            ("outdev", self.outdev or ""),
            *super().properties(),
        ]

    def cleanup(self) -> None:
        super().cleanup()
        self.reader = FrameReader(self.vnet_hdr_support)
