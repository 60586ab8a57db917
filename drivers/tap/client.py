"""One queue of a tap netdev: the fd adapter between the kernel's tap and the net core.

Follows QEMU's ``TAPState`` (``net/tap.c``): reading is ``tap_send`` (at most
:data:`RX_BATCH` frames per wake-up, QEMU's 50, and fewer while other ports on the loop
have work, see :mod:`netstack.net.fairshare`; short frames padded to 60 bytes as QEMU
pads for non-virtio peers; reading pauses while the peer's queue holds our frames and
resumes from the completion callback), writing is ``tap_receive_iov`` (one ``write`` per
frame: a tap takes exactly one frame per write; ``EAGAIN`` stops the batch, the rest stays
queued in the core, and the fd's writer callback flushes it).

Header formats. ``vnet_hdr_len`` is what the kernel puts in front of every frame on this
fd: 0 (no ``IFF_VNET_HDR``), 12 (``virtio_net_hdr_v1``, the core's own format, set with
``TUNSETVNETHDRSZ``) or 10 (legacy ``virtio_net_hdr``, only where the kernel refuses 12).
With 12, frames cross with no copy in either direction: they are sent up with
``vnet=True`` and frames given with ``vnet=True`` are written as they are. A plain frame
written to a header-carrying tap gets a zero header (two iovecs, no copy); a 10-byte
header is widened to 12 on read (one copy) and narrowed by writing around the 2 extra
bytes (no copy). A tap without headers never sees ``vnet=True``
(``accepts_vnet`` is False, so the core converts with :func:`netstack.proto.vnet.to_plain`).

Offloads (``TUNSETOFFLOAD``). They decide whether the kernel hands us checksum-partial
frames and TSO/USO super-frames (up to 64 KiB each). Policy ``auto`` (the default) turns
on what the clients our frames reach can take through virtio-net headers (followed
through hubs; a receiver may declare a narrower set in a ``vnet_offloads`` attribute):
nothing when none takes headers, since then the kernel's segmentation is far cheaper
than cutting super-frames in Python; otherwise super-frames cross as one frame to every
receiver that takes them, and only the others get them cut in software by the core.
``on`` and ``off`` force the choice (tests, benchmarks). The set is re-evaluated on the
first read after the peer changes and at most every :data:`OFFLOAD_RECHECK` seconds;
frames already queued in the kernel keep their old form, which the core handles either
way.

The per-frame system calls are :mod:`drivers.tap.frameio` (Python, or its compiled twin
``drivers/tap/_fasttap.c``). In Python, reads use ``os.read`` into a fresh ``bytes`` per
frame rather than ``readv`` into a preallocated arena: a frame must become an owned
``bytes`` anyway (it may be queued), and measured here the arena plus copy costs ~5x more
per 64 KiB frame (61 us against 11 us) and the same for 1.5 KiB frames. The compiled
loop reads into one buffer of its own and copies out what the kernel returned.

Multiqueue: every queue is one :class:`TapClient` with its own fd. Beyond QEMU: a queue
without a peer of its own (a multiqueue tap behind a hubport, which peers with queue 0
only) sends through queue 0's peer instead of dropping what the kernel steered to it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from drivers.tap import frameio, tun
from netstack.net import fairshare
from netstack.net.client import NetClient
from netstack.net.fdio import FdWatch, PeerFlow
from netstack.net.hub import HubPort
from netstack.proto import vnet as vnet_hdr
from netstack.ratelog import RateLog

if TYPE_CHECKING:
    import asyncio
    import logging

#: Frames read per wake-up of the fd while no other port has work (QEMU's ``tap_send``
#: limit); :data:`netstack.net.fairshare.QUANTUM` while others do.
RX_BATCH = fairshare.FULL
#: Read size: QEMU's NET_BUFSIZE plus room for the header.
READ_SIZE = 69632 + vnet_hdr.HDR_LEN
ETH_ZLEN = 60
#: Seconds between two re-evaluations of the offload set.
OFFLOAD_RECHECK = 1.0
#: Seconds reading pauses after an unexpected read error (no busy loop on a dead fd).
READ_ERROR_BACKOFF = 1.0
LOG_INTERVAL = 30.0
_MAX_HUB_DEPTH = 8

_ZERO_HDR = bytes(vnet_hdr.HDR_LEN)


def receiver_offloads(nc: NetClient) -> int:
    """The TUN_F_* set a receiving client can be handed (via virtio-net headers)."""
    declared = getattr(nc, "vnet_offloads", None)
    if isinstance(declared, int):
        return declared
    return tun.TUN_F_ALL if nc.accepts_vnet else 0


def downstream_offloads(peer: NetClient | None) -> int:
    """What the clients reached through ``peer`` can take (hubs followed): the union over
    the receivers, 0 when none takes headers. Receivers that take less are served by the
    core's conversion (:func:`netstack.proto.vnet.to_plain`) or their own."""
    mask = 0
    stack: list[tuple[NetClient, int]] = [(peer, 0)] if peer is not None else []
    seen: set[int] = set()
    while stack:
        nc, depth = stack.pop()
        if id(nc) in seen:
            continue
        seen.add(id(nc))
        if isinstance(nc, HubPort):
            if depth < _MAX_HUB_DEPTH:
                for port in nc.hub.ports:
                    if port is not nc and port.peer is not None:
                        stack.append((port.peer, depth + 1))
            continue
        mask |= receiver_offloads(nc)
    return normalize_offloads(mask)


