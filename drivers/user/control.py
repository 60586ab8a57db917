"""The user netdev's control plane: its QMP commands, HMP lines and monitor views.

Registered through the driver's :class:`~netstack.driver.DriverSpec` (``CONTROL``), so the
daemon and the QMP layer never name the user netdev. Everything here is a function of a
:class:`~.client.UserNetClient` (or of the daemon's
:class:`~netstack.driver.ControlHost`); the client holds the machines, this module only
reads their tables and adds or removes forwarding rules.

QMP commands (beyond QEMU; their schema types are here too, introspected by
``query-qmp-schema``):

``query-dhcp-leases`` {netdev?} -> ``[DhcpLeaseInfo]``
    The DHCP (IPv4) then DHCPv6 (IA_NA) lease tables: {netdev, mac-address, ip-address,
    state (``offered`` | ``bound``), expires-in (seconds), hostname?, client-id? (DHCPv6:
    the client's DUID), iaid?}; also reported by ``DHCP_LEASE_GRANTED`` /
    ``DHCP_LEASE_RELEASED``.
``user-forward-add`` {netdev, rule, type? (``UserForwardType``: hostfwd (default) |
guestfwd)} -> ``UserForwardInfo``
    ``rule`` in QEMU's option syntax (``tcp::0-:22``, ``tcp:10.0.2.100:1234-cmd:cat``);
    errors are QEMU's (``Invalid host forwarding rule 'R' (REASON)``, ``Could not set up
    host forwarding rule 'R'``, ``Invalid guest forwarding rule 'R'``, ...). The reply is
    the rule as ``query-user-forwards`` lists it, so a hostfwd with host port 0 reports
    the port the kernel chose.
``user-forward-remove`` (boxed flat union ``UserForwardSelector``, tag ``type``)
    ``hostfwd``: {protocol? (tcp), host-addr? (any address), host-port} - the bound address
    and port, as HMP ``hostfwd_remove`` names a rule; ``guestfwd``: {guest-addr? (net + .4,
    QEMU's default), guest-port}. ``host forwarding rule for P:A:N not found`` (or ``guest
    ...``) when nothing matches. A union rather than one flat struct, so introspection tells
    which members each kind takes and requires the port.
``query-user-forwards`` {netdev?} -> ``[UserForwardInfo]``
    {netdev, type, protocol (``UserForwardProtocol``: tcp | udp), host-addr?, host-port?
    (hostfwd: bound), guest-addr, guest-port (guestfwd: the address and port the guest
    connects to), rule (as given), target? (guestfwd: chardev spec or ``cmd:...``)}.
``query-user-connections`` {netdev?} -> ``[UserConnectionInfo]``
    The rows of ``info usernet`` as data (forwarding listeners excepted; they are
    ``query-user-forwards``): {netdev, protocol (tcp | udp | icmp), state (TCP: libslirp's
    state names, ``ESTABLISHED``, ``SYN_RCVD``...; UDP and ICMP flows: ``ACTIVE``), family
    (``NetworkAddressFamily``: ipv4 | ipv6), direction (outbound | hostfwd | guestfwd),
    guest-addr, guest-port? (not for ICMP), remote-addr, remote-port? (the far end as the
    guest sees it), fd? (the host socket), recv-q (guest bytes not yet written to the host),
    send-q (host bytes held for the guest), expires-in? (UDP, ICMP: seconds of silence
    left)}.
``x-user-state-export`` {netdev} -> ``UserStateExport`` and ``x-user-state-import``
{netdev, data} -> ``UserStateImport``
    Move the guest-facing state between daemons around a live migration; the blob and the
    guarantees are :mod:`.migration`'s, the operator's sequence ``docs/migration.md``.
    Failures: ``GenericError`` ``Cannot export user state: REASON`` / ``Cannot import user
    state: REASON`` (and nothing changed).

Errors for a ``netdev`` argument: ``DeviceNotFound`` ``Device 'X' not found`` as QEMU's
netdev commands report it; a netdev of another type: ``GenericError`` ``Device 'X' is not a
user netdev``.

HMP: ``info usernet`` (QEMU's layout, ``net/slirp.c`` ``hmp_info_usernet``, rendered by
:mod:`.conntable` from the same rows as ``query-user-connections`` and
``query-user-forwards``) and ``hostfwd_add`` / ``hostfwd_remove [netdev] RULE``
(``hmp_hostfwd_add`` / ``_remove``, their texts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from netstack.driver import ControlHost, DriverCommand, DriverControl, HmpCommand, HmpInfo
from netstack.errors import DeviceNotFound, GenericError
from netstack.net.client import NetClient
from netstack.qapi.schema import QEnum, QList, UnionInfo, opt, req

from . import conntable
from .client import UserNetClient
from .options import GuestFwdRule, parse_guestfwd, parse_hostfwd, parse_hostfwd_remove

# -- schema ----------------------------------------------------------------------------------

USER_FORWARD_TYPE: Final = QEnum("UserForwardType", ("hostfwd", "guestfwd"))
USER_FORWARD_PROTOCOL: Final = QEnum("UserForwardProtocol", ("tcp", "udp"))
USER_CONNECTION_PROTOCOL: Final = QEnum("UserConnectionProtocol", ("tcp", "udp", "icmp"))
USER_CONNECTION_DIRECTION: Final = QEnum(
    "UserConnectionDirection", ("outbound", "hostfwd", "guestfwd")
)
#: QEMU's enum of that name (qapi/sockets.json); user netdev rows use ipv4 and ipv6.
NETWORK_ADDRESS_FAMILY: Final = QEnum(
    "NetworkAddressFamily", ("ipv4", "ipv6", "unix", "vsock", "unknown")
)


@dataclass(frozen=True, kw_only=True)
class NetdevNameArgs:
    qapi_name: ClassVar[str] = "q_obj_query-dhcp-leases-arg"
    netdev: str | None = opt("str")


@dataclass(frozen=True, kw_only=True)
class DhcpLeaseInfo:
    """One DHCP (IPv4) or DHCPv6 (IA_NA) lease of a user netdev: ``state`` is ``offered``
    or ``bound``; ``expires-in`` in seconds; DHCPv6 leases carry the client's DUID as
    ``client-id`` and its ``iaid``."""

    qapi_name: ClassVar[str] = "DhcpLeaseInfo"
    netdev: str = req("str")
    mac_address: str = req("str")
    ip_address: str = req("str")
    state: str = req("str")
    expires_in: int = req("int")
    hostname: str | None = opt("str")
    client_id: str | None = opt("str")
    iaid: int | None = opt("int")


@dataclass(frozen=True, kw_only=True)
class UserForwardAddArgs:
    qapi_name: ClassVar[str] = "q_obj_user-forward-add-arg"
    netdev: str = req("str")
    rule: str = req("str")
    type: str | None = opt(USER_FORWARD_TYPE)


@dataclass(frozen=True, kw_only=True)
class UserHostForwardSelector:
    """A hostfwd rule by its bound address and port (as HMP ``hostfwd_remove``)."""

    qapi_name: ClassVar[str] = "UserHostForwardSelector"
    protocol: str | None = opt(USER_FORWARD_PROTOCOL)
    host_addr: str | None = opt("str")
    host_port: int = req("uint16")


@dataclass(frozen=True, kw_only=True)
class UserGuestForwardSelector:
    """A guestfwd rule by the address and port the guest connects to."""

    qapi_name: ClassVar[str] = "UserGuestForwardSelector"
    guest_addr: str | None = opt("str")
    guest_port: int = req("uint16")


@dataclass(frozen=True, kw_only=True)
class UserForwardSelector:
    """``user-forward-remove``'s arguments: a flat union on ``type``."""

    qapi_name: ClassVar[str] = "UserForwardSelector"
    qapi_union: ClassVar[UnionInfo] = UnionInfo(
        "type",
        "selector",
        {"hostfwd": UserHostForwardSelector, "guestfwd": UserGuestForwardSelector},
    )
    netdev: str = req("str")
    type: str = req(USER_FORWARD_TYPE)
    selector: UserHostForwardSelector | UserGuestForwardSelector


