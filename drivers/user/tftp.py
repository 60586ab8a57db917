"""The user netdev's read-only TFTP server (UDP port 69 at the host address).

Baseline is libslirp's ``tftp.c``: RRQ in ``octet`` mode only (else error
4 "Unsupported transfer mode"), no root -> error 2 "Access violation", missing file ->
error 1 "File not found", default block size 512, replies from port 69, a new RRQ from the
same client address and port replaces its session, an ERROR from the client ends it.

Beyond libslirp:

* options (RFC 2347) ``blksize`` 8..65464 (RFC 2348; libslirp caps at 1428; a larger
  request is answered with 65464), ``tsize`` (RFC 2349; the file size is returned),
  ``timeout`` 1..255 s (RFC 2349) and ``windowsize`` (RFC 7440; answered with at most
  :data:`MAX_WINDOW` and at most :data:`MAX_WINDOW_BYTES` in flight); all options are
  processed, accepted ones are echoed in an OACK in request order;
* ACK numbers are checked: the ACK of a block in the window moves it (a partial window
  ACK restarts the window after that block, RFC 7440 §4); a duplicate ACK is ignored with
  a window of one (no Sorcerer's Apprentice) and resends the window otherwise; block
  numbers roll over from 65535 to 0;
* retransmission on timeout (the OACK or the unacknowledged window; ``timeout`` or
  :data:`DEFAULT_TIMEOUT`), at most :data:`MAX_RETRIES` times before the session ends;
* WRQ is answered with error 2 "Access violation"; at most ``max_sessions`` (64) at once:
  past that an RRQ gets error 0 "Too many sessions" (counted);
* confinement to the root is :mod:`.tftproot`'s (openat2 ``RESOLVE_BENEATH`` or realpath
  + ``O_NOFOLLOW``).

Sans-IO: :meth:`TftpServer.handle` takes one datagram from a client and ``now`` and
returns the datagrams to send back to it; :meth:`TftpServer.tick` returns retransmissions
as ``(address, port, payload)``. Files come from an injected :class:`FileSource` - a
synchronous source of blocks (open a name, read bytes at an offset, close), which the
adapter implements with ``openat2``/``pread`` below the root (:class:`.tftproot.TftpRoot`,
which owns confinement); the machine itself performs no system call. The data path uses
precompiled structs and one source read per window. Malformed datagrams are counted and
dropped.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Final, Literal, Protocol

from .tftproot import Denied, NotFound

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
DEFAULT_BLKSIZE: Final = 512
MIN_BLKSIZE: Final = 8
MAX_BLKSIZE: Final = 65464
DEFAULT_TIMEOUT: Final = 1.0
MAX_RETRIES: Final = 5
MAX_WINDOW: Final = 64
MAX_WINDOW_BYTES: Final = 1 << 20
DEFAULT_MAX_SESSIONS: Final = 64

_OP = struct.Struct("!H")
_OP_BLOCK = struct.Struct("!HH")
Client = tuple[bytes, int]  # guest address, guest port


#: The names this module counts under (``query-netdev`` counters).
TftpCounter = Literal[
    "tftp-client-error",
    "tftp-closed",
    "tftp-completed",
    "tftp-data-sent",
    "tftp-denied",
    "tftp-duplicate-ack",
    "tftp-malformed",
    "tftp-not-found",
    "tftp-read-error",
    "tftp-replaced",
    "tftp-retransmit",
    "tftp-rrq",
    "tftp-sessions-full",
    "tftp-stale-ack",
    "tftp-timeout",
    "tftp-unknown-session",
    "tftp-wrq-refused",
]


class FileSource(Protocol):
    """Where a TFTP server's files come from (confinement is the source's)."""

    def open(self, name: bytes) -> tuple[int, int]:
        """(handle, size) of the file a guest named; raises :class:`.tftproot.Denied` or
        :class:`.tftproot.NotFound`."""

    def read(self, handle: int, count: int, offset: int) -> bytes:
        """Up to ``count`` bytes at ``offset``; raises OSError."""

    def close(self, handle: int) -> None:
        """Release ``handle``."""


def error_packet(code: int, message: str) -> bytes:
    return _OP_BLOCK.pack(ERROR, code) + message.encode() + b"\0"


class Session:
    """One read transfer: the file, the negotiated options and the window state."""

    __slots__ = ("acked", "blksize", "deadline", "fd", "last", "oack", "retries", "sent",
                 "size", "timeout", "window")  # fmt: skip

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.blksize = DEFAULT_BLKSIZE
        self.window = 1
        self.timeout = DEFAULT_TIMEOUT
        self.acked = 0  # absolute number of the last acknowledged block (0: none)
        self.sent = 0  # absolute number of the last block sent
        self.last = 0  # absolute number of the final (short) block
        self.oack: bytes | None = None  # sent and not acknowledged yet
        self.deadline = 0.0
        self.retries = 0


class TftpServer:
    """TFTP sessions of one user netdev."""

    def __init__(
        self, root: FileSource | None, *, max_sessions: int = DEFAULT_MAX_SESSIONS
    ) -> None:
        self.root = root
        self.max_sessions = max_sessions
        self.sessions: dict[Client, Session] = {}
        self.counters: Counter[TftpCounter] = Counter()
        self._wake: float | None = None

    # -- input -----------------------------------------------------------------------------

    def handle(self, client: Client, payload: bytes, now: float) -> list[bytes]:
        """One datagram from ``client``; returns the datagrams to send back to it."""
        if len(payload) >= 4:
            op, block = _OP_BLOCK.unpack_from(payload)
            if op == ACK:
                session = self.sessions.get(client)
                if session is None:
                    self.counters["tftp-unknown-session"] += 1
                    return []
                return self._ack(client, session, block, now)
        elif len(payload) < 2:
            self.counters["tftp-malformed"] += 1
            return []
        else:
            op = _OP.unpack_from(payload)[0]
        if op == RRQ:
            return self._rrq(client, payload, now)
        if op == WRQ:
            self.counters["tftp-wrq-refused"] += 1
            return [error_packet(2, "Access violation")]
        if op == ERROR:
            self._end(client, "tftp-client-error")
            return []
        self.counters["tftp-malformed"] += 1
        return []

    def _rrq(self, client: Client, payload: bytes, now: float) -> list[bytes]:
        self.counters["tftp-rrq"] += 1
        if client in self.sessions:
            self._end(client, "tftp-replaced")
        if len(self.sessions) >= self.max_sessions:
            self.counters["tftp-sessions-full"] += 1
            return [error_packet(0, "Too many sessions")]
        if self.root is None:
            return [error_packet(2, "Access violation")]
        fields = payload[2:].split(b"\0")
        # name, mode, then option/value pairs; the request must end with a NUL
        if len(fields) < 3 or fields[-1] != b"" or len(fields[0]) > 512:
            self.counters["tftp-malformed"] += 1
            return [error_packet(2, "Access violation")]
        name, mode, rest = fields[0], fields[1], fields[2:-1]
        if mode.lower() != b"octet":
            return [error_packet(4, "Unsupported transfer mode")]
        try:
            fd, size = self.root.open(name)
        except Denied:
            self.counters["tftp-denied"] += 1
            return [error_packet(2, "Access violation")]
        except NotFound:
            self.counters["tftp-not-found"] += 1
            return [error_packet(1, "File not found")]
        session = Session(fd, size)
        accepted = self._negotiate(session, rest)
        session.last = size // session.blksize + 1
        self.sessions[client] = session
        if accepted:
            session.oack = _OP.pack(OACK) + b"".join(k + b"\0" + v + b"\0" for k, v in accepted)
            self._arm(session, now)
            return [session.oack]
        return self._send_window(session, 1, now)

    def _negotiate(self, session: Session, rest: list[bytes]) -> list[tuple[bytes, bytes]]:
        accepted: list[tuple[bytes, bytes]] = []
        seen: set[bytes] = set()
        for i in range(0, len(rest) - 1, 2):
            key, raw = rest[i].lower(), rest[i + 1]
            if key in seen or not raw.isdigit() or len(raw) > 10:
                continue
            seen.add(key)
            value = int(raw)
            if key == b"blksize" and value >= MIN_BLKSIZE:
                session.blksize = min(value, MAX_BLKSIZE)
                accepted.append((key, str(session.blksize).encode()))
            elif key == b"tsize":
                accepted.append((key, str(session.size).encode()))
            elif key == b"timeout" and 1 <= value <= 255:
                session.timeout = float(value)
                accepted.append((key, raw))
            elif key == b"windowsize" and 1 <= value <= 65535:
                session.window = value
                accepted.append((key, b""))  # the value is fixed once blksize is known
        for n, (key, _) in enumerate(accepted):
            if key == b"windowsize":
                cap = max(1, min(MAX_WINDOW, MAX_WINDOW_BYTES // session.blksize))
                session.window = min(session.window, cap)
                accepted[n] = (key, str(session.window).encode())
        return accepted

    def _ack(self, client: Client, s: Session, block: int, now: float) -> list[bytes]:
        if s.oack is not None:
            if block != 0:
                self.counters["tftp-stale-ack"] += 1
                return []
            s.oack = None
            s.retries = 0
            return self._send_window(s, 1, now)
        absolute = s.acked + ((block - s.acked) & 0xFFFF)
        if absolute > s.sent:
            self.counters["tftp-stale-ack"] += 1
            return []
        if absolute == s.acked:
            if s.window == 1:
                self.counters["tftp-duplicate-ack"] += 1
                return []
            return self._send_window(s, s.acked + 1, now)
        s.acked = absolute
        s.retries = 0
        if absolute >= s.last:
            self._end(client, "tftp-completed")
            return []
        return self._send_window(s, absolute + 1, now)

    # -- output ----------------------------------------------------------------------------

    def _send_window(self, s: Session, first: int, now: float) -> list[bytes]:
        """Blocks ``first`` .. ``first + window - 1`` (not past the final block)."""
        count = min(s.window, s.last - first + 1)
        bs = s.blksize
        try:
            if self.root is None:  # sessions exist only with a root
                raise OSError("no root")
            data = self.root.read(s.fd, count * bs, (first - 1) * bs)
        except OSError:
            self.counters["tftp-read-error"] += 1
            return [error_packet(1, "File not found")]
        out = []
        pack = _OP_BLOCK.pack
        for i in range(count):
            number = first + i
            out.append(pack(DATA, number & 0xFFFF) + data[i * bs : (i + 1) * bs])
        s.sent = max(s.sent, first + count - 1)
        self.counters["tftp-data-sent"] += count
        self._arm(s, now)
        return out

    def _arm(self, s: Session, now: float) -> None:
        s.deadline = now + s.timeout
        if self._wake is None or s.deadline < self._wake:
            self._wake = s.deadline

    def _end(self, client: Client, reason: TftpCounter) -> None:
        session = self.sessions.pop(client, None)
        if session is not None:
            if session.fd >= 0 and self.root is not None:
                self.root.close(session.fd)
                session.fd = -1
            self.counters[reason] += 1

    # -- timers ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[tuple[bytes, int, bytes]]:
        """Retransmissions due at ``now`` (and sessions that gave up, ended)."""
        if self._wake is None or now < self._wake:
            return []
        out: list[tuple[bytes, int, bytes]] = []
        for client, s in list(self.sessions.items()):
            if s.deadline > now:
                continue
            s.retries += 1
            if s.retries > MAX_RETRIES:
                self._end(client, "tftp-timeout")
                continue
            self.counters["tftp-retransmit"] += 1
            if s.oack is not None:
                self._arm(s, now)
                out.append((client[0], client[1], s.oack))
                continue
            packets = self._send_window(s, s.acked + 1, now)
            out.extend((client[0], client[1], p) for p in packets)
        self._wake = min((s.deadline for s in self.sessions.values()), default=None)
        return out

    def next_deadline(self) -> float | None:
        return self._wake

    def close(self) -> None:
        for client in list(self.sessions):
            self._end(client, "tftp-closed")
