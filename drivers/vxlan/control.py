"""The vxlan netdev's QMP command: ``query-tunnel-fdb``, registered through its
``DriverSpec`` (beyond QEMU, which has no vxlan netdev).

``query-tunnel-fdb`` {netdev?} -> ``[TunnelFdbEntry]``
    What a vxlan netdev forwards to: {netdev, mac, remote, port, vni, static, age-ms?};
    static rows with mac 00:00:00:00:00:00 are the configured remotes and group, as
    ``bridge fdb show dev vxlan0`` lists them. ``DeviceNotFound`` ``Device 'X' not found``
    for an unknown netdev, ``GenericError`` ``Device 'X' has no forwarding table`` for a
    netdev of another type.

HMP ``info fdb`` (the core's, with the learning hubs) shows the same rows as text
(:meth:`.client.VxlanClient.fdb_text`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final

from netstack.driver import ControlHost, DriverCommand, DriverControl
from netstack.errors import DeviceNotFound, GenericError
from netstack.qapi.schema import QList, opt, req

from .client import VxlanClient


@dataclass(frozen=True, kw_only=True)
class NetdevNameArgs:
    qapi_name: ClassVar[str] = "q_obj_query-dhcp-leases-arg"
    netdev: str | None = opt("str")


@dataclass(frozen=True, kw_only=True)
class TunnelFdbEntry:
    """One forwarding entry of a tunnel netdev: ``mac`` 00:00:00:00:00:00 with
    ``static`` true is a default destination (flooding goes to all of them)."""

    qapi_name: ClassVar[str] = "TunnelFdbEntry"
    netdev: str = req("str")
    mac: str = req("str")
    remote: str = req("str")
    port: int = req("int")
    vni: int = req("int")
    static: bool = req("bool")
    age_ms: int | None = opt("int")


def tunnel_fdb(host: ControlHost, netdev: str | None = None) -> list[dict[str, Any]]:
    """The rows of ``query-tunnel-fdb``: every vxlan netdev's, or the named one's."""
    if netdev is not None:
        nc = host.find_netdev(netdev)
        if nc is None:
            raise DeviceNotFound(f"Device '{netdev}' not found")
        if not isinstance(nc, VxlanClient):
            raise GenericError(f"Device '{netdev}' has no forwarding table")
    return [
        row
        for nc in host.clients
        if isinstance(nc, VxlanClient) and (netdev is None or nc.name == netdev)
        for row in nc.fdb_rows()
    ]


async def _query_tunnel_fdb(host: ControlHost, args: NetdevNameArgs) -> list[dict[str, Any]]:
    return tunnel_fdb(host, args.netdev)


CONTROL: Final = DriverControl(
    commands=(
        DriverCommand("query-tunnel-fdb", _query_tunnel_fdb, NetdevNameArgs, QList(TunnelFdbEntry)),
    ),
)
