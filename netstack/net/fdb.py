"""A learned MAC table with ageing: where an Ethernet address was last seen.

Owns the forwarding database (fdb) that a learning switch keeps (MAC -> port, as the Linux
bridge's ``bridge fdb``) and that a VXLAN endpoint keeps (MAC -> remote VTEP address, as
the kernel's vxlan fdb): a bounded dict from a 6-byte MAC to a destination and the time
it was last seen. Sans-IO: every call takes ``now`` (seconds, any monotonic clock).

Rules (IEEE 802.1D learning, as the Linux bridge applies them)
    * Only unicast source addresses are learned: a group bit set (broadcast, multicast) or
      the all-zeros address is never a source (:func:`learnable`).
    * An entry older than ``ageing`` seconds is not used (the frame is flooded as unknown
      unicast) and is removed by the next sweep; ``ageing`` 0 disables learning entirely.
    * The table holds at most ``max_entries`` learned addresses. When it is full, expired
      entries are swept; if it is still full the new address is not learned and
      ``full_drops`` counts it (a guest spraying random source MACs cannot grow memory;
      known stations keep being refreshed).
    * Static entries (``static=True``) never age and are never replaced by learning.
    * A MAC seen behind a different destination moves there (``moves`` counts it).

Invariants: ``len(table) <= max_entries`` for learned entries; every value is the last
destination the address was seen behind (or its static destination).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

#: Linux bridge and vxlan default ageing time, in seconds.
DEFAULT_AGEING = 300.0
#: Learned addresses one table keeps at most.
DEFAULT_MAX_ENTRIES = 8192


def learnable(mac: bytes) -> bool:
    """Whether ``mac`` can be learned as a source: unicast and not all zeros."""
    return not (mac[0] & 1) and mac != b"\x00\x00\x00\x00\x00\x00"


class Entry(Generic[T]):
    __slots__ = ("dest", "seen", "static")

    def __init__(self, dest: T, seen: float, static: bool) -> None:
        self.dest = dest
        self.seen = seen
        self.static = static


class MacTable(Generic[T]):
    """MAC -> destination, learned with ageing (see the module docstring)."""

    __slots__ = (
        "_entries",
        "_next_sweep",
        "ageing",
        "full_drops",
        "learned",
        "max_entries",
        "moves",
    )

    def __init__(
        self, ageing: float = DEFAULT_AGEING, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if ageing < 0 or max_entries < 0:
            raise ValueError("ageing and max_entries must not be negative")
        self.ageing = ageing
        self.max_entries = max_entries
        self._entries: dict[bytes, Entry[T]] = {}
        self._next_sweep = 0.0
        self.learned = 0
        self.moves = 0
        self.full_drops = 0

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, mac: bytes, dest: T, now: float) -> None:
        """Record that ``mac`` (a source address) was seen behind ``dest`` at ``now``."""
        entry = self._entries.get(mac)
        if entry is not None:
            if entry.static:
                return
            if entry.dest is not dest and entry.dest != dest:
                entry.dest = dest
                self.moves += 1
            entry.seen = now
            return
        if self.ageing <= 0 or not learnable(mac):
            return
        if len(self._entries) >= self.max_entries:
            self.sweep(now)
            if len(self._entries) >= self.max_entries:
                self.full_drops += 1
                return
        self._entries[mac] = Entry(dest, now, False)
        self.learned += 1

    def lookup(self, mac: bytes, now: float) -> T | None:
        """The destination of ``mac``, or None when unknown or expired."""
        entry = self._entries.get(mac)
        if entry is None:
            return None
        if not entry.static and now - entry.seen > self.ageing:
            return None
        return entry.dest

    def add_static(self, mac: bytes, dest: T) -> None:
        self._entries[mac] = Entry(dest, 0.0, True)

    def maybe_sweep(self, now: float) -> None:
        """Sweep expired entries at most once per second (cheap to call per batch)."""
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            self.sweep(now)

    def sweep(self, now: float) -> int:
        """Remove expired learned entries; returns how many."""
        ageing = self.ageing
        old = [mac for mac, e in self._entries.items() if not e.static and now - e.seen > ageing]
        for mac in old:
            del self._entries[mac]
        return len(old)

    def flush(self, match: Callable[[T], bool] | None = None, *, static: bool = False) -> int:
        """Remove learned entries (all, or those whose destination ``match``es); static
        ones too when ``static``. Returns how many."""
        gone = [
            mac
            for mac, e in self._entries.items()
            if (static or not e.static) and (match is None or match(e.dest))
        ]
        for mac in gone:
            del self._entries[mac]
        return len(gone)

    def items(self, now: float) -> Iterator[tuple[bytes, T, float | None]]:
        """Live entries: (mac, destination, seconds since seen; None for static ones)."""
        for mac, e in self._entries.items():
            if e.static:
                yield mac, e.dest, None
            elif now - e.seen <= self.ageing:
                yield mac, e.dest, now - e.seen
