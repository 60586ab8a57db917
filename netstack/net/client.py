"""Net clients: the endpoints the forwarding core joins, and QEMU's send path.

Follows ``net/net.c`` (``NetClientState``, ``qemu_send_packet``, ``qemu_deliver_packet_iov``,
``qemu_flush_queued_packets``, ``qemu_purge_queued_packets``).

A client has at most one peer and peering is symmetric (``a.peer is b`` iff ``b.peer is
a``). Frames travel in batches (lists of ``bytes``) together with one flag, ``vnet``: when
true every frame of the batch starts with a 12-byte ``virtio_net_hdr_v1`` carrying offload
metadata (checksum and segmentation requests). A receiver that does not set
``accepts_vnet`` never sees such a header: the sender's side completes checksums, segments
super-frames and strips the header first (``netstack.proto.vnet``).

Send path of a batch, in QEMU's order:
  1. the sender's link is down, or it has no peer: the batch is dropped (counted) and
     reported as sent;
  2. the sender's filters (direction tx, head to tail), then the peer's filters
     (direction rx, tail to head); a filter may consume frames;
  3. the peer's incoming queue: delivered now, or queued when the peer cannot receive
     (bounded, see :mod:`netstack.net.queue`);
  4. at delivery: a receiver whose link is down drops the frames (counted); a NIC-class
     receiver applies its rx filter (filtered frames are consumed, not queued); then the
     driver's :meth:`NetClient.receive` takes a prefix of the batch.

Drivers subclass :class:`NetClient` and override ``receive`` (and, where they have them,
``can_receive``, ``link_status_changed``, ``cleanup``). Drivers never mutate a batch they
are given: hubs hand the same list to several receivers.

This module is the reference for the send path; ``netstack/net/_fastnet.c`` runs the same
steps compiled when :mod:`netstack.net.fastcore` installs it (at the first client made),
which is why the core's state is in ``__slots__`` and counters may be that module's int64
``Counters`` (same attributes and ``as_dict``). A change of behaviour here must be made
there too: tests/property/test_fastcore_differential.py compares the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from netstack.net import fastcore
from netstack.net.queue import NetQueue, SentCallback
from netstack.proto import vnet as vnet_hdr

if TYPE_CHECKING:
    from netstack.net.filter import NetFilter
    from netstack.net.rxbatch import RxBatchClassifier
    from netstack.net.rxfilter import RxFilter
    from netstack.qapi import Netdev


class Counters:
    """Per-client frame and byte counters (all monotonic)."""

    __slots__ = (
        "malformed",
        "rx_bytes",
        "rx_dropped",
        "rx_filtered",
        "rx_frames",
        "tx_bytes",
        "tx_dropped",
        "tx_frames",
    )

    def __init__(self) -> None:
        self.tx_frames = 0
        self.tx_bytes = 0
        self.tx_dropped = 0
        self.rx_frames = 0
        self.rx_bytes = 0
        self.rx_dropped = 0
        self.rx_filtered = 0
        self.malformed = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by their QMP names (``NetClientStatistics``), in that order."""
        return {
            "malformed": self.malformed,
            "rx-bytes": self.rx_bytes,
            "rx-dropped": self.rx_dropped,
            "rx-filtered": self.rx_filtered,
            "rx-frames": self.rx_frames,
            "tx-bytes": self.tx_bytes,
            "tx-dropped": self.tx_dropped,
            "tx-frames": self.tx_frames,
        }


