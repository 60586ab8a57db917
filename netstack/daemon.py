"""The daemon's state: net clients, hubs, event listeners, and the netdev lifecycle.

:class:`Netstack` owns the tables QEMU keeps in globals (``net_clients``, ``hubs``) and
implements the control operations of ``net/net.c`` with QEMU's validation order and texts:
``netdev_add`` (§2.6 of the reference), ``netdev_del`` including the in-use case (§2.7),
``set_link`` with its asymmetric netdev / NIC / hubport behaviour (§2.5), ``info network``
(§2.8) and ``query-rx-filter`` (§3.3). It is driven from one asyncio loop and knows its
drivers only through the registry it is given.

Invariants: ``clients`` is in creation order; every client in it is alive (``deleted`` is
False); names of non-NIC clients are unique except among the queues of one multiqueue
netdev.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from netstack.driver import DriverSpec
from netstack.errors import DeviceNotFound, GenericError
from netstack.net.client import NetClient
from netstack.net.hub import Hub, HubPort
from netstack.qapi import Netdev

EventListener = Callable[[str, Mapping[str, Any] | None], None]


class Netstack:
    """The daemon: its tables and control operations."""

    def __init__(
        self,
        registry: Mapping[str, DriverSpec],
        *,
        runtime_dir: Path | None = None,
        name: str | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        self.registry = dict(registry)
        self.name = name
        self._runtime_dir = runtime_dir or Path("/tmp")
        self._log = log or logging.getLogger("netstack")
        self.clients: list[NetClient] = []
        self.hubs: list[Hub] = []
        self.chardevs: dict[str, Any] = {}
        self.objects: dict[str, Any] = {}
        self._listeners: list[EventListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- DriverHost ----------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def runtime_dir(self) -> Path:
        return self._runtime_dir

    @property
    def log(self) -> logging.Logger:
        return self._log

    def hub(self, hub_id: int) -> Hub:
        for hub in self.hubs:
            if hub.id == hub_id:
                return hub
        hub = Hub(hub_id)
        self.hubs.insert(0, hub)
        return hub

    def find_netdev(self, name: str) -> NetClient | None:
        for nc in self.clients:
            if nc.name == name and not nc.is_nic:
                return nc
        return None

    def find_clients(self, name: str, *, except_nic: bool = False) -> list[NetClient]:
        return [
            nc for nc in self.clients if nc.name == name and not (except_nic and nc.is_nic)
        ]

    def chardev(self, chardev_id: str) -> Any:
        return self.chardevs.get(chardev_id)

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: EventListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def emit_event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        for listener in list(self._listeners):
            listener(name, data)

    # -- registration ----------------------------------------------------------------------

    def add_client(self, nc: NetClient, *, netdev: bool = True) -> None:
        """Put a client into the table (drivers' clients, NICs made by tests or tools)."""
        nc.is_netdev = netdev and not nc.is_nic
        self.clients.append(nc)
        rx = nc.rx_filter
        if rx is not None and nc.queue_index == 0:
            name = nc.name
            rx.notify = lambda: self.emit_event(
                "NIC_RX_FILTER_CHANGED", {"name": name, "path": self.qom_path(name)}
            )

    @staticmethod
    def qom_path(name: str) -> str:
        """The QOM-style path reported for a NIC-class client in events."""
        return f"/machine/peripheral/{name}/virtio-backend"

    # -- control operations ----------------------------------------------------------------

    async def netdev_add(self, netdev: Netdev) -> list[NetClient]:
        """Create a netdev; the caller has visited the options and checked the id."""
        spec = self.registry.get(netdev.type)
        if netdev.type in ("nic", "none") or spec is None:
            raise GenericError(
                f"network backend '{netdev.type}' is not compiled into this binary"
            )
        if self.find_netdev(netdev.id) is not None:
            raise GenericError(f"Duplicate ID '{netdev.id}'")
        try:
            made = await spec.create(self, netdev)
        except GenericError:
            raise
        except DeviceNotFound:
            raise
        except OSError as exc:
            raise GenericError(
                f"Device '{netdev.type}' could not be initialized: {exc.strerror or exc}"
            ) from exc
        for nc in made:
            self.add_client(nc)
        return made

    def netdev_del(self, name: str) -> None:
        nc = self.find_netdev(name)
        if nc is None:
            raise DeviceNotFound(f"Device '{name}' not found")
        if not nc.is_netdev:
            raise GenericError(f"Device '{name}' is not a netdev")
        queues = self.find_clients(name, except_nic=True)
        for q in queues:
            for nf in list(q.filters):
                self.remove_filter(nf.id)
        peer = nc.peer
        if peer is not None and peer.is_nic:
            for q in queues:
                if q.peer is not None:
                    q.peer.link_down = True
            peer.link_status_changed()
            for q in queues:
                self._cleanup(q, free=False)
            return
        for q in queues:
            self._cleanup(q, free=True)

    def _cleanup(self, nc: NetClient, *, free: bool) -> None:
        if nc in self.clients:
            self.clients.remove(nc)
        nc.purge_queued()
        try:
            nc.cleanup()
        except Exception:  # a driver's cleanup must not stop the others
            self._log.exception("cleanup of %s failed", nc.name)
        nc.deleted = True
        nc.incoming.clear()
        if isinstance(nc, HubPort):
            nc.hub.remove_port(nc)
        if free and nc.peer is not None:
            nc.peer.peer = None
            nc.peer = None

    def remove_filter(self, filter_id: str) -> None:
        """Detach and destroy a filter (``object-del``, or its netdev going away)."""
        nf = self.objects.pop(filter_id, None)
        if nf is None:
            return
        if nf in nf.netdev.filters:
            nf.netdev.filters.remove(nf)
        nf.cleanup()

    def set_link(self, name: str, up: bool) -> None:
        ncs = self.find_clients(name)
        if not ncs:
            raise DeviceNotFound(f"Device '{name}' not found")
        for nc in ncs:
            nc.link_down = not up
        ncs[0].link_status_changed()
        peer = ncs[0].peer
        if peer is not None:
            if peer.is_nic:
                for nc in ncs:
                    if nc.peer is not None:
                        nc.peer.link_down = not up
            peer.link_status_changed()

    def info_network(self) -> str:
        """HMP ``info network`` (lines end with ``\\n``; HMP-over-QMP adds the CR)."""
        out: list[str] = []
        for hub in self.hubs:
            out.append(f"hub {hub.id}\n")
            for port in hub.ports:
                if port.peer is not None:
                    out.append(f" \\ {port.name}: ")
                    out.append(_client_lines(port.peer))
                else:
                    out.append(f" \\ {port.name}\n")
        for nc in self.clients:
            peer = nc.peer
            if isinstance(nc, HubPort) or isinstance(peer, HubPort):
                continue
            if peer is None or nc.is_nic:
                out.append(_client_lines(nc))
            if nc.is_nic and peer is not None:
                out.append(" \\ ")
                out.append(_client_lines(peer))
        return "".join(out)

    def query_rx_filter(self, name: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = []
        for nc in self.clients:
            if name is not None and nc.name != name:
                continue
            nic_class = nc.is_nic or nc.rx_filter is not None
            if not nic_class:
                if name is not None:
                    raise GenericError(f"net client({name}) isn't a NIC")
                continue
            if nc.queue_index != 0:
                continue
            if nc.rx_filter is not None:
                result.append(nc.rx_filter.info(nc.name))
            elif name is not None:
                raise GenericError(f"net client({name}) doesn't support rx-filter querying")
            if name is not None:
                break
        if not result and name is not None:
            raise GenericError(f"invalid net client name: {name}")
        return result

    def available_types(self) -> Iterable[str]:
        return self.registry.keys()

    async def close(self) -> None:
        """Delete every netdev and release everything (shutdown)."""
        for nc in list(reversed(self.clients)):
            if nc.is_netdev and nc in self.clients:
                self.netdev_del(nc.name)
        for nc in list(self.clients):
            self._cleanup(nc, free=True)
        for obj_id in list(self.objects):
            self.remove_filter(obj_id)


def _client_lines(nc: NetClient) -> str:
    lines = [nc.info_line() + "\n"]
    if nc.filters:
        lines.append("filters:\n")
        lines.extend(nf.info_line() + "\n" for nf in nc.filters)
    return "".join(lines)
