"""Moving an established Linux TCP socket to another process (or host) with TCP_REPAIR.

Follows the kernel's repair interface (``include/uapi/linux/tcp.h``: ``TCP_REPAIR``,
``TCP_REPAIR_QUEUE``, ``TCP_QUEUE_SEQ``, ``TCP_REPAIR_OPTIONS``, ``TCP_REPAIR_WINDOW``) the
way CRIU and passt use it. Repair mode needs ``CAP_NET_ADMIN`` in the socket's network
namespace; without it :func:`dump` raises :class:`RepairError` ("needs CAP_NET_ADMIN") and
the connection cannot move.

Dump (source): put the socket in repair mode (it stops sending: no FIN or RST when it is
closed later), read the sequence numbers of both queues, their contents (``MSG_PEEK``: the
send queue holds bytes written but not yet acknowledged by the peer, the receive queue bytes
received but not yet read), the negotiated options (``TCP_INFO``), the window state and the
timestamp clock. Restore (destination): a new socket in repair mode, bound to the same local
address and port (the address must exist at the destination: it moves with the VM), queue
sequence numbers set, ``connect`` (no SYN in repair mode), options and window restored, the
queues refilled, then repair mode off (the kernel sends a window probe; the peer never
notices the move). :func:`release` closes a dumped socket silently.

What it owns: :class:`SocketState` (JSON-able) and the three functions; nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import socket
import struct
import termios
from dataclasses import dataclass
from typing import Any

from netstack.errors import NetstackError

TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_TIMESTAMP = 24
TCP_REPAIR_WINDOW = 29
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2
TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_TIMESTAMP = 8
_TCPI_OPT_TIMESTAMPS = 1
_TCPI_OPT_SACK = 2
_TCPI_OPT_WSCALE = 4
_TCP_ESTABLISHED = 1
_WINDOW = struct.Struct("=IIIII")  # snd_wl1 snd_wnd max_window rcv_wnd rcv_wup
_U32 = struct.Struct("=I")
#: Largest queue accepted on restore (the kernel's own buffers bound what a dump holds).
MAX_QUEUE = 64 << 20


class RepairError(NetstackError):
    """The socket cannot be dumped or restored (text says why)."""


@dataclass(frozen=True)
class SocketState:
    """An established TCP socket as :func:`dump` saw it."""

    family: int
    local: tuple[str, int]
    remote: tuple[str, int]
    send_seq: int  # sequence number of the first byte of ``send_queue``
    recv_seq: int  # sequence number of the first byte of ``recv_queue``
    send_queue: bytes
    recv_queue: bytes
    mss: int
    snd_wscale: int | None
    rcv_wscale: int | None
    sack: bool
    timestamp: int | None
    window: tuple[int, int, int, int, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "family": 6 if self.family == socket.AF_INET6 else 4,
            "local": list(self.local),
            "remote": list(self.remote),
            "send-seq": self.send_seq,
            "recv-seq": self.recv_seq,
            "send-queue": base64.b64encode(self.send_queue).decode(),
            "recv-queue": base64.b64encode(self.recv_queue).decode(),
            "mss": self.mss,
            "snd-wscale": self.snd_wscale,
            "rcv-wscale": self.rcv_wscale,
            "sack": self.sack,
            "timestamp": self.timestamp,
            "window": list(self.window),
        }

    @classmethod
    def from_json(cls, data: Any) -> SocketState:
        """Parse and check (ValueError, TypeError or KeyError on anything malformed)."""
        if not isinstance(data, dict):
            raise TypeError("socket state is not an object")
        family = {4: socket.AF_INET, 6: socket.AF_INET6}[data["family"]]

        def endpoint(v: Any) -> tuple[str, int]:
            addr, port = v
            if not isinstance(addr, str) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"bad endpoint {v!r}")
            socket.inet_pton(family, addr)
            return addr, port

        def u32(v: Any) -> int:
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 32:
                raise ValueError(f"{v!r} is not a u32")
            return v

        def scale(v: Any) -> int | None:
            if v is None:
                return None
            if not isinstance(v, int) or not 0 <= v <= 14:
                raise ValueError(f"window scale {v!r}")
            return v

        def queue(v: Any) -> bytes:
            if not isinstance(v, str):
                raise TypeError("queue is not a string")
            raw = base64.b64decode(v, validate=True)
            if len(raw) > MAX_QUEUE:
                raise ValueError("queue too large")
            return raw

        window = data["window"]
        if not isinstance(window, list) or len(window) != 5:
            raise ValueError("window is not 5 numbers")
        mss = u32(data["mss"])
        if not 64 <= mss <= 65535:
            raise ValueError(f"mss {mss}")
        ts = data["timestamp"]
        if not isinstance(data["sack"], bool):
            raise TypeError("sack is not a boolean")
        return cls(
            family=family,
            local=endpoint(data["local"]),
            remote=endpoint(data["remote"]),
            send_seq=u32(data["send-seq"]),
            recv_seq=u32(data["recv-seq"]),
            send_queue=queue(data["send-queue"]),
            recv_queue=queue(data["recv-queue"]),
            mss=mss,
            snd_wscale=scale(data["snd-wscale"]),
            rcv_wscale=scale(data["rcv-wscale"]),
            sack=data["sack"],
            timestamp=None if ts is None else u32(ts),
            window=(u32(window[0]), u32(window[1]), u32(window[2]), u32(window[3]), u32(window[4])),
        )


def _repair(sock: socket.socket, on: int) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, on)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise RepairError("TCP_REPAIR needs CAP_NET_ADMIN") from None
        raise RepairError(f"TCP_REPAIR: {exc.strerror}") from None


def _peek_queue(sock: socket.socket, which: int, length: int) -> tuple[int, bytes]:
    sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, which)
    seq = _U32.unpack(sock.getsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, 4))[0]
    data = b""
    if length:
        data = sock.recv(length, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    return seq, data


def dump(sock: socket.socket) -> SocketState:
    """Freeze ``sock`` (repair mode stays on) and read its state. RepairError if it is not
    an established TCP socket or repair mode is not allowed; the socket is left as it was
    then."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    if info[0] != _TCP_ESTABLISHED:
        raise RepairError(f"socket in TCP state {info[0]}, not established")
    _repair(sock, 1)
    try:
        outq = struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]
        inq = struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]
        # TCP_QUEUE_SEQ gives write_seq (send) and rcv_nxt (receive): the ends of the queues.
        send_end, send_queue = _peek_queue(sock, TCP_SEND_QUEUE, outq)
        recv_end, recv_queue = _peek_queue(sock, TCP_RECV_QUEUE, inq)
        options = info[5]
        wscale = info[6]
        mss = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        window = _WINDOW.unpack(sock.getsockopt(socket.IPPROTO_TCP, TCP_REPAIR_WINDOW, 20))
        ts = None
        if options & _TCPI_OPT_TIMESTAMPS:
            ts = _U32.unpack(sock.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP, 4))[0]
        local = sock.getsockname()
        remote = sock.getpeername()
    except OSError as exc:
        with contextlib.suppress(OSError):
            _repair(sock, 0)
        raise RepairError(f"reading the socket state: {exc.strerror}") from None
    has_ws = bool(options & _TCPI_OPT_WSCALE)
    return SocketState(
        family=sock.family,
        local=(local[0], local[1]),
        remote=(remote[0], remote[1]),
        send_seq=(send_end - len(send_queue)) & 0xFFFFFFFF,
        recv_seq=(recv_end - len(recv_queue)) & 0xFFFFFFFF,
        send_queue=send_queue,
        recv_queue=recv_queue,
        mss=mss,
        snd_wscale=wscale & 0xF if has_ws else None,
        rcv_wscale=wscale >> 4 if has_ws else None,
        sack=bool(options & _TCPI_OPT_SACK),
        timestamp=ts,
        window=window,
    )


