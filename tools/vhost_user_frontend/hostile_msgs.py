"""Hostile mode, messages: malformed or inconsistent vhost-user requests (wrong sizes,
lying headers, unknown ids, missing/extra/wrong-kind fds, impossible memory tables and
vring parameters), so that a back end's message validation can be tested.

:data:`MSG_CASES` maps each case to (what the message is, what a sound back end does).
The builders are pure (:func:`build` returns a :class:`~.protocol.Message` and the fds it
created); :func:`send_case` sends one on a :class:`~.channel.Channel`, collects whatever
the back end answers for ``settle`` seconds and reports whether it closed the connection
(:class:`Outcome`). The fds made for a case are closed here after sending (the back end
has its own copies).

What "sound" means follows QEMU's ``libvhost-user`` and DPDK's ``vhost_user.c``: check the
payload size per request, bound the header's size field before reading, match the fd
count to the request (close surplus fds), validate memory regions against the fd's size
and against overflow, validate vring indices and sizes, never block on or trust an fd of
the wrong kind. Answering with an error, ignoring the message, or closing the connection
are all acceptable; crashing, hanging, leaking fds and touching memory outside what was
shared are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from .channel import Channel, ChannelClosed, ReplyTimeout
from .protocol import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    MEM_TABLE_HEAD,
    U64,
    VERSION,
    VRING_ADDR,
    VRING_STATE,
    MemRegion,
    Message,
    Reply,
    Request,
    msg_mem_table,
    msg_state,
)

#: name -> (the message, what a sound back end does)
MSG_CASES: dict[str, tuple[str, str]] = {
    "unknown_request": ("request id 9999, no payload", "ignore or close; no crash"),
    "request_zero": ("request id 0 (VHOST_USER_NONE)", "ignore or close"),
    "inband_kick_unnegotiated": (
        "VRING_KICK (35) although INBAND_NOTIFICATIONS was not negotiated",
        "ignore or close",
    ),
    "bad_version": ("GET_FEATURES with flags 0x2 (version 2)", "reject (close)"),
    "reply_flag_on_request": (
        "SET_OWNER with the REPLY flag set (flags 0x5)",
        "reject or ignore; never answer a 'reply'",
    ),
    "need_reply_unnegotiated": (
        "SET_OWNER with NEED_REPLY although REPLY_ACK is not negotiated",
        "no ack (the front end cannot expect one) or an ack; no crash",
    ),
    "short_u64": ("SET_FEATURES with a 4-byte payload", "reject: payload size != 8"),
    "short_state": ("SET_VRING_NUM with a 4-byte payload", "reject: payload size != 8"),
    "short_vring_addr": ("SET_VRING_ADDR with 20 of 40 bytes", "reject"),
    "short_mem_table": (
        "SET_MEM_TABLE claiming 1 region but carrying only the 8-byte head (1 fd)",
        "reject; close the fd",
    ),
    "size_field_huge": (
        "GET_FEATURES whose header claims a 0x7fffffff-byte payload (8 bytes follow)",
        "reject the header (bounded payload) instead of waiting for 2 GiB",
    ),
    "oversized_payload": (
        "SET_OWNER with a 4096-byte junk payload",
        "reject or skip it whole; stay in sync",
    ),
    "mem_table_fewer_fds": ("SET_MEM_TABLE: 2 regions, 1 fd", "reject; close the fd"),
    "mem_table_more_fds": ("SET_MEM_TABLE: 1 region, 2 fds", "reject or close the extra fd"),
    "mem_table_too_many_regions": (
        "SET_MEM_TABLE with nregions = 9 (max 8) and 8 fds",
        "reject; close every fd",
    ),
    "mem_table_zero_regions": ("SET_MEM_TABLE with nregions = 0", "reject or accept empty"),
    "mem_region_larger_than_fd": (
        "a 1 MiB memfd described as a 2 MiB region",
        "reject (fstat the fd); touching the tail would SIGBUS",
    ),
    "mem_region_offset_past_fd": (
        "mmap_offset 16 MiB into a 1 MiB memfd",
        "reject",
    ),
    "mem_regions_overlap": (
        "two regions whose guest-physical ranges overlap",
        "reject (ambiguous translation)",
    ),
    "mem_region_size_overflow": (
        "region at guest-physical 2**64 - 4096 with 1 MiB size (wraps)",
        "reject",
    ),
    "mem_fd_not_mappable": (
        "SET_MEM_TABLE whose fd is an eventfd (mmap fails)",
        "reject; close the fd",
    ),
    "kick_fd_missing": (
        "SET_VRING_KICK without the no-fd bit and without an fd",
        "reject",
    ),
    "kick_fd_pipe": (
        "SET_VRING_KICK with the read end of a pipe (not an eventfd)",
        "never block on it; reject or poll safely",
    ),
    "call_fd_devnull": (
        "SET_VRING_CALL with a read-only /dev/null fd",
        "writes fail: tolerate, no crash",
    ),
    "vring_index_out_of_range": (
        "SET_VRING_NUM for vring 255",
        "reject (index beyond the queues)",
    ),
    "vring_file_index_out_of_range": (
        "SET_VRING_KICK for vring 255 with an eventfd",
        "reject; close the fd",
    ),
    "vring_num_zero": ("SET_VRING_NUM 0 for vring 0", "reject"),
    "vring_num_not_pow2": ("SET_VRING_NUM 3 for vring 0", "reject"),
    "vring_num_too_big": ("SET_VRING_NUM 65536 for vring 0", "reject (max 32768)"),
    "vring_addr_unmapped": (
        "SET_VRING_ADDR with user addresses outside every region",
        "reject (translation fails)",
    ),
    "vring_addr_misaligned": (
        "SET_VRING_ADDR with a descriptor table at an odd address",
        "reject or handle unaligned access",
    ),
    "set_features_unoffered": ("SET_FEATURES with all 64 bits", "reject or mask"),
    "set_protocol_features_unoffered": (
        "SET_PROTOCOL_FEATURES with all 64 bits",
        "reject or mask",
    ),
    "get_vring_base_bad_index": (
        "GET_VRING_BASE for vring 255 (a reply is mandatory)",
        "answer with an error value or close; no crash",
    ),
    "fds_on_fdless_message": (
        "SET_OWNER carrying 3 eventfds",
        "close the fds (no leak)",
    ),
    "too_many_fds": (
        "SET_MEM_TABLE with 1 region and 16 fds (max 8)",
        "reject; close every fd",
    ),
    "rarp_short": ("SEND_RARP with a 4-byte payload", "reject"),
    "log_base_before_mem_table": (
        "SET_LOG_BASE with a sealed 8 KiB memfd before any memory table",
        "reply 1 (refused); close the fd",
    ),
    "log_base_not_memfd": ("SET_LOG_BASE with a pipe as the log", "reply 1; close the fd"),
    "log_base_no_fd": ("SET_LOG_BASE without a descriptor", "reply 1"),
    "log_base_short_payload": ("SET_LOG_BASE with a 4-byte payload", "reply 1; close the fd"),
    "truncated_header": (
        "6 bytes of a header, then nothing (sent last: the front end closes after it)",
        "wait or time out; no crash, no busy loop",
    ),
}


@dataclass
class CaseContext:
    """What builders may use: guest memory table of the front end, and fresh fds."""

    table: list[MemRegion]
    fds: list[int]
    n_vrings: int = 2
    made: list[int] = field(default_factory=list)

    def eventfd(self) -> int:
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        self.made.append(fd)
        return fd

    def pipe_read(self) -> int:
        r, w = os.pipe2(os.O_CLOEXEC)
        self.made += [r, w]
        return r

    def devnull(self) -> int:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.made.append(fd)
        return fd

    def memfd(self, size: int) -> int:
        fd = os.memfd_create("vhu-hostile", os.MFD_CLOEXEC)
        self.made.append(fd)
        os.ftruncate(fd, size)
        return fd

    def sealed_memfd(self, size: int) -> int:
        """A memfd sealed as QEMU seals its ``vhost-log`` (no shrinking or growing)."""
        fd = os.memfd_create("vhu-hostile-log", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self.made.append(fd)
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        return fd

    def close(self) -> None:
        for fd in self.made:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.made = []


def _m(
    request: int,
    payload: bytes = b"",
    fds: tuple[int, ...] = (),
    flags: int = VERSION,
    size: int | None = None,
) -> Message:
    return Message(request, flags, payload, fds, size)


def _region(gpa: int, size: int, uva: int = 0x7F0000000000, off: int = 0) -> MemRegion:
    return MemRegion(gpa, size, uva, off)


def _table(regions: list[MemRegion], fds: tuple[int, ...]) -> Message:
    payload = MEM_TABLE_HEAD.pack(len(regions), 0) + b"".join(r.pack() for r in regions)
    return _m(Request.SET_MEM_TABLE, payload, fds)


Builder = Callable[[CaseContext], Message | bytes]
#: ``SET_LOG_BASE``'s payload: ``u64 mmap_size, u64 mmap_offset``.
LOG_BASE = struct.Struct("=QQ")
MiB = 1 << 20

BUILDERS: dict[str, Builder] = {
    "unknown_request": lambda c: _m(9999),
    "request_zero": lambda c: _m(0),
    "inband_kick_unnegotiated": lambda c: _m(Request.VRING_KICK, VRING_STATE.pack(0, 0)),
    "bad_version": lambda c: _m(Request.GET_FEATURES, flags=0x2),
    "reply_flag_on_request": lambda c: _m(Request.SET_OWNER, flags=VERSION | FLAG_REPLY),
    "need_reply_unnegotiated": lambda c: _m(Request.SET_OWNER, flags=VERSION | FLAG_NEED_REPLY),
    "short_u64": lambda c: _m(Request.SET_FEATURES, b"\0" * 4),
    "short_state": lambda c: _m(Request.SET_VRING_NUM, b"\0" * 4),
    "short_vring_addr": lambda c: _m(Request.SET_VRING_ADDR, b"\0" * 20),
    "short_mem_table": lambda c: _m(
        Request.SET_MEM_TABLE, MEM_TABLE_HEAD.pack(1, 0), (c.memfd(MiB),)
    ),
    "size_field_huge": lambda c: _m(Request.GET_FEATURES, b"\0" * 8, size=0x7FFFFFFF),
    "oversized_payload": lambda c: _m(Request.SET_OWNER, b"\xa5" * 4096),
    "mem_table_fewer_fds": lambda c: _table([_region(0, MiB), _region(MiB, MiB)], (c.memfd(MiB),)),
    "mem_table_more_fds": lambda c: _table([_region(0, MiB)], (c.memfd(MiB), c.memfd(MiB))),
    "mem_table_too_many_regions": lambda c: Message(
        Request.SET_MEM_TABLE,
        VERSION,
        MEM_TABLE_HEAD.pack(9, 0) + b"".join(_region(k * MiB, MiB).pack() for k in range(9)),
        tuple(c.memfd(MiB) for _ in range(8)),
    ),
    "mem_table_zero_regions": lambda c: _table([], ()),
    "mem_region_larger_than_fd": lambda c: _table([_region(0, 2 * MiB)], (c.memfd(MiB),)),
    "mem_region_offset_past_fd": lambda c: _table([_region(0, MiB, off=16 * MiB)], (c.memfd(MiB),)),
    "mem_regions_overlap": lambda c: _table(
        [_region(0, 2 * MiB), _region(MiB, 2 * MiB, uva=0x7E0000000000)],
        (c.memfd(2 * MiB), c.memfd(2 * MiB)),
    ),
    "mem_region_size_overflow": lambda c: _table([_region(2**64 - 4096, MiB)], (c.memfd(MiB),)),
    "mem_fd_not_mappable": lambda c: _table([_region(0, MiB)], (c.eventfd(),)),
    "kick_fd_missing": lambda c: _m(Request.SET_VRING_KICK, U64.pack(0)),
    "kick_fd_pipe": lambda c: _m(Request.SET_VRING_KICK, U64.pack(0), (c.pipe_read(),)),
    "call_fd_devnull": lambda c: _m(Request.SET_VRING_CALL, U64.pack(0), (c.devnull(),)),
    "vring_index_out_of_range": lambda c: msg_state(Request.SET_VRING_NUM, 255, 256),
    "vring_file_index_out_of_range": lambda c: _m(
        Request.SET_VRING_KICK, U64.pack(0xFF), (c.eventfd(),)
    ),
    "vring_num_zero": lambda c: msg_state(Request.SET_VRING_NUM, 0, 0),
    "vring_num_not_pow2": lambda c: msg_state(Request.SET_VRING_NUM, 0, 3),
    "vring_num_too_big": lambda c: msg_state(Request.SET_VRING_NUM, 0, 65536),
    "vring_addr_unmapped": lambda c: _m(
        Request.SET_VRING_ADDR, VRING_ADDR.pack(0, 0, 0xDEAD0000, 0xDEAD2000, 0xDEAD1000, 0)
    ),
    "vring_addr_misaligned": lambda c: _m(
        Request.SET_VRING_ADDR,
        VRING_ADDR.pack(
            0,
            0,
            c.table[0].userspace_addr + 1,
            c.table[0].userspace_addr + 8192,
            c.table[0].userspace_addr + 4096,
            0,
        )
        if c.table
        else b"\0" * VRING_ADDR.size,
    ),
    "set_features_unoffered": lambda c: _m(Request.SET_FEATURES, U64.pack(2**64 - 1)),
    "set_protocol_features_unoffered": lambda c: _m(
        Request.SET_PROTOCOL_FEATURES, U64.pack(2**64 - 1)
    ),
    "get_vring_base_bad_index": lambda c: msg_state(Request.GET_VRING_BASE, 255, 0),
    "fds_on_fdless_message": lambda c: _m(
        Request.SET_OWNER, b"", (c.eventfd(), c.eventfd(), c.eventfd())
    ),
    "too_many_fds": lambda c: msg_mem_table([_region(0, MiB)], [c.memfd(MiB) for _ in range(16)]),
    "rarp_short": lambda c: _m(Request.SEND_RARP, b"\x02\0\0\0"),
    "log_base_before_mem_table": lambda c: _m(
        Request.SET_LOG_BASE, LOG_BASE.pack(8192, 0), (c.sealed_memfd(8192),)
    ),
    "log_base_not_memfd": lambda c: _m(
        Request.SET_LOG_BASE, LOG_BASE.pack(8192, 0), (c.pipe_read(),)
    ),
    "log_base_no_fd": lambda c: _m(Request.SET_LOG_BASE, LOG_BASE.pack(8192, 0)),
    "log_base_short_payload": lambda c: _m(
        Request.SET_LOG_BASE, b"\0" * 4, (c.sealed_memfd(8192),)
    ),
    "truncated_header": lambda c: HEADER.pack(Request.GET_FEATURES, VERSION, 0)[:6],
}


def build(case: str, ctx: CaseContext) -> Message | bytes:
    """The case's message (or, for byte-level cases, the raw bytes to write)."""
    if case not in BUILDERS:
        raise KeyError(f"unknown message case {case!r}")
    return BUILDERS[case](ctx)