@dataclass(frozen=True, kw_only=True)
class UserForwardInfo:
    qapi_name: ClassVar[str] = "UserForwardInfo"
    netdev: str = req("str")
    type: str = req(USER_FORWARD_TYPE)
    protocol: str = req(USER_FORWARD_PROTOCOL)
    host_addr: str | None = opt("str")
    host_port: int | None = opt("uint16")
    guest_addr: str = req("str")
    guest_port: int = req("uint16")
    rule: str = req("str")
    target: str | None = opt("str")


@dataclass(frozen=True, kw_only=True)
class UserConnectionInfo:
    qapi_name: ClassVar[str] = "UserConnectionInfo"
    netdev: str = req("str")
    protocol: str = req(USER_CONNECTION_PROTOCOL)
    state: str = req("str")
    family: str = req(NETWORK_ADDRESS_FAMILY)
    direction: str = req(USER_CONNECTION_DIRECTION)
    guest_addr: str = req("str")
    guest_port: int | None = opt("uint16")
    remote_addr: str = req("str")
    remote_port: int | None = opt("uint16")
    fd: int | None = opt("int")
    recv_q: int = req("int")
    send_q: int = req("int")
    expires_in: int | None = opt("int")


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


# -- views of one client ---------------------------------------------------------------------


def usernet_info(client: UserNetClient) -> str:
    """HMP ``info usernet`` for one netdev (headed by the hub its peer is a port of),
    rendered from the rows of :func:`connections` and :func:`forwards`."""
    hub = client.peer.hub_id if client.peer is not None else -1
    return conntable.render_usernet(hub, client.name, _conn_rows(client), _forward_rows(client))


