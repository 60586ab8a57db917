"""The ``user`` netdev's options: QEMU's defaults, validation order and error texts.

Follows ``net/slirp.c`` (``net_init_slirp``, ``net_slirp_init``, ``slirp_hostfwd``,
``slirp_guestfwd``) and libslirp's checks behind ``slirp_add_exec``.
:func:`parse_options` turns a :class:`~netstack.qapi.NetdevUserOptions` into a frozen
:class:`UserConfig` or raises :class:`~netstack.errors.GenericError` with QEMU's text; the
checks run in QEMU's order, so the first error QEMU reports is the one reported here:

1. the ``ipv4``/``ipv6`` quirk (``ipv6=on`` alone disables IPv4 and ``ipv4=on`` alone
   disables IPv6; kept, in one place: :func:`.v6.config.families_enabled`), then "IPv4
   disabled but netmask/host/dns provided", "IPv6 disabled but prefix/host6/dns6
   provided", "IPv4 and IPv6 disabled" (:func:`.v6.config.check_families`);
2. ``net`` (``ip=A`` means ``net=A/24``): ``A/N`` (N 4..32, read like ``strtol``), ``A/M``
   (dotted mask) or ``A`` with a classful mask - QEMU's quirk included: its "class C" test
   matches 224.0.0.0 and up, so 192.0.0.0-223.255.255.255 (outside 192.168/16 and
   198.18/15) get a /28; host, DHCP start and DNS default to net + .2, .15 and .3;
3. ``host``, ``dns``, ``dhcpstart``, ``smbserver``, the IPv6 prefix, length (0 means 64),
   host and DNS (:func:`.v6.config.parse_ipv6_options`), ``domainname``, ``hostname``,
   ``tftp-server-name``;
4. the forwarding rules, guestfwd rules last-to-first and then hostfwd rules last-to-first
   (QEMU pushes them on a list head), with QEMU's syntax errors.

Addresses are parsed like ``inet_aton`` (``10.2`` and ``0x0a.0.2.2`` are valid).

Valid ``hostfwd`` rules are kept in :attr:`UserConfig.hostfwd` in QEMU's order (binding
them, and its "Could not set up host forwarding rule" error, is the client's job:
:mod:`.hostfwd`); valid ``guestfwd`` rules likewise in :attr:`UserConfig.guestfwd`
(conflicts between rules and opening their chardevs are :mod:`.guestfwd`'s); IPv6 options are
validated and kept (the IPv6 side, :mod:`.v6.host`, builds its configuration from them with
:func:`.v6.ipv6_config`); ``ipv4=off`` (or QEMU's quirk, ``ipv6=on`` alone) leaves an
IPv6-only network, ``ipv6=off`` an IPv4-only one; ``smb`` and ``smbserver`` are kept
(the directory, smbd and address checks are :mod:`.smb`'s, run when the netdev is made).

netstack extension of the ``hostfwd`` syntax (and of HMP ``hostfwd_remove``): the host and
guest addresses may be IPv6 addresses in brackets - ``tcp:[::1]:2222-[fec0::15]:22``
listens on ``::1`` (an ``IPV6_V6ONLY`` socket, so ``[::]`` and an IPv4 rule can share a
port) and connects to the guest's IPv6 address; either side may be IPv4 with the other
IPv6 (``tcp:[::]:2222-:22`` reaches the guest's 10.0.2.15). QEMU rejects every rule with a
``[`` (its ``inet_aton`` fails), so no rule QEMU accepts changes meaning.

netstack extensions (``x-`` members, QAPI feature ``unstable``): ``x-dns-upstream=IP[:PORT]``
(repeated; IPv6 as ``[ADDR]:PORT`` or bare) replaces ``/etc/resolv.conf`` as the source of
DNS upstreams, ``x-mtu=N`` (68..65521, default 1500) is the guest link MTU, announced in
DHCP option 26 and used to fragment guest-bound IPv4 datagrams, ``x-smbd=PATH`` is the
smbd that serves ``smb=`` (:mod:`.smb`), and ``x-max-flows=N`` (at least 8) is the
netdev's flow budget (:mod:`.budget`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from dataclasses import dataclass, field

from netstack.errors import GenericError
from netstack.net.sockaddr import qemu_strtol
from netstack.qapi import NetdevUserOptions

from .budget import MIN_FLOWS
from .v6.config import check_families, families_enabled, parse_ipv6_options

#: Leases the DHCP server hands out from ``dhcpstart`` on (libslirp's ``NB_BOOTP_CLIENTS``).
DHCP_POOL_SIZE = 16
DEFAULT_MTU = 1500
MIN_MTU = 68
#: libslirp's ``IF_MTU_MAX``: the largest MTU its interface accepts.
MAX_MTU = 65521

_LONG_MAX = (1 << 63) - 1
_STRTOL10 = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")


@dataclass(frozen=True)
class HostFwdRule:
    """A parsed ``hostfwd`` rule (QEMU's syntax, plus bracketed IPv6 addresses)."""

    text: str
    udp: bool
    host_addr: str  # "0.0.0.0" for INADDR_ANY, an IPv6 address, or a unix socket path
    host_port: int
    guest_addr: str | None  # None: the first DHCP address; IPv4 or IPv6 text
    guest_port: int
    unix: bool = False

    @property
    def host_v6(self) -> bool:
        """Whether the host side is an IPv6 socket (``[ADDR]`` in the rule)."""
        return not self.unix and ":" in self.host_addr

    @property
    def guest_v6(self) -> bool:
        """Whether connections go to the guest's IPv6 address (``[ADDR]`` in the rule)."""
        return self.guest_addr is not None and ":" in self.guest_addr


@dataclass(frozen=True)
class GuestFwdRule:
    """A parsed ``guestfwd`` rule: TCP connections to ``server:port`` go to ``target``."""

    text: str
    server: str
    port: int
    target: str  # a chardev spec, or "cmd:COMMAND"


@dataclass(frozen=True)
class UserConfig:
    """A validated user netdev configuration (IPv4 addresses as 32-bit integers)."""

    restrict: bool = False
    ipv4: bool = True
    ipv6: bool = True
    net: int = 0x0A000200
    mask: int = 0xFFFFFF00
    host: int = 0x0A000202
    dns: int = 0x0A000203
    dhcp_start: int = 0x0A00020F
    ipv6_prefix: str = "fec0::"
    ipv6_prefixlen: int = 64
    ipv6_host: str = "fec0::2"
    ipv6_dns: str = "fec0::3"
    hostname: str | None = None
    domainname: str | None = None
    tftp_server_name: str | None = None
    tftp: str | None = None
    bootfile: str | None = None
    dnssearch: tuple[str, ...] = ()
    hostfwd: tuple[HostFwdRule, ...] = ()
    guestfwd: tuple[GuestFwdRule, ...] = ()
    #: Explicit DNS upstreams (family, address, port); empty means /etc/resolv.conf.
    dns_upstreams: tuple[tuple[int, str, int], ...] = field(default=())
    mtu: int = DEFAULT_MTU
    #: ``smb=``: the directory to share (checked and served by :mod:`.smb`).
    smb: str | None = None
    #: ``smbserver=`` (0: absent, net + .4).
    smbserver: int = 0
    #: ``x-smbd=``: the smbd to run (None: QEMU's default, then PATH).
    smbd: str | None = None
    #: ``x-max-flows``: host sockets for guest flows (None: the default share; .budget).
    max_flows: int | None = None

    @property
    def broadcast(self) -> int:
        return self.net | (~self.mask & 0xFFFFFFFF)

    @property
    def prefixlen(self) -> int:
        """The netmask as a prefix length (its number of one bits)."""
        return bin(self.mask).count("1")

    def in_net(self, addr: int) -> bool:
        return (addr & self.mask) == self.net


def ip_text(addr: int) -> str:
    return socket.inet_ntoa(addr.to_bytes(4, "big"))


def inet_aton(text: str) -> int | None:
    """C ``inet_aton``: the address as an integer, or None when it does not parse."""
    try:
        return int.from_bytes(socket.inet_aton(text), "big")
    except (OSError, ValueError):
        return None


def _inet_pton6(text: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None


def _strtol10(text: str) -> tuple[int, str]:
    """``strtol(text, &end, 10)``: the value and the unread rest (value 0 if no digits)."""
    match = _STRTOL10.match(text)
    if match is None:
        return 0, text
    number = match.group().strip()
    if len(number.lstrip("+-").lstrip("0")) > 19:  # strtol saturates (ERANGE)
        return (-_LONG_MAX - 1 if number.startswith("-") else _LONG_MAX), text[match.end() :]
    return int(number), text[match.end() :]


def classful_mask(addr: int) -> int:
    """The mask QEMU gives a network written without ``/`` (its quirks included)."""
    if not addr & 0x80000000:
        return 0xFF000000  # class A
    if addr & 0xFFF00000 == 0xAC100000:
        return 0xFFF00000  # 172.16.0.0/12
    if addr & 0xC0000000 == 0x80000000:
        return 0xFFFF0000  # class B
    if addr & 0xFFFF0000 == 0xC0A80000:
        return 0xFFFF0000  # 192.168.0.0/16
    if addr & 0xFFFF0000 == 0xC6120000:
        return 0xFFFE0000  # 198.18.0.0/15
    if addr & 0xE0000000 == 0xE0000000:
        return 0xFFFFFF00  # QEMU's "class C" test (it really matches 224/3)
    return 0xFFFFFFF0


def _parse_net(vnetwork: str) -> tuple[int, int]:
    base, sep, tail = vnetwork.partition("/")
    net = inet_aton(base)
    if net is None:
        raise GenericError("Failed to parse netmask")
    if not sep:
        mask = classful_mask(net)
    else:
        shift, rest = _strtol10(tail)
        if rest:
            dotted = inet_aton(tail)
            if dotted is None:
                raise GenericError("Failed to parse netmask (trailing chars)")
            mask = dotted
        elif shift < 4 or shift > 32:
            raise GenericError("Invalid netmask provided (must be in range 4-32)")
        else:
            mask = (0xFFFFFFFF << (32 - shift)) & 0xFFFFFFFF
    return net & mask, mask


def _sep(text: str, sep: str) -> tuple[str, str] | None:
    """QEMU's ``get_str_sep``: the part before the first ``sep`` and the rest, or None."""
    head, found, rest = text.partition(sep)
    return (head, rest) if found else None


def _int_port(text: str) -> int | None:
    """``qemu_strtoi(text, &end, 0, &v)``: leading number (trailing text allowed)."""
    value = qemu_strtol(text)
    if value is None or not -(1 << 31) <= value < (1 << 31):
        return None
    return value


def _bracketed(text: str) -> tuple[str, str] | None:
    """``[ADDR]:REST`` with ADDR an IPv6 address: (ADDR as ``inet_ntop`` writes it, REST),
    or None."""
    end = text.find("]")
    if not text.startswith("[") or end < 0 or text[end + 1 : end + 2] != ":":
        return None
    raw = _inet_pton6(text[1:end])
    if raw is None:
        return None
    return socket.inet_ntop(socket.AF_INET6, raw), text[end + 2 :]


def parse_hostfwd(rule: str) -> HostFwdRule:
    """Parse a ``hostfwd`` rule with QEMU's syntax and reasons.

    netstack extension: the host and the guest address may each be an IPv6 address in
    brackets (``tcp:[::1]:2222-[fec0::15]:22``, ``udp:[::]:5353-:53``); QEMU (whose
    ``inet_aton`` sees ``[``) rejects every such rule with "Bad host address" or "Bad guest
    address", so no rule QEMU accepts changes meaning. A malformed bracketed address gets
    those same reasons."""

    def fail(reason: str) -> GenericError:
        return GenericError(f"Invalid host forwarding rule '{rule}' ({reason})")

    part = _sep(rule, ":")
    if part is None:
        raise fail("No : separators")
    proto, p = part
    unix = proto == "unix"
    if proto not in ("", "tcp", "udp", "unix"):
        raise fail("Bad protocol name")
    if unix:
        part = _sep(p, "-")
        if part is None:
            raise fail("Missing - separator")
        host_addr, p = part
        if not host_addr:
            raise fail("Missing unix socket path")
        if not host_addr.startswith("/"):
            raise fail("unix socket path must be absolute")
        if len(host_addr.encode()) > 107:
            raise fail("Unix socket path is too long")
        host_port = 0
    else:
        if p.startswith("["):
            part = _bracketed(p)
            if part is None:
                raise fail("Bad host address")
            host_addr, p = part
        else:
            part = _sep(p, ":")
            if part is None:
                raise fail("Missing : separator")
            addr_text, p = part
            host_addr = "0.0.0.0"
            if addr_text:
                parsed = inet_aton(addr_text)
                if parsed is None:
                    raise fail("Bad host address")
                host_addr = ip_text(parsed)
        part = _sep(p, "-")
        if part is None:
            raise fail("Bad host port separator")
        port_text, p = part
        port = _int_port(port_text)
        if port is None or not 0 <= port <= 65535:
            raise fail("Bad host port")
        host_port = port
    guest_addr = None
    if p.startswith("["):
        part = _bracketed(p)
        if part is None:
            raise fail("Bad guest address")
        guest_addr, p = part
    else:
        part = _sep(p, ":")
        if part is None:
            raise fail("Missing guest address")
        guest_text, p = part
        if guest_text:
            parsed = inet_aton(guest_text)
            if parsed is None:
                raise fail("Bad guest address")
            # libslirp: a zero guest address means the first DHCP address, as absent
            guest_addr = ip_text(parsed) if parsed else None
    guest_port = _int_port(p)
    if guest_port is None or not 1 <= guest_port <= 65535:
        raise fail("Bad guest port")
    return HostFwdRule(rule, proto == "udp", host_addr, host_port, guest_addr, guest_port, unix)


def parse_hostfwd_remove(text: str) -> tuple[bool, str, int] | None:
    """HMP ``hostfwd_remove``'s ``[tcp|udp]:[hostaddr]:port`` (QEMU: the port a strict
    base-10 int; the address as ``inet_aton`` reads it; a bracketed IPv6 address is the
    netstack extension of :func:`parse_hostfwd`): (udp, bound address, port), or None for
    QEMU's "invalid format"."""
    proto, sep, rest = text.partition(":")
    if not sep or proto not in ("", "tcp", "udp"):
        return None
    if rest.startswith("["):
        part = _bracketed(rest)
        if part is None:
            return None
        host, port = part
    else:
        addr, sep2, port = rest.partition(":")
        if not sep2:
            return None
        host = "0.0.0.0"
        if addr:
            parsed = inet_aton(addr)
            if parsed is None:
                return None
            host = ip_text(parsed)
    if _STRTOL10.fullmatch(port) is None or len(port.strip().lstrip("+-").lstrip("0")) > 10:
        return None
    value = int(port)
    if not -(1 << 31) <= value < (1 << 31):
        return None
    return proto == "udp", host, value


def parse_guestfwd(rule: str, cfg: UserConfig) -> GuestFwdRule:
    """Parse a ``guestfwd`` rule with QEMU's syntax and libslirp's address checks."""
    invalid = GenericError(f"Invalid guest forwarding rule '{rule}'")
    part = _sep(rule, ":")
    if part is None or part[0] not in ("", "tcp"):
        raise invalid
    part = _sep(part[1], ":")
    if part is None:
        raise invalid
    server_text, p = part
    server = 0
    if server_text:
        parsed = inet_aton(server_text)
        if parsed is None:
            raise invalid
        server = parsed
    part = _sep(p, "-")
    if part is None:
        raise invalid
    port, rest = _strtol10(part[0])
    if rest or not 1 <= port <= 65535 or not part[0]:
        raise invalid
    if not server:
        server = cfg.net | 4
    if not cfg.in_net(server) or server in (cfg.host, cfg.dns):
        raise GenericError(f"Conflicting/invalid host:port in guest forwarding rule '{rule}'")
    return GuestFwdRule(rule, ip_text(server), port, part[1])


def parse_dns_upstream(text: str) -> tuple[int, str, int]:
    """``IP``, ``IP:PORT``, ``[IPV6]:PORT`` or a bare IPv6 address (port 53 by default)."""
    port_text = ""
    host = text
    if text.startswith("["):
        end = text.find("]")
        host, tail = text[1:end], text[end + 1 :]
        if end < 0 or (tail and not tail.startswith(":")):
            host = ""
        port_text = tail[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        addr = ipaddress.ip_address(host)
        port = int(port_text, 10) if port_text else 53
    except ValueError:
        addr, port = None, 0
    if addr is None or not 1 <= port <= 65535:
        raise GenericError(f"Invalid DNS upstream '{text}' (expected IP[:PORT])")
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    return family, str(addr), port


def parse_options(opts: NetdevUserOptions) -> UserConfig:
    """Validate ``opts`` in QEMU's order; the first failing check raises its text."""
    ipv4, ipv6 = families_enabled(opts.ipv4, opts.ipv6)  # QEMU's quirk included
    vnetwork = opts.net if opts.net is not None else (f"{opts.ip}/24" if opts.ip else None)
    check_families(
        ipv4, ipv6,
        ipv4_options_given=vnetwork is not None or opts.host is not None or opts.dns is not None,
        ipv6_options_given=(
            opts.ipv6_prefix is not None or opts.ipv6_host is not None or opts.ipv6_dns is not None
        ),
    )  # fmt: skip
    restrict = bool(opts.restrict)

    net, mask = 0x0A000200, 0xFFFFFF00
    host, dhcp, dns = 0x0A000202, 0x0A00020F, 0x0A000203
    if vnetwork is not None:
        net, mask = _parse_net(vnetwork)
        inv = ~mask & 0xFFFFFFFF
        host, dhcp, dns = net | (0x0202 & inv), net | (0x020F & inv), net | (0x0203 & inv)
    if opts.host is not None:
        parsed = inet_aton(opts.host)
        if parsed is None:
            raise GenericError("Failed to parse host")
        host = parsed
    if host & mask != net:
        raise GenericError("Host doesn't belong to network")
    if opts.dns is not None:
        parsed = inet_aton(opts.dns)
        if parsed is None:
            raise GenericError("Failed to parse DNS")
        dns = parsed
    if restrict and dns & mask != net:
        raise GenericError("DNS doesn't belong to network")
    if dns == host:
        raise GenericError("DNS must be different from host")
    if opts.dhcpstart is not None:
        parsed = inet_aton(opts.dhcpstart)
        if parsed is None:
            raise GenericError("Failed to parse DHCP start address")
        dhcp = parsed
    if dhcp & mask != net:
        raise GenericError("DHCP doesn't belong to network")
    if dhcp in (host, dns):
        raise GenericError("DHCP must be different from host and DNS")
    smbserver = 0
    if opts.smbserver is not None:
        parsed = inet_aton(opts.smbserver)
        if parsed is None:
            raise GenericError("Failed to parse SMB address")
        smbserver = parsed

    six = parse_ipv6_options(
        opts.ipv6_prefix, opts.ipv6_prefixlen, opts.ipv6_host, opts.ipv6_dns, restrict=restrict
    )

    if opts.domainname is not None and not opts.domainname:
        raise GenericError("'domainname' parameter cannot be empty")
    if opts.domainname is not None and len(opts.domainname.encode()) > 255:
        raise GenericError("'domainname' parameter cannot exceed 255 bytes")
    if opts.hostname is not None and len(opts.hostname.encode()) > 255:
        raise GenericError("'vhostname' parameter cannot exceed 255 bytes")
    if opts.tftp_server_name is not None and len(opts.tftp_server_name.encode()) > 255:
        raise GenericError("'tftp-server-name' parameter cannot exceed 255 bytes")

    mtu = DEFAULT_MTU if opts.x_mtu is None else opts.x_mtu
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise GenericError(f"'x-mtu' must be between {MIN_MTU} and {MAX_MTU}")
    if opts.x_max_flows is not None and opts.x_max_flows < MIN_FLOWS:
        raise GenericError(f"'x-max-flows' must be at least {MIN_FLOWS}")
    upstreams = tuple(parse_dns_upstream(u) for u in opts.x_dns_upstream or ())

    cfg = UserConfig(
        restrict=restrict,
        ipv4=ipv4,
        ipv6=ipv6,
        net=net,
        mask=mask,
        host=host,
        dns=dns,
        dhcp_start=dhcp,
        ipv6_prefix=socket.inet_ntop(socket.AF_INET6, six.prefix),
        ipv6_prefixlen=six.prefixlen,
        ipv6_host=socket.inet_ntop(socket.AF_INET6, six.host),
        ipv6_dns=socket.inet_ntop(socket.AF_INET6, six.dns),
        hostname=opts.hostname or None,
        domainname=opts.domainname,
        tftp_server_name=opts.tftp_server_name or None,
        tftp=opts.tftp,
        bootfile=opts.bootfile or None,
        dnssearch=tuple(opts.dnssearch or ()),
        dns_upstreams=upstreams,
        mtu=mtu,
        smb=opts.smb,
        smbserver=smbserver,
        smbd=opts.x_smbd,
        max_flows=opts.x_max_flows,
    )
    # QEMU pushes the rules on a list head: guestfwd last-to-first, then hostfwd likewise
    guestfwd = tuple(parse_guestfwd(r, cfg) for r in reversed(opts.guestfwd or ()))
    hostfwd = tuple(parse_hostfwd(r) for r in reversed(opts.hostfwd or ()))
    return dataclasses.replace(cfg, hostfwd=hostfwd, guestfwd=guestfwd)
