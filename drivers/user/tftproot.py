"""Confined read-only file access below the ``tftp=`` root.

Owns the one decision that keeps TFTP from serving files outside its root: how a name a
guest asked for becomes an open file descriptor. The rules, in order:

1. lexical: the name is at most 512 bytes (libslirp's ``TFTP_FILENAME_MAX``), not empty,
   has no NUL and no ``..`` component; leading slashes are taken relative to the root
   (``/pxelinux.0`` is ``ROOT/pxelinux.0``, as libslirp serves it); a trailing slash names
   a directory and is refused;
2. resolution: with ``openat2(2)`` (Linux 5.6+) the file is opened relative to a
   descriptor of the root with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS``, so the kernel
   refuses every path - ``..``, absolute symlinks, symlinks pointing out of the root -
   that would leave it, at open time (no race); where ``openat2`` is missing, the path is
   resolved with ``realpath``, checked to lie inside the real root, and opened with
   ``O_NOFOLLOW``;
3. the result must be a regular file (``fstat``): FIFOs, devices and directories are
   refused; files are opened ``O_NONBLOCK`` so a FIFO cannot stall the loop.

The TFTP machine reads through this object (:class:`.tftp.FileSource`: ``open``, ``read``
with ``pread``, ``close``). Symlinks that stay inside the root are followed. Outcomes are
:class:`Denied` (TFTP error 2, "Access violation") or :class:`NotFound` (error 1, "File
not found").
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
import sys
from typing import Any, Final

from netstack.errors import NetstackError

NAME_MAX: Final = 512
_SYS_OPENAT2: Final = 437  # the same number on every Linux architecture (generic table)
_RESOLVE_NO_MAGICLINKS: Final = 0x02
_RESOLVE_BENEATH: Final = 0x08
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


class Denied(NetstackError):
    """The name is outside what the root may serve (TFTP error 2)."""


class NotFound(NetstackError):
    """No such file below the root (TFTP error 1)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


@functools.cache
def _syscall() -> Any:
    if sys.platform != "linux":
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    return fn


def check_name(name: bytes) -> bytes:
    """The root-relative path for a requested name, or :class:`Denied`."""
    if not name or len(name) > NAME_MAX or b"\0" in name or name.endswith(b"/"):
        raise Denied
    rel = name.lstrip(b"/")
    parts = rel.split(b"/")
    if not rel or any(part == b".." for part in parts):
        raise Denied
    return b"/".join(p for p in parts if p not in (b"", b"."))


class TftpRoot:
    """The directory TFTP serves; :meth:`open` returns a descriptor and the file size."""

    def __init__(self, root: str, *, use_openat2: bool | None = None) -> None:
        """``use_openat2``: force (True) or forbid (False) ``openat2``; None probes."""
        self.root = os.path.realpath(root)
        self._root_b = os.fsencode(self.root)
        self._use_openat2 = use_openat2

    @property
    def confinement(self) -> str:
        """``openat2`` or ``realpath``: how names are resolved (probed on first use)."""
        return "realpath" if self._use_openat2 is False or _syscall() is None else "openat2"

    def _openat2(self, rel: bytes) -> int | None:
        """The fd, or None when ``openat2`` is unavailable; raises OSError."""
        call = _syscall()
        if call is None or self._use_openat2 is False:
            return None
        dirfd = os.open(self._root_b, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            how = _OpenHow(_OPEN_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
            fd = int(call(_SYS_OPENAT2, dirfd, rel, ctypes.byref(how), ctypes.sizeof(how)))
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
        finally:
            os.close(dirfd)
        if err == errno.ENOSYS and self._use_openat2 is None:
            self._use_openat2 = False
            return None
        raise OSError(err, os.strerror(err))

    def _open_checked(self, rel: bytes) -> int:
        real = os.path.realpath(os.path.join(self._root_b, rel))
        if os.path.commonpath([real, self._root_b]) != self._root_b:
            raise OSError(errno.EXDEV, "outside the root")
        return os.open(real, _OPEN_FLAGS | os.O_NOFOLLOW)

    def open(self, name: bytes) -> tuple[int, int]:
        """Open ``name`` for reading: (fd, size); raises :class:`Denied` / :class:`NotFound`."""
        rel = check_name(name)
        try:
            fd = self._openat2(rel)
            if fd is None:
                fd = self._open_checked(rel)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise NotFound from None
            raise Denied from None  # EXDEV (escape), ELOOP, EACCES, ...
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise NotFound from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotFound if stat.S_ISDIR(st.st_mode) else Denied
        return fd, st.st_size

    def read(self, fd: int, count: int, offset: int) -> bytes:
        """Up to ``count`` bytes of an opened file at ``offset`` (``pread``)."""
        return os.pread(fd, count, offset)

    def close(self, fd: int) -> None:
        """Close a file :meth:`open` returned."""
        os.close(fd)
