"""Net filters: the per-netdev chains frames pass on their way (QEMU's ``net/filter.c``).

A filter belongs to one netdev. Direction ``tx`` means frames the netdev sends, ``rx``
frames sent to it (by its peer); a filter's ``queue`` property picks ``all``, ``rx`` or
``tx``. Frames sent by a client pass the sender's chain head to tail, then the receiver's
chain tail to head. A filter returns the frames it lets through (a filter that keeps a
frame, such as filter-buffer, may release it later with :meth:`NetFilter.pass_to_next`).
Disabled filters (``status=off``) are skipped.

Concrete filters (dump, mirror, redirector, buffer) live in their own modules and
subclass :class:`NetFilter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from netstack.net.client import NetClient

Direction = Literal["rx", "tx"]
QueueSel = Literal["all", "rx", "tx"]


class NetFilter:
    """Base of all filters: passes every frame through unchanged."""

    qom_type: ClassVar[str] = "netfilter"

    def __init__(
        self,
        filter_id: str,
        netdev: NetClient,
        queue: QueueSel = "all",
        enabled: bool = True,
        position: str = "tail",
        insert: str = "behind",
    ) -> None:
        self.id = filter_id
        self.netdev = netdev
        self.queue: QueueSel = queue
        self.enabled = enabled
        self.position = position
        self.insert = insert
        #: The ``ObjectSpec`` this filter was created from (what ``-writeconfig`` writes).
        self.spec: object = None

    def applies(self, direction: Direction) -> bool:
        return self.enabled and (self.queue == "all" or self.queue == direction)

    def receive(
        self, sender: NetClient, direction: Direction, frames: Sequence[bytes], vnet: bool
    ) -> Sequence[bytes]:
        """Return the frames that continue along the chain."""
        return frames

    def properties(self) -> list[tuple[str, str]]:
        """QOM properties for ``info network`` (``type`` excluded), in QEMU's order."""
        return [
            ("position", self.position),
            ("status", "on" if self.enabled else "off"),
            ("insert", self.insert),
            ("netdev", self.netdev.name),
            ("queue", self.queue),
        ]

    def info_line(self) -> str:
        props = ",".join(f"{k}={v}" for k, v in self.properties())
        return f"  - {self.id}: type={self.qom_type},{props}"

    def cleanup(self) -> None:
        """Release resources (files, chardevs, timers)."""

    def pass_to_next(
        self, sender: NetClient, direction: Direction, frames: Sequence[bytes], vnet: bool
    ) -> int:
        """Continue frames held by this filter along the rest of its chain, then deliver.

        Mirrors ``qemu_netfilter_pass_to_next``: the frames visit the filters after this
        one in the packet's direction on this netdev, then go to the sender's peer.
        """
        chain = self.netdev.filters
        try:
            at = chain.index(self)
        except ValueError:
            return 0
        rest = chain[at + 1 :] if direction == "tx" else list(reversed(chain[:at]))
        for nf in rest:
            if nf.applies(direction):
                frames = nf.receive(sender, direction, frames, vnet)
                if not frames:
                    return 0
        peer = sender.peer
        if peer is None or sender.deleted:
            return 0
        return peer.incoming.send(sender, frames, None, vnet)


def run_send_filters(
    sender: NetClient, receiver: NetClient, frames: Sequence[bytes], vnet: bool
) -> Sequence[bytes]:
    """Run the sender's tx chain then the receiver's rx chain; return what passes."""
    for nf in sender.filters:
        if nf.applies("tx"):
            frames = nf.receive(sender, "tx", frames, vnet)
            if not frames:
                return ()
    for nf in reversed(receiver.filters):
        if nf.applies("rx"):
            frames = nf.receive(sender, "rx", frames, vnet)
            if not frames:
                return ()
    return frames
