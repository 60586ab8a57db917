"""ICMPv6 for the user netdev: echo (answered locally or relayed through the host) and the
error messages the router and the NAT send to guests.

Follows RFC 4443: errors (§3: Destination Unreachable 1, Packet Too Big 2, Time Exceeded
3, Parameter Problem 4) quote as much of the invoking packet as fits a 1280-byte packet
(§2.4 c); :func:`may_send_error` is §2.4 (e) - no error about an ICMPv6 error or a
Redirect, about a packet to a multicast address or sent as link-layer multicast (except
Packet Too Big and Parameter Problem code 2), or from an address that does not name one
node; :class:`RateLimit` is §2.4 (f), a token bucket. Echo requests to the router's own
addresses are answered by the router (libslirp's ``icmp6_send_echoreply``); others are
relayed: :class:`EchoRelay` maps guest (address, identifier) flows to host echo sockets -
``socket(AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6)`` ping sockets (``net.ipv4.ping_group_range``
governs IPv6 too), or a raw ICMPv6 socket, the adapter's choice, as for IPv4 - and the
host address (fec0::2) reaches host loopback ``::1`` (libslirp's ``sotranslate_out``).
:func:`echo_request` / :func:`parse_echo_reply` are the adapter's codec for those sockets
(the kernel computes ICMPv6 checksums on both kinds, RFC 3542 §3.1).

Sans-IO: :meth:`EchoRelay.outbound` returns a :class:`PingSend`, :meth:`EchoRelay.reply`
maps a reply back, :meth:`EchoRelay.expire` returns :class:`PingClose` for idle flows (the
flow table is the IPv4 relay's, :class:`.icmp_relay.EchoFlows`, with IPv6 addresses).
Invariant: at most ``max_flows`` flows; identifiers handed to the host (raw sockets) are
unique among live flows.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from ..icmp_relay import EchoFlows, EchoNames
from . import addr as a6

DST_UNREACH: Final = 1
PACKET_TOO_BIG: Final = 2
TIME_EXCEEDED: Final = 3
PARAM_PROBLEM: Final = 4
ECHO_REQUEST: Final = 128
ECHO_REPLY: Final = 129
REDIRECT: Final = 137

UNREACH_NO_ROUTE: Final = 0
UNREACH_ADMIN: Final = 1
UNREACH_BEYOND_SCOPE: Final = 2
UNREACH_ADDRESS: Final = 3
UNREACH_PORT: Final = 4
TIME_EXCEEDED_HOPS: Final = 0
TIME_EXCEEDED_REASSEMBLY: Final = 1

#: RFC 8200's minimum link MTU: an error packet is never larger.
ERROR_PACKET_MAX: Final = 1280
#: How much of the invoking packet an error quotes (1280 - IPv6 header - ICMPv6 header).
QUOTE_MAX: Final = ERROR_PACKET_MAX - 40 - 8
HOST_LOOPBACK: Final = "::1"

_ECHO = struct.Struct("!BBHHH")

FlowKey = tuple[bytes, int]  # guest address, guest echo identifier


def error_body(param: int, invoking: bytes | memoryview) -> bytes:
    """The body of an ICMPv6 error after type/code/checksum: the 32-bit ``param`` (unused,
    MTU or pointer) and the quoted invoking packet."""
    return param.to_bytes(4, "big") + bytes(invoking[:QUOTE_MAX])


def is_error_or_redirect(proto: int, upper: bytes | memoryview) -> bool:
    """Whether an upper-layer payload is an ICMPv6 error or Redirect message."""
    return proto == 58 and len(upper) > 0 and (upper[0] < 128 or upper[0] == REDIRECT)


def may_send_error(
    icmp_type: int, code: int, *, src: bytes, dst: bytes, link_multicast: bool,
    about_error: bool,
) -> bool:  # fmt: skip
    """RFC 4443 §2.4 (e): whether an error of ``icmp_type``/``code`` may be sent about a
    packet from ``src`` to ``dst`` (``about_error``: it was an ICMPv6 error or Redirect)."""
    if about_error or not a6.is_unicast(src):
        return False
    exempt = icmp_type == PACKET_TOO_BIG or (icmp_type == PARAM_PROBLEM and code == 2)
    return exempt or not (a6.is_multicast(dst) or link_multicast)


class RateLimit:
    """A token bucket (RFC 4443 §2.4 f): ``rate`` messages per second, bursts of ``burst``."""

    def __init__(self, rate: float = 100.0, burst: int = 50) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None

    def allow(self, now: float) -> bool:
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now if self._at is None else max(self._at, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    """An Echo Request for a host ping or raw socket (checksum left to the kernel)."""
    return _ECHO.pack(ECHO_REQUEST, 0, 0, ident, seq) + payload


def parse_echo_reply(data: bytes | memoryview) -> tuple[int, int, bytes] | None:
    """(identifier, sequence, payload) of an Echo Reply read from a host socket."""
    if len(data) < 8 or data[0] != ECHO_REPLY or data[1] != 0:
        return None
    _t, _c, _sum, ident, seq = _ECHO.unpack_from(data)
    return ident, seq, bytes(data[8:])


class PingSend(NamedTuple):
    """Send an echo request for flow ``key`` to ``host`` (open its socket first if new)."""

    key: FlowKey
    host_id: int
    host: str
    seq: int
    payload: bytes
    hop_limit: int


class PingClose(NamedTuple):
    key: FlowKey


class EchoRelay(EchoFlows[PingSend, PingClose]):
    """IPv6 echo flows of one user netdev (the table is :class:`.icmp_relay.EchoFlows`,
    shared with IPv4)."""

    NAMES = EchoNames(
        "icmp6-flow-limit", "icmp6-echo-relayed", "icmp6-reply-mismatch", "icmp6-echo-replies"
    )
    LOOPBACK = HOST_LOOPBACK

    def _host_text(self, dst: bytes) -> str:
        return a6.text(dst)

    def _guest_addr(self, host: str) -> bytes | None:
        return a6.parse(host.partition("%")[0])

    def _send(
        self, key: FlowKey, host_id: int, host: str, seq: int, payload: bytes, hops: int
    ) -> PingSend:
        return PingSend(key, host_id, host, seq, payload, hops)

    def _close(self, key: FlowKey) -> PingClose:
        return PingClose(key)
