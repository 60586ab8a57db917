"""QMP commands that move a user netdev's guest-facing state between daemons around a live
migration (QEMU 7.2 has no vhost-user ``DEVICE_STATE`` channel to carry it).

``x-user-state-export`` {netdev} -> ``UserStateExport``
    {data (opaque base64 blob), leases, forwards, tcp (connections moved), tcp-not-moved,
    udp (NAT flows moved)}.
    For TCP the export is a move: the exported host sockets are closed silently (TCP_REPAIR)
    and their flows forgotten, so call it once the source VM stopped (``migrate``
    completed). Connections that cannot move (not established, or no CAP_NET_ADMIN) stay
    and are counted in ``tcp-not-moved``.
``x-user-state-import`` {netdev, data} -> ``UserStateImport``
    {leases, forwards, tcp, udp}: applies a blob of ``x-user-state-export`` all or nothing; a
    malformed or inapplicable blob is ``GenericError`` ``Cannot import user state: REASON``
    and nothing changed.

The blob's content and the guarantees are :mod:`drivers.user.migration`'s; the operator's
sequence is in ``docs/migration.md``. Errors for ``netdev`` as the other user netdev
commands (``DeviceNotFound``, ``Device 'X' is not a user netdev``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from netstack.errors import GenericError
from netstack.qapi.schema import opt, req

if TYPE_CHECKING:
    from netstack.daemon import Netstack


@dataclass(frozen=True, kw_only=True)
class UserStateExportArgs:
    qapi_name: ClassVar[str] = "q_obj_x-user-state-export-arg"
    netdev: str = req("str")


@dataclass(frozen=True, kw_only=True)
class UserStateImportArgs:
    qapi_name: ClassVar[str] = "q_obj_x-user-state-import-arg"
    netdev: str = req("str")
    data: str = req("str")


@dataclass(frozen=True, kw_only=True)
class UserStateImport:
    qapi_name: ClassVar[str] = "UserStateImport"
    leases: int = req("int")
    forwards: int = req("int")
    tcp: int = req("int")
    udp: int = req("int")


@dataclass(frozen=True, kw_only=True)
class UserStateExport:
    qapi_name: ClassVar[str] = "UserStateExport"
    data: str = req("str")
    leases: int = req("int")
    forwards: int = req("int")
    tcp: int = req("int")
    tcp_not_moved: int | None = opt("int")
    udp: int = req("int")


def export_state(ns: Netstack, args: dict[str, Any]) -> dict[str, Any]:
    from drivers.user.migration import StateError
    from drivers.user.migration import export_state as export

    client: Any = ns._user_netdevs(args["netdev"])[0]  # drivers.user.UserNetClient
    try:
        data, summary = export(client)
    except StateError as exc:
        raise GenericError(f"Cannot export user state: {exc}") from None
    return {"data": data, **summary}


def import_state(ns: Netstack, args: dict[str, Any]) -> dict[str, Any]:
    from drivers.user.migration import StateError
    from drivers.user.migration import import_state as apply

    client: Any = ns._user_netdevs(args["netdev"])[0]  # drivers.user.UserNetClient
    try:
        return apply(client, args["data"])
    except StateError as exc:
        raise GenericError(f"Cannot import user state: {exc}") from None
