"""The contract between the daemon and its drivers.

A driver is described by a :class:`DriverSpec` keyed by the ``Netdev`` type discriminator
(``qapi/net.json``). The composition root builds the registry from ``drivers`` and hands it
to the daemon; nothing in ``netstack`` imports ``drivers``.

``create`` receives the validated :class:`~netstack.qapi.Netdev` and a :class:`DriverHost`,
the narrow view of the daemon a driver may use, and returns the net clients it made (one,
or N for ``queues=N``), all named after the netdev id. It raises
:class:`~netstack.errors.NetstackError` with QEMU's text on failure and leaves nothing
behind.

Beyond creating clients, a driver may contribute to the control plane through
:class:`DriverControl`: QMP commands (:class:`DriverCommand`, visited and introspected like
the core's), HMP ``info`` topics and HMP commands, and a :class:`NatTables` view of its
clients (DHCP leases, forwarding rules, connections) that the core's cross-cutting views
read (``guest-network-get-interfaces``, ``-writeconfig``, metrics). Their handlers see the
daemon as a :class:`ControlHost`. The composition root puts them into the monitors'
command table; the daemon itself never names a driver.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from netstack.qapi.schema import QType

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.net.hub import Hub
    from netstack.qapi import Netdev


class DriverHost(Protocol):
    """What the daemon offers to drivers."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def runtime_dir(self) -> Path: ...

    @property
    def log(self) -> logging.Logger: ...

    def hub(self, hub_id: int) -> Hub:
        """The hub with this id, created on first use."""
        ...

    def find_netdev(self, name: str) -> NetClient | None:
        """The first non-NIC client with this name (QEMU's ``qemu_find_netdev``)."""
        ...

    def emit_event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Send a QMP event to every negotiated monitor."""
        ...

    def chardev(self, chardev_id: str) -> Any:
        """The chardev with this id, or None."""
        ...


class ControlHost(Protocol):
    """What a driver's control handlers (QMP commands, HMP lines) may use."""

    @property
    def clients(self) -> Sequence[NetClient]:
        """Every net client, in creation order."""
        ...

    def find_netdev(self, name: str) -> NetClient | None:
        """The first non-NIC client with this name."""
        ...


A = TypeVar("A")

CreateFn = Callable[["DriverHost", "Netdev"], Awaitable[list["NetClient"]]]


@dataclass(frozen=True)
class DriverCommand(Generic[A]):
    """A QMP command a driver provides.

    ``args`` is the schema dataclass its arguments are visited with (QAPI texts, before
    anything runs), or None for a command without arguments; ``run`` receives the visited
    object and returns a JSON-able value or None (``{}``). ``returns`` is the
    introspected return type. Failures raise :class:`~netstack.errors.ControlError`.
    """

    name: str
    run: Callable[[ControlHost, A], Awaitable[Any]]
    args: type[A] | None = None
    returns: QType = "any"
    allow_oob: bool = False


@dataclass(frozen=True)
class HmpInfo:
    """An HMP ``info NAME`` topic: its help line and its text (lines end with ``\\n``)."""

    name: str
    help: str
    show: Callable[[ControlHost], str]


@dataclass(frozen=True)
class HmpCommand:
    """An HMP command: ``run(host, words after the command)`` returns its output text."""

    name: str
    run: Callable[[ControlHost, Sequence[str]], str]


class NatTables(Protocol):
    """A NAT netdev's tables as QMP rows (``DhcpLeaseInfo``, ``UserForwardInfo``,
    ``UserConnectionInfo``) and a guest's addresses by MAC."""

    def leases(self) -> list[dict[str, Any]]: ...

    def addresses_for(self, mac: bytes) -> list[tuple[str, int]]: ...

    def forwards(self) -> list[dict[str, Any]]: ...

    def connections(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class DriverControl:
    """What a driver adds to the control plane (all optional)."""

    commands: tuple[DriverCommand[Any], ...] = ()
    hmp_info: tuple[HmpInfo, ...] = ()
    hmp_commands: tuple[HmpCommand, ...] = ()
    #: The NAT tables of one of the driver's clients (None: that client has none).
    nat_tables: Callable[[NetClient], NatTables | None] | None = None


@dataclass(frozen=True)
class DriverSpec:
    """A driver: its ``Netdev`` type name, how to create its clients, and what it adds to
    the control plane."""

    type: str
    create: CreateFn
    summary: str = ""
    control: DriverControl = DriverControl()
