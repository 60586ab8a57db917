"""IPv6 configuration of the user netdev: QEMU's options, defaults, checks and error texts.

Follows ``net/slirp.c`` (``net_init_slirp``/``net_slirp_init``) for the
options ``ipv6-prefix`` (default ``fec0::``, parsed by ``inet_pton``), ``ipv6-prefixlen``
(0 means 64; otherwise 0..126), ``ipv6-host`` (default: the prefix with its last byte ORed
with 2; must lie in the prefix) and ``ipv6-dns`` (last byte ORed with 3; must lie in the
prefix only with ``restrict=on``), checked in QEMU's order with QEMU's texts. As in QEMU the
defaults are computed from the prefix *as written* (``fec0::1:0/112`` gives host
``fec0::1:2``), while what is announced (RA prefix option, DHCPv6 addresses) is the prefix
with its host bits cleared, as RFC 4861 §4.6.2 asks of senders.

:func:`families_enabled` is QEMU's ``ipv4``/``ipv6`` rule, quirk kept: ``ipv6=on`` given
alone disables IPv4 and ``ipv4=on`` alone disables IPv6 (only both absent, or an explicit
``on`` for both, gives both). It is kept because scripts written against QEMU must see the
same network here; :func:`family_quirk_note` gives the text the options module can log
when the quirk bites. :func:`check_families` raises QEMU's "disabled but ... provided" and
"IPv4 and IPv6 disabled" errors. :func:`parse_ipv6_options` is the pure function the
options module calls; :func:`ipv6_config` builds the :class:`Ipv6Config` the IPv6 machines
take.

netstack choices (documented deviations from libslirp): the link MTU for IPv6 is at least
1280 (RFC 8200 §5; an ``x-mtu`` below that is not announced to IPv6 and packets up to 1280
bytes are still built); the router's M flag is set (and the prefix's A flag cleared) when
the prefix is not a /64, because SLAAC cannot form addresses then and stateful DHCPv6 is
the only way in (RFC 4862 §5.5.3 with RFC 4291's 64-bit interface identifiers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from netstack.errors import GenericError

from . import addr as a6

DEFAULT_PREFIX = "fec0::"
DEFAULT_PREFIXLEN = 64
MAX_PREFIXLEN = 126
MIN_MTU = 1280
DEFAULT_MTU = 1500

QUIRK_NOTE_V6 = "ipv6=on given without ipv4= disables IPv4 (QEMU's rule); add ipv4=on to keep both"
QUIRK_NOTE_V4 = "ipv4=on given without ipv6= disables IPv6 (QEMU's rule); add ipv6=on to keep both"


class Ipv6Addresses(NamedTuple):
    """The validated IPv6 options: the prefix as written, its length, host and DNS."""

    prefix: bytes
    prefixlen: int
    host: bytes
    dns: bytes


def families_enabled(ipv4: bool | None, ipv6: bool | None) -> tuple[bool, bool]:
    """QEMU's ``(ipv4, ipv6)`` from the options (None = not given), quirk included."""
    v4 = not ((ipv6 is not None and ipv6 and ipv4 is None) or (ipv4 is not None and not ipv4))
    v6 = not ((ipv4 is not None and ipv4 and ipv6 is None) or (ipv6 is not None and not ipv6))
    return v4, v6


def family_quirk_note(ipv4: bool | None, ipv6: bool | None) -> str | None:
    """A hint worth logging when QEMU's rule disabled a family the user did not name."""
    if ipv6 and ipv4 is None:
        return QUIRK_NOTE_V6
    if ipv4 and ipv6 is None:
        return QUIRK_NOTE_V4
    return None


def check_families(
    ipv4_on: bool, ipv6_on: bool, *, ipv4_options_given: bool, ipv6_options_given: bool
) -> None:
    """QEMU's first checks: options for a disabled family, or both families disabled.

    ``ipv4_options_given``: ``net``/``ip``, ``host`` or ``dns`` was given;
    ``ipv6_options_given``: ``ipv6-prefix``, ``ipv6-host`` or ``ipv6-dns`` was given
    (``ipv6-prefixlen`` does not count, as in QEMU)."""
    if not ipv4_on and ipv4_options_given:
        raise GenericError("IPv4 disabled but netmask/host/dns provided")
    if not ipv6_on and ipv6_options_given:
        raise GenericError("IPv6 disabled but prefix/host6/dns6 provided")
    if not ipv4_on and not ipv6_on:
        raise GenericError("IPv4 and IPv6 disabled")


