"""The router's neighbor table: guest IPv6 addresses -> MACs, and packets awaiting resolution.

Follows RFC 4861 §7.2-§7.3 in the simplified form a router on a virtual link needs (as
libslirp's ``ndp_table.c`` does, but bounded and with retransmission): entries are learnt
from Neighbor Solicitations (source address + source link-layer option), Neighbor
Advertisements (target + target link-layer option, honouring the Override flag for an
existing entry), Router Solicitations, and the source of any IPv6 packet a guest sends
(its Ethernet source); an entry unconfirmed for ``idle`` seconds is forgotten. A packet
for an address without an entry is held (per address at most ``max_held`` packets, in all
at most ``max_held_bytes`` bytes and ``max_pending`` addresses) while Neighbor
Solicitations go out every ``retrans`` seconds, at most ``max_solicits`` times
(RFC 4861's RETRANS_TIMER and MAX_MULTICAST_SOLICIT); then the held packets are dropped and
counted. The router never learns from DAD probes (source ::) and never from its own
addresses - that is the router's check, as is building the solicitations.

Sans-IO: :meth:`Neighbors.learn` returns the held packets that may now leave;
:meth:`Neighbors.hold` says whether to send the first solicitation; :meth:`Neighbors.tick`
returns the addresses to solicit again. Invariant: at most ``max_entries`` entries (the
least recently learnt is replaced).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final, Literal

from . import addr as a6

DEFAULT_MAX_ENTRIES: Final = 1024
RETRANS: Final = 1.0
MAX_SOLICITS: Final = 3
IDLE: Final = 3600.0


#: The names this module counts under (``query-netdev`` counters).
NeighborsCounter = Literal[
    "ndp-expired",
    "ndp-hold-dropped",
    "ndp-learnt",
    "ndp-mac-changed",
    "ndp-resolved",
    "ndp-table-evicted",
    "ndp-unresolved",
    "ndp-unresolved-dropped",
]


class _Entry:
    __slots__ = ("mac", "seen")

    def __init__(self, mac: bytes, seen: float) -> None:
        self.mac = mac
        self.seen = seen


class _Pending:
    __slots__ = ("due", "packets", "sent", "size")

    def __init__(self, due: float) -> None:
        self.packets: list[bytes] = []
        self.size = 0
        self.sent = 1
        self.due = due


class Neighbors:
    """Guest neighbors of one user netdev."""

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, max_pending: int = 256,
        max_held: int = 16, max_held_bytes: int = 1 << 20, retrans: float = RETRANS,
        max_solicits: int = MAX_SOLICITS, idle: float = IDLE,
    ) -> None:  # fmt: skip
        self.max_entries = max_entries
        self.max_pending = max_pending
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.retrans = retrans
        self.max_solicits = max_solicits
        self.idle = idle
        self.counters: Counter[NeighborsCounter] = Counter()
        self._table: dict[bytes, _Entry] = {}
        self._pending: dict[bytes, _Pending] = {}
        self._held_bytes = 0
        self._sweep: float | None = None

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, address: object) -> bool:
        return address in self._table

    def lookup(self, address: bytes) -> bytes | None:
        entry = self._table.get(address)
        return entry.mac if entry is not None else None

    def learn(
        self, address: bytes, mac: bytes, now: float, *, override: bool = True
    ) -> list[bytes]:
        """Record ``address`` at ``mac`` (an existing different MAC is replaced only if
        ``override``); returns the packets that were waiting for it."""
        if mac[0] & 1 or not a6.is_unicast(address):
            return []
        entry = self._table.get(address)
        if entry is None:
            if len(self._table) >= self.max_entries:
                del self._table[next(iter(self._table))]
                self.counters["ndp-table-evicted"] += 1
            self._table[address] = _Entry(mac, now)
            self.counters["ndp-learnt"] += 1
            if self._sweep is None:
                self._sweep = now + self.idle
        elif entry.mac == mac:
            if now - entry.seen >= 1.0:  # keep the order of learning, cheaply (per packet)
                self._table[address] = self._table.pop(address)
            entry.seen = now
        elif not override:
            return []
        else:
            self.counters["ndp-mac-changed"] += 1
            entry.mac = mac
            entry.seen = now
            self._table[address] = self._table.pop(address)  # most recently learnt last
        pending = self._pending.pop(address, None)
        if pending is None:
            return []
        self._held_bytes -= pending.size
        self.counters["ndp-resolved"] += 1
        return pending.packets

    def forget(self, address: bytes) -> None:
        self._table.pop(address, None)

    def hold(self, address: bytes, packet: bytes, now: float) -> bool:
        """Keep ``packet`` until ``address`` resolves; True when the caller must send the
        first Neighbor Solicitation for it now."""
        pending = self._pending.get(address)
        first = pending is None
        if pending is None:
            if len(self._pending) >= self.max_pending:
                self.counters["ndp-hold-dropped"] += 1
                return False
            pending = self._pending[address] = _Pending(now + self.retrans)
        if len(pending.packets) >= self.max_held or (
            self._held_bytes + len(packet) > self.max_held_bytes
        ):
            self.counters["ndp-hold-dropped"] += 1
            return first
        pending.packets.append(packet)
        pending.size += len(packet)
        self._held_bytes += len(packet)
        return first

    def tick(self, now: float) -> list[bytes]:
        """Addresses to solicit again; gives up (dropping their packets) after the last
        solicitation went unanswered for ``retrans`` seconds; forgets idle entries."""
        again: list[bytes] = []
        for address, pending in list(self._pending.items()):
            if pending.due > now:
                continue
            if pending.sent >= self.max_solicits:
                del self._pending[address]
                self._held_bytes -= pending.size
                self.counters["ndp-unresolved-dropped"] += len(pending.packets)
                self.counters["ndp-unresolved"] += 1
                continue
            pending.sent += 1
            pending.due = now + self.retrans
            again.append(address)
        if self._sweep is not None and now >= self._sweep:
            limit = now - self.idle
            for address in [a for a, e in self._table.items() if e.seen <= limit]:
                del self._table[address]
                self.counters["ndp-expired"] += 1
            oldest = min((e.seen for e in self._table.values()), default=None)
            self._sweep = None if oldest is None else oldest + self.idle
        return again

    def next_deadline(self) -> float | None:
        times = [p.due for p in self._pending.values()]
        if self._sweep is not None:
            times.append(self._sweep)
        return min(times) if times else None

    @property
    def pending(self) -> int:
        """Addresses being resolved."""
        return len(self._pending)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def addresses_for(self, mac: bytes) -> list[bytes]:
        return [a for a, e in self._table.items() if e.mac == mac]

    def entries(self, now: float) -> list[dict[str, Any]]:
        """The table for introspection (``info usernet``-style views, QMP)."""
        return [
            {"ip-address": a6.text(a), "mac-address": ":".join(f"{b:02x}" for b in e.mac),
             "age": max(0, int(now - e.seen))}
            for a, e in self._table.items()
        ]  # fmt: skip
