"""Neighbor Discovery messages: parse what guests send, build what the router sends.

Follows RFC 4861 (message formats §4, option formats §4.6, validation §6.1.1, §7.1.1,
§7.1.2), RFC 8106 (RDNSS and DNSSL options) and RFC 2464 §8 (Ethernet link-layer
options). Parsers take the whole ICMPv6 message (checksum already verified by the caller)
plus the IPv6 facts validation needs, and return a typed message or a reason string (the
counter name) - never raise. Builders return ICMPv6 messages with a zero checksum field
(:func:`netstack.proto.ipv6.with_checksum` fills it once source and destination are known).

dpkt is not used: ``dpkt.icmp6`` knows no NDP message bodies or options.

Option order in RAs (like radvd and libslirp): source link-layer address, MTU, prefix
information, RDNSS, DNSSL. Invariants: every option built is a whole number of 8-byte units;
an option of length zero in a received message invalidates the message (§4.6).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

from . import addr as a6
from .dnsname import dns_name

ND_ROUTER_SOLICIT: Final = 133
ND_ROUTER_ADVERT: Final = 134
ND_NEIGHBOR_SOLICIT: Final = 135
ND_NEIGHBOR_ADVERT: Final = 136
ND_REDIRECT: Final = 137
NDP_TYPES: Final = frozenset(range(133, 138))

OPT_SOURCE_LL: Final = 1
OPT_TARGET_LL: Final = 2
OPT_PREFIX_INFO: Final = 3
OPT_MTU: Final = 5
OPT_RDNSS: Final = 25
OPT_DNSSL: Final = 31

NA_ROUTER: Final = 0x80
NA_SOLICITED: Final = 0x40
NA_OVERRIDE: Final = 0x20
RA_MANAGED: Final = 0x80
RA_OTHER: Final = 0x40
PREFIX_ON_LINK: Final = 0x80
PREFIX_AUTONOMOUS: Final = 0x40

HOP_LIMIT: Final = 255
RS_MIN: Final = 8
NS_MIN: Final = 24
NA_MIN: Final = 24
#: The largest RA built: what fits the IPv6 minimum MTU (1280 - 40 IPv6 header bytes).
RA_MAX: Final = 1240

_RA = struct.Struct("!BBHBBHII")
_PREFIX = struct.Struct("!BBBBII4x16s")
_LIFETIME_OPT = struct.Struct("!BBHI")
_MTU_OPT = struct.Struct("!BBHI")

Options = dict[int, list[bytes]]


def parse_options(msg: bytes | memoryview, start: int) -> Options | None:
    """Options from ``start`` to the end of ``msg``: type -> bodies (after type and length),
    in order. None if an option has length zero or runs past the end."""
    out: Options = {}
    i = start
    n = len(msg)
    while i < n:
        if i + 2 > n:
            return None
        units = msg[i + 1]
        if units == 0 or i + units * 8 > n:
            return None
        out.setdefault(msg[i], []).append(bytes(msg[i + 2 : i + units * 8]))
        i += units * 8
    return out


def _link_layer(opts: Options, kind: int) -> bytes | None:
    bodies = opts.get(kind)
    if not bodies or len(bodies[0]) < 6:
        return None
    return bodies[0][:6]


class Solicitation(NamedTuple):
    """A valid Neighbor Solicitation: target and source link-layer address (if sent)."""

    target: bytes
    source_mac: bytes | None


class Advertisement(NamedTuple):
    """A valid Neighbor Advertisement."""

    target: bytes
    router: bool
    solicited: bool
    override: bool
    target_mac: bytes | None


#: Why an NDP message is invalid (a counter name of the router).
NdpReason = Literal[
    "ndp-bad-hop-limit", "ndp-bad-code", "ndp-short", "ndp-bad-target", "ndp-bad-option",
    "ndp-bad-dad", "ndp-bad-flags", "ndp-bad-rs",
]  # fmt: skip


def _common(msg: bytes | memoryview, hop_limit: int, minimum: int) -> NdpReason | None:
    if hop_limit != HOP_LIMIT:
        return "ndp-bad-hop-limit"
    if msg[1] != 0:
        return "ndp-bad-code"
    if len(msg) < minimum:
        return "ndp-short"
    return None


def parse_ns(
    msg: bytes | memoryview, src: bytes, dst: bytes, hop_limit: int
) -> Solicitation | NdpReason:
    """A Neighbor Solicitation validated per RFC 4861 §7.1.1."""
    bad = _common(msg, hop_limit, NS_MIN)
    if bad:
        return bad
    target = bytes(msg[8:24])
    if a6.is_multicast(target):
        return "ndp-bad-target"
    opts = parse_options(msg, NS_MIN)
    if opts is None:
        return "ndp-bad-option"
    mac = _link_layer(opts, OPT_SOURCE_LL)
    if a6.is_unspecified(src) and (not a6.is_solicited_node(dst) or OPT_SOURCE_LL in opts):
        return "ndp-bad-dad"
    return Solicitation(target, mac)


def parse_na(msg: bytes | memoryview, dst: bytes, hop_limit: int) -> Advertisement | NdpReason:
    """A Neighbor Advertisement validated per RFC 4861 §7.1.2."""
    bad = _common(msg, hop_limit, NA_MIN)
    if bad:
        return bad
    flags = msg[4]
    target = bytes(msg[8:24])
    if a6.is_multicast(target):
        return "ndp-bad-target"
    if a6.is_multicast(dst) and flags & NA_SOLICITED:
        return "ndp-bad-flags"
    opts = parse_options(msg, NA_MIN)
    if opts is None:
        return "ndp-bad-option"
    return Advertisement(
        target, bool(flags & NA_ROUTER), bool(flags & NA_SOLICITED), bool(flags & NA_OVERRIDE),
        _link_layer(opts, OPT_TARGET_LL),
    )  # fmt: skip


def parse_rs(msg: bytes | memoryview, src: bytes, hop_limit: int) -> bytes | NdpReason | None:
    """A Router Solicitation validated per RFC 4861 §6.1.1: its source link-layer address
    (None if it sent none), or the reason it is invalid."""
    bad = _common(msg, hop_limit, RS_MIN)
    if bad:
        return bad
    opts = parse_options(msg, RS_MIN)
    if opts is None:
        return "ndp-bad-option"
    if a6.is_unspecified(src) and OPT_SOURCE_LL in opts:
        return "ndp-bad-rs"
    return _link_layer(opts, OPT_SOURCE_LL)


# -- building ------------------------------------------------------------------------------


def _ll_option(kind: int, mac: bytes) -> bytes:
    return bytes((kind, 1)) + mac


def build_ns(target: bytes, source_mac: bytes | None) -> bytes:
    """A Neighbor Solicitation for ``target`` (with our link-layer address unless None:
    a DAD probe carries none)."""
    body = bytes(4) + target
    if source_mac is not None:
        body += _ll_option(OPT_SOURCE_LL, source_mac)
    return bytes((ND_NEIGHBOR_SOLICIT, 0, 0, 0)) + body


def build_na(
    target: bytes, target_mac: bytes, *, router: bool, solicited: bool, override: bool = True
) -> bytes:
    """A Neighbor Advertisement for ``target`` with its link-layer address."""
    flags = (NA_ROUTER if router else 0) | (NA_SOLICITED if solicited else 0)
    flags |= NA_OVERRIDE if override else 0
    return (
        bytes((ND_NEIGHBOR_ADVERT, 0, 0, 0, flags, 0, 0, 0)) + target
        + _ll_option(OPT_TARGET_LL, target_mac)
    )  # fmt: skip


@dataclass(frozen=True)
class RouterAdvertParams:
    """Everything an RA carries (RFC 4861 §4.2, §4.6; RFC 8106 §5)."""

    source_mac: bytes
    prefix: bytes
    prefixlen: int
    cur_hop_limit: int = 64
    managed: bool = False
    other: bool = True
    router_lifetime: int = 1800
    reachable_time: int = 0
    retrans_timer: int = 0
    mtu: int | None = None
    on_link: bool = True
    autonomous: bool = True
    valid_lifetime: int = 86400
    preferred_lifetime: int = 14400
    rdnss: tuple[bytes, ...] = ()
    rdnss_lifetime: int = 1800
    dnssl: tuple[str, ...] = ()
    dnssl_lifetime: int = 1800


def build_ra(p: RouterAdvertParams, *, router_lifetime: int | None = None) -> bytes:
    """A Router Advertisement (``router_lifetime`` overrides, e.g. 0 for a final RA)."""
    flags = (RA_MANAGED if p.managed else 0) | (RA_OTHER if p.other else 0)
    life = p.router_lifetime if router_lifetime is None else router_lifetime
    msg = _RA.pack(ND_ROUTER_ADVERT, 0, 0, p.cur_hop_limit, flags, life,
                   p.reachable_time, p.retrans_timer)  # fmt: skip
    msg += _ll_option(OPT_SOURCE_LL, p.source_mac)
    if p.mtu is not None:
        msg += _MTU_OPT.pack(OPT_MTU, 1, 0, p.mtu)
    pflags = (PREFIX_ON_LINK if p.on_link else 0) | (PREFIX_AUTONOMOUS if p.autonomous else 0)
    msg += _PREFIX.pack(OPT_PREFIX_INFO, 4, p.prefixlen, pflags, p.valid_lifetime,
                        p.preferred_lifetime, a6.mask(p.prefix, p.prefixlen))  # fmt: skip
    if p.rdnss:
        units = 1 + 2 * len(p.rdnss)
        msg += _LIFETIME_OPT.pack(OPT_RDNSS, units, 0, p.rdnss_lifetime) + b"".join(p.rdnss)
    names = b""
    for domain in p.dnssl:  # as many names as fit an RA in a 1280-byte packet
        name = dns_name(domain)
        if name is not None and len(msg) + 8 + len(names) + len(name) + 7 <= RA_MAX:
            names += name
    if names:
        padded = names + bytes(-(8 + len(names)) % 8)
        units = (8 + len(padded)) // 8
        msg += _LIFETIME_OPT.pack(OPT_DNSSL, units, 0, p.dnssl_lifetime) + padded
    return msg
