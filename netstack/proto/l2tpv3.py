"""L2TPv3 Ethernet pseudowire encapsulation: a sans-IO machine for one tunnel endpoint.

Follows QEMU's ``net/l2tpv3.c`` and RFC 3931 data messages. Every
Ethernet frame travels behind this header (all fields big-endian)::

    UDP mode:  u32 0x00030000 | u32 session | cookie (0/4/8) | counter (0/4) | offset bytes
    IP mode:   u32 session | cookie (0/4/8) | counter (0/4) | offset bytes   (IP proto 115)

Transmit (:meth:`L2TPv3Session.tx_headers` / :meth:`~L2TPv3Session.tx_commit`): the header
is precomputed once; only the counter changes per frame. The counter is a 32-bit value
pre-incremented per transmitted frame (the first frame carries 1, it wraps to 0);
``pincounter`` keeps the field at 0. Offset padding is written as zeros (QEMU sends
uninitialised memory there). Unlike QEMU, a frame that could not be sent (socket buffer
full) does not use up a counter value, so the values on the wire stay consecutive.

Receive (:meth:`L2TPv3Session.rx_payload_start`): in IPv4 IP mode the datagram still carries
its IP header; it is skipped using its IHL field (QEMU skips a fixed 20 bytes and so
misreads packets with IP options). IPv6 raw sockets and UDP sockets deliver the L2TPv3
header first. The cookie (if configured) is checked, then the session, as QEMU does; the
UDP flags word, the counter and the offset bytes are not checked. A datagram with no
payload after the header, a garbled IPv4 header, a wrong cookie or a wrong session is
dropped and counted per reason in :class:`DropCounters`; nothing raises on any input.

32-bit cookies are the low 32 bits of the configured value on both sides; QEMU transmits
the low 32 bits too but compares received cookies with the full 64-bit ``rxcookie``, so a
32-bit ``rxcookie`` above 0xffffffff never matches there.

Invariants: ``header_len`` is the exact L2TPv3 header length on the wire; every datagram
given to :meth:`~L2TPv3Session.rx_payload_start` either yields a payload offset or
increments exactly one drop counter.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

#: IANA protocol number of L2TPv3 over IP.
IPPROTO_L2TP = 115
#: First word of a UDP-mode data message: T=0, version 3, reserved 0.
UDP_DATA_WORD = 0x00030000
#: The largest offset QEMU accepts.
MAX_OFFSET = 256

_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_MASK32 = 0xFFFFFFFF

#: Buffers datagrams are decapsulated from (a ``recvmmsg`` arena is an ``mmap``).
Datagrams: TypeAlias = bytes | bytearray | mmap.mmap

#: Drop reasons, as QEMU words them where it has a text.
REASON_COOKIE = "unknown cookie id"
REASON_SESSION = "session mismatch"
REASON_SHORT = "short datagram"
REASON_IPV4 = "bad IPv4 header"


@dataclass(frozen=True)
class L2TPv3Params:
    """One tunnel end's wire parameters (already validated and defaulted).

    ``cookie_len`` is 0, 4 or 8. ``counter`` says whether the counter field is on the wire;
    ``pincounter`` sends it as 0.
    """

    udp: bool
    ipv6: bool
    txsession: int
    rxsession: int
    cookie_len: int = 0
    txcookie: int = 0
    rxcookie: int = 0
    counter: bool = False
    pincounter: bool = False
    offset: int = 0

    def __post_init__(self) -> None:
        if self.cookie_len not in (0, 4, 8):
            raise ValueError(f"cookie_len must be 0, 4 or 8, not {self.cookie_len}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise ValueError(f"offset must be in 0..{MAX_OFFSET}, not {self.offset}")
        for name in ("txsession", "rxsession"):
            if not 0 <= getattr(self, name) <= _MASK32:
                raise ValueError(f"{name} must be a 32-bit value")
        for name in ("txcookie", "rxcookie"):
            if not 0 <= getattr(self, name) < 1 << 64:
                raise ValueError(f"{name} must be a 64-bit value")

    @property
    def session_at(self) -> int:
        """Offset of the session id within the L2TPv3 header."""
        return 4 if self.udp else 0

    @property
    def header_len(self) -> int:
        """Bytes of L2TPv3 header in front of every frame."""
        return self.session_at + 4 + self.cookie_len + (4 if self.counter else 0) + self.offset

    @property
    def raw_ipv4(self) -> bool:
        """IPv4 raw sockets hand up the IP header in front of the L2TPv3 header."""
        return not self.udp and not self.ipv6

    def cookie_bytes(self, value: int) -> bytes:
        if self.cookie_len == 8:
            return _U64.pack(value)
        if self.cookie_len == 4:
            return _U32.pack(value & _MASK32)
        return b""


class DropCounters:
    """Received datagrams dropped, per reason (all monotonic)."""

    __slots__ = ("bad_cookie", "bad_ipv4", "bad_session", "short")

    def __init__(self) -> None:
        self.bad_cookie = 0
        self.bad_session = 0
        self.short = 0
        self.bad_ipv4 = 0

    @property
    def total(self) -> int:
        return self.bad_cookie + self.bad_session + self.short + self.bad_ipv4

    def as_dict(self) -> dict[str, int]:
        return {
            REASON_COOKIE: self.bad_cookie,
            REASON_SESSION: self.bad_session,
            REASON_SHORT: self.short,
            REASON_IPV4: self.bad_ipv4,
        }


class L2TPv3Session:
    """Encapsulation and decapsulation state of one tunnel end (no I/O)."""

    __slots__ = (
        "_counter_fmt",
        "_fixed",
        "_prefix",
        "_raw_ipv4",
        "_rx_at",
        "_rx_cookie",
        "_rx_expect",
        "_rx_expect_len",
        "_rx_session",
        "_suffix",
        "drops",
        "first_drop",
        "header_len",
        "last_drop",
        "params",
        "rx_frames",
        "tx_counter",
        "tx_frames",
    )

    def __init__(self, params: L2TPv3Params) -> None:
        self.params = params
        self.header_len = params.header_len
        self.tx_counter = 0
        self.tx_frames = 0
        self.rx_frames = 0
        self.drops = DropCounters()
        #: The reasons of the first and of the most recent drop (None before the first).
        self.first_drop: str | None = None
        self.last_drop: str | None = None
        flags = _U32.pack(UDP_DATA_WORD) if params.udp else b""
        self._prefix = flags + _U32.pack(params.txsession) + params.cookie_bytes(params.txcookie)
        self._suffix = bytes(params.offset)
        if params.counter and not params.pincounter:
            self._fixed: bytes | None = None
            self._counter_fmt: struct.Struct | None = struct.Struct(
                f"!{len(self._prefix)}sI{params.offset}x"
            )
        else:
            pinned = bytes(4) if params.counter else b""
            self._fixed = self._prefix + pinned + self._suffix
            self._counter_fmt = None
        # Session and cookie are adjacent on the wire: one comparison checks both.
        self._rx_session = _U32.pack(params.rxsession)
        self._rx_cookie = params.cookie_bytes(params.rxcookie)
        self._rx_expect = self._rx_session + self._rx_cookie
        self._rx_expect_len = len(self._rx_expect)
        self._rx_at = params.session_at
        self._raw_ipv4 = params.raw_ipv4

    # -- transmit ------------------------------------------------------------------------

    @property
    def fixed_header(self) -> bytes | None:
        """The header of every frame when it never changes (no running counter)."""
        return self._fixed

    def tx_headers(self, count: int) -> Sequence[bytes]:
        """Headers for the next ``count`` frames; the counter moves on in :meth:`tx_commit`."""
        fixed = self._fixed
        if fixed is not None:
            return [fixed] * count
        fmt = self._counter_fmt
        assert fmt is not None
        pack, prefix, base = fmt.pack, self._prefix, self.tx_counter
        return [pack(prefix, (base + i) & _MASK32) for i in range(1, count + 1)]

    def tx_commit(self, sent: int) -> None:
        """Record that the first ``sent`` headers of the last :meth:`tx_headers` went out."""
        self.tx_frames += sent
        if self._fixed is None:
            self.tx_counter = (self.tx_counter + sent) & _MASK32

    def encapsulate(self, frame: bytes) -> bytes:
        """One frame with its header (counts as transmitted)."""
        header = self.tx_headers(1)[0]
        self.tx_commit(1)
        return header + frame

    def encapsulate_batch(self, frames: Sequence[bytes]) -> list[bytes]:
        """Every frame with its header (all count as transmitted)."""
        headers = self.tx_headers(len(frames))
        self.tx_commit(len(frames))
        return [h + f for h, f in zip(headers, frames, strict=True)]

    # -- receive -------------------------------------------------------------------------

    def rx_payload_start(self, data: Datagrams, length: int | None = None, pos: int = 0) -> int:
        """Where the Ethernet frame starts in the datagram ``data[pos:pos + length]``.

        Returns the index in ``data`` of the frame's first byte (the frame ends where the
        datagram does), or -1 when the datagram is dropped; drops are counted in
        :attr:`drops` and named in :attr:`last_drop`. ``data`` holds what the socket
        delivered (with the IPv4 header in IPv4 IP mode); it may be one buffer of several
        datagrams, as a ``recvmmsg`` arena is.
        """
        end = len(data) if length is None else min(pos + length, len(data))
        base = pos
        if self._raw_ipv4:
            if end - pos < 20 or data[pos] >> 4 != 4 or data[pos] & 0x0F < 5:
                return self._drop_ipv4()
            base += (data[pos] & 0x0F) << 2
        start = base + self.header_len
        if end <= start:
            self.drops.short += 1
            return self._dropped(REASON_SHORT)
        at = base + self._rx_at
        if data[at : at + self._rx_expect_len] == self._rx_expect:
            self.rx_frames += 1
            return start
        return self._mismatch(data, at)

    def _dropped(self, reason: str) -> int:
        self.last_drop = reason
        if self.first_drop is None:
            self.first_drop = reason
        return -1

    def _drop_ipv4(self) -> int:
        self.drops.bad_ipv4 += 1
        return self._dropped(REASON_IPV4)

    def _mismatch(self, data: Datagrams, at: int) -> int:
        cookie = self._rx_cookie
        if cookie and data[at + 4 : at + 4 + len(cookie)] != cookie:
            self.drops.bad_cookie += 1
            return self._dropped(REASON_COOKIE)
        self.drops.bad_session += 1
        return self._dropped(REASON_SESSION)

    def decapsulate(self, datagram: bytes | bytearray) -> bytes | None:
        """The Ethernet frame carried by ``datagram``, or None if it was dropped."""
        start = self.rx_payload_start(datagram)
        return bytes(datagram[start:]) if start >= 0 else None


def drop_summary(session: L2TPv3Session, reported: int) -> str:
    """The log line about receive drops after the first ``reported`` ones: the first drop
    in QEMU's words (QEMU prints that one line and then stays silent), later ones as a
    summary with the totals per reason. The caller rate-limits (see ``drivers/l2tpv3.py``).
    """
    drops = session.drops
    if reported == 0 and session.first_drop is not None:
        return session.first_drop
    detail = ", ".join(f"{k}: {v}" for k, v in drops.as_dict().items() if v)
    new = drops.total - reported
    return f"dropped {new} datagrams since the last report (totals: {detail})"
