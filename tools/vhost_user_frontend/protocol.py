"""vhost-user wire format, seen from the front end: request ids, feature bits, payload
codecs, and the checks a front end applies to replies (sans-IO: bytes in, bytes out).

Spec: QEMU ``docs/interop/vhost-user.rst``; behaviour checked against QEMU's
``hw/virtio/vhost-user.c``. All integers are in host
byte order (x86-64: little-endian), structures are packed.

Header ``u32 request, u32 flags, u32 size``; flags: bits 0-1 version (1), bit 2 REPLY,
bit 3 NEED_REPLY. File descriptors travel as SCM_RIGHTS of the same ``sendmsg``.

Reply rules, like QEMU (``vhost_user_read_header``/``vhost_user_get_u64``):

* flags must be exactly ``0x5`` (version 1 | REPLY), else ``ReplyError`` ("Flags 0x%x
  instead of 0x5");
* the payload size may not exceed :data:`MAX_PAYLOAD` (QEMU: the size of its payload
  union);
* the request id must equal the request's ("Expected %d received %d");
* u64 replies must be 8 bytes, vring-state replies 8 bytes ("Received bad msg size.");
* a REPLY_ACK reply is a u64: 0 = success, anything else = failure.

Invariants: :class:`ReplyParser` never consumes bytes past a complete message and never
buffers more than one header plus :data:`MAX_PAYLOAD`; every encoder returns exactly the
bytes to write (header included); nothing here touches a socket.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

HEADER = struct.Struct("=III")
HEADER_SIZE = HEADER.size
U64 = struct.Struct("=Q")
VRING_STATE = struct.Struct("=II")
VRING_ADDR = struct.Struct("=IIQQQQ")
MEM_REGION = struct.Struct("=QQQQ")
MEM_TABLE_HEAD = struct.Struct("=II")
MEM_REG_MSG = struct.Struct("=QQQQQ")  # padding + one region
LOG = struct.Struct("=QQ")

VERSION = 0x1
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8
#: The only flags value QEMU accepts on a reply.
REPLY_FLAGS = VERSION | FLAG_REPLY
#: SET_VRING_KICK/CALL/ERR payload: vring index bits and "no fd" bit.
VRING_IDX_MASK = 0xFF
VRING_NOFD = 0x100
#: SET_VRING_ADDR flags bit 0.
VRING_F_LOG = 0x1
#: Regions per SET_MEM_TABLE (VHOST_MEMORY_BASELINE_NREGIONS) and fds per message.
MAX_MEM_REGIONS = 8
MAX_FDS = 8
#: Largest reply payload we accept (QEMU bounds it by its payload union, ~4.6 KiB with
#: the crypto session; no reply a net front end asks for is larger than 264 bytes).
MAX_PAYLOAD = 4096


class Request(enum.IntEnum):
    """Front-end -> back-end request ids."""

    NONE = 0
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
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43


class ProtocolFeature(enum.IntEnum):
    """Bits of GET/SET_PROTOCOL_FEATURES."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17
    SHARED_OBJECT = 18
    DEVICE_STATE = 19


class Feature(enum.IntEnum):
    """Virtio (device and transport) feature bits a net front end deals with."""

    CSUM = 0
    GUEST_CSUM = 1
    CTRL_GUEST_OFFLOADS = 2
    MTU = 3
    MAC = 5
    GSO = 6
    GUEST_TSO4 = 7
    GUEST_TSO6 = 8
    GUEST_ECN = 9
    GUEST_UFO = 10
    HOST_TSO4 = 11
    HOST_TSO6 = 12
    HOST_ECN = 13
    HOST_UFO = 14
    MRG_RXBUF = 15
    STATUS = 16
    CTRL_VQ = 17
    CTRL_RX = 18
    CTRL_VLAN = 19
    GUEST_ANNOUNCE = 21
    MQ = 22
    NOTIFY_ON_EMPTY = 24
    LOG_ALL = 26
    ANY_LAYOUT = 27
    INDIRECT_DESC = 28
    EVENT_IDX = 29
    PROTOCOL_FEATURES = 30  # VHOST_USER_F_PROTOCOL_FEATURES (a vhost bit, never a guest's)
    VERSION_1 = 32
    ACCESS_PLATFORM = 33
    RING_PACKED = 34
    IN_ORDER = 35
    GUEST_USO4 = 54
    GUEST_USO6 = 55
    HOST_USO = 56
    HASH_REPORT = 57


class DeviceStatus(enum.IntFlag):
    """Virtio device status bits (SET_STATUS/GET_STATUS)."""

    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    NEEDS_RESET = 64
    FAILED = 128


def bit(n: int) -> int:
    return 1 << int(n)


def has(mask: int, n: int) -> bool:
    return bool(mask >> int(n) & 1)


def feature_names(mask: int, kind: type[enum.IntEnum] = Feature) -> list[str]:
    """Names of the set bits (unknown bits as ``bitN``), lowest first."""
    known = {int(m): m.name for m in kind}
    return [known.get(i, f"bit{i}") for i in range(64) if mask >> i & 1]


class ReplyError(Exception):
    """A back end's reply broke the protocol (QEMU would drop the connection)."""


class BackendFailure(Exception):
    """A REPLY_ACK reply reported failure (non-zero u64)."""

    def __init__(self, request: int, value: int) -> None:
        super().__init__(f"back end failed {_req_name(request)}: ack value {value:#x}")
        self.request = request
        self.value = value


def _req_name(request: int) -> str:
    try:
        return Request(request).name
    except ValueError:
        return f"request {request}"


