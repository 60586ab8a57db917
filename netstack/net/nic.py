"""NIC-class clients: guest-facing ports whose received frames pass an rx filter.

:class:`NicClient` plays QEMU's ``NET_CLIENT_DRIVER_NIC`` (a guest's virtio-net device) for
in-process use: tests, tools and benches attach one to a netdev to stand for a guest. It
has a MAC, an :class:`~netstack.net.rxfilter.RxFilter` with virtio-net semantics applied to
every frame delivered to it, and a sink that records (or counts) what it receives.
Guest-facing drivers (vhost-user) are NIC-class the same way: they carry an ``rx_filter``.

MAC strings follow QEMU: ``aa:bb:cc:dd:ee:ff`` or ``aa-bb-...``; a multicast MAC is refused
(``NIC cannot have multicast MAC address``). Unset MACs take ``52:54:00:12:34:XX`` with XX
the first free value from 0x56 upward (:class:`MacAllocator`).
"""

from __future__ import annotations

from collections.abc import Sequence

from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.net.rxfilter import RxFilter


def parse_mac(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff`` / ``aa-bb-cc-dd-ee-ff``; raises GenericError."""
    parts = text.replace("-", ":").split(":")
    try:
        if len(parts) != 6 or any(not 1 <= len(p) <= 2 for p in parts):
            raise ValueError(text)
        mac = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise GenericError(f"Property 'mac' doesn't take value '{text}'") from None
    if mac[0] & 1:
        raise GenericError("NIC cannot have multicast MAC address")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


class MacAllocator:
    """QEMU's default MACs: 52:54:00:12:34:56 upward, skipping ones in use."""

    def __init__(self) -> None:
        self._used: set[int] = set()

    def allocate(self) -> bytes:
        for last in range(0x56, 0x100):
            if last not in self._used:
                self._used.add(last)
                return bytes((0x52, 0x54, 0x00, 0x12, 0x34, last))
        raise GenericError("no free default MAC address")

    def release(self, mac: bytes) -> None:
        if mac[:5] == bytes((0x52, 0x54, 0x00, 0x12, 0x34)):
            self._used.discard(mac[5])


class NicClient(NetClient):
    """A guest NIC stand-in: rx filter, MAC, and a recording sink.

    ``capacity`` bounds how many frames the sink takes before it reports itself full
    (``receive`` returns a short count), so tests can exercise queueing; ``drain``
    empties it and flushes the queue, as a guest adding rx buffers would.
    """

    type = "nic"

    def __init__(
        self,
        name: str,
        mac: bytes,
        *,
        model: str = "virtio-net-pci",
        capacity: int | None = None,
        record: bool = True,
    ) -> None:
        super().__init__(name, model=model)
        self.mac = mac
        self.rx_filter = RxFilter(mac)
        self.capacity = capacity
        self.record = record
        self.received: list[bytes] = []
        self.received_count = 0
        self.link_changes = 0
        self.info_str = f"model={model},macaddr={format_mac(mac)}"

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        take = len(frames)
        if self.capacity is not None:
            take = max(0, min(take, self.capacity - self.received_count))
        if self.record:
            self.received.extend(frames[:take])
        self.received_count += take
        return take

    def can_receive(self) -> bool:
        return self.capacity is None or self.received_count < self.capacity

    def link_status_changed(self) -> None:
        self.link_changes += 1

    def drain(self) -> list[bytes]:
        """Hand over what was received and make room again (flushes the queue)."""
        got, self.received = self.received, []
        self.received_count = 0
        self.flush_queued()
        return got
