"""IPv4 fragment reassembly for datagrams the guest sends to (or through) the gateway.

Follows RFC 791 §3.2 (reassembly keyed by source, destination, protocol and
identification) with the defensive choices of RFC 5722 (written for IPv6, applied here):
a fragment that overlaps an earlier one with different bytes discards the whole datagram;
an exact duplicate is ignored. Sans-IO: :meth:`Reassembler.add` takes one fragment and
``now`` and returns the whole payload once complete; :meth:`Reassembler.expire` drops
datagrams older than ``timeout`` (30 s, Linux's ``ipfrag_time``). The bookkeeping (holes,
overlaps, bounds, age) is the shared core's (:mod:`..fragments`); this module checks the
IPv4 lengths and names the counters ``frag-*``.

Invariants (bounds): at most ``max_datagrams`` datagrams in progress and ``max_bytes``
fragment bytes held (a new datagram past either bound is refused and counted); no datagram
grows beyond 65515 payload bytes (the IPv4 limit less a minimal header); every fragment but
the last carries a multiple of 8 bytes.
"""

from __future__ import annotations

from typing import Final

from ..fragments import CounterNames, Reassembly

MAX_PAYLOAD: Final = 65535 - 20
DEFAULT_TIMEOUT: Final = 30.0

Key = tuple[bytes, bytes, int, int]  # src, dst, protocol, identification

NAMES: Final = CounterNames(
    "frag-overflow", "frag-inconsistent", "frag-duplicate", "frag-overlap",
    "frag-reassembled", "frag-timeout",
)  # fmt: skip


class Reassembler(Reassembly[Key, bytes]):
    """IPv4 datagrams in reassembly, bounded in number, bytes and age; the first
    fragment's IP header is kept."""

    def __init__(
        self,
        *,
        max_datagrams: int = 64,
        max_bytes: int = 4 << 20,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__(NAMES, max_datagrams=max_datagrams, max_bytes=max_bytes,
                         timeout=timeout)  # fmt: skip

    def add(
        self, key: Key, header: bytes, offset: int, more: bool, data: bytes, now: float
    ) -> tuple[bytes, bytes] | None:
        """Take one fragment (``offset`` in bytes); returns (header of the first fragment,
        whole payload) when the datagram is complete, else None."""
        size = len(data)
        if (more and size % 8) or offset + size > MAX_PAYLOAD or (more and size == 0):
            self.counters["frag-malformed"] += 1
            self.discard(key)
            return None
        return self.take(key, offset, more, data, header, now)

    def expire(self, now: float) -> int:
        """Drop datagrams past their deadline; returns how many."""
        return len(self.take_expired(now))