def parse_ipv6_options(
    prefix: str | None,
    prefixlen: int | None,
    host: str | None,
    dns: str | None,
    *,
    restrict: bool = False,
) -> Ipv6Addresses:
    """Validate the IPv6 options in QEMU's order; the first failing check raises its text."""
    raw_prefix = a6.parse(prefix if prefix is not None else DEFAULT_PREFIX)
    if raw_prefix is None:
        raise GenericError("Failed to parse IPv6 prefix")
    length = prefixlen or DEFAULT_PREFIXLEN
    if not 0 <= length <= MAX_PREFIXLEN:
        raise GenericError(
            "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)"
        )
    if host is not None:
        host6 = a6.parse(host)
        if host6 is None:
            raise GenericError("Failed to parse IPv6 host")
        if not a6.in_prefix(host6, raw_prefix, length):
            raise GenericError("IPv6 Host doesn't belong to network")
    else:
        host6 = raw_prefix[:15] + bytes([raw_prefix[15] | 2])
    if dns is not None:
        dns6 = a6.parse(dns)
        if dns6 is None:
            raise GenericError("Failed to parse IPv6 DNS")
        if restrict and not a6.in_prefix(dns6, raw_prefix, length):
            raise GenericError("IPv6 DNS doesn't belong to network")
    else:
        dns6 = raw_prefix[:15] + bytes([raw_prefix[15] | 3])
    return Ipv6Addresses(raw_prefix, length, host6, dns6)


@dataclass(frozen=True)
class Ipv6Config:
    """What the IPv6 machines of one user netdev need to know."""

    prefix: bytes = field(default_factory=lambda: a6.parse(DEFAULT_PREFIX) or bytes(16))
    prefixlen: int = DEFAULT_PREFIXLEN
    host: bytes = field(default_factory=lambda: a6.parse("fec0::2") or bytes(16))
    dns: bytes = field(default_factory=lambda: a6.parse("fec0::3") or bytes(16))
    router_link_local: bytes = a6.ROUTER_LINK_LOCAL
    #: The guest link MTU (at least 1280): announced in RAs, fragments built to it.
    mtu: int = DEFAULT_MTU
    restrict: bool = False
    #: Whether a DNS relay answers at :attr:`dns` (announced by RDNSS and DHCPv6 option 23).
    dns_relay: bool = True
    dnssearch: tuple[str, ...] = ()
    bootfile: str | None = None
    #: RA M flag; None: set exactly when the prefix is not a /64 (SLAAC impossible).
    managed: bool | None = None
    #: Serve stateful DHCPv6 (IA_NA addresses) besides Information-Request.
    stateful_dhcpv6: bool = True

    def __post_init__(self) -> None:
        if len(self.prefix) != 16 or len(self.host) != 16 or len(self.dns) != 16:
            raise ValueError("IPv6 addresses are 16 bytes")
        if not 0 <= self.prefixlen <= 128:
            raise ValueError(f"prefix length {self.prefixlen} out of range")

    @property
    def network(self) -> bytes:
        """The prefix with its host bits cleared (what RAs and DHCPv6 announce)."""
        return a6.mask(self.prefix, self.prefixlen)

    @property
    def link_mtu(self) -> int:
        return max(self.mtu, MIN_MTU)

    @property
    def managed_flag(self) -> bool:
        return self.prefixlen != 64 if self.managed is None else self.managed

    @property
    def autonomous_flag(self) -> bool:
        return self.prefixlen == 64

    def local_addresses(self) -> dict[bytes, bytes]:
        """The addresses the router owns (answers NDP and echo for), with their MACs: the
        router link-local fe80::2, host and DNS, and host and DNS under fe80::/64 (libslirp's
        ``in6_equal_router``/``in6_equal_dns`` match those too)."""
        owned = [
            self.router_link_local,
            self.host,
            self.dns,
            a6.link_local(self.host),
            a6.link_local(self.dns),
        ]
        return {address: a6.virtual_mac(address) for address in owned}

    def in_prefix(self, address: bytes) -> bool:
        return a6.in_prefix(address, self.prefix, self.prefixlen)


class _UserOptionsLike(Protocol):
    """The attributes of the user netdev's ``UserConfig`` that IPv6 reads."""

    @property
    def ipv6_prefix(self) -> str: ...
    @property
    def ipv6_prefixlen(self) -> int: ...
    @property
    def ipv6_host(self) -> str: ...
    @property
    def ipv6_dns(self) -> str: ...
    @property
    def restrict(self) -> bool: ...
    @property
    def mtu(self) -> int: ...
    @property
    def dnssearch(self) -> tuple[str, ...]: ...
    @property
    def domainname(self) -> str | None: ...
    @property
    def bootfile(self) -> str | None: ...


def ipv6_config(user: _UserOptionsLike, **extra: object) -> Ipv6Config:
    """An :class:`Ipv6Config` from the user netdev's validated configuration.

    The DHCPv6/RA search list is ``dnssearch``, or ``domainname`` alone when no search list
    is given (IPv6 has no separate domain-name option). With ``restrict=on`` no DNS relay
    is announced (as DHCPv4 leaves out its DNS option then). ``extra`` overrides fields."""
    found = parse_ipv6_options(
        user.ipv6_prefix, user.ipv6_prefixlen, user.ipv6_host, user.ipv6_dns,
        restrict=user.restrict,
    )  # fmt: skip
    search = tuple(user.dnssearch) or ((user.domainname,) if user.domainname else ())
    values: dict[str, object] = {
        "prefix": found.prefix,
        "prefixlen": found.prefixlen,
        "host": found.host,
        "dns": found.dns,
        "mtu": user.mtu,
        "restrict": user.restrict,
        "dns_relay": not user.restrict,
        "dnssearch": search,
        "bootfile": user.bootfile,
    }
    values.update(extra)
    return Ipv6Config(**values)  # type: ignore[arg-type]
