"""The DNS relay behind the virtual DNS address (``dns=``, 10.0.2.3:53), over UDP.

Follows libslirp's behaviour (``slirp.c``, ``udp.c``: guest queries to ``dns:53`` go to the host's
resolvers from ``/etc/resolv.conf``, re-checked at most once a second) with these choices:

* upstreams are every ``nameserver`` of resolv.conf (IPv4 and IPv6, in file order), or the
  ``x-dns-upstream`` list when configured; a query goes to the first, and after
  :data:`TRY_TIMEOUT` seconds without an answer to the next (each upstream once);
* each relayed query gets a fresh random ID (the guest's ID is restored in the answer),
  and an answer is accepted only from the upstream the query went to, with that ID, the
  QR bit set and the same question - so a host-side spoofer has to guess 16 bits and the
  port, and the guest never sees a reply to a question it did not ask;
* messages are decoded with dpkt (no hand-written codec); the bytes are relayed
  unchanged apart from the ID, so EDNS, DNSSEC records and the 0x20 case of names survive;
* with no upstream at all the guest gets SERVFAIL at once; opcodes other than QUERY get
  NOTIMP; malformed queries (dpkt cannot decode them, no question, QR set) are counted and
  dropped; at most ``max_pending`` queries are in flight (more are dropped and counted).

DNS over TCP to 10.0.2.3:53 is served through the guest TCP stack (:mod:`.tcp`).

Sans-IO: :meth:`DnsRelay.query` / :meth:`DnsRelay.answer` / :meth:`DnsRelay.tick` take
bytes and ``now`` and return :class:`Upstream` sends and :class:`ToGuest` replies.
:class:`ResolvConf` is the small adapter piece that re-reads the file when it changes.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final, Literal, NamedTuple

import dpkt

from netstack.errors import RemoteInputError

TRY_TIMEOUT: Final = 2.0
DEFAULT_MAX_PENDING: Final = 512
RESOLV_CONF: Final = "/etc/resolv.conf"
RESOLV_RECHECK: Final = 1.0
RCODE_SERVFAIL: Final = 2
RCODE_NOTIMP: Final = 4
_ID = struct.Struct("!H")
_DECODE_ERRORS = (dpkt.UnpackError, IndexError, ValueError, struct.error, UnicodeError)

Upstreams = Sequence[tuple[int, str, int]]  # (family, address, port)


#: The names this module counts under (``query-netdev`` counters).
DnsCounter = Literal[
    "dns-answers",
    "dns-malformed",
    "dns-no-upstream",
    "dns-pending-full",
    "dns-queries",
    "dns-retry-next",
    "dns-timeout",
    "dns-upstream-malformed",
    "dns-upstream-mismatch",
    "dns-upstream-unexpected",
]


class Upstream(NamedTuple):
    """A query to send to an upstream resolver."""

    family: int
    host: str
    port: int
    payload: bytes


class ToGuest(NamedTuple):
    """An answer for the guest (from the DNS address, port 53)."""

    client_ip: bytes
    client_port: int
    payload: bytes


class _Pending:
    __slots__ = ("client", "deadline", "guest_id", "payload", "question", "tried")

    def __init__(self, client: tuple[bytes, int], guest_id: int, question: Any, payload: bytes):
        self.client = client
        self.guest_id = guest_id
        self.question = question
        self.payload = payload
        self.tried = 0
        self.deadline = 0.0


def _question_key(msg: Any) -> tuple[tuple[str, int, int], ...]:
    return tuple((q.name.lower(), q.type, q.cls) for q in msg.qd)


def decode(payload: bytes, qr: int) -> Any:
    """A dpkt DNS message whose QR bit is ``qr``; RemoteInputError if ``payload`` is not
    one."""
    try:
        msg = dpkt.dns.DNS(payload)
    except _DECODE_ERRORS as exc:
        raise RemoteInputError(f"undecodable DNS message: {exc!r}") from exc
    if msg.qr != qr:
        raise RemoteInputError("DNS message of the other direction")
    return msg


def error_answer(query: Any, rcode: int) -> bytes:
    """An answer to ``query`` (decoded) carrying only its question and ``rcode``."""
    reply = dpkt.dns.DNS(id=query.id, qd=query.qd, an=[], ns=[], ar=[])
    reply.op = dpkt.dns.DNS_RA | (query.op & dpkt.dns.DNS_RD)
    reply.qr = dpkt.dns.DNS_R
    reply.opcode = query.opcode
    reply.rcode = rcode
    return bytes(reply)


class DnsRelay:
    """Pending relayed queries and the upstream list."""

    def __init__(
        self,
        upstreams: Upstreams = (),
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        try_timeout: float = TRY_TIMEOUT,
    ) -> None:
        self.upstreams: list[tuple[int, str, int]] = list(upstreams)
        self.max_pending = max_pending
        self.try_timeout = try_timeout
        self.counters: Counter[DnsCounter] = Counter()
        self._pending: dict[int, _Pending] = {}
        self._wake: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def query(
        self, client_ip: bytes, client_port: int, payload: bytes, now: float
    ) -> list[Upstream | ToGuest]:
        """A query from the guest: relay it (or answer it when it cannot be relayed)."""
        try:
            msg = decode(payload, dpkt.dns.DNS_Q)
            if not msg.qd:
                raise RemoteInputError("DNS query without a question")
        except RemoteInputError:
            self.counters["dns-malformed"] += 1
            return []
        self.counters["dns-queries"] += 1
        if msg.opcode != dpkt.dns.DNS_QUERY:
            return [ToGuest(client_ip, client_port, error_answer(msg, RCODE_NOTIMP))]
        if not self.upstreams:
            self.counters["dns-no-upstream"] += 1
            return [ToGuest(client_ip, client_port, error_answer(msg, RCODE_SERVFAIL))]
        if len(self._pending) >= self.max_pending:
            self.counters["dns-pending-full"] += 1
            return []
        relay_id = secrets.randbits(16)
        while relay_id in self._pending:
            relay_id = secrets.randbits(16)
        entry = _Pending((client_ip, client_port), msg.id, _question_key(msg),
                         _ID.pack(relay_id) + payload[2:])  # fmt: skip
        self._pending[relay_id] = entry
        return [self._send(entry, now)]

    def _send(self, entry: _Pending, now: float) -> Upstream:
        family, host, port = self.upstreams[entry.tried % len(self.upstreams)]
        entry.tried += 1
        entry.deadline = now + self.try_timeout
        if self._wake is None or entry.deadline < self._wake:
            self._wake = entry.deadline
        return Upstream(family, host, port, entry.payload)

    def answer(self, source: tuple[str, int], payload: bytes, now: float) -> ToGuest | None:
        """A datagram from an upstream: the answer for the guest, or None (dropped)."""
        if len(payload) < 12:
            self.counters["dns-upstream-malformed"] += 1
            return None
        relay_id = _ID.unpack_from(payload)[0]
        entry = self._pending.get(relay_id)
        if entry is None or not self._from_expected(entry, source):
            self.counters["dns-upstream-unexpected"] += 1
            return None
        try:
            msg = decode(payload, dpkt.dns.DNS_R)
        except RemoteInputError:
            msg = None
        if msg is None or _question_key(msg) != entry.question:
            self.counters["dns-upstream-mismatch"] += 1
            return None
        del self._pending[relay_id]
        self.counters["dns-answers"] += 1
        client_ip, client_port = entry.client
        return ToGuest(client_ip, client_port, _ID.pack(entry.guest_id) + payload[2:])

    def _from_expected(self, entry: _Pending, source: tuple[str, int]) -> bool:
        if not self.upstreams:
            return False
        _, host, port = self.upstreams[(entry.tried - 1) % len(self.upstreams)]
        return source[1] == port and _same_host(source[0], host)

    def tick(self, now: float) -> list[Upstream | ToGuest]:
        """Queries whose upstream did not answer in time go to the next one, once each."""
        if self._wake is None or now < self._wake:
            return []
        out: list[Upstream | ToGuest] = []
        for relay_id, entry in list(self._pending.items()):
            if entry.deadline > now:
                continue
            if entry.tried < len(self.upstreams):
                self.counters["dns-retry-next"] += 1
                out.append(self._send(entry, now))
            else:
                del self._pending[relay_id]
                self.counters["dns-timeout"] += 1
        self._wake = min((e.deadline for e in self._pending.values()), default=None)
        return out

    def next_deadline(self) -> float | None:
        return self._wake


def _same_host(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        family = socket.AF_INET6 if ":" in b else socket.AF_INET
        return socket.inet_pton(family, a.split("%")[0]) == socket.inet_pton(
            family, b.split("%")[0]
        )
    except (OSError, ValueError):
        return False


def parse_resolv_conf(text: str) -> list[tuple[int, str, int]]:
    """The ``nameserver`` lines of a resolv.conf, as (family, address, 53)."""
    out: list[tuple[int, str, int]] = []
    for line in text.splitlines():
        parts = line.split()
        # as glibc and libslirp read it: the keyword at the very start of the line
        if len(parts) < 2 or parts[0] != "nameserver" or not line.startswith("nameserver"):
            continue
        addr = parts[1]
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                socket.inet_pton(family, addr.split("%")[0])
            except (OSError, ValueError):
                continue
            out.append((family, addr, 53))
            break
    return out


class ResolvConf:
    """The nameservers of a resolv.conf file, re-read when its mtime or size changes
    (checked at most every :data:`RESOLV_RECHECK` seconds)."""

    def __init__(self, path: str = RESOLV_CONF) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._checked: float | None = None
        self.servers: list[tuple[int, str, int]] = []

    def refresh(self, now: float) -> bool:
        """Re-read the file if it changed; returns True when the list changed."""
        if self._checked is not None and now - self._checked < RESOLV_RECHECK:
            return False
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return False
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                servers = parse_resolv_conf(fh.read(65536))
        except OSError:
            stamp, servers = (0, -1), []
        self._stamp = stamp
        changed = servers != self.servers
        self.servers = servers
        return changed