def release(sock: socket.socket) -> None:
    """Close a dumped socket without a word to the peer (repair mode is still on)."""
    with contextlib.suppress(OSError):
        sock.close()


def thaw(sock: socket.socket) -> None:
    """Undo :func:`dump` on the source (the move was abandoned): the socket lives on."""
    with contextlib.suppress(OSError, RepairError):
        _repair(sock, 0)


def restore(state: SocketState) -> socket.socket:
    """A socket carrying on the connection of ``state`` (blocking mode off)."""
    sock = socket.socket(state.family, socket.SOCK_STREAM)
    try:
        _repair(sock, 1)
        ip = socket.IPPROTO_TCP
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(state.local)
            sock.setsockopt(ip, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
            sock.setsockopt(ip, TCP_QUEUE_SEQ, _U32.pack(state.send_seq))
            sock.setsockopt(ip, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)
            sock.setsockopt(ip, TCP_QUEUE_SEQ, _U32.pack(state.recv_seq))
            sock.connect(state.remote)
            opts = [(TCPOPT_MSS, state.mss)]
            if state.snd_wscale is not None and state.rcv_wscale is not None:
                opts.append((TCPOPT_WINDOW, state.snd_wscale | state.rcv_wscale << 16))
            if state.sack:
                opts.append((TCPOPT_SACK_PERM, 0))
            if state.timestamp is not None:
                opts.append((TCPOPT_TIMESTAMP, 0))
            packed = b"".join(struct.pack("=II", code, val) for code, val in opts)
            sock.setsockopt(ip, TCP_REPAIR_OPTIONS, packed)
            if state.timestamp is not None:
                sock.setsockopt(ip, TCP_TIMESTAMP, _U32.pack(state.timestamp))
            for which, data in (
                (TCP_SEND_QUEUE, state.send_queue),
                (TCP_RECV_QUEUE, state.recv_queue),
            ):
                if data:
                    sock.setsockopt(ip, TCP_REPAIR_QUEUE, which)
                    sock.sendall(data)
            # After the queues: the kernel checks the window against rcv_nxt, which the
            # refilled receive queue moved to where it was.
            sock.setsockopt(ip, TCP_REPAIR_WINDOW, _WINDOW.pack(*state.window))
        except OSError as exc:
            raise RepairError(f"restoring {state.local} -> {state.remote}: {exc}") from exc
        _repair(sock, 0)
        sock.setblocking(False)
        return sock
    except BaseException:
        sock.close()
        raise
