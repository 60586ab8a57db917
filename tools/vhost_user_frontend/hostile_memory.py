"""Hostile mode, guest memory: a front end that damages the files it shared after
SET_MEM_TABLE, as a buggy or malicious VMM could.

A back end that maps a region and later touches it past the file's new end gets SIGBUS;
a sound back end stops only that device. Each case in :data:`MEMORY_CASES` acts on one
region's file (:func:`damage`); the front end must not touch its own mapping of that
region afterwards either (it would fault too): queue frames and buffers *before* the
damage, kick (:meth:`~.frontend.VhostUserFrontend.kick`) after it.

Cases
    ``truncate_4k`` / ``truncate_zero``: ``ftruncate`` to 4 KiB / 0 bytes (a sealed memfd
    refuses with ``PermissionError``: the seal is the defence).
    ``shrink_regrow``: cut to 4 KiB and grown back: no fault, but every page past the cut
    reads as zeros again (the back end's rings see a reset ring).
    ``replace_file``: a new file renamed over the region's path (``file:`` backing only):
    the back end's mapping keeps the old file; nothing of it changes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from .memory import Region

SMALL = 4096


def _truncate_4k(region: Region) -> None:
    os.ftruncate(region.fd, SMALL)


def _truncate_zero(region: Region) -> None:
    os.ftruncate(region.fd, 0)


def _shrink_regrow(region: Region) -> None:
    size = os.fstat(region.fd).st_size
    os.ftruncate(region.fd, SMALL)
    os.ftruncate(region.fd, size)


def _replace_file(region: Region) -> None:
    if not region.path:
        raise ValueError("replace_file needs file-backed memory")
    size = os.fstat(region.fd).st_size
    fd, path = tempfile.mkstemp(dir=os.path.dirname(region.path))
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
    os.replace(path, region.path)


MEMORY_CASES: dict[str, Callable[[Region], None]] = {
    "truncate_4k": _truncate_4k,
    "truncate_zero": _truncate_zero,
    "shrink_regrow": _shrink_regrow,
    "replace_file": _replace_file,
}


def damage(region: Region, case: str) -> None:
    """Apply memory case ``case`` to ``region``'s file."""
    MEMORY_CASES[case](region)