def _conn_rows(client: UserNetClient) -> list[conntable.ConnRow]:
    """Every connection and flow, newest first per table; ``info usernet`` groups them by
    protocol."""
    now = client._loop.time()
    guestfwd = conntable.guestfwd_targets(guestfwd_rules(client))
    return [
        *conntable.tcp_rows(client.tcp.flows.values(), guestfwd),
        *client.host4.conn_rows(now),
        *(client.v6.conn_rows(now) if client.v6 is not None else ()),
    ]


def _forward_rows(client: UserNetClient) -> list[conntable.ForwardRow]:
    return conntable.forward_rows(client.fwd.forwards, guestfwd_rules(client))


def connections(client: UserNetClient) -> list[dict[str, Any]]:
    """The connection table (``query-user-connections``): the rows of ``info usernet``
    without the forwarding listeners."""
    return [row.to_qmp(client.name) for row in _conn_rows(client)]


def forwards(client: UserNetClient) -> list[dict[str, Any]]:
    """The forwarding rules (``query-user-forwards``): hostfwd, then guestfwd, each in
    creation order."""
    return [row.to_qmp(client.name) for row in _forward_rows(client)]


def leases(client: UserNetClient) -> list[dict[str, Any]]:
    """The DHCP lease tables, DHCPv4 then DHCPv6 (the data of ``query-dhcp-leases``)."""
    now = client._loop.time()
    v6 = client.v6
    entries = client.gw.dhcp.leases(now) + (v6.leases(now) if v6 is not None else [])
    return [{"netdev": client.name, **entry} for entry in entries]


def addresses_for(client: UserNetClient, mac: bytes) -> list[tuple[str, int]]:
    """The guest's addresses: DHCPv4 leases, then IPv6 (DHCPv6 leases and the addresses it
    was seen using, e.g. SLAAC and link-local ones)."""
    found = client.gw.dhcp.leases_for(bytes(mac))
    if client.v6 is not None:
        found += client.v6.addresses_for(bytes(mac))
    return found


@dataclass(frozen=True)
class UserTables:
    """A user netdev's tables as the core's :class:`~netstack.driver.NatTables`."""

    client: UserNetClient

    def leases(self) -> list[dict[str, Any]]:
        return leases(self.client)

    def addresses_for(self, mac: bytes) -> list[tuple[str, int]]:
        return addresses_for(self.client, mac)

    def forwards(self) -> list[dict[str, Any]]:
        return forwards(self.client)

    def connections(self) -> list[dict[str, Any]]:
        return connections(self.client)


def _tables(nc: NetClient) -> UserTables | None:
    return UserTables(nc) if isinstance(nc, UserNetClient) else None


# -- forwarding rules ------------------------------------------------------------------------


