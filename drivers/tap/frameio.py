"""The tap fd's per-frame system calls: a batch of reads, a run of writes.

Owns the two loops :class:`drivers.tap.client.TapClient` runs on every wake-up, in their
reference form (Python, one ``os.read`` / ``os.write`` / ``os.writev`` per frame, as QEMU's
``tap_send`` and ``tap_receive_iov`` in ``net/tap.c``) and the choice of their compiled
twin ``drivers/tap/_fasttap.c`` (:func:`impl`, made at first use through
:func:`netstack.fastpath.load`; ``NETSTACK_PURE_PYTHON=1`` keeps these). Both report a
failed system call as an errno in the result instead of raising, so the caller's error
handling (counting, rate-limited logging, back-off) is the same for either.

- :func:`read_batch`: up to ``count`` reads of at most ``size`` bytes; a frame shorter
  than ``min_len`` is padded with zeros to it; an empty read, EAGAIN or EINTR ends the
  batch quietly; any other error ends it and is returned.
- :func:`write_frames`: one write per frame from ``start`` on; stops at the first error
  and returns the index of the frame that failed with its errno (EINTR is retried). The
  ``mode`` says how a frame goes out: :data:`AS_IS`, :data:`PREFIXED` (``prefix`` then the
  frame, two iovecs) or :data:`NARROWED` (a 12-byte ``virtio_net_hdr_v1`` narrowed to the
  fd's ``hdr`` bytes by writing around the rest: two iovecs, no copy).

Invariant: both implementations make the same system calls with the same bytes in the
same order (tests/property/test_tap_frameio_differential.py).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Protocol, cast

from netstack import fastpath

#: The compiled twin's import path.
EXTENSION = "drivers.tap._fasttap"
#: Write modes.
AS_IS = 0
PREFIXED = 1
NARROWED = 2
_HDR_LEN = 12  # virtio_net_hdr_v1, the core's header


class FrameIO(Protocol):
    """What the tap client calls (this module, or the compiled one)."""

    def read_batch(
        self, fd: int, count: int, size: int, min_len: int
    ) -> tuple[list[bytes], int]: ...

    def write_frames(
        self, fd: int, frames: Sequence[bytes], start: int, mode: int, prefix: bytes, hdr: int
    ) -> tuple[int, int]: ...


def read_batch(fd: int, count: int, size: int, min_len: int) -> tuple[list[bytes], int]:
    """Up to ``count`` frames read from ``fd``, and the errno that ended it (0: none)."""
    read = os.read
    frames: list[bytes] = []
    append = frames.append
    try:
        for _ in range(count):
            frame = read(fd, size)
            if len(frame) < min_len:
                if not frame:
                    break
                frame = frame.ljust(min_len, b"\0")
            append(frame)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError as exc:
        return frames, exc.errno or errno.EIO
    return frames, 0


def write_frames(
    fd: int, frames: Sequence[bytes], start: int, mode: int, prefix: bytes, hdr: int
) -> tuple[int, int]:
    """Write ``frames[start:]``; (index reached, errno of the frame that failed or 0)."""
    n = len(frames)
    i = start
    while i < n:
        try:
            if mode == AS_IS:
                write = os.write
                while i < n:
                    write(fd, frames[i])
                    i += 1
            elif mode == PREFIXED:
                writev = os.writev
                while i < n:
                    writev(fd, (prefix, frames[i]))
                    i += 1
            else:
                writev = os.writev
                while i < n:
                    view = memoryview(frames[i])
                    writev(fd, (view[:hdr], view[_HDR_LEN:]))
                    i += 1
        except InterruptedError:
            continue
        except OSError as exc:
            return i, exc.errno or errno.EIO
    return i, 0


_impl: FrameIO | None = None


def impl() -> FrameIO:
    """The compiled loops when built and allowed, else this module's (chosen once)."""
    global _impl
    if _impl is None:
        mod: ModuleType | None = fastpath.load(EXTENSION)
        import drivers.tap.frameio as reference

        _impl = cast(FrameIO, mod if mod is not None else reference)
    return _impl


def error(code: int) -> OSError:
    """The OSError a failed call with errno ``code`` raises in Python."""
    return OSError(code, os.strerror(code))
