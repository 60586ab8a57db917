"""The user netdev's DHCP server (BOOTP server port 67 on the host address or broadcast).

Baseline is libslirp's ``bootp.c``: a pool of 16 addresses from
``dhcpstart``, slot *i* <-> ``dhcpstart + i``; a MAC keeps its slot; a requested address
(option 50, else ``ciaddr``) is honoured when its slot is free or already that MAC's; a
REQUEST for an unavailable address gets a NAK ("requested address not available", sent to
broadcast); replies come from host:67 to 255.255.255.255:68 with the options 53, 54, 1,
3 and 6 (both left out with ``restrict=on``), 51 (86400 s), 12, 15, 66, 119, 60
("HTTPClient" for an ``http://`` bootfile), ``siaddr`` = host (or the address of
``tftp-server-name`` when that is an IPv4 literal; libslirp also resolves names, which is
not done here) and ``file`` = bootfile; a
message without a type (plain BOOTP) is handled as a REQUEST.

Beyond libslirp (RFC 2131/2132):

* renewal and rebinding times (58/59: 1/2 and 7/8 of the lease) and lease expiry: an
  expired or released slot is free again (its last owner still gets it back first); an
  OFFER reserves its slot for :data:`OFFER_HOLD` seconds;
* RELEASE frees the lease; DECLINE quarantines the address for :data:`DECLINE_HOLD`
  seconds; INFORM is answered with the configuration (no address, no lease time) by
  unicast to ``ciaddr``; a REQUEST naming another server (option 54) withdraws our offer;
* the parameter request list (55) is honoured: options are sent in the order the client
  asked for them, and configuration options it did not ask for are left out (the subnet
  mask is always sent, and 60 with an ``http://`` bootfile, as libslirp does); without a
  list the libslirp set and order are used;
* replies to a client that has an address (``ciaddr``: RENEWING, REBINDING, INFORM) are
  unicast to it; NAKs carry the server identifier, yiaddr 0;
* option 26 (interface MTU) when ``x-mtu`` is configured; the options area grows past 312
  bytes only as far as the client's maximum message size (57) allows, options that do
  not fit are left out and counted;
* several guests each get their own lease; the lease table is exposed (:meth:`leases`,
  :meth:`leases_for`) and changes are reported as events (``DHCP_LEASE_GRANTED``,
  ``DHCP_LEASE_RELEASED`` with reason ``release``, ``decline`` or ``expired``).

Sans-IO: :meth:`DhcpServer.handle` takes a UDP payload, the client's MAC and ``now`` and
returns replies; :meth:`DhcpServer.expire` runs the timers. Malformed messages (dpkt cannot
decode them, wrong op/hardware type/length, bad option lengths) are counted and dropped.
Invariant: a slot is bound to at most one MAC and a MAC holds at most one slot.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

import dpkt

from netstack.errors import RemoteInputError
from netstack.proto.ipv4 import BROADCAST_IP, BROADCAST_MAC

from ..options import DHCP_POOL_SIZE, UserConfig

LEASE_TIME: Final = 24 * 3600
OFFER_HOLD: Final = 60.0
DECLINE_HOLD: Final = 600.0
BOOTP_SERVER: Final = 67
BOOTP_CLIENT: Final = 68
#: The options area (cookie included) of a reply without a larger option 57: 576-byte
#: messages (RFC 2131); replies are zero-padded to a whole BOOTP message, as libslirp does.
DEFAULT_OPTIONS_AREA: Final = 312
MIN_MESSAGE: Final = 236 + DEFAULT_OPTIONS_AREA
_BOOTP_FIXED: Final = 236
_MAGIC: Final = 0x63825363

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8

OPT_NETMASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN = 1, 3, 6, 12, 15
OPT_MTU, OPT_REQ_IP, OPT_LEASE, OPT_MSGTYPE, OPT_SERVER_ID = 26, 50, 51, 53, 54
OPT_PRL, OPT_MESSAGE, OPT_MAXSIZE, OPT_T1, OPT_T2 = 55, 56, 57, 58, 59
OPT_VENDOR, OPT_CLIENT_ID, OPT_TFTP_SERVER, OPT_SEARCH = 60, 61, 66, 119
_SLIRP_ORDER: Final = (OPT_NETMASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN,
                       OPT_TFTP_SERVER, OPT_SEARCH, OPT_VENDOR, OPT_MTU)  # fmt: skip
NAK_MESSAGE: Final = b"requested address not available"

GRANTED = "DHCP_LEASE_GRANTED"
RELEASED = "DHCP_LEASE_RELEASED"


class DhcpReply(NamedTuple):
    """A reply: Ethernet and IP destination, and the BOOTP message."""

    dst_mac: bytes
    dst_ip: bytes
    payload: bytes


@dataclass
class Slot:
    """One pool address and who holds it."""

    addr: int
    mac: bytes | None = None  # current or last owner
    state: str = "free"  # free | offered | bound | declined
    expires: float = 0.0
    hostname: str | None = None
    client_id: bytes | None = None


def encode_search(domains: tuple[str, ...]) -> bytes:
    """RFC 3397 domain search list (DNS names with compression pointers relative to the
    start of the list). Names that are not valid DNS names are left out."""
    out = b""
    ptrs: dict[bytes, int] = {}
    for name in domains:
        labels = name.rstrip(".").split(".")
        if not name or any(not 0 < len(lb.encode()) <= 63 for lb in labels):
            continue
        try:
            out += dpkt.dns.pack_name(name.rstrip("."), len(out), ptrs)
        except (UnicodeError, ValueError, struct.error):
            continue
    return out


def _split_option(code: int, data: bytes) -> bytes:
    """``data`` as one or more (RFC 3396) instances of option ``code``."""
    if not data:
        return bytes([code, 0])
    return b"".join(
        bytes([code, len(c)]) + c for c in (data[i : i + 255] for i in range(0, len(data), 255))
    )


#: What the DHCP server counts.
DhcpCounter = Literal[
    "dhcp-decline-unknown", "dhcp-expired", "dhcp-malformed", "dhcp-option-omitted",
    "dhcp-other-server", "dhcp-pool-exhausted", "dhcp-release-unknown", "dhcp-rx-discover",
    "dhcp-rx-offer", "dhcp-rx-request", "dhcp-rx-decline", "dhcp-rx-ack", "dhcp-rx-nak",
    "dhcp-rx-release", "dhcp-rx-inform", "dhcp-rx-other", "dhcp-tx-offer", "dhcp-tx-ack",
    "dhcp-tx-nak",
]  # fmt: skip


class DhcpServer:
    """The lease pool and the DHCP protocol machine for one user netdev."""

    def __init__(
        self,
        cfg: UserConfig,
        *,
        lease_time: int = LEASE_TIME,
        pool_size: int = DHCP_POOL_SIZE,
        siaddr: int | None = None,
        events: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.lease_time = lease_time
        self.server_id = cfg.host.to_bytes(4, "big")
        if siaddr is None:  # libslirp: the TFTP server's address when it has one
            siaddr = _literal_ipv4(cfg.tftp_server_name) or cfg.host
        self.siaddr = siaddr.to_bytes(4, "big")
        self.slots = [Slot(cfg.dhcp_start + i) for i in range(pool_size)]
        self.counters: Counter[DhcpCounter] = Counter()
        #: Lease events (QMP); the netdev's outbox list when given (``events``).
        self.events: list[tuple[str, dict[str, Any]]] = events if events is not None else []
        self._wake: float | None = None
        self._config = self._config_options()

    # -- configuration options -------------------------------------------------------------

    def _config_options(self) -> dict[int, bytes]:
        cfg = self.cfg
        opts: dict[int, bytes] = {OPT_NETMASK: cfg.mask.to_bytes(4, "big")}
        if not cfg.restrict:
            opts[OPT_ROUTER] = self.server_id
            opts[OPT_DNS] = cfg.dns.to_bytes(4, "big")
        if cfg.hostname:
            opts[OPT_HOSTNAME] = cfg.hostname.encode()
        if cfg.domainname:
            opts[OPT_DOMAIN] = cfg.domainname.encode()
        if cfg.tftp_server_name:
            opts[OPT_TFTP_SERVER] = cfg.tftp_server_name.encode()
        search = encode_search(cfg.dnssearch)
        if search:
            opts[OPT_SEARCH] = search
        if cfg.bootfile and cfg.bootfile.startswith("http://"):
            opts[OPT_VENDOR] = b"HTTPClient"
        if cfg.mtu != 1500:
            opts[OPT_MTU] = cfg.mtu.to_bytes(2, "big")
        return opts

    # -- input -----------------------------------------------------------------------------

    def handle(self, payload: bytes, now: float) -> list[DhcpReply]:
        """One BOOTP/DHCP message from a client; returns the replies to send."""
        self.expire(now)
        try:
            msg = self._decode(payload)
        except RemoteInputError:
            self.counters["dhcp-malformed"] += 1
            return []
        opts: dict[int, bytes] = {}
        for code, data in msg.opts:
            opts[code] = opts.get(code, b"") + bytes(data)  # RFC 3396 concatenation
        mtype_raw = opts.get(OPT_MSGTYPE)
        if mtype_raw is not None and len(mtype_raw) != 1:
            self.counters["dhcp-malformed"] += 1
            return []
        mtype = mtype_raw[0] if mtype_raw else REQUEST  # plain BOOTP: as slirp, a REQUEST
        mac = bytes(msg.chaddr[:6])
        self.counters[_RX.get(mtype, "dhcp-rx-other")] += 1
        if mtype == DISCOVER:
            return self._discover(msg, mac, opts, now)
        if mtype == REQUEST:
            return self._request(msg, mac, opts, now)
        if mtype == RELEASE:
            self._release(msg, mac)
        elif mtype == DECLINE:
            self._decline(mac, opts, now)
        elif mtype == INFORM:
            return self._inform(msg, mac, opts)
        return []

    @staticmethod
    def _decode(payload: bytes) -> Any:
        """The client message in ``payload``; RemoteInputError if it is not one."""
        if len(payload) < _BOOTP_FIXED:
            raise RemoteInputError("BOOTP message too short")
        if len(payload) < _BOOTP_FIXED + 4:
            payload = payload + bytes(_BOOTP_FIXED + 4 - len(payload))
        try:
            msg = dpkt.dhcp.DHCP(payload)
        except (dpkt.UnpackError, IndexError, ValueError, struct.error) as exc:
            raise RemoteInputError(f"undecodable BOOTP message: {exc}") from exc
        if msg.op != dpkt.dhcp.DHCP_OP_REQUEST or msg.hrd != 1 or msg.hln != 6:
            raise RemoteInputError("not an Ethernet BOOTREQUEST")
        if msg.magic != _MAGIC:
            msg.opts = []  # BOOTP without vendor extensions
        elif any(len(data) > 255 for _, data in msg.opts):
            raise RemoteInputError("option longer than 255 bytes")
        return msg

    # -- allocation ------------------------------------------------------------------------

    def _slot_of(self, addr: int) -> Slot | None:
        index = addr - self.cfg.dhcp_start
        return self.slots[index] if 0 <= index < len(self.slots) else None

    def _owned(self, mac: bytes) -> Slot | None:
        for slot in self.slots:
            if slot.mac == mac and slot.state in ("offered", "bound"):
                return slot
        return None

    def _available_to(self, slot: Slot, mac: bytes) -> bool:
        if slot.state == "declined":
            return False
        return slot.state == "free" or slot.mac == mac

    def _choose(self, mac: bytes, requested: int) -> Slot | None:
        """The slot for ``mac``: requested, its own, its last, never used, oldest free."""
        if requested:
            slot = self._slot_of(requested)
            if slot is not None and self._available_to(slot, mac):
                return slot
        own = self._owned(mac)
        if own is not None:
            return own
        free = [s for s in self.slots if s.state == "free"]
        for slot in free:
            if slot.mac == mac:
                return slot
        for slot in free:
            if slot.mac is None:
                return slot
        return min(free, key=lambda s: s.expires, default=None)

    def _take(
        self, slot: Slot, mac: bytes, state: str, until: float, opts: dict[int, bytes]
    ) -> None:
        other = self._owned(mac)
        if other is not None and other is not slot:
            other.state = "free"
        slot.mac = mac
        slot.state = state
        slot.expires = until
        host = opts.get(OPT_HOSTNAME)
        slot.hostname = host.decode("utf-8", "replace") if host else None
        slot.client_id = opts.get(OPT_CLIENT_ID)
        if self._wake is None or until < self._wake:
            self._wake = until

    def _discover(
        self, msg: Any, mac: bytes, opts: dict[int, bytes], now: float
    ) -> list[DhcpReply]:
        slot = self._choose(mac, _addr(opts.get(OPT_REQ_IP)))
        if slot is None:
            self.counters["dhcp-pool-exhausted"] += 1
            return []
        if slot.state != "bound":
            self._take(slot, mac, "offered", now + OFFER_HOLD, opts)
        return [self._reply(msg, OFFER, slot.addr, opts, lease=True)]

    def _request(self, msg: Any, mac: bytes, opts: dict[int, bytes], now: float) -> list[DhcpReply]:
        server = opts.get(OPT_SERVER_ID)
        if server is not None and server != self.server_id:
            own = self._owned(mac)
            if own is not None and own.state == "offered":
                own.state = "free"
            self.counters["dhcp-other-server"] += 1
            return []
        requested = _addr(opts.get(OPT_REQ_IP)) or msg.ciaddr
        if requested:
            slot = self._slot_of(requested)
            if slot is None or not self._available_to(slot, mac):
                return [self._nak(msg)]
        else:
            slot = self._choose(mac, 0)
            if slot is None:
                self.counters["dhcp-pool-exhausted"] += 1
                return []
        renewed = slot.state == "bound" and slot.mac == mac
        self._take(slot, mac, "bound", now + self.lease_time, opts)
        event: dict[str, Any] = {
            "mac-address": _mac_text(mac),
            "ip-address": _ip(slot.addr),
            "lease-time": self.lease_time,
            "renewal": renewed,
        }
        if slot.hostname:
            event["hostname"] = slot.hostname
        self.events.append((GRANTED, event))
        return [self._reply(msg, ACK, slot.addr, opts, lease=True)]

    def _release(self, msg: Any, mac: bytes) -> None:
        slot = self._slot_of(msg.ciaddr)
        if slot is None or slot.mac != mac or slot.state != "bound":
            self.counters["dhcp-release-unknown"] += 1
            return
        slot.state = "free"
        self._event_released(slot, "release")

    def _decline(self, mac: bytes, opts: dict[int, bytes], now: float) -> None:
        slot = self._slot_of(_addr(opts.get(OPT_REQ_IP)))
        if slot is None or slot.mac != mac or slot.state not in ("offered", "bound"):
            self.counters["dhcp-decline-unknown"] += 1
            return
        was_bound = slot.state == "bound"
        slot.state = "declined"
        slot.expires = now + DECLINE_HOLD
        if self._wake is None or slot.expires < self._wake:
            self._wake = slot.expires
        if was_bound:
            self._event_released(slot, "decline")
        slot.mac = None

    def _inform(self, msg: Any, mac: bytes, opts: dict[int, bytes]) -> list[DhcpReply]:
        if not msg.ciaddr:
            self.counters["dhcp-malformed"] += 1
            return []
        return [self._reply(msg, ACK, 0, opts, lease=False)]

    def _event_released(self, slot: Slot, reason: str) -> None:
        assert slot.mac is not None
        self.events.append(
            (RELEASED, {"mac-address": _mac_text(slot.mac), "ip-address": _ip(slot.addr),
                        "reason": reason})
        )  # fmt: skip

    # -- replies ---------------------------------------------------------------------------

    def _reply(
        self, msg: Any, mtype: int, yiaddr: int, opts: dict[int, bytes], *, lease: bool
    ) -> DhcpReply:
        head = [bytes([OPT_MSGTYPE, 1, mtype]), bytes([OPT_SERVER_ID, 4]) + self.server_id]
        if lease:
            t = self.lease_time
            head.append(bytes([OPT_LEASE, 4]) + t.to_bytes(4, "big"))
            head.append(bytes([OPT_T1, 4]) + (t // 2).to_bytes(4, "big"))
            head.append(bytes([OPT_T2, 4]) + (t * 7 // 8).to_bytes(4, "big"))
        prl = opts.get(OPT_PRL)
        config = self._config
        if prl:
            order = [OPT_NETMASK] + [c for c in dict.fromkeys(prl) if c != OPT_NETMASK]
            if OPT_VENDOR in config:
                order.append(OPT_VENDOR)
        else:
            order = list(_SLIRP_ORDER)
        area = DEFAULT_OPTIONS_AREA
        maxsize = opts.get(OPT_MAXSIZE)
        if maxsize is not None and len(maxsize) == 2:
            area = max(area, min(int.from_bytes(maxsize, "big"), 1500) - 28 - _BOOTP_FIXED)
        body = b"".join(head)
        used = 4 + len(body) + 1  # cookie, options, end
        for code in dict.fromkeys(order):
            data = config.get(code)
            if data is None:
                continue
            encoded = _split_option(code, data)
            if used + len(encoded) > area:
                self.counters["dhcp-option-omitted"] += 1
                continue
            body += encoded
            used += len(encoded)
        return self._message(msg, mtype, yiaddr, body, area)

    def _nak(self, msg: Any) -> DhcpReply:
        body = (bytes([OPT_MSGTYPE, 1, NAK, OPT_SERVER_ID, 4]) + self.server_id
                + bytes([OPT_MESSAGE, len(NAK_MESSAGE)]) + NAK_MESSAGE)  # fmt: skip
        return self._message(msg, NAK, 0, body, DEFAULT_OPTIONS_AREA)

    def _message(self, msg: Any, mtype: int, yiaddr: int, options: bytes, area: int) -> DhcpReply:
        cfg = self.cfg
        boot = (cfg.bootfile or "").encode()[:127] if mtype != NAK else b""
        reply = dpkt.dhcp.DHCP(
            op=dpkt.dhcp.DHCP_OP_REPLY, hrd=1, hln=6, hops=0, xid=msg.xid, secs=0,
            flags=msg.flags, ciaddr=msg.ciaddr if mtype == ACK else 0, yiaddr=yiaddr,
            siaddr=int.from_bytes(self.siaddr, "big") if mtype != NAK else 0,
            giaddr=msg.giaddr, chaddr=bytes(msg.chaddr[:6]).ljust(16, b"\0"),
            sname=bytes(64), file=boot.ljust(128, b"\0"), magic=_MAGIC, opts=[],
        )  # fmt: skip
        packed = (reply.pack_hdr() + options + b"\xff").ljust(MIN_MESSAGE, b"\0")
        self.counters[_TX[mtype]] += 1
        if mtype == ACK and msg.ciaddr:  # RENEWING, REBINDING, INFORM: the client has an address
            return DhcpReply(bytes(msg.chaddr[:6]), msg.ciaddr.to_bytes(4, "big"), packed)
        return DhcpReply(BROADCAST_MAC, BROADCAST_IP, packed)

    # -- timers and views ------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Free offers, leases and quarantines whose time is up."""
        if self._wake is None or now < self._wake:
            return
        wake: float | None = None
        for slot in self.slots:
            if slot.state == "free":
                continue
            if slot.expires <= now:
                if slot.state == "bound":
                    self._event_released(slot, "expired")
                slot.state = "free"
                self.counters["dhcp-expired"] += 1
            elif wake is None or slot.expires < wake:
                wake = slot.expires
        self._wake = wake

    def next_deadline(self) -> float | None:
        return self._wake

    def leases_for(self, mac: bytes) -> list[tuple[str, int]]:
        """The bound addresses of ``mac`` (with the prefix length)."""
        prefix = self.cfg.prefixlen
        return [(_ip(s.addr), prefix) for s in self.slots if s.mac == mac and s.state == "bound"]

    def leases(self, now: float) -> list[dict[str, Any]]:
        """The lease table: offered and bound slots."""
        out: list[dict[str, Any]] = []
        for slot in self.slots:
            if slot.state not in ("offered", "bound") or slot.mac is None:
                continue
            entry: dict[str, Any] = {
                "mac-address": _mac_text(slot.mac),
                "ip-address": _ip(slot.addr),
                "state": slot.state,
                "expires-in": max(0, int(slot.expires - now)),
            }
            if slot.hostname:
                entry["hostname"] = slot.hostname
            if slot.client_id:
                entry["client-id"] = slot.client_id.hex()
            out.append(entry)
        return out


#: Messages received, by type (``dhcp-rx-other``: any other type).
_RX: Final[dict[int, DhcpCounter]] = {
    DISCOVER: "dhcp-rx-discover", OFFER: "dhcp-rx-offer", REQUEST: "dhcp-rx-request",
    DECLINE: "dhcp-rx-decline", ACK: "dhcp-rx-ack", NAK: "dhcp-rx-nak",
    RELEASE: "dhcp-rx-release", INFORM: "dhcp-rx-inform",
}  # fmt: skip
#: Messages sent, by type.
_TX: Final[dict[int, DhcpCounter]] = {
    OFFER: "dhcp-tx-offer", ACK: "dhcp-tx-ack", NAK: "dhcp-tx-nak",
}  # fmt: skip


def _literal_ipv4(text: str | None) -> int:
    """A dotted-quad IPv4 literal as an integer (0 otherwise: names are not resolved)."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, text or ""), "big")
    except OSError:
        return 0


def _addr(raw: bytes | None) -> int:
    return int.from_bytes(raw, "big") if raw is not None and len(raw) == 4 else 0


def _ip(addr: int) -> str:
    return socket.inet_ntoa(addr.to_bytes(4, "big"))


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
