"""Test support: in-process net clients that record what they receive."""

from __future__ import annotations

from collections.abc import Sequence

from netstack.net.client import NetClient


class Recorder(NetClient):
    """A netdev-like client that records frames, optionally refusing past a capacity."""

    type = "socket"

    def __init__(self, name: str, capacity: int | None = None, accepts_vnet: bool = False):
        super().__init__(name)
        self.capacity = capacity
        self.got: list[bytes] = []
        self.vnet_flags: list[bool] = []
        self.link_changes = 0
        self.cleaned = False
        self._accepts_vnet = accepts_vnet

    @property
    def accepts_vnet(self) -> bool:  # type: ignore[override]
        return self._accepts_vnet

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        take = len(frames)
        if self.capacity is not None:
            take = max(0, min(take, self.capacity - len(self.got)))
        self.got.extend(frames[:take])
        self.vnet_flags.extend([vnet] * take)
        return take

    def can_receive(self) -> bool:
        return self.capacity is None or len(self.got) < self.capacity

    def link_status_changed(self) -> None:
        self.link_changes += 1

    def cleanup(self) -> None:
        self.cleaned = True

    def make_room(self, extra: int) -> None:
        assert self.capacity is not None
        self.capacity += extra
        self.flush_queued()


def frame(n: int, size: int = 64, dst: bytes = b"\xff" * 6) -> bytes:
    """A recognisable frame: dst, a fixed src, ethertype 0x88b5, index, padding."""
    body = dst + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + n.to_bytes(4, "big")
    return body + bytes(max(0, size - len(body)))