def guestfwd_add(client: UserNetClient, rule_text: str) -> None:
    """Add a guestfwd rule at run time (QEMU's syntax; beyond QEMU, which has no
    ``guestfwd_add``); GenericError with QEMU's texts. ``cmd:`` and ``chardev:ID`` rules
    work on return; a chardev spec opens in the background (the rule is listed at once; if
    the chardev fails to open the rule is removed and the failure logged)."""
    client.guestfwd.add(parse_guestfwd(rule_text, client.cfg), start=True)


def guestfwd_remove(client: UserNetClient, server: str, port: int) -> bool:
    """Remove the rule for ``server:port``; False if there is none."""
    fwd = client.guestfwd.find(server, port)
    if fwd is None:
        return False
    client.guestfwd.remove(fwd)
    return True


def guestfwd_rules(client: UserNetClient) -> list[GuestFwdRule]:
    """The guestfwd rules, in creation order."""
    return [fwd.rule for fwd in client.guestfwd.forwards]


def hostfwd_add(client: UserNetClient, rule: str) -> None:
    """Bind a hostfwd rule given in QEMU's syntax; GenericError with QEMU's texts."""
    client.add_hostfwd(parse_hostfwd(rule))


def forward_add(client: UserNetClient, kind: str, rule: str) -> dict[str, Any]:
    """``user-forward-add``: set up a hostfwd or guestfwd rule given in QEMU's syntax;
    returns it as :func:`forwards` lists it (a hostfwd with its bound port). Raises
    GenericError with QEMU's texts."""
    if kind == "guestfwd":
        guestfwd_add(client, rule)
        row = [r for r in _forward_rows(client) if r.type == kind and r.rule == rule][-1]
        return row.to_qmp(client.name)
    hostfwd_add(client, rule)
    return conntable.hostfwd_row(client.fwd.forwards[-1]).to_qmp(client.name)


def forward_remove(
    client: UserNetClient, kind: str, protocol: str | None, addr: str | None, port: int
) -> None:
    """``user-forward-remove``: hostfwd by protocol (tcp), bound host address (any) and
    port; guestfwd by guest address (net + .4) and port. GenericError if none matches."""
    if kind == "guestfwd":
        server = conntable.guest_address(addr, client.cfg.net | 4)
        if not guestfwd_remove(client, server, port):
            raise GenericError(f"guest forwarding rule for tcp:{addr or ''}:{port} not found")
        return
    proto = protocol or "tcp"
    fwd = client.fwd.find(proto == "udp", conntable.host_address(addr), port)
    if fwd is None:
        raise GenericError(f"host forwarding rule for {proto}:{addr or ''}:{port} not found")
    client.fwd.remove(fwd)


def hostfwd(client: UserNetClient, command: str, args: Sequence[str]) -> str:
    """HMP ``hostfwd_add RULE`` / ``hostfwd_remove RULE`` on this netdev: QEMU's output."""
    if not args:
        return "invalid format\n"
    rule = args[0]
    if command == "hostfwd_add":
        try:
            hostfwd_add(client, rule)
        except GenericError as exc:
            return f"{exc.desc}\n"
        return ""
    # hostfwd_remove [tcp|udp]:[hostaddr]:hostport (the port as strict base-10 int)
    parsed_remove = parse_hostfwd_remove(rule)
    if parsed_remove is None:
        return "invalid format\n"
    fwd = client.fwd.find(*parsed_remove)
    if fwd is None:
        return f"host forwarding rule for {rule} not found\n"
    client.fwd.remove(fwd)
    return f"host forwarding rule for {rule} removed\n"


# -- the daemon's user netdevs ---------------------------------------------------------------


def user_netdevs(host: ControlHost, netdev: str | None) -> list[UserNetClient]:
    """The user netdevs (all, or the one named: DeviceNotFound if there is no such netdev,
    GenericError if it is of another type)."""
    if netdev is None:
        return [nc for nc in host.clients if isinstance(nc, UserNetClient)]
    nc = host.find_netdev(netdev)
    if nc is None:
        raise DeviceNotFound(f"Device '{netdev}' not found")
    if not isinstance(nc, UserNetClient):
        raise GenericError(f"Device '{netdev}' is not a user netdev")
    return [nc]


def info_usernet(host: ControlHost) -> str:
    """HMP ``info usernet``: every user netdev, in creation order."""
    return "".join(usernet_info(nc) for nc in host.clients if isinstance(nc, UserNetClient))