class NetClient:
    """One endpoint of the forwarding core (QEMU's ``NetClientState``).

    ``type`` is the ``NetClientDriver`` value (``"hubport"``, ``"socket"``, ``"nic"``...).
    """

    # The core's own state is in slots (the compiled path reads them at fixed offsets);
    # ``__dict__`` keeps drivers free to add attributes of their own.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_rx_batch",
        "_rx_filter",
        "deleted",
        "filters",
        "host_hdr_len",
        "incoming",
        "info_str",
        "is_netdev",
        "link_down",
        "model",
        "name",
        "netdev_spec",
        "peer",
        "queue_index",
        "receive_disabled",
        "stats",
    )

    type: ClassVar[str] = "none"
    #: True when :meth:`receive` takes batches whose frames carry a virtio-net header.
    accepts_vnet: ClassVar[bool] = False
    #: False for pass-through clients (hub ports) whose bytes the endpoints already count:
    #: summing frame lengths is the core's only per-frame work on a hop.
    count_bytes: ClassVar[bool] = True

    def __init__(self, name: str, *, model: str | None = None, queue_index: int = 0) -> None:
        self.name = name
        self.model = model if model is not None else self.type
        self.queue_index = queue_index
        self.peer: NetClient | None = None
        self.link_down = False
        self.receive_disabled = False
        self.is_netdev = True
        self.info_str = ""
        self.filters: list[NetFilter] = []
        self._rx_filter: RxFilter | None = None
        self._rx_batch: RxBatchClassifier | None = None
        #: Bytes of host vnet header in front of frames handed to the rx filter.
        self.host_hdr_len = 0
        self.stats: Counters = fastcore.new_counters()
        self.incoming = NetQueue(self)
        self.deleted = False
        #: The options the netdev was created with (None for NICs and internal clients).
        self.netdev_spec: Netdev | None = None

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} {self.name!r} type={self.type}>"

    # -- identity ----------------------------------------------------------------------

    @property
    def rx_filter(self) -> RxFilter | None:
        """The virtio-net rx filter of a NIC-class client (None for plain netdevs)."""
        return self._rx_filter

    @rx_filter.setter
    def rx_filter(self, rx: RxFilter | None) -> None:
        from netstack.net.rxbatch import RxBatchClassifier

        self._rx_filter = rx
        self._rx_batch = RxBatchClassifier(rx) if rx is not None else None

    @property
    def is_nic(self) -> bool:
        """True for guest NIC devices (QEMU's ``NET_CLIENT_DRIVER_NIC``)."""
        return self.type == "nic"

    @property
    def hub_id(self) -> int:
        """The id of the hub this client is a port of (QEMU's ``net_hub_id_for_client``
        asks it of a client's peer); -1 for a client that is no hub port."""
        return -1

    def info_line(self) -> str:
        """The client line of ``info network``."""
        return f"{self.name}: index={self.queue_index},type={self.type},{self.info_str}"

    # -- driver hooks ------------------------------------------------------------------

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        """Take a prefix of ``frames``; return how many were taken.

        Returning fewer than ``len(frames)`` queues the rest and disables reception until
        the driver calls :meth:`flush_queued`. The default sinks everything.
        """
        return len(frames)

    def can_receive(self) -> bool:
        """Whether :meth:`receive` could take a frame now."""
        return True

    def link_status_changed(self) -> None:
        """Called after ``link_down`` changed through ``set_link``."""

    def cleanup(self) -> None:
        """Release the driver's resources (fds, timers, host objects)."""

    # -- peering -----------------------------------------------------------------------

    def connect(self, other: NetClient) -> None:
        """Make ``self`` and ``other`` peers; both must be unpeered."""
        if self.peer is not None or other.peer is not None:
            raise ValueError(f"{self.name} or {other.name} already has a peer")
        self.peer = other
        other.peer = self

    # -- sending -----------------------------------------------------------------------

    def can_send(self) -> bool:
        """QEMU's ``qemu_can_send_packet``: whether the peer would take a frame now."""
        peer = self.peer
        if peer is None:
            return True
        if peer.receive_disabled:
            return False
        return peer.can_receive_from(self)

    def send(
        self, frames: Sequence[bytes], vnet: bool = False, sent_cb: SentCallback | None = None
    ) -> int:
        """Send a batch to the peer; returns the number of frames disposed of now.

        Frames the peer could not take are queued at the peer; ``sent_cb`` (if given) is
        called once they are delivered or purged, and the caller should stop producing
        until then.
        """
        count = len(frames)
        stats = self.stats
        peer = self.peer
        if self.link_down or peer is None:
            stats.tx_dropped += count
            return count
        if vnet and not peer.accepts_vnet:
            frames = vnet_hdr.to_plain(frames)
            vnet = False
            count = len(frames)
        stats.tx_frames += count
        if self.count_bytes:
            stats.tx_bytes += sum(map(len, frames))
        if self.filters or peer.filters:
            from netstack.net.filter import run_send_filters

            frames = run_send_filters(self, peer, frames, vnet)
            if not frames:
                return count
            return count - len(frames) + peer.incoming.send(self, frames, sent_cb, vnet)
        return peer.incoming.send(self, frames, sent_cb, vnet)

    def send_frame(self, frame: bytes) -> int:
        """Send one frame (convenience for control-protocol replies)."""
        return self.send((frame,))

    # -- receiving (called by the queue) -----------------------------------------------

    def can_receive_from(self, sender: NetClient) -> bool:
        return self.can_receive()

    def deliver(self, sender: NetClient, frames: Sequence[bytes], vnet: bool) -> Sequence[bytes]:
        """QEMU's ``qemu_deliver_packet_iov``: returns the frames not taken."""
        stats = self.stats
        if self.link_down or self.deleted:
            stats.rx_dropped += len(frames)
            return ()
        if self.receive_disabled:
            return frames
        rx_batch = self._rx_batch
        if rx_batch is not None:
            hdr_len = vnet_hdr.HDR_LEN if vnet else self.host_hdr_len
            passed = rx_batch.accepted(frames, hdr_len)
            if len(passed) != len(frames):
                stats.rx_filtered += len(frames) - len(passed)
                frames = passed
                if not frames:
                    return ()
        taken = self.receive(frames, vnet)
        if taken >= len(frames):
            stats.rx_frames += len(frames)
            if self.count_bytes:
                stats.rx_bytes += sum(map(len, frames))
            return ()
        if taken > 0:
            stats.rx_frames += taken
            if self.count_bytes:
                stats.rx_bytes += sum(map(len, frames[:taken]))
        self.receive_disabled = True
        return frames[taken:]

    def flush_queued(self) -> None:
        """QEMU's ``qemu_flush_queued_packets``: the client can receive again."""
        self.receive_disabled = False
        peer = self.peer
        if peer is not None:
            peer.flush_siblings()
        self.incoming.flush()

    def flush_siblings(self) -> None:
        """Hook for hub ports: flush the queues of the other ports of the hub."""

    def purge_queued(self) -> int:
        """QEMU's ``qemu_purge_queued_packets``: drop what this client queued at its peer."""
        peer = self.peer
        return peer.incoming.purge(self) if peer is not None else 0