def normalize_offloads(mask: int) -> int:
    """Drop offloads the kernel would refuse: TSO/USO need CSUM, ECN needs TSO."""
    if not mask & tun.TUN_F_CSUM:
        return 0
    if not mask & (tun.TUN_F_TSO4 | tun.TUN_F_TSO6):
        mask &= ~tun.TUN_F_TSO_ECN
    return mask


class TapClient(NetClient):
    """One queue of a tap netdev (QEMU's ``TAPState``); a tap without vnet headers."""

    type = "tap"
    #: TUN_F_* offloads a frame written to this tap may request (with headers: all).
    vnet_offloads = 0

    def __init__(
        self,
        name: str,
        fd: int,
        loop: asyncio.AbstractEventLoop,
        log: logging.Logger,
        *,
        model: str = "tap",
        queue_index: int = 0,
        vnet_hdr_len: int = 0,
        offload_caps: int = 0,
        ifname: str = "",
        primary: TapClient | None = None,
    ) -> None:
        super().__init__(name, model=model, queue_index=queue_index)
        self.fd = fd
        self.ifname = ifname
        self.vnet_hdr_len = vnet_hdr_len
        #: Offloads this tap's kernel accepts, and those set now.
        self.offload_caps = offload_caps
        self.offloads = 0
        #: ``auto``, ``on`` or ``off`` (see the module docstring).
        self.offload_policy = "auto"
        #: Queue 0 of the netdev when this is another queue.
        self.primary = primary
        #: Called with the fd at cleanup, before it is closed (downscript, netns fd).
        self.on_close: list[Callable[[int], None]] = []
        # driver counters
        self.frames_read = 0
        self.gso_read = 0
        self.frames_written = 0
        self.write_errors = 0
        self.write_eagain = 0
        self.read_errors = 0
        self._loop = loop
        self._log = log
        self._min_len = ETH_ZLEN + vnet_hdr_len
        self._hdr_bytes = _ZERO_HDR[:vnet_hdr_len]
        self._closed = False
        self._watch = FdWatch(loop, fd, self._on_readable, self.flush_queued)
        self._flow = PeerFlow(self._watch.hold)
        self._offload_peer: NetClient | None = None
        self._offload_due = 0.0
        self._ratelog = RateLog(log, interval=LOG_INTERVAL, clock=loop.time)
        self._share = fairshare.for_loop(loop)
        self._share_port = self._share.port()

    def start(self) -> None:
        """Begin reading the fd."""
        self._watch.set_reading(True)

    # -- offloads --------------------------------------------------------------------------

    def wanted_offloads(self) -> int:
        """The offload set the policy asks for now (a subset of :attr:`offload_caps`)."""
        if not self.vnet_hdr_len or self.offload_policy == "off":
            return 0
        if self.offload_policy == "on":
            return normalize_offloads(self.offload_caps)
        return normalize_offloads(self.offload_caps & downstream_offloads(self.peer))

    def update_offloads(self) -> None:
        """Apply :meth:`wanted_offloads` with ``TUNSETOFFLOAD`` if it changed."""
        self._offload_peer = self.peer
        self._offload_due = self._loop.time() + OFFLOAD_RECHECK
        want = self.wanted_offloads()
        if want != self.offloads and tun.set_offload(self.fd, want):
            self.offloads = want

    # -- tap -> peer -----------------------------------------------------------------------

    def _on_readable(self) -> None:
        share, port, now = self._share, self._share_port, self._loop.time()
        budget = share.budget(port, now)
        frames, err = frameio.impl().read_batch(self.fd, budget, READ_SIZE, self._min_len)
        if err:
            self._read_failed(frameio.error(err))
        if frames:
            share.active(port, now)
            self._send_up(frames)

    def _send_up(self, frames: list[bytes]) -> None:
        self.frames_read += len(frames)
        hdr = self.vnet_hdr_len
        if hdr:
            if hdr != vnet_hdr.HDR_LEN:
                frames = [f[:hdr] + b"\0\0" + f[hdr:] for f in frames]
            gso = 0
            for i, f in enumerate(frames):
                if f[1]:
                    gso += 1
                if f[10] or f[11]:
                    # num_buffers: the kernel may skip these 2 bytes without writing
                    # them, so they hold whatever our fresh buffer held; never pass that on
                    frames[i] = f[:10] + b"\0\0" + f[12:]
            self.gso_read += gso
        sender: TapClient = self
        primary = self.primary
        if self.peer is None and primary is not None and primary.peer is not None:
            sender = primary
        if sender.peer is not sender._offload_peer or self._loop.time() >= sender._offload_due:
            sender.update_offloads()
        self._flow.send(sender, frames, bool(hdr))

    def _read_failed(self, exc: OSError) -> None:
        self.read_errors += 1
        self._ratelog.warning("read", "tap %s: read failed: %s", self.name, exc)
        if self._watch.reading:
            self._watch.set_reading(False)
            self._loop.call_later(READ_ERROR_BACKOFF, self._watch.set_reading, True)

    # -- peer -> tap -----------------------------------------------------------------------

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        count = len(frames)
        if self._closed:
            return count
        hdr = self.vnet_hdr_len
        if vnet and not hdr:
            # Not reached through the core (accepts_vnet is False); converted frames
            # cannot be mapped back to a prefix, so what cannot be written is dropped.
            plain = vnet_hdr.to_plain(frames)
            written = self._write(plain, False)
            self.stats.tx_dropped += len(plain) - written
            return count
        return self._write(frames, vnet)

    def _write(self, frames: Sequence[bytes], vnet: bool) -> int:
        """Write a prefix of ``frames``; returns its length (short only on EAGAIN)."""
        hdr = self.vnet_hdr_len
        if vnet == bool(hdr) and hdr in (0, vnet_hdr.HDR_LEN):
            mode = frameio.AS_IS
        elif not vnet:
            mode = frameio.PREFIXED
        else:
            mode = frameio.NARROWED
        write_frames = frameio.impl().write_frames
        n = len(frames)
        i = 0
        while i < n:
            i, err = write_frames(self.fd, frames, i, mode, self._hdr_bytes, hdr)
            if not err:
                break
            if err in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.write_eagain += 1
                self.frames_written += i
                self._watch.wait_writable()
                return i
            self._write_failed(frameio.error(err))
            self.frames_written -= 1  # counted with the batch below, not written
            i += 1
        self.frames_written += n
        return n

    def _write_failed(self, exc: OSError) -> None:
        self.write_errors += 1
        self.stats.tx_dropped += 1
        if exc.errno != errno.EIO:  # EIO: the interface is down; expected, not news
            self._ratelog.warning("write", "tap %s: write failed: %s", self.name, exc)

    # -- life ------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Driver counters (``query-netdev`` style names)."""
        return {
            "frames-read": self.frames_read,
            "gso-frames-read": self.gso_read,
            "frames-written": self.frames_written,
            "write-errors": self.write_errors,
            "write-eagain": self.write_eagain,
            "read-errors": self.read_errors,
            "vnet-hdr-len": self.vnet_hdr_len,
            "offloads": self.offloads,
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def cleanup(self) -> None:
        if self._closed:
            return
        self._watch.close()
        self._closed = True
        try:
            for hook in self.on_close:
                try:
                    hook(self.fd)
                except Exception:
                    self._log.exception("tap %s: cleanup hook failed", self.name)
        finally:
            os.close(self.fd)


class VnetTapClient(TapClient):
    """A tap whose fd carries virtio-net headers: takes ``vnet=True`` batches as they are."""

    accepts_vnet = True
    vnet_offloads = tun.TUN_F_ALL


def make_client(
    name: str,
    fd: int,
    loop: asyncio.AbstractEventLoop,
    log: logging.Logger,
    *,
    vnet_hdr_len: int,
    model: str = "tap",
    queue_index: int = 0,
    offload_caps: int = 0,
    ifname: str = "",
    primary: TapClient | None = None,
) -> TapClient:
    """A :class:`VnetTapClient` when the fd carries headers, else a :class:`TapClient`."""
    cls = VnetTapClient if vnet_hdr_len else TapClient
    return cls(
        name,
        fd,
        loop,
        log,
        model=model,
        queue_index=queue_index,
        vnet_hdr_len=vnet_hdr_len,
        offload_caps=offload_caps,
        ifname=ifname,
        primary=primary,
    )
