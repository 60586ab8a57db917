"""Hubs: N-port repeaters joining net clients (QEMU's ``net/hub.c``).

A hub is a list of ports; each port is a net client of type ``hubport`` (model ``hub``)
whose peer is whatever the port connects. A frame received by one port is sent out of
every other port (each applying its own link state as a sender); the source port is
skipped and the hub reports the whole batch as taken even when some ports drop it.
A port can receive when any other port could send. New ports and hubs go to the head of
their lists, so listings are newest first, as QEMU prints them.
"""

from __future__ import annotations

from collections.abc import Sequence

from netstack.net.client import NetClient


class Hub:
    """One hub and its ports (newest first)."""

    __slots__ = ("id", "ports")

    def __init__(self, hub_id: int) -> None:
        self.id = hub_id
        self.ports: list[HubPort] = []

    def __repr__(self) -> str:
        return f"<Hub {self.id} ports={[p.name for p in self.ports]}>"

    def add_port(self, name: str | None = None) -> HubPort:
        if name is None:
            name = f"hub{self.id}port{len(self.ports)}"
        port = HubPort(name, self)
        self.ports.insert(0, port)
        return port

    def remove_port(self, port: HubPort) -> None:
        if port in self.ports:
            self.ports.remove(port)

    def forward(self, source: HubPort, frames: Sequence[bytes], vnet: bool) -> int:
        for port in self.ports:
            if port is not source:
                port.send(frames, vnet)
        return len(frames)

    def can_forward(self, source: HubPort) -> bool:
        return any(port is not source and port.can_send() for port in self.ports)

    def flush_from(self, source: HubPort) -> None:
        for port in self.ports:
            if port is not source:
                port.incoming.flush()


class HubPort(NetClient):
    """A port of a hub; its peer is the client plugged into it."""

    type = "hubport"
    accepts_vnet = True
    count_bytes = False  # frames only: the clients on either side count the bytes

    def __init__(self, name: str, hub: Hub) -> None:
        super().__init__(name, model="hub")
        self.hub = hub

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        return self.hub.forward(self, frames, vnet)

    def can_receive(self) -> bool:
        return self.hub.can_forward(self)

    def flush_siblings(self) -> None:
        self.hub.flush_from(self)

    def cleanup(self) -> None:
        self.hub.remove_port(self)
