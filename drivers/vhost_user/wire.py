"""The vhost-user wire format: request numbers, header flags, protocol feature bits, and
the framing of messages with the file descriptors that ride along.

Follows QEMU's ``docs/interop/vhost-user.rst`` ("Message Specification") and what QEMU 7.2
(``hw/virtio/vhost-user.c``) and DPDK's virtio-user really send.

What it owns
    A message is ``u32 request, u32 flags, u32 size`` (host byte order) and ``size`` payload
    bytes; file descriptors ride as SCM_RIGHTS on the same ``sendmsg``. Flags bits 0-1 are
    the version (1); bit 2 marks a reply, bit 3 (NEED_REPLY) asks for one. Every reply this
    back end sends carries flags exactly ``0x5`` and the request's id (QEMU and DPDK drop
    the connection otherwise). :class:`MessageReader` reassembles messages from reads of at
    most :meth:`MessageReader.wanted` bytes, so every read stays inside one message and the
    descriptors it brings belong to that message.

Errors
    Framing errors (wrong version, a payload over :data:`MAX_PAYLOAD`, more than
    :data:`MAX_FDS` descriptors) raise :class:`ProtocolError`: the byte stream cannot be
    trusted, the connection is closed. :class:`BadRequest` refuses one request only.

Invariants: a descriptor received is owned by exactly one :class:`Message` (or closed by
:meth:`MessageReader.close`); nothing here does I/O.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass, field

from netstack.errors import RemoteInputError

# -- front end -> back end requests ----------------------------------------------------------
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
SEND_RARP = 19
NET_SET_MTU = 20
SET_BACKEND_REQ_FD = 21
IOTLB_MSG = 22
SET_VRING_ENDIAN = 23
GET_CONFIG = 24
SET_CONFIG = 25
POSTCOPY_ADVISE = 28
POSTCOPY_LISTEN = 29
POSTCOPY_END = 30
GET_INFLIGHT_FD = 31
SET_INFLIGHT_FD = 32
RESET_DEVICE = 34
VRING_KICK = 35
GET_MAX_MEM_SLOTS = 36
ADD_MEM_REG = 37
REM_MEM_REG = 38
SET_STATUS = 39
GET_STATUS = 40


#: Request names for logs, from the constants above.
NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.isupper() and isinstance(value, int) and GET_FEATURES <= value <= GET_STATUS
}

# -- flags ------------------------------------------------------------------------------------
VERSION = 0x1
VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
REPLY_FLAGS = FLAG_REPLY | VERSION  # exactly what QEMU and DPDK accept

# -- protocol features ------------------------------------------------------------------------
PF_MQ = 0
PF_LOG_SHMFD = 1
PF_RARP = 2
PF_REPLY_ACK = 3
PF_MTU = 4
PF_BACKEND_REQ = 5
PF_RESET_DEVICE = 13
PF_INBAND_NOTIFICATIONS = 14
PF_CONFIGURE_MEM_SLOTS = 15
PF_STATUS = 16
HEADER = struct.Struct("=III")
_U64 = struct.Struct("=Q")
#: Larger payloads are a framing error (QEMU's largest, a crypto session, is ~1.6 KiB).
MAX_PAYLOAD = 4096
#: Descriptors one message may carry (QEMU: VHOST_MEMORY_BASELINE_NREGIONS).
MAX_FDS = 8


class ProtocolError(RemoteInputError):
    """The byte stream cannot be trusted any more: close the connection."""


class BadRequest(RemoteInputError):
    """One request is refused (NEED_REPLY gets 1); the session goes on."""


@dataclass
class Message:
    request: int
    flags: int
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return NAMES.get(self.request, f"request {self.request}")

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def take_fd(self) -> int:
        """Take ownership of the message's (first) descriptor."""
        if not self.fds:
            raise BadRequest(f"{self.name} without a file descriptor")
        return self.fds.pop(0)

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def encode(request: int, payload: bytes = b"", flags: int = REPLY_FLAGS) -> bytes:
    """A message's bytes (a reply unless ``flags`` says otherwise)."""
    return HEADER.pack(request, flags, len(payload)) + payload


def u64(value: int) -> bytes:
    return _U64.pack(value & 0xFFFFFFFFFFFFFFFF)


class MessageReader:
    """Reassembles messages from chunks; read at most :meth:`wanted` bytes at a time."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._size: int | None = None  # payload size once the header is in
        self._request = 0
        self._flags = 0
        self._fds: list[int] = []

    def wanted(self) -> int:
        """Bytes still missing from the current header or payload."""
        if self._size is None:
            return HEADER.size - len(self._buf)
        return self._size - len(self._buf)

    def feed(self, data: bytes, fds: list[int] | None = None) -> list[Message]:
        """Add a chunk and the descriptors that came with it; complete messages out.
        Descriptors belong to the message in progress when the chunk starts."""
        if fds:
            self._fds.extend(fds)
            if len(self._fds) > MAX_FDS:
                self.close()
                raise ProtocolError(f"more than {MAX_FDS} file descriptors in one message")
        out: list[Message] = []
        view = memoryview(data)
        while True:
            need = self.wanted()
            take = view[:need]
            self._buf += take
            view = view[len(take) :]
            if len(take) < need:
                return out
            if self._size is None:
                self._request, self._flags, size = HEADER.unpack(self._buf)
                self._buf.clear()
                if self._flags & VERSION_MASK != VERSION:
                    self.close()
                    raise ProtocolError(f"message flags {self._flags:#x}: not version 1")
                if size > MAX_PAYLOAD:
                    self.close()
                    raise ProtocolError(f"payload of {size} bytes (at most {MAX_PAYLOAD})")
                self._size = size
                if size:
                    if not view:
                        return out
                    continue
            out.append(Message(self._request, self._flags, bytes(self._buf), self._fds))
            self._buf.clear()
            self._size = None
            self._fds = []
            if not view:
                return out

    def close(self) -> None:
        """Close descriptors of an unfinished message."""
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
