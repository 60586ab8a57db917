"""A deterministic writer for "newc" cpio archives, as the Linux initramfs unpacker reads them.

Owns the on-disk format only: no file-system access. Invariants: the same sequence of entries
always yields the same bytes (mtime, uid and gid are 0, inode numbers are assigned in order), every
parent directory is emitted before its children, and each archive ends with ``TRAILER!!!``.
Archives (or their gzip'd forms) may be concatenated; the kernel unpacks them in order, later
entries overriding earlier ones.
"""

from __future__ import annotations

import gzip
import stat
from collections.abc import Iterable
from dataclasses import dataclass

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. ``path`` is relative to the root, without a leading slash."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @staticmethod
    def directory(path: str, perm: int = 0o755) -> Entry:
        return Entry(path, stat.S_IFDIR | perm)

    @staticmethod
    def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
        return Entry(path, stat.S_IFREG | perm, data)

    @staticmethod
    def symlink(path: str, target: str) -> Entry:
        return Entry(path, stat.S_IFLNK | 0o777, target.encode())

    @staticmethod
    def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        nlink,
        0,  # mtime
        len(entry.data),
        0,  # devmajor
        0,  # devminor
        entry.rdev[0],
        entry.rdev[1],
        len(name) + 1,  # namesize, including the NUL
        0,  # check
    )
    return _MAGIC + b"".join(b"%08X" % f for f in fields)


def _normalise(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"bad archive path: {path!r}")
    return "/".join(parts)


def archive(entries: Iterable[Entry]) -> bytes:
    """Serialise ``entries`` (plus any missing parent directories) as one newc archive."""
    out = bytearray()
    seen: set[str] = set()
    ino = 0

    def emit(entry: Entry) -> None:
        nonlocal ino
        ino += 1
        name = entry.path.encode()
        head = _header(ino, entry, name) + name + b"\0"
        out.extend(head)
        out.extend(_pad4(len(head)))
        out.extend(entry.data)
        out.extend(_pad4(len(entry.data)))

    for entry in entries:
        path = _normalise(entry.path)
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in seen:
                seen.add(parent)
                emit(Entry.directory(parent))
        if path in seen:
            if stat.S_ISDIR(entry.mode):
                continue
            raise ValueError(f"duplicate archive path: {path!r}")
        seen.add(path)
        emit(Entry(path, entry.mode, entry.data, entry.rdev))
    emit(Entry(_TRAILER, 0))
    return bytes(out)


def gzip_archive(entries: Iterable[Entry], level: int = 6) -> bytes:
    """Like :func:`archive`, gzip'd with a zero timestamp (so the bytes are reproducible)."""
    return gzip.compress(archive(entries), compresslevel=level, mtime=0)
