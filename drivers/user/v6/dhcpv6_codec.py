"""DHCPv6 messages and options: a small, strict codec (RFC 8415 §8, §21).

dpkt has no DHCPv6 module, so this is our own. A client/server message is ``msg-type``
(1 byte), ``transaction-id`` (3 bytes) and options (code and length, 2 bytes each, then the
data); relay messages (12/13) are recognised and refused by the server, never decoded.
Parsers return None on anything malformed (an option running past its container, an
IA_NA shorter than 12 bytes, an IA Address shorter than 24) - never raise. Builders take
and return ``bytes``.

Options owned here: Client/Server Identifier (1/2), IA_NA (3) with IA Address (5),
Option Request (6), Preference (7), Elapsed Time (8), Status Code (13), Rapid Commit (14),
DNS Recursive Name Server (23, RFC 3646), Domain Search List (24), Boot File URL (59,
RFC 5970); IA_TA (4) and IA_PD (25) are only recognised (Information-Request must not carry
any IA). DUIDs (§11): the server's is a DUID-LL (type 3) of its MAC.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

SOLICIT: Final = 1
ADVERTISE: Final = 2
REQUEST: Final = 3
CONFIRM: Final = 4
RENEW: Final = 5
REBIND: Final = 6
REPLY: Final = 7
RELEASE: Final = 8
DECLINE: Final = 9
RECONFIGURE: Final = 10
INFORMATION_REQUEST: Final = 11
RELAY_FORW: Final = 12
RELAY_REPL: Final = 13

OPT_CLIENTID: Final = 1
OPT_SERVERID: Final = 2
OPT_IA_NA: Final = 3
OPT_IA_TA: Final = 4
OPT_IAADDR: Final = 5
OPT_ORO: Final = 6
OPT_PREFERENCE: Final = 7
OPT_ELAPSED_TIME: Final = 8
OPT_STATUS_CODE: Final = 13
OPT_RAPID_COMMIT: Final = 14
OPT_DNS_SERVERS: Final = 23
OPT_DOMAIN_LIST: Final = 24
OPT_IA_PD: Final = 25
OPT_BOOTFILE_URL: Final = 59
IA_OPTIONS: Final = frozenset((OPT_IA_NA, OPT_IA_TA, OPT_IA_PD))

STATUS_SUCCESS: Final = 0
STATUS_UNSPEC_FAIL: Final = 1
STATUS_NO_ADDRS_AVAIL: Final = 2
STATUS_NO_BINDING: Final = 3
STATUS_NOT_ON_LINK: Final = 4
STATUS_USE_MULTICAST: Final = 5

DUID_LLT: Final = 1
DUID_EN: Final = 2
DUID_LL: Final = 3
HW_ETHERNET: Final = 1
#: RFC 8415 §11.1: a DUID is at most 128 bytes (plus its 2-byte type).
DUID_MAX: Final = 130

CLIENT_PORT: Final = 546
SERVER_PORT: Final = 547

TYPE_NAMES: Final = {
    SOLICIT: "solicit", ADVERTISE: "advertise", REQUEST: "request", CONFIRM: "confirm",
    RENEW: "renew", REBIND: "rebind", REPLY: "reply", RELEASE: "release",
    DECLINE: "decline", RECONFIGURE: "reconfigure", INFORMATION_REQUEST: "information-request",
    RELAY_FORW: "relay-forw", RELAY_REPL: "relay-repl",
}  # fmt: skip

_OPT = struct.Struct("!HH")
_IA = struct.Struct("!III")
_IAADDR = struct.Struct("!16sII")

Options = list[tuple[int, bytes]]


class Message(NamedTuple):
    msg_type: int
    xid: int
    options: Options

    def first(self, code: int) -> bytes | None:
        for c, data in self.options:
            if c == code:
                return data
        return None

    def all(self, code: int) -> list[bytes]:
        return [data for c, data in self.options if c == code]

    def has(self, code: int) -> bool:
        return any(c == code for c, _ in self.options)


class IaAddress(NamedTuple):
    address: bytes
    preferred: int
    valid: int


class IaNa(NamedTuple):
    iaid: int
    t1: int
    t2: int
    addresses: list[IaAddress]


def parse_options(data: bytes | memoryview, limit: int = 256) -> Options | None:
    """The options in ``data`` (at most ``limit``), or None if malformed."""
    out: Options = []
    i, n = 0, len(data)
    while i < n:
        if i + 4 > n or len(out) >= limit:
            return None
        code, length = _OPT.unpack_from(data, i)
        if i + 4 + length > n:
            return None
        out.append((code, bytes(data[i + 4 : i + 4 + length])))
        i += 4 + length
    return out


def parse_message(data: bytes | memoryview) -> Message | None:
    """A client/server message (relay messages and malformed ones give None)."""
    if len(data) < 4 or data[0] in (RELAY_FORW, RELAY_REPL):
        return None
    options = parse_options(data[4:])
    if options is None:
        return None
    return Message(data[0], int.from_bytes(data[1:4], "big"), options)


def parse_ia_na(data: bytes) -> IaNa | None:
    if len(data) < _IA.size:
        return None
    iaid, t1, t2 = _IA.unpack_from(data)
    inner = parse_options(data[_IA.size :])
    if inner is None:
        return None
    addresses = []
    for code, body in inner:
        if code == OPT_IAADDR:
            if len(body) < _IAADDR.size or parse_options(body[_IAADDR.size :]) is None:
                return None
            addresses.append(IaAddress(*_IAADDR.unpack_from(body)))
    return IaNa(iaid, t1, t2, addresses)


def parse_oro(data: bytes | None) -> set[int]:
    if data is None:
        return set()
    return {int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)}


def option(code: int, data: bytes) -> bytes:
    return _OPT.pack(code, len(data)) + data


def message(msg_type: int, xid: int, options: list[bytes]) -> bytes:
    return bytes((msg_type,)) + (xid & 0xFFFFFF).to_bytes(3, "big") + b"".join(options)


def status(code: int, text: str = "") -> bytes:
    return option(OPT_STATUS_CODE, code.to_bytes(2, "big") + text.encode("utf-8"))


def ia_address(address: bytes, preferred: int, valid: int) -> bytes:
    return option(OPT_IAADDR, _IAADDR.pack(address, preferred, valid))


def ia_na(iaid: int, t1: int, t2: int, inner: list[bytes]) -> bytes:
    return option(OPT_IA_NA, _IA.pack(iaid, t1, t2) + b"".join(inner))


def duid_ll(mac: bytes) -> bytes:
    """A DUID-LL (RFC 8415 §11.4) for an Ethernet MAC."""
    return struct.pack("!HH", DUID_LL, HW_ETHERNET) + mac


def duid_mac(duid: bytes) -> bytes | None:
    """The Ethernet MAC inside a DUID-LLT or DUID-LL, if it has one."""
    if len(duid) >= 4 and int.from_bytes(duid[2:4], "big") == HW_ETHERNET:
        kind = int.from_bytes(duid[:2], "big")
        if kind == DUID_LL and len(duid) == 10:
            return duid[4:10]
        if kind == DUID_LLT and len(duid) == 14:
            return duid[8:14]
    return None
