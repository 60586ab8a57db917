"""The ``Netdev`` union of ``qapi/net.json`` (QEMU 10.0) and its two front doors.

Owns one frozen dataclass per ``Netdev<Type>Options`` (member names, QAPI types and
optionality as in QEMU 10.0), the :class:`Netdev` union itself, and the entry points that
build a :class:`Netdev` from QMP ``netdev_add`` arguments or a ``-netdev`` argument.

``-netdev`` accepts three syntaxes, chosen the way QEMU's ``netdev_is_modern`` does:

* a JSON object (argument starts with ``{``): visited like QMP;
* ``type=stream`` or ``type=dgram`` (7.2+): keyval syntax with dotted keys
  (``addr.type=inet,addr.host=...``), repeated keys override;
* anything else: QemuOpts + the options visitor (repeated keys build lists such as
  ``hostfwd``; the id is checked while parsing; the CLI-only ``ipv6-net=PREFIX/LEN`` is
  split into ``ipv6-prefix``/``ipv6-prefixlen``; ``-netdev help`` asks for the type list).

Invariants: QAPI defaults are not applied (optional members are ``None``); only the
``NetClientDriver`` enum is checked here - whether a type is implemented ("not compiled
into this binary"), duplicate ids and driver semantics are the daemon's. QMP callers run
:func:`.ids.check_id` on ``Netdev.id`` after :func:`netdev_from_qmp`, which is QEMU's order.

Beyond QEMU's union: ``vxlan`` (:class:`NetdevVxlanOptions`, an RFC 7348 tunnel endpoint)
is a member of the type enum here; ``hubport`` has the ``x-learning``, ``x-ageing`` and
``x-isolated`` options of learning hubs.

QEMU 7.2 differences: ``NetdevStreamOptions`` had only ``addr`` and ``server``
(``reconnect`` came in 8.0 and was deprecated in 9.2 for ``reconnect-ms``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from netstack.errors import GenericError

from . import keyval, qemuopts
from .helptext import HelpRequested
from .jsonarg import parse_json_object
from .scalars import I64_MAX, ConvError, strtou64
from .schema import STRING_LIST, Empty, QEnum, QList, UnionInfo, member, opt, optional, req
from .sockets import SocketAddress
from .visitor import Mode, visit

NETDEV_TYPES: Final = (
    "none",
    "nic",
    "user",
    "tap",
    "l2tpv3",
    "socket",
    "stream",
    "dgram",
    "vde",
    "bridge",
    "hubport",
    "netmap",
    "vhost-user",
    "vhost-vdpa",
    "vxlan",  # beyond QEMU
)
NET_CLIENT_DRIVER: Final = QEnum("NetClientDriver", NETDEV_TYPES)


@dataclass(frozen=True, kw_only=True)
class NetLegacyNicOptions:
    """Options of type ``nic`` (only meaningful for legacy ``-net``)."""

    qapi_name: ClassVar[str] = "NetLegacyNicOptions"
    netdev: str | None = opt("str")
    macaddr: str | None = opt("str")
    model: str | None = opt("str")
    addr: str | None = opt("str")
    vectors: int | None = opt("uint32")


@dataclass(frozen=True, kw_only=True)
class NetdevUserOptions:
    """User-mode (slirp) networking; list members are repeated keys on the CLI."""

    qapi_name: ClassVar[str] = "NetdevUserOptions"
    hostname: str | None = opt("str")
    restrict: bool | None = opt("bool")
    ipv4: bool | None = opt("bool")
    ipv6: bool | None = opt("bool")
    ip: str | None = opt("str")
    net: str | None = opt("str")
    host: str | None = opt("str")
    tftp: str | None = opt("str")
    bootfile: str | None = opt("str")
    dhcpstart: str | None = opt("str")
    dns: str | None = opt("str")
    dnssearch: tuple[str, ...] | None = field(default=None, metadata=optional(STRING_LIST))
    domainname: str | None = opt("str")
    ipv6_prefix: str | None = opt("str")
    ipv6_prefixlen: int | None = opt("int")
    ipv6_host: str | None = opt("str")
    ipv6_dns: str | None = opt("str")
    smb: str | None = opt("str")
    smbserver: str | None = opt("str")
    hostfwd: tuple[str, ...] | None = field(default=None, metadata=optional(STRING_LIST))
    guestfwd: tuple[str, ...] | None = field(default=None, metadata=optional(STRING_LIST))
    tftp_server_name: str | None = opt("str")
    # netstack extensions (not in QEMU): DNS upstreams (IP[:PORT], repeated) used instead
    # of the host's /etc/resolv.conf, and the guest MTU (DHCP option 26; guest-bound IPv4
    # datagrams are fragmented to it)
    x_dns_upstream: tuple[str, ...] | None = field(
        default=None, metadata=optional(STRING_LIST, features=("unstable",))
    )
    x_mtu: int | None = opt("uint32", features=("unstable",))
    #: Beyond QEMU: the smbd that serves ``smb=`` (QEMU's is fixed at build time).
    x_smbd: str | None = opt("str", features=("unstable",))
    #: Beyond QEMU: the netdev's budget of host sockets for guest flows (drivers.user.budget).
    x_max_flows: int | None = opt("uint32", features=("unstable",))


@dataclass(frozen=True, kw_only=True)
class NetdevTapOptions:
    """A host TAP interface (``sndbuf`` is a size: ``1M`` on the CLI)."""

    qapi_name: ClassVar[str] = "NetdevTapOptions"
    ifname: str | None = opt("str")
    fd: str | None = opt("str")
    fds: str | None = opt("str")
    script: str | None = opt("str")
    downscript: str | None = opt("str")
    br: str | None = opt("str")
    helper: str | None = opt("str")
    sndbuf: int | None = opt("size")
    vnet_hdr: bool | None = opt("bool", name="vnet_hdr")
    vhost: bool | None = opt("bool")
    vhostfd: str | None = opt("str")
    vhostfds: str | None = opt("str")
    vhostforce: bool | None = opt("bool")
    queues: int | None = opt("uint32")
    poll_us: int | None = opt("uint32")
    #: Beyond QEMU: open the tap inside this network namespace (name or path).
    x_netns: str | None = opt("str", features=("unstable",))


@dataclass(frozen=True, kw_only=True)
class NetdevSocketOptions:
    """The legacy socket netdev (exactly one of fd/listen/connect/mcast/udp)."""

    qapi_name: ClassVar[str] = "NetdevSocketOptions"
    fd: str | None = opt("str")
    listen: str | None = opt("str")
    connect: str | None = opt("str")
    mcast: str | None = opt("str")
    localaddr: str | None = opt("str")
    udp: str | None = opt("str")
    #: Beyond QEMU: retry a failed or closed ``connect=`` every N ms.
    x_reconnect_ms: int | None = opt("uint32", features=("unstable",))


@dataclass(frozen=True, kw_only=True)
class NetdevL2TPv3Options:
    """An Ethernet-over-L2TPv3 tunnel (``src``, ``dst``, ``txsession`` mandatory)."""

    qapi_name: ClassVar[str] = "NetdevL2TPv3Options"
    src: str = req("str")
    dst: str = req("str")
    srcport: str | None = opt("str")
    dstport: str | None = opt("str")
    ipv6: bool | None = opt("bool")
    udp: bool | None = opt("bool")
    cookie64: bool | None = opt("bool")
    counter: bool | None = opt("bool")
    pincounter: bool | None = opt("bool")
    txcookie: int | None = opt("uint64")
    rxcookie: int | None = opt("uint64")
    txsession: int = req("uint32")
    rxsession: int | None = opt("uint32")
    offset: int | None = opt("uint32")


@dataclass(frozen=True, kw_only=True)
class NetdevStreamOptions:
    """A stream socket (7.2+); ``reconnect`` (seconds) is deprecated since 9.2."""

    qapi_name: ClassVar[str] = "NetdevStreamOptions"
    addr: SocketAddress = field(metadata=member(SocketAddress))
    server: bool | None = opt("bool")
    reconnect: int | None = opt("int", features=("deprecated",))
    reconnect_ms: int | None = opt("int")


@dataclass(frozen=True, kw_only=True)
class NetdevDgramOptions:
    """A datagram socket (7.2+): unicast, multicast or unix datagrams."""

    qapi_name: ClassVar[str] = "NetdevDgramOptions"
    local: SocketAddress | None = field(default=None, metadata=optional(SocketAddress))
    remote: SocketAddress | None = field(default=None, metadata=optional(SocketAddress))


@dataclass(frozen=True, kw_only=True)
class NetdevVdeOptions:
    qapi_name: ClassVar[str] = "NetdevVdeOptions"
    sock: str | None = opt("str")
    port: int | None = opt("uint16")
    group: str | None = opt("str")
    mode: int | None = opt("uint16")


@dataclass(frozen=True, kw_only=True)
class NetdevBridgeOptions:
    qapi_name: ClassVar[str] = "NetdevBridgeOptions"
    br: str | None = opt("str")
    helper: str | None = opt("str")
    #: Beyond QEMU: the bridge (and the tap) live in this network namespace.
    x_netns: str | None = opt("str", features=("unstable",))


@dataclass(frozen=True, kw_only=True)
class NetdevHubPortOptions:
    qapi_name: ClassVar[str] = "NetdevHubPortOptions"
    hubid: int = req("int32")
    netdev: str | None = opt("str")
    #: Beyond QEMU: the hub is a learning switch (on) or a repeater (off, QEMU's hub);
    #: ``x-ageing`` is its MAC ageing time in seconds (default 300); ``x-isolated`` is
    #: the port's split-horizon flag (default: on when the peer is a tunnel such as vxlan).
    x_learning: bool | None = opt("bool", features=("unstable",))
    x_ageing: int | None = opt("uint32", features=("unstable",))
    x_isolated: bool | None = opt("bool", features=("unstable",))


@dataclass(frozen=True, kw_only=True)
class NetdevNetmapOptions:
    qapi_name: ClassVar[str] = "NetdevNetmapOptions"
    ifname: str = req("str")
    devname: str | None = opt("str")


@dataclass(frozen=True, kw_only=True)
class NetdevVhostUserOptions:
    """A vhost-user back-end reached through a unix socket chardev."""

    qapi_name: ClassVar[str] = "NetdevVhostUserOptions"
    chardev: str = req("str")
    vhostforce: bool | None = opt("bool")
    queues: int | None = opt("int")
    #: Beyond QEMU: the guest NIC's MAC (the back end is the NIC's stand-in in netstackd).
    mac: str | None = opt("str")


@dataclass(frozen=True, kw_only=True)
class NetdevVhostVDPAOptions:
    qapi_name: ClassVar[str] = "NetdevVhostVDPAOptions"
    vhostdev: str | None = opt("str")
    vhostfd: str | None = opt("str")
    queues: int | None = opt("int")
    x_svq: bool | None = opt("bool", features=("unstable",))


@dataclass(frozen=True, kw_only=True)
class NetdevVxlanOptions:
    """Beyond QEMU: an RFC 7348 VXLAN tunnel endpoint (``drivers/vxlan.py``).

    ``-netdev vxlan,id=ID,vni=N,local=ADDR,remote=ADDR[,remote=ADDR...][,group=MCAST]
    [,dstport=4789][,localport=P][,srcports=N][,ttl=N][,learning=on][,ageing=300][,mtu=N]
    [,coalesce=off][,x-netns=NS]``;
    on the CLI ``remote`` repeats, in QMP it is an array of strings.
    """

    qapi_name: ClassVar[str] = "NetdevVxlanOptions"
    vni: int = req("uint32")
    local: str = req("str")
    remote: tuple[str, ...] | None = opt(QList("str"))
    group: str | None = opt("str")
    dstport: int | None = opt("uint16")
    localport: int | None = opt("uint16")
    srcports: int | None = opt("uint8")
    ttl: int | None = opt("uint8")
    learning: bool | None = opt("bool")
    ageing: int | None = opt("uint32")
    mtu: int | None = opt("uint16")
    coalesce: bool | None = opt("bool")
    x_netns: str | None = opt("str", features=("unstable",))


NetdevOptions = (
    Empty
    | NetLegacyNicOptions
    | NetdevUserOptions
    | NetdevTapOptions
    | NetdevL2TPv3Options
    | NetdevSocketOptions
    | NetdevStreamOptions
    | NetdevDgramOptions
    | NetdevVdeOptions
    | NetdevBridgeOptions
    | NetdevHubPortOptions
    | NetdevNetmapOptions
    | NetdevVhostUserOptions
    | NetdevVhostVDPAOptions
    | NetdevVxlanOptions
)

OPTIONS_CLASSES: Final[dict[str, type]] = {
    "none": Empty,
    "nic": NetLegacyNicOptions,
    "user": NetdevUserOptions,
    "tap": NetdevTapOptions,
    "l2tpv3": NetdevL2TPv3Options,
    "socket": NetdevSocketOptions,
    "stream": NetdevStreamOptions,
    "dgram": NetdevDgramOptions,
    "vde": NetdevVdeOptions,
    "bridge": NetdevBridgeOptions,
    "hubport": NetdevHubPortOptions,
    "netmap": NetdevNetmapOptions,
    "vhost-user": NetdevVhostUserOptions,
    "vhost-vdpa": NetdevVhostVDPAOptions,
    "vxlan": NetdevVxlanOptions,
}


@dataclass(frozen=True, kw_only=True)
class Netdev:
    """QAPI ``Netdev``: ``id``, ``type`` and the per-type ``options`` dataclass."""

    qapi_name: ClassVar[str] = "Netdev"
    qapi_union: ClassVar[UnionInfo] = UnionInfo("type", "options", OPTIONS_CLASSES)
    id: str = req("str")
    type: str = field(metadata=member(NET_CLIENT_DRIVER))
    options: NetdevOptions


def netdev_from_qmp(args: dict[str, object]) -> Netdev:
    """Visit QMP ``netdev_add`` arguments (boxed ``Netdev``)."""
    return visit(Netdev, args, Mode.QMP)


MODERN_TYPES: Final = ("stream", "dgram")


def _split_ipv6_net(opts: qemuopts.QemuOpts) -> None:
    """The CLI-only ``ipv6-net=PREFIX[/LEN]`` convenience of QEMU's net_client_init."""
    ip6_net = opts.get("ipv6-net")
    if ip6_net is None:
        return
    if not ip6_net:
        raise GenericError("Parameter 'ipv6-net' expects a valid IPv6 prefix")
    prefix, slash, length_text = ip6_net.partition("/")
    prefix_len = 64
    if slash:
        try:
            prefix_len = strtou64(length_text, 10)
        except ConvError:
            raise GenericError("parameter 'ipv6-net' expects a number after '/'") from None
        if prefix_len > I64_MAX:  # stored through an int64_t, as QEMU does
            prefix_len -= 1 << 64
    opts.set("ipv6-prefix", prefix)
    opts.set("ipv6-prefixlen", str(prefix_len))
    opts.unset_last("ipv6-net")


def parse_netdev_cli(text: str) -> Netdev:
    """Parse a ``-netdev`` argument.

    Raises :class:`.helptext.HelpRequested` for ``-netdev help`` (print
    :func:`.helptext.netdev_help` then) and GenericError for everything QEMU rejects
    before a backend is created.
    """
    if text.startswith("{"):
        return visit(Netdev, parse_json_object(text), Mode.QMP)
    probe = qemuopts.parse_into(qemuopts.QemuOpts(None), text, "type", None)
    if probe.get("type") in MODERN_TYPES:
        return visit(Netdev, keyval.parse(text, "type"), Mode.KEYVAL)
    return netdev_from_opts(qemuopts.parse(text, "type"))


def netdev_from_opts(opts: qemuopts.QemuOpts) -> Netdev:
    """The ``Netdev`` of a parsed QemuOpts group (``-netdev`` text, config file section)."""
    kind = opts.get("type")
    if kind is not None and qemuopts.is_help_option(kind):
        raise HelpRequested("netdev")
    _split_ipv6_net(opts)
    table = opts.multimap()
    if opts.id is not None:
        table["id"] = [opts.id]
    return visit(Netdev, table, Mode.OPTS)
