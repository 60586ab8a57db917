"""The schema of netstackd's QMP commands beyond QEMU: their argument and return types.

Owns the schema dataclasses (:mod:`netstack.qapi.schema`) that the dispatcher visits
arguments with and ``query-qmp-schema`` describes, for the commands QEMU does not have.
Names follow QAPI conventions (commands and members lower-case with dashes, types in
CamelCase, enum values lower-case); optional members are absent, never null.

``query-netdev`` -> ``[NetdevInfo]``
    Every net client: ``id``, ``type``, ``queue-index``, ``info`` (its ``info network``
    text), ``link-up``, ``netdev`` (false for NICs), ``statistics``
    (``NetClientStatistics``: the core's frame/byte counters), ``queued`` /
    ``queue-dropped`` (its incoming queue), and when they apply ``options`` (the netdev's
    options as given, QAPI ``any``), ``peer``, ``hub``, ``mac`` (NIC-class clients) and
    ``counters`` (the driver's own counters - drops by reason, sockets, sessions - as a
    JSON object of name -> integer; QAPI has no map type, so its type is ``any``; the
    names are the driver's and may grow), ``filters`` (``[NetdevFilterInfo]``: the filter
    objects on the client in chain order, ``id``, ``qom-type``, ``queue``, ``status`` -
    ``info network`` shows them only for some clients, never for hub ports).

User netdev forwards (``type`` is ``UserForwardType``: ``hostfwd`` | ``guestfwd``):

``user-forward-add`` {netdev, rule, type? (default hostfwd)} -> ``UserForwardInfo``
    ``rule`` in QEMU's option syntax (``tcp::0-:22``, ``tcp:10.0.2.100:1234-cmd:cat``),
    errors are QEMU's (``Invalid host forwarding rule 'R' (REASON)``, ``Could not set up
    host forwarding rule 'R'``, ``Invalid guest forwarding rule 'R'``, ...). The reply is
    the rule as ``query-user-forwards`` lists it, so a hostfwd with host port 0 reports
    the port the kernel chose.
``user-forward-remove`` (boxed flat union ``UserForwardSelector``, tag ``type``)
    ``hostfwd``: {protocol? (tcp), host-addr? (any address), host-port} - the bound
    address and port, as HMP ``hostfwd_remove`` names a rule; ``guestfwd``: {guest-addr?
    (net + .4, QEMU's default), guest-port}. ``host forwarding rule for P:A:N not found``
    (or ``guest ...``) when nothing matches. A union rather than one flat struct, so
    introspection tells which members each kind takes and requires the port.
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

``query-hub-fdb`` {hubid?} -> ``[HubFdbEntry]``
    The MAC tables of learning hubs (``hubport,...,x-learning=on``): {hubid, mac, port
    (the hubport id), peer? (the netdev behind it), isolated (split horizon), age-ms}.
    ``hub N not found`` for an unknown hub; a repeater has no rows.
``query-tunnel-fdb`` {netdev?} -> ``[TunnelFdbEntry]``
    What a vxlan netdev forwards to: {netdev, mac, remote, port, vni, static, age-ms?};
    static rows with mac 00:00:00:00:00:00 are the configured remotes and group, as
    ``bridge fdb show dev vxlan0`` lists them.

Errors for a ``netdev`` argument: ``DeviceNotFound`` ``Device 'X' not found`` as QEMU's
netdev commands report it; a netdev of another type: ``GenericError`` ``Device 'X' is not
a user netdev``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final

from netstack.qapi.schema import QEnum, QList, UnionInfo, opt, req

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


# -- query-netdev ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NetClientStatistics:
    """The core's per-client counters (``netstack.net.client.Counters``)."""

    qapi_name: ClassVar[str] = "NetClientStatistics"
    malformed: int = req("int")
    rx_bytes: int = req("int")
    rx_dropped: int = req("int")
    rx_filtered: int = req("int")
    rx_frames: int = req("int")
    tx_bytes: int = req("int")
    tx_dropped: int = req("int")
    tx_frames: int = req("int")


@dataclass(frozen=True, kw_only=True)
class NetdevFilterInfo:
    """One filter object on a net client (``object-add`` of a ``filter-*`` type)."""

    qapi_name: ClassVar[str] = "NetdevFilterInfo"
    id: str = req("str")
    qom_type: str = req("str")
    queue: str = req("str")
    status: str = req("str")


@dataclass(frozen=True, kw_only=True)
class NetdevInfo:
    """One net client, as ``query-netdev`` reports it."""

    qapi_name: ClassVar[str] = "NetdevInfo"
    id: str = req("str")
    type: str = req("str")
    queue_index: int = req("int")
    info: str = req("str")
    link_up: bool = req("bool")
    netdev: bool = req("bool")
    statistics: NetClientStatistics = req(NetClientStatistics)  # noqa: RUF009 - schema metadata
    queued: int = req("int")
    queue_dropped: int = req("int")
    options: Any = opt("any")  # noqa: RUF009 - schema metadata
    peer: str | None = opt("str")
    hub: int | None = opt("int")
    mac: str | None = opt("str")
    counters: Any = opt("any")  # noqa: RUF009 - schema metadata
    filters: list[NetdevFilterInfo] | None = opt(QList(NetdevFilterInfo))  # noqa: RUF009


# -- query-rx-filter (QEMU's own types, qapi/net.json) and query-dhcp-leases ----------------

#: QEMU's ``RxState``.
RX_STATE: Final = QEnum("RxState", ("normal", "none", "all"))


@dataclass(frozen=True, kw_only=True)
class RxFilterInfo:
    """QEMU's ``RxFilterInfo``, member for member (``netstack.net.rxfilter.RxFilter.info``)."""

    qapi_name: ClassVar[str] = "RxFilterInfo"
    name: str = req("str")
    promiscuous: bool = req("bool")
    multicast: str = req(RX_STATE)
    unicast: str = req(RX_STATE)
    vlan: str = req(RX_STATE)
    broadcast_allowed: bool = req("bool")
    multicast_overflow: bool = req("bool")
    unicast_overflow: bool = req("bool")
    main_mac: str = req("str")
    vlan_table: list[int] = req(QList("int"))  # noqa: RUF009 - schema metadata
    unicast_table: list[str] = req(QList("str"))  # noqa: RUF009 - schema metadata
    multicast_table: list[str] = req(QList("str"))  # noqa: RUF009 - schema metadata


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


# -- user netdev forwards --------------------------------------------------------------------


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


# -- user netdev connections -----------------------------------------------------------------


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


# -- MAC tables: learning hubs and tunnels --------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HubFdbEntry:
    """One learned address of a learning hub: behind which port, seen how long ago."""

    qapi_name: ClassVar[str] = "HubFdbEntry"
    hubid: int = req("int")
    mac: str = req("str")
    port: str = req("str")
    peer: str | None = opt("str")
    isolated: bool = req("bool")
    age_ms: int = req("int")


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


NETDEV_INFO_LIST: Final = QList(NetdevInfo)
HUB_FDB_ENTRY_LIST: Final = QList(HubFdbEntry)
TUNNEL_FDB_LIST: Final = QList(TunnelFdbEntry)
RX_FILTER_INFO_LIST: Final = QList(RxFilterInfo)
DHCP_LEASE_INFO_LIST: Final = QList(DhcpLeaseInfo)
USER_FORWARD_INFO_LIST: Final = QList(UserForwardInfo)
USER_CONNECTION_INFO_LIST: Final = QList(UserConnectionInfo)
