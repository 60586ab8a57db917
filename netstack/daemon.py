"""The daemon's state: net clients, hubs, event listeners, and the netdev lifecycle.

:class:`Netstack` owns the tables QEMU keeps in globals (``net_clients``, ``hubs``) and implements
the control operations of ``net/net.c`` with QEMU's validation order and texts: ``netdev_add``
(``qmp_netdev_add``), ``netdev_del`` including the in-use case (``qmp_netdev_del``), ``set_link``
with its asymmetric netdev / NIC / hubport behaviour (``qmp_set_link``), ``info network``
(``hmp_info_network``) and ``query-rx-filter`` (``hw/net/virtio-net.c``
``virtio_net_query_rxfilter``). It is driven from one asyncio loop and knows its drivers only
through the registry it is given. It implements the control protocol the monitors talk to
(``netstack.qmp.control.Control``) without importing the QMP layer: the composition root
builds the command table and the monitors (``netstack.qmp.server``); what drivers add to the
control plane (their commands, HMP lines, NAT tables) comes through their ``DriverSpec``.

Invariants: ``clients`` is in creation order; every client in it is alive (``deleted`` is
False); names of non-NIC clients are unique except among the queues of one multiqueue
netdev.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from netstack.chardev.table import ChardevTable
from netstack.driver import DriverSpec, NatTables
from netstack.errors import ControlError, DeviceNotFound, GenericError
from netstack.net.client import NetClient
from netstack.net.hub import Hub, HubPort
from netstack.net.rxfilter import format_mac
from netstack.qapi import Chardev as ChardevSpec
from netstack.qapi import Netdev, ObjectSpec
from netstack.qapi.output import to_qmp

EventListener = Callable[[str, Mapping[str, Any] | None], None]
#: The mode of every unix socket a chardev of the daemon listens on (QEMU: the umask's).
PRIVATE_SOCKET_MODE = 0o600


@runtime_checkable
class CountingClient(Protocol):
    """A net client with driver counters (``query-netdev``'s ``counters``)."""

    def counters(self) -> dict[str, int]: ...


@runtime_checkable
class FdbClient(Protocol):
    """A net client with its own MAC forwarding table (a tunnel's remote endpoints)."""

    def fdb_rows(self) -> list[dict[str, Any]]: ...

    def fdb_text(self) -> str: ...


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
        self.objects: dict[str, Any] = {}
        self.chardevs = ChardevTable(objects=self.objects.get)
        #: The monitors attached to chardevs (``netstack.qmp.server.monitor_add``).
        self.monitors: list[Any] = []
        self._listeners: list[EventListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        #: Where QMP ``write-config`` writes by default (``-writeconfig FILE``).
        self.config_file: str | None = None

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
        return [nc for nc in self.clients if nc.name == name and not (except_nic and nc.is_nic)]

    def chardev(self, chardev_id: str) -> Any:
        return self.chardevs.get(chardev_id)

    # -- life ------------------------------------------------------------------------------

    def _shutdown_event(self) -> asyncio.Event:
        if self._shutdown is None:
            self._shutdown = asyncio.Event()
        return self._shutdown

    def request_shutdown(self) -> None:
        """Ask the daemon to stop (signals, QMP ``quit``)."""
        self._shutdown_event().set()

    async def wait_shutdown(self) -> None:
        await self._shutdown_event().wait()

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
            raise GenericError(f"network backend '{netdev.type}' is not compiled into this binary")
        if self.find_netdev(netdev.id) is not None:
            raise GenericError(f"Duplicate ID '{netdev.id}'")
        try:
            made = await spec.create(self, netdev)
        except ControlError:
            raise
        except OSError as exc:
            raise GenericError(
                f"Device '{netdev.type}' could not be initialized: {exc.strerror or exc}"
            ) from exc
        for nc in made:
            nc.netdev_spec = netdev
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
        nc.incoming.purge_all()
        if isinstance(nc, HubPort):
            nc.hub.remove_port(nc)
        if isinstance(nc.peer, HubPort):
            nc.peer.hub.forget(nc.peer)  # a learning switch unlearns what was behind nc
        if free and nc.peer is not None:
            nc.peer.peer = None
            nc.peer = None

    def remove_filter(self, filter_id: str) -> None:
        """Detach and destroy a filter (``object-del``, or its netdev going away)."""
        nf = self.objects.pop(filter_id, None)
        if nf is None or not hasattr(nf, "netdev"):
            return  # not a filter (TLS credentials): nothing to detach
        # QEMU cleans a filter up while it is still in the chain, so what it releases
        # (filter-buffer's held frames) still passes the filters after it.
        try:
            nf.cleanup()
        finally:
            if nf in nf.netdev.filters:
                nf.netdev.filters.remove(nf)

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

    def info_fdb(self) -> str:
        """Beyond QEMU: HMP ``info fdb``, the MAC tables of learning hubs and of netdevs
        that keep one (vxlan), like ``bridge fdb show``."""
        out = [hub.fdb_text() for hub in self.hubs]
        out.extend(nc.fdb_text() for nc in self.clients if isinstance(nc, FdbClient))
        return "".join(out)

    def query_hub_fdb(self, hubid: int | None = None) -> list[dict[str, Any]]:
        """Beyond QEMU: QMP ``query-hub-fdb``."""
        hubs = [hub for hub in self.hubs if hubid is None or hub.id == hubid]
        if hubid is not None and not hubs:
            raise GenericError(f"hub {hubid} not found")
        return [row for hub in hubs for row in hub.fdb_rows()]

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
        for obj_id in list(self.objects):
            self.remove_filter(obj_id)
        for nc in list(reversed(self.clients)):
            if nc.is_netdev and nc in self.clients:
                self.netdev_del(nc.name)
        for nc in list(self.clients):
            self._cleanup(nc, free=True)
        self.monitors.clear()
        await self.chardevs.close_all()

    # -- chardevs, objects ----------------------------------------------------------

    async def chardev_add(
        self, spec: ChardevSpec, *, socket_mode: int | None = None, from_cli: bool = False
    ) -> dict[str, Any]:
        # sockets the daemon listens on are its user's only (docs/security.md)
        mode = PRIVATE_SOCKET_MODE if socket_mode is None else socket_mode
        return await self.chardevs.add(spec, socket_mode=mode, from_cli=from_cli)

    async def object_add(self, spec: ObjectSpec) -> None:
        from netstack.objects import create_object

        await create_object(self, spec)

    def object_del(self, object_id: str) -> None:
        from netstack.objects import delete_object

        delete_object(self, object_id)

    def write_config(self, path: str) -> None:
        """Write the running configuration as a ``-readconfig`` file (QMP
        ``write-config``, ``-writeconfig``)."""
        from netstack.configfile.writer import write_running_config

        write_running_config(self, path)

    # -- beyond QEMU: introspection and rx-filter programming ---------------------------------

    def query_netdev(self, name: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for nc in self.clients:
            if name is not None and nc.name != name:
                continue
            entry: dict[str, Any] = {
                "id": nc.name,
                "type": nc.type,
                "queue-index": nc.queue_index,
                "info": nc.info_str,
                "link-up": not nc.link_down,
                "netdev": nc.is_netdev,
                "statistics": nc.stats.as_dict(),
                "queued": len(nc.incoming),
                "queue-dropped": nc.incoming.dropped,
            }
            spec = nc.netdev_spec
            if spec is not None:
                entry["options"] = to_qmp(spec.options)
            if nc.peer is not None:
                entry["peer"] = nc.peer.name
            hub = _hub_of(nc)
            if hub is not None:
                entry["hub"] = hub.id
            if nc.rx_filter is not None:
                entry["mac"] = format_mac(nc.rx_filter.mac)
            if isinstance(nc, CountingClient):
                entry["counters"] = nc.counters()
            if nc.filters:
                entry["filters"] = [
                    {
                        "id": nf.id,
                        "qom-type": nf.qom_type,
                        "queue": nf.queue,
                        "status": "on" if nf.enabled else "off",
                    }
                    for nf in nc.filters
                ]
            out.append(entry)
        if name is not None and not out:
            raise DeviceNotFound(f"Device '{name}' not found")
        return out

    def _nic_class(self, name: str) -> NetClient:
        for nc in self.clients:
            if nc.name == name and nc.queue_index == 0:
                if nc.rx_filter is None:
                    raise GenericError(f"net client({name}) isn't a NIC")
                return nc
        raise GenericError(f"invalid net client name: {name}")

    def set_rx_filter(self, name: str, **changes: Any) -> None:
        """Program a NIC-class client's rx filter (QMP ``set-rx-filter``).

        ``rx_modes`` takes the RxFilterInfo spelling (``promiscuous``) or the virtio one.
        """
        rx = self._nic_class(name).rx_filter
        assert rx is not None
        modes = changes.get("rx_modes")
        if modes:
            changes["rx_modes"] = {
                ("promisc" if k == "promiscuous" else k): v for k, v in modes.items()
            }
        rx.program(**changes)

    def guest_network_interfaces(self) -> list[dict[str, Any]]:
        nats = [tables for _nc, tables in self.nat_tables()]
        out: list[dict[str, Any]] = []
        for nc in self.clients:
            if nc.rx_filter is None or nc.queue_index != 0:
                continue
            mac = nc.rx_filter.mac
            addrs = [
                {
                    "ip-address-type": "ipv6" if ":" in ip else "ipv4",
                    "ip-address": ip,
                    "prefix": prefix,
                }
                for tables in nats
                for ip, prefix in tables.addresses_for(mac)
            ]
            st = nc.stats
            out.append(
                {
                    "name": nc.name,
                    "hardware-address": format_mac(mac),
                    "ip-addresses": addrs,
                    "statistics": {
                        "rx-bytes": st.rx_bytes,
                        "rx-packets": st.rx_frames,
                        "rx-errs": 0,
                        "rx-dropped": st.rx_dropped + st.rx_filtered,
                        "tx-bytes": st.tx_bytes,
                        "tx-packets": st.tx_frames,
                        "tx-errs": 0,
                        "tx-dropped": st.tx_dropped,
                    },
                }
            )
        return out

    def nat_tables(self) -> list[tuple[NetClient, NatTables]]:
        """The NAT tables of the clients whose driver keeps them (user netdevs), in
        creation order."""
        out: list[tuple[NetClient, NatTables]] = []
        for nc in self.clients:
            spec = self.registry.get(nc.type)
            view = spec.control.nat_tables if spec is not None else None
            tables = view(nc) if view is not None else None
            if tables is not None:
                out.append((nc, tables))
        return out


def _hub_of(nc: NetClient) -> Hub | None:
    if isinstance(nc, HubPort):
        return nc.hub
    if isinstance(nc.peer, HubPort):
        return nc.peer.hub
    return None


def _client_lines(nc: NetClient) -> str:
    lines = [nc.info_line() + "\n"]
    if nc.filters:
        lines.append("filters:\n")
        lines.extend(nf.info_line() + "\n" for nf in nc.filters)
    return "".join(lines)