@dataclass
class Outcome:
    case: str
    replies: list[Reply]
    closed: bool


async def send_case(
    channel: Channel,
    case: str,
    *,
    table: list[MemRegion] | None = None,
    n_vrings: int = 2,
    settle: float = 0.3,
) -> Outcome:
    """Send one hostile case; gather replies for ``settle`` seconds; report a close."""
    ctx = CaseContext(table or [], [], n_vrings)
    try:
        msg = build(case, ctx)
        if isinstance(msg, bytes):
            await channel.send_raw(msg)
        else:
            await channel.send(msg)
    except ChannelClosed:
        ctx.close()
        return Outcome(case, [], True)
    finally:
        ctx.close()
    replies: list[Reply] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle
    closed = False
    while (remaining := deadline - loop.time()) > 0:
        try:
            replies.append(await channel.recv_reply(remaining))
        except ReplyTimeout:
            break
        except ChannelClosed:
            closed = True
            break
        except Exception:  # a garbage reply: the back end broke the protocol back
            closed = True
            channel.close()
            break
    return Outcome(case, replies, closed or channel.closed)


def raw_header(request: int, flags: int, size: int) -> bytes:
    """A bare header (for hand-made hostile sequences)."""
    return HEADER.pack(request, flags, size)


__all__ = [
    "BUILDERS",
    "MSG_CASES",
    "CaseContext",
    "Outcome",
    "build",
    "raw_header",
    "send_case",
]
