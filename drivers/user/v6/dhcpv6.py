"""The user netdev's DHCPv6 server (UDP 547 at ff02::1:2 or the router's addresses).

Baseline is libslirp's ``dhcpv6.c``: Information-Request is answered with
DNS servers (23, the IPv6 DNS address) and, when asked for in the Option Request option,
the boot file URL (59: ``tftp://[host]/bootfile``, or the bootfile itself when it is
already a URL); a request carrying an IA is discarded. Beyond libslirp (RFC 8415):

* stateful addresses (IA_NA): Solicit -> Advertise (Preference 255, the offer held for
  :data:`OFFER_HOLD` seconds) or, with Rapid Commit, Reply; Request, Renew, Rebind ->
  Reply with the binding; Release frees it; Decline quarantines the address for
  :data:`DECLINE_HOLD` seconds; Confirm answers Success or NotOnLink. One address per
  (DUID, IAID), from the prefix; the address is a hash of DUID and IAID probed past the
  reserved ones (subnet-router anycast, host, DNS, RFC 2526 anycast) and past addresses in
  use, so a guest gets the same address again after a restart of the daemon - bindings
  unknown to a Renew or Rebind are re-created for that reason. Lifetimes follow the RA
  prefix (preferred 14400 s, valid 86400 s; T1 = 0.5, T2 = 0.8 of preferred);
* every Reply and Advertise carries our Server Identifier (a DUID-LL of the router's MAC;
  libslirp sends none) and the domain search list (24) when one is configured; DNS (23)
  is left out when no DNS relay exists (``restrict=on``);
* validation per RFC 8415 §16 (Client Identifier present where required, Server
  Identifier present/absent/ours as each type requires); relay messages are refused;
* events as the IPv4 server's (``DHCP_LEASE_GRANTED``, ``DHCP_LEASE_RELEASED`` with reason
  ``release``, ``decline`` or ``expired``), with ``client-id`` (the DUID) and ``iaid``; the
  lease table is exposed (:meth:`Dhcpv6Server.leases`, :meth:`Dhcpv6Server.leases_for`).

Sans-IO: :meth:`Dhcpv6Server.handle` takes a UDP payload with its addressing, the
sender's MAC and ``now`` and returns :class:`Dhcpv6Reply` items; the router builds the
frames. Invariants: at most ``max_leases`` leases and quarantined addresses; a (DUID, IAID)
holds at most one address and an address at most one (DUID, IAID); nothing raises on input.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, Literal, NamedTuple

from . import addr as a6
from . import dhcpv6_codec as d6
from .config import Ipv6Config
from .dnsname import dns_names

#: What the DHCPv6 server counts.
Dhcpv6Counter = Literal[
    "dhcpv6-bad-duid", "dhcpv6-decline-unknown", "dhcpv6-expired", "dhcpv6-ignored",
    "dhcpv6-invalid", "dhcpv6-malformed", "dhcpv6-no-ia-na", "dhcpv6-not-for-us",
    "dhcpv6-pool-exhausted", "dhcpv6-release-unknown", "dhcpv6-stateful-off",
    "dhcpv6-table-full", "dhcpv6-unknown-type", "dhcpv6-rx-solicit", "dhcpv6-rx-advertise",
    "dhcpv6-rx-request", "dhcpv6-rx-confirm", "dhcpv6-rx-renew", "dhcpv6-rx-rebind",
    "dhcpv6-rx-reply", "dhcpv6-rx-release", "dhcpv6-rx-decline", "dhcpv6-rx-reconfigure",
    "dhcpv6-rx-information-request", "dhcpv6-rx-relay-forw", "dhcpv6-rx-relay-repl",
    "dhcpv6-tx-advertise", "dhcpv6-tx-reply",
]  # fmt: skip
#: Messages received, by type.
_RX: Final[dict[int, Dhcpv6Counter]] = {
    d6.SOLICIT: "dhcpv6-rx-solicit", d6.ADVERTISE: "dhcpv6-rx-advertise",
    d6.REQUEST: "dhcpv6-rx-request", d6.CONFIRM: "dhcpv6-rx-confirm",
    d6.RENEW: "dhcpv6-rx-renew", d6.REBIND: "dhcpv6-rx-rebind", d6.REPLY: "dhcpv6-rx-reply",
    d6.RELEASE: "dhcpv6-rx-release", d6.DECLINE: "dhcpv6-rx-decline",
    d6.RECONFIGURE: "dhcpv6-rx-reconfigure",
    d6.INFORMATION_REQUEST: "dhcpv6-rx-information-request",
    d6.RELAY_FORW: "dhcpv6-rx-relay-forw", d6.RELAY_REPL: "dhcpv6-rx-relay-repl",
}  # fmt: skip
#: Messages sent, by type.
_TX: Final[dict[int, Dhcpv6Counter]] = {
    d6.ADVERTISE: "dhcpv6-tx-advertise", d6.REPLY: "dhcpv6-tx-reply",
}  # fmt: skip

GRANTED: Final = "DHCP_LEASE_GRANTED"
RELEASED: Final = "DHCP_LEASE_RELEASED"
PREFERRED: Final = 14400
VALID: Final = 86400
OFFER_HOLD: Final = 60.0
DECLINE_HOLD: Final = 3600.0
DEFAULT_MAX_LEASES: Final = 1024
#: IA_NA options served per message (more are left out).
MAX_IA_PER_MESSAGE: Final = 8
_PROBES_LARGE: Final = 64
_SMALL_SPACE_BITS: Final = 12
#: The last of RFC 2526's reserved anycast interface identifiers (EUI-64 format, /64).
_RFC2526_LAST: Final = 0xFDFFFFFFFFFFFFFF


class Dhcpv6Reply(NamedTuple):
    """A reply for ``dst``:``dport``; ``src`` is the server address to send from (None:
    the router's link-local address, for requests sent to the multicast group)."""

    dst: bytes
    dport: int
    src: bytes | None
    payload: bytes


class Lease:
    __slots__ = ("address", "duid", "expires", "iaid", "mac", "state")

    def __init__(self, duid: bytes, iaid: int, address: bytes, mac: bytes) -> None:
        self.duid = duid
        self.iaid = iaid
        self.address = address
        self.mac = mac
        self.state = "offered"
        self.expires = 0.0


InUse = Callable[[bytes, bytes], bool]  # (address, requester MAC) -> someone else uses it


class Dhcpv6Server:
    """DHCPv6 for one user netdev."""

    def __init__(
        self, cfg: Ipv6Config, server_mac: bytes, *, max_leases: int = DEFAULT_MAX_LEASES,
        in_use: InUse | None = None, events: list[tuple[str, dict[str, Any]]] | None = None,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.duid = d6.duid_ll(server_mac)
        self.max_leases = max_leases
        self.in_use = in_use
        self.preferred = PREFERRED
        self.valid = VALID
        self.counters: Counter[Dhcpv6Counter] = Counter()
        #: Lease events (QMP); the netdev's outbox list when given (``events``).
        self.events: list[tuple[str, dict[str, Any]]] = events if events is not None else []
        self._leases: dict[tuple[bytes, int], Lease] = {}
        self._by_addr: dict[bytes, Lease] = {}
        self._declined: dict[bytes, float] = {}
        self._wake: float | None = None
        self._search = dns_names(cfg.dnssearch)
        self._bootfile = _boot_url(cfg)

    # -- input -----------------------------------------------------------------------------

    def handle(
        self, payload: bytes, src: bytes, sport: int, dst: bytes, mac: bytes, now: float
    ) -> list[Dhcpv6Reply]:
        msg = d6.parse_message(payload)
        if msg is None:
            self.counters["dhcpv6-malformed"] += 1
            return []
        kind = _RX.get(msg.msg_type)
        if kind is None:
            self.counters["dhcpv6-unknown-type"] += 1
            return []
        self.counters[kind] += 1
        client = msg.first(d6.OPT_CLIENTID)
        server = msg.first(d6.OPT_SERVERID)
        if client is not None and not 0 < len(client) <= d6.DUID_MAX:
            self.counters["dhcpv6-bad-duid"] += 1
            return []
        t = msg.msg_type
        needs_server = t in (d6.REQUEST, d6.RENEW, d6.RELEASE, d6.DECLINE)
        forbids_server = t in (d6.SOLICIT, d6.CONFIRM, d6.REBIND)
        if (
            (t != d6.INFORMATION_REQUEST and client is None)
            or (needs_server and server is None)
            or (forbids_server and server is not None)
        ):
            self.counters["dhcpv6-invalid"] += 1
            return []
        if server is not None and server != self.duid:
            self.counters["dhcpv6-not-for-us"] += 1
            return []
        body: list[bytes] | None
        if t == d6.INFORMATION_REQUEST:
            if any(msg.has(code) for code in d6.IA_OPTIONS):
                self.counters["dhcpv6-invalid"] += 1
                return []
            body, rtype = [], d6.REPLY
        elif t == d6.CONFIRM:
            body, rtype = self._confirm(msg), d6.REPLY
        elif t not in (d6.SOLICIT, d6.REQUEST, d6.RENEW, d6.REBIND, d6.RELEASE, d6.DECLINE):
            self.counters["dhcpv6-ignored"] += 1
            return []
        elif not self.cfg.stateful_dhcpv6:
            self.counters["dhcpv6-stateful-off"] += 1
            return []
        else:
            assert client is not None
            body, rtype = self._stateful(msg, client, mac, now)
        if body is None:
            return []
        reply = self._reply(msg, rtype, client, body)
        self.counters[_TX[rtype]] += 1
        return [Dhcpv6Reply(src, sport, None if a6.is_multicast(dst) else dst, reply)]

    def _stateful(
        self, msg: d6.Message, client: bytes, mac: bytes, now: float
    ) -> tuple[list[bytes] | None, int]:
        t = msg.msg_type
        ias = [ia for ia in (d6.parse_ia_na(raw) for raw in msg.all(d6.OPT_IA_NA))]
        if any(ia is None for ia in ias):
            self.counters["dhcpv6-malformed"] += 1
            return None, d6.REPLY
        parsed = [ia for ia in ias if ia is not None][:MAX_IA_PER_MESSAGE]
        if t == d6.RELEASE:
            return self._release(parsed, client), d6.REPLY
        if t == d6.DECLINE:
            return self._decline(parsed, client, now), d6.REPLY
        if not parsed:
            self.counters["dhcpv6-no-ia-na"] += 1
            if t in (d6.SOLICIT, d6.REQUEST):
                rtype = d6.ADVERTISE if t == d6.SOLICIT else d6.REPLY
                return [d6.status(d6.STATUS_NO_ADDRS_AVAIL, "only IA_NA is served")], rtype
            return [], d6.REPLY
        rapid = t == d6.SOLICIT and msg.has(d6.OPT_RAPID_COMMIT)
        commit = t != d6.SOLICIT or rapid
        out: list[bytes] = []
        granted = 0
        for ia in parsed:
            lease = self._assign(client, ia.iaid, mac, now, commit=commit)
            inner: list[bytes] = []
            if lease is None:
                inner.append(d6.status(d6.STATUS_NO_ADDRS_AVAIL, "no addresses available"))
                out.append(d6.ia_na(ia.iaid, 0, 0, inner))
                continue
            granted += 1
            inner.append(d6.ia_address(lease.address, self.preferred, self.valid))
            if t in (d6.RENEW, d6.REBIND):
                for old in ia.addresses:
                    if old.address != lease.address:
                        inner.append(d6.ia_address(old.address, 0, 0))
            t1, t2 = self.preferred // 2, self.preferred * 4 // 5
            out.append(d6.ia_na(ia.iaid, t1, t2, inner))
        if t == d6.SOLICIT:
            if not granted:
                out.append(d6.status(d6.STATUS_NO_ADDRS_AVAIL, "no addresses available"))
            if rapid:
                return [d6.option(d6.OPT_RAPID_COMMIT, b""), *out], d6.REPLY
            return [d6.option(d6.OPT_PREFERENCE, b"\xff"), *out], d6.ADVERTISE
        return out, d6.REPLY

    def _confirm(self, msg: d6.Message) -> list[bytes] | None:
        addresses: list[bytes] = []
        for raw in msg.all(d6.OPT_IA_NA):
            ia = d6.parse_ia_na(raw)
            if ia is None:
                self.counters["dhcpv6-malformed"] += 1
                return None
            addresses.extend(x.address for x in ia.addresses)
        if not addresses:
            return None  # RFC 8415 §18.3.3: nothing to judge, no reply
        if all(self.cfg.in_prefix(x) for x in addresses):
            return [d6.status(d6.STATUS_SUCCESS, "all addresses on-link")]
        return [d6.status(d6.STATUS_NOT_ON_LINK, "not on this link")]

    def _release(self, ias: list[d6.IaNa], client: bytes) -> list[bytes]:
        out = [d6.status(d6.STATUS_SUCCESS, "released")]
        for ia in ias:
            lease = self._leases.get((client, ia.iaid))
            listed = {x.address for x in ia.addresses}
            if lease is None or lease.state != "bound" or lease.address not in listed:
                out.append(d6.ia_na(ia.iaid, 0, 0, [d6.status(d6.STATUS_NO_BINDING)]))
                self.counters["dhcpv6-release-unknown"] += 1
                continue
            self._remove(lease, "release")
        return out

    def _decline(self, ias: list[d6.IaNa], client: bytes, now: float) -> list[bytes]:
        out = [d6.status(d6.STATUS_SUCCESS, "declined")]
        for ia in ias:
            lease = self._leases.get((client, ia.iaid))
            if lease is None or lease.address not in {x.address for x in ia.addresses}:
                out.append(d6.ia_na(ia.iaid, 0, 0, [d6.status(d6.STATUS_NO_BINDING)]))
                self.counters["dhcpv6-decline-unknown"] += 1
                continue
            self._remove(lease, "decline" if lease.state == "bound" else None)
            if len(self._declined) < self.max_leases:
                self._declined[lease.address] = now + DECLINE_HOLD
                self._arm(now + DECLINE_HOLD)
        return out

    # -- the lease table -------------------------------------------------------------------

    def _assign(
        self, duid: bytes, iaid: int, mac: bytes, now: float, *, commit: bool
    ) -> Lease | None:
        key = (duid, iaid)
        lease = self._leases.get(key)
        if lease is None:
            if len(self._leases) >= self.max_leases:
                self.counters["dhcpv6-table-full"] += 1
                return None
            address = self._choose(duid, iaid, mac)
            if address is None:
                self.counters["dhcpv6-pool-exhausted"] += 1
                return None
            lease = Lease(duid, iaid, address, mac)
            self._leases[key] = lease
            self._by_addr[address] = lease
        lease.mac = mac
        if commit:
            renewal = lease.state == "bound"
            lease.state = "bound"
            lease.expires = now + self.valid
            self.events.append((GRANTED, {
                **self._ident(lease), "lease-time": self.valid, "renewal": renewal,
            }))  # fmt: skip
        elif lease.state != "bound":
            lease.expires = now + OFFER_HOLD
        self._arm(lease.expires)
        return lease

    def _choose(self, duid: bytes, iaid: int, mac: bytes) -> bytes | None:
        bits = 128 - self.cfg.prefixlen
        space = 1 << bits
        network = self.cfg.network
        seed = duid + iaid.to_bytes(4, "big")
        if bits <= _SMALL_SPACE_BITS:
            start = _hash(seed, 0)
            candidates = ((start + i) % space for i in range(space))
        else:
            candidates = (_hash(seed, i) % space for i in range(_PROBES_LARGE))
        for host in candidates:
            if host == 0 or (bits == 64 and host | 0x7F == _RFC2526_LAST):
                continue  # subnet-router anycast; RFC 2526 reserved anycast
            address = a6.with_host_bits(network, self.cfg.prefixlen, host)
            if (
                address in (self.cfg.host, self.cfg.dns)
                or address in self._by_addr
                or address in self._declined
                or (self.in_use is not None and self.in_use(address, mac))
            ):
                continue
            return address
        return None

    def _remove(self, lease: Lease, reason: str | None) -> None:
        self._leases.pop((lease.duid, lease.iaid), None)
        self._by_addr.pop(lease.address, None)
        if reason is not None:
            self.events.append((RELEASED, {**self._ident(lease), "reason": reason}))

    def _ident(self, lease: Lease) -> dict[str, Any]:
        return {
            "mac-address": _mac_text(lease.mac),
            "ip-address": a6.text(lease.address),
            "client-id": lease.duid.hex(),
            "iaid": lease.iaid,
        }

    def _arm(self, when: float) -> None:
        if self._wake is None or when < self._wake:
            self._wake = when

    # -- replies ---------------------------------------------------------------------------

    def _reply(self, msg: d6.Message, rtype: int, client: bytes | None, body: list[bytes]) -> bytes:
        opts = [d6.option(d6.OPT_SERVERID, self.duid)]
        if client is not None:
            opts.append(d6.option(d6.OPT_CLIENTID, client))
        opts.extend(body)
        if msg.msg_type not in (d6.RELEASE, d6.DECLINE):
            opts.extend(self._config(d6.parse_oro(msg.first(d6.OPT_ORO))))
        return d6.message(rtype, msg.xid, opts)

    def _config(self, oro: set[int]) -> list[bytes]:
        out = []
        if self.cfg.dns_relay:
            out.append(d6.option(d6.OPT_DNS_SERVERS, self.cfg.dns))
        if self._search:
            out.append(d6.option(d6.OPT_DOMAIN_LIST, self._search))
        if self._bootfile and d6.OPT_BOOTFILE_URL in oro:
            out.append(d6.option(d6.OPT_BOOTFILE_URL, self._bootfile))
        return out

    # -- timers and views ------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Drop offers and leases whose time is up, and end quarantines."""
        if self._wake is None or now < self._wake:
            return
        for lease in [x for x in self._leases.values() if x.expires <= now]:
            self._remove(lease, "expired" if lease.state == "bound" else None)
            self.counters["dhcpv6-expired"] += 1
        for address in [x for x, until in self._declined.items() if until <= now]:
            del self._declined[address]
        times = [x.expires for x in self._leases.values()] + list(self._declined.values())
        self._wake = min(times, default=None)

    def next_deadline(self) -> float | None:
        return self._wake

    def leases_for(self, mac: bytes) -> list[tuple[str, int]]:
        """The bound addresses of ``mac`` with the prefix length."""
        return [
            (a6.text(x.address), self.cfg.prefixlen)
            for x in self._leases.values() if x.mac == mac and x.state == "bound"
        ]  # fmt: skip

    def leases(self, now: float) -> list[dict[str, Any]]:
        """The lease table: offered and bound leases."""
        return [
            {**self._ident(x), "state": x.state, "expires-in": max(0, int(x.expires - now))}
            for x in self._leases.values()
        ]


def _hash(seed: bytes, attempt: int) -> int:
    digest = hashlib.blake2b(seed + attempt.to_bytes(2, "big"), digest_size=16).digest()
    return int.from_bytes(digest, "big")


def _boot_url(cfg: Ipv6Config) -> bytes:
    if not cfg.bootfile:
        return b""
    if "://" in cfg.bootfile:
        return cfg.bootfile.encode()
    return f"tftp://[{a6.text(cfg.host)}]/{cfg.bootfile}".encode()


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
