"""IPv6 fragment reassembly for packets the guest sends to (or through) the router.

Follows RFC 8200 §4.5: fragments are matched by source, destination and Identification;
the fragmentable part's Next Header comes from the first fragment (offset 0); a fragment
whose data is not a multiple of 8 bytes while more follow, or that would end beyond 65535
bytes, is refused with a Parameter Problem (code 0, pointing at the Payload Length or the
Fragment Offset field; the router sends it); a datagram not complete within
:data:`DEFAULT_TIMEOUT` (60 s) is dropped, and if its first fragment had arrived an ICMPv6
Time Exceeded (code 1) goes back about it. RFC 5722: a fragment that overlaps another
with different bytes discards the whole datagram (silently); an exact duplicate is
ignored. RFC 6946 (atomic fragments, offset 0 without M) is the router's: they never get
here.

Sans-IO: :meth:`Reassembler.add` takes one fragment and ``now`` and returns the whole
fragmentable part once complete; :meth:`Reassembler.expire` returns the first fragments
(whole packets) of the datagrams that timed out. Invariants (bounds): at most
``max_datagrams`` datagrams and ``max_bytes`` fragment bytes held (a new datagram past either
bound is refused and counted) and at most ``max_fragments`` fragments per datagram (past
that the datagram is dropped: overlap checks stay cheap). The bookkeeping (holes,
overlaps, bounds, age) is the shared core's (:mod:`..fragments`); this module keeps what
the first fragment says and names the counters ``ip6-*``.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from ..fragments import CounterNames, Reassembly

MAX_FRAGMENTABLE: Final = 65535
DEFAULT_TIMEOUT: Final = 60.0

Key = tuple[bytes, bytes, int]  # src, dst, identification

NAMES: Final = CounterNames(
    "ip6-frag-overflow", "ip6-frag-inconsistent", "ip6-frag-duplicate", "ip6-frag-overlap",
    "ip6-reassembled", "ip6-frag-timeout",
)  # fmt: skip


class Reassembled(NamedTuple):
    """A complete datagram: the fragmentable part, its first header type, the first
    fragment as received (for ICMPv6 errors that quote the datagram) and how many bytes of
    the fragmentable part that first fragment carried."""

    next_header: int
    data: bytes
    first_packet: bytes
    first_len: int


class _First(NamedTuple):
    next_header: int
    packet: bytes
    size: int


class Reassembler(Reassembly[Key, _First]):
    """IPv6 datagrams in reassembly, bounded in number, bytes and age."""

    def __init__(
        self, *, max_datagrams: int = 64, max_bytes: int = 4 << 20,
        max_fragments: int = 128, timeout: float = DEFAULT_TIMEOUT,
    ) -> None:  # fmt: skip
        super().__init__(NAMES, max_datagrams=max_datagrams, max_bytes=max_bytes,
                         timeout=timeout, max_fragments=max_fragments)  # fmt: skip

    def add(
        self, key: Key, offset: int, more: bool, next_header: int, data: bytes,
        packet: bytes, now: float,
    ) -> Reassembled | None:  # fmt: skip
        """Take one fragment (``offset`` in bytes, ``packet`` the whole fragment as
        received); the datagram once complete, else None. Length checks (multiple of 8,
        the 65535 limit) are the caller's, done before (they need a Parameter Problem)."""
        done = self.take(key, offset, more, data, _First(next_header, packet, len(data)), now)
        if done is None:
            return None
        first, whole = done
        return Reassembled(first.next_header, whole, first.packet, first.size)

    def expire(self, now: float) -> list[bytes]:
        """Drop datagrams past their deadline; the first fragments of those that had one."""
        return [first.packet for first in self.take_expired(now) if first is not None]