def hmp_hostfwd(host: ControlHost, command: str, args: Sequence[str]) -> str:
    """HMP ``hostfwd_add [netdev] RULE`` / ``hostfwd_remove [netdev] RULE``."""
    if len(args) >= 2:
        nc = host.find_netdev(args[0])
        if nc is None:
            return f"unrecognized netdev id '{args[0]}'\n"
        if not isinstance(nc, UserNetClient):
            return "invalid device specified\n"
        return hostfwd(nc, command, args[1:])
    users = user_netdevs(host, None)
    if not users:
        return "user mode network stack not in use\n"
    return hostfwd(users[0], command, args)


# -- QMP handlers ----------------------------------------------------------------------------


async def _query_dhcp_leases(host: ControlHost, args: NetdevNameArgs) -> list[dict[str, Any]]:
    netdev = args.netdev
    if netdev is not None and not any(
        nc.name == netdev and isinstance(nc, UserNetClient) for nc in host.clients
    ):
        raise DeviceNotFound(f"Device '{netdev}' not found")
    return [
        lease
        for nc in host.clients
        if isinstance(nc, UserNetClient) and (netdev is None or nc.name == netdev)
        for lease in leases(nc)
    ]


async def _forward_add(host: ControlHost, args: UserForwardAddArgs) -> dict[str, Any]:
    (client,) = user_netdevs(host, args.netdev)
    return forward_add(client, args.type or "hostfwd", args.rule)


async def _forward_remove(host: ControlHost, args: UserForwardSelector) -> None:
    (client,) = user_netdevs(host, args.netdev)
    sel = args.selector
    if isinstance(sel, UserHostForwardSelector):
        forward_remove(client, "hostfwd", sel.protocol, sel.host_addr, sel.host_port)
    else:
        forward_remove(client, "guestfwd", None, sel.guest_addr, sel.guest_port)


async def _query_forwards(host: ControlHost, args: NetdevNameArgs) -> list[dict[str, Any]]:
    return [row for nc in user_netdevs(host, args.netdev) for row in forwards(nc)]


async def _query_connections(host: ControlHost, args: NetdevNameArgs) -> list[dict[str, Any]]:
    return [row for nc in user_netdevs(host, args.netdev) for row in connections(nc)]


async def _state_export(host: ControlHost, args: UserStateExportArgs) -> dict[str, Any]:
    from .migration import StateError, export_state

    (client,) = user_netdevs(host, args.netdev)
    try:
        data, summary = export_state(client)
    except StateError as exc:
        raise GenericError(f"Cannot export user state: {exc}") from None
    return {"data": data, **summary}


async def _state_import(host: ControlHost, args: UserStateImportArgs) -> dict[str, Any]:
    from .migration import StateError, import_state

    (client,) = user_netdevs(host, args.netdev)
    try:
        return import_state(client, args.data)
    except StateError as exc:
        raise GenericError(f"Cannot import user state: {exc}") from None


def _hostfwd_command(name: str) -> HmpCommand:
    return HmpCommand(name, lambda host, args: hmp_hostfwd(host, name, args))


CONTROL: Final = DriverControl(
    commands=(
        DriverCommand(
            "query-dhcp-leases", _query_dhcp_leases, NetdevNameArgs, QList(DhcpLeaseInfo)
        ),
        DriverCommand("user-forward-add", _forward_add, UserForwardAddArgs, UserForwardInfo),
        DriverCommand("user-forward-remove", _forward_remove, UserForwardSelector),
        DriverCommand(
            "query-user-forwards", _query_forwards, NetdevNameArgs, QList(UserForwardInfo)
        ),
        DriverCommand(
            "query-user-connections",
            _query_connections,
            NetdevNameArgs,
            QList(UserConnectionInfo),
        ),
        DriverCommand("x-user-state-export", _state_export, UserStateExportArgs, UserStateExport),
        DriverCommand("x-user-state-import", _state_import, UserStateImportArgs, UserStateImport),
    ),
    hmp_info=(HmpInfo("usernet", "show user network stack connection states", info_usernet),),
    hmp_commands=(_hostfwd_command("hostfwd_add"), _hostfwd_command("hostfwd_remove")),
    nat_tables=_tables,
)
