"""The control protocol: what the QMP and HMP layers need from the daemon.

:class:`Control` is the narrow view of :class:`netstack.daemon.Netstack` that the command
table (:mod:`.commands`), HMP (:mod:`.hmp`) and the monitors (:mod:`.server`) talk to. The
daemon implements it structurally and imports nothing from ``netstack.qmp``; the
composition root (:mod:`netstack.cli`, or a test) connects the two. Drivers' own commands
see the smaller :class:`netstack.driver.ControlHost`, which :class:`Control` extends.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from netstack.driver import ControlHost, DriverSpec

if TYPE_CHECKING:
    from netstack.chardev.table import ChardevTable
    from netstack.net.client import NetClient
    from netstack.qapi import Chardev, Netdev, ObjectSpec

EventListener = Callable[[str, Mapping[str, Any] | None], None]


class Control(ControlHost, Protocol):
    """The daemon as the monitors see it (``net/net.c``'s control operations and QEMU's
    ``monitor/`` basics); errors are :class:`~netstack.errors.ControlError` with QEMU's
    texts."""

    @property
    def registry(self) -> Mapping[str, DriverSpec]:
        """The drivers, by ``Netdev`` type (their control contributions)."""
        ...

    @property
    def chardevs(self) -> ChardevTable: ...

    @property
    def monitors(self) -> list[Any]:
        """The monitors attached to chardevs (for metrics and shutdown)."""
        ...

    @property
    def config_file(self) -> str | None:
        """``-writeconfig FILE``: where ``write-config`` writes by default."""
        ...

    def emit_event(self, name: str, data: Mapping[str, Any] | None = None) -> None: ...

    def add_listener(self, listener: EventListener) -> None: ...

    def remove_listener(self, listener: EventListener) -> None: ...

    def request_shutdown(self) -> None: ...

    async def netdev_add(self, netdev: Netdev) -> list[NetClient]: ...

    def netdev_del(self, name: str) -> None: ...

    def set_link(self, name: str, up: bool) -> None: ...

    def info_network(self) -> str: ...

    def info_fdb(self) -> str: ...

    def query_netdev(self, name: str | None = None) -> list[dict[str, Any]]: ...

    def query_rx_filter(self, name: str | None = None) -> list[dict[str, Any]]: ...

    def set_rx_filter(self, name: str, **changes: Any) -> None: ...

    def query_hub_fdb(self, hubid: int | None = None) -> list[dict[str, Any]]: ...

    def guest_network_interfaces(self) -> list[dict[str, Any]]: ...

    async def chardev_add(
        self, spec: Chardev, *, socket_mode: int | None = None, from_cli: bool = False
    ) -> dict[str, Any]: ...

    async def object_add(self, spec: ObjectSpec) -> None: ...

    def object_del(self, object_id: str) -> None: ...

    def write_config(self, path: str) -> None:
        """Write the running configuration as a ``-readconfig`` file."""
        ...