@dataclass(frozen=True)
class MemRegion:
    """One memory-table entry (``VhostUserMemoryRegion``)."""

    guest_phys_addr: int
    memory_size: int
    userspace_addr: int
    mmap_offset: int = 0

    def pack(self) -> bytes:
        return MEM_REGION.pack(
            self.guest_phys_addr, self.memory_size, self.userspace_addr, self.mmap_offset
        )


@dataclass(frozen=True)
class Message:
    """One message as it goes on the wire; ``size`` overrides the header's size field
    (hostile mode: a header that lies about its payload)."""

    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: tuple[int, ...] = ()
    size: int | None = None

    def encode(self) -> bytes:
        size = len(self.payload) if self.size is None else self.size
        return HEADER.pack(self.request, self.flags, size) + self.payload

    @property
    def needs_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


@dataclass(frozen=True)
class Reply:
    request: int
    flags: int
    payload: bytes
    fds: tuple[int, ...] = field(default=())

    def u64(self) -> int:
        if len(self.payload) != U64.size:
            raise ReplyError("Received bad msg size.")
        return int(U64.unpack(self.payload)[0])

    def state(self) -> tuple[int, int]:
        if len(self.payload) != VRING_STATE.size:
            raise ReplyError("Received bad msg size.")
        index, num = VRING_STATE.unpack(self.payload)
        return int(index), int(num)


# -- encoders (the front end's view: request + payload, flags chosen by the caller) --------


def msg_none(request: int, *, need_reply: bool = False, fds: Sequence[int] = ()) -> Message:
    return Message(request, _flags(need_reply), b"", tuple(fds))


def msg_u64(
    request: int, value: int, *, need_reply: bool = False, fds: Sequence[int] = ()
) -> Message:
    return Message(request, _flags(need_reply), U64.pack(value & (2**64 - 1)), tuple(fds))


def msg_state(request: int, index: int, num: int, *, need_reply: bool = False) -> Message:
    return Message(request, _flags(need_reply), VRING_STATE.pack(index, num))


def msg_vring_addr(
    index: int,
    desc: int,
    used: int,
    avail: int,
    *,
    flags: int = 0,
    log: int = 0,
    need_reply: bool = False,
) -> Message:
    payload = VRING_ADDR.pack(index, flags, desc, used, avail, log)
    return Message(Request.SET_VRING_ADDR, _flags(need_reply), payload)


def msg_vring_file(request: int, index: int, fd: int | None) -> Message:
    """SET_VRING_KICK/CALL/ERR: index in bits 0-7, bit 8 when there is no fd."""
    value = index & VRING_IDX_MASK
    if fd is None:
        return Message(request, VERSION, U64.pack(value | VRING_NOFD))
    return Message(request, VERSION, U64.pack(value), (fd,))


def msg_mem_table(
    regions: Sequence[MemRegion], fds: Sequence[int], *, need_reply: bool = False
) -> Message:
    """SET_MEM_TABLE with only the used regions in the payload (QEMU's size:
    8 + 32 * nregions)."""
    payload = MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(r.pack() for r in regions)
    return Message(Request.SET_MEM_TABLE, _flags(need_reply), payload, tuple(fds))


def msg_mem_reg(
    request: int, region: MemRegion, fd: int | None, *, need_reply: bool = False
) -> Message:
    """ADD_MEM_REG (one fd) / REM_MEM_REG (no fd): ``u64 padding`` + one region."""
    payload = U64.pack(0) + region.pack()
    return Message(request, _flags(need_reply), payload, () if fd is None else (fd,))


def msg_rarp(mac: bytes) -> Message:
    """SEND_RARP: the MAC in the first 6 bytes of the u64."""
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes")
    return Message(Request.SEND_RARP, VERSION, mac + b"\0\0")


def _flags(need_reply: bool) -> int:
    return VERSION | (FLAG_NEED_REPLY if need_reply else 0)


# -- replies --------------------------------------------------------------------------------


class ReplyParser:
    """Splits the byte stream from the back end into :class:`Reply` values.

    ``feed(data, fds)`` returns every reply completed by ``data``; fds received with a
    chunk belong to the reply whose bytes start in that chunk. A header with bad flags or
    an oversized payload raises :class:`ReplyError` at once (like QEMU, which reads the
    header first).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fds: list[int] = []

    def feed(self, data: bytes, fds: Sequence[int] = ()) -> list[Reply]:
        self._buf += data
        self._fds.extend(fds)
        out: list[Reply] = []
        while len(self._buf) >= HEADER_SIZE:
            request, flags, size = HEADER.unpack_from(self._buf)
            if flags != REPLY_FLAGS:
                raise ReplyError(
                    f"Failed to read msg header. Flags {flags:#x} instead of {REPLY_FLAGS:#x}."
                )
            if size > MAX_PAYLOAD:
                raise ReplyError(
                    f"Failed to read msg header. Size {size} exceeds the maximum {MAX_PAYLOAD}."
                )
            if len(self._buf) < HEADER_SIZE + size:
                break
            payload = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + size])
            del self._buf[: HEADER_SIZE + size]
            fds_now, self._fds = tuple(self._fds), []
            out.append(Reply(request, flags, payload, fds_now))
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete reply held."""
        return len(self._buf)

    def take_fds(self) -> list[int]:
        """Fds received but not attached to a reply yet (the caller closes them)."""
        fds, self._fds = self._fds, []
        return fds


def check_reply(request: int, reply: Reply) -> Reply:
    """QEMU's check that a reply answers ``request``."""
    if reply.request != request:
        raise ReplyError(
            f"Received unexpected msg type. Expected {int(request)} received {reply.request}"
        )
    return reply


def check_ack(request: int, reply: Reply) -> None:
    """A REPLY_ACK answer: u64 0 = success (QEMU treats any non-zero value as -EIO)."""
    value = check_reply(request, reply).u64()
    if value:
        raise BackendFailure(request, value)
