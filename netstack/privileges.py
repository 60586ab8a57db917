"""Dropping root: ``-run-with user=USER`` (QEMU 9) and ``-runas USER`` (QEMU 7.2).

Owns parsing the user (QEMU's forms: a user name, whose uid, primary group and
supplementary groups are taken; or ``UID:GID``, numeric, with ``GID`` as the only group)
with QEMU's error text, ``User "X" doesn't exist (and is not <uid>:<gid>)``, and the
switch itself (:func:`drop`), done as QEMU's ``change_process_uid`` (``os-posix.c``):
``setgid``, ``initgroups`` (or ``setgroups`` to the one GID), ``setuid``, then a check that
``setuid(0)`` fails; a failure of any step ends the daemon with QEMU's text ("Failed to
setgid(N)", ...), exit status 1.

When: after every ``-netdev``, ``-chardev``, ``-object`` and monitor of the command line is
open (taps, bridges, sockets, and the runtime directory, which is handed to the user
first so that later sockets can be made and removed there), before the daemon reports
ready. QEMU drops at the same point (``os_setup_post``).

Deviation from QEMU, which keeps no capability: a daemon started as root keeps
``CAP_NET_ADMIN`` and ``CAP_NET_RAW`` (effective, permitted, inheritable and ambient,
nothing else), so a later ``netdev_add`` of a tap or bridge, its ``script=`` (run with
the ambient set) and raw ICMP echo still work. What needs more - ``x-netns=`` (``setns``
needs ``CAP_SYS_ADMIN``), a helper or script that needs root - fails cleanly with the
kernel's "Operation not permitted" in the netdev_add error. :attr:`RunAs.kept` says what
was kept; :func:`capabilities` reads ``/proc/self/status``.

``-run-with``: ``user=`` is honoured; ``async-teardown=on|off`` is accepted and has no
effect (netstackd holds no guest memory to tear down); ``chroot=`` is refused (the daemon
imports code and opens files lazily). QEMU 9 prints the whole ``-run-with`` argument in
its unknown-user error (it passes the option text, not the user); netstackd prints the
user.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from netstack.errors import GenericError, StartupError
from netstack.qapi import qemuopts

CAP_NET_ADMIN: Final = 12
CAP_NET_RAW: Final = 13
#: What a daemon started as root keeps after the switch.
KEPT_CAPS: Final = (CAP_NET_ADMIN, CAP_NET_RAW)
_PR_SET_KEEPCAPS: Final = 8
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_RAISE: Final = 2
_LINUX_CAPABILITY_VERSION_3: Final = 0x20080522
_UINT_RX: Final = re.compile(r"[ \t\n\v\f\r]*\+?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_ID_MAX: Final = (1 << 32) - 1
_RUN_WITH: Final = {
    "async-teardown": qemuopts.OptType.BOOL,
    "chroot": qemuopts.OptType.STRING,
    "user": qemuopts.OptType.STRING,
}


class PrivilegeError(StartupError):
    """Dropping privileges failed (QEMU's text; the daemon exits with status 1)."""


@dataclass(frozen=True)
class RunAs:
    """The user to switch to: ``name`` is set when it came from the password database."""

    uid: int
    gid: int
    name: str | None = None


def _strtoul(text: str) -> tuple[int, str] | None:
    match = _UINT_RX.match(text)
    if match is None:
        return None
    digits = match.group(1)
    if digits[:2] in ("0x", "0X"):
        value = int(digits, 16)
    else:
        value = int(digits, 8 if digits.startswith("0") else 10)
    return value, text[match.end() :]


def _uid_gid(text: str) -> RunAs | None:
    """``UID:GID`` as QEMU reads it (``qemu_strtoul``, base 0; neither may be -1)."""
    first = _strtoul(text)
    if first is None or not first[1].startswith(":"):
        return None
    second = _strtoul(first[1][1:])
    if second is None or second[1]:
        return None
    uid, gid = first[0], second[0]
    if not (0 <= uid < _ID_MAX and 0 <= gid < _ID_MAX):
        return None
    return RunAs(uid, gid)


def parse_user(text: str) -> RunAs:
    """A user name or ``UID:GID``; GenericError with QEMU's text otherwise."""
    try:
        entry = pwd.getpwnam(text)
    except (KeyError, ValueError):
        entry = None
    if entry is not None:
        return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)
    parsed = _uid_gid(text)
    if parsed is None:
        raise GenericError(f'User "{text}" doesn\'t exist (and is not <uid>:<gid>)')
    return parsed


class RunWithHelp(Exception):
    """``-run-with help``: the option list (stdout); QEMU exits 1 after it, netstackd 0."""

    def __init__(self) -> None:
        super().__init__(
            "run-with options:\n  async-teardown=<bool (on/off)>\n  chroot=<str>\n  user=<str>\n"
        )


def parse_run_with(text: str) -> RunAs | None:
    """``-run-with [async-teardown=on|off][,chroot=DIR][,user=USER]``."""
    opts = qemuopts.parse(text, None, _RUN_WITH)
    if opts.help_wanted:
        raise RunWithHelp
    if opts.get("chroot") is not None:
        raise GenericError("chroot is not supported by netstackd")
    user = opts.get("user")
    return None if user is None else parse_user(user)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _prctl(libc: ctypes.CDLL, *args: int) -> None:
    if libc.prctl(*(ctypes.c_ulong(a) for a in args)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _set_caps(libc: ctypes.CDLL, caps: Iterable[int]) -> None:
    """Make ``caps`` the effective, permitted, inheritable and ambient sets."""
    mask = 0
    for cap in caps:
        mask |= 1 << cap
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = data[0].inheritable = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = data[1].inheritable = mask >> 32
    if libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    for cap in caps:
        _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, cap, 0, 0)


def hand_over(paths: Iterable[Path], user: RunAs) -> None:
    """Give the daemon's own runtime files to ``user`` (before :func:`drop`), so it can
    still make and remove sockets there. Only what this process's user owns is touched."""
    me = os.geteuid()
    for path in paths:
        try:
            if path.lstat().st_uid == me:
                os.chown(path, user.uid, user.gid, follow_symlinks=False)
        except OSError:
            continue


def drop(user: RunAs, keep: Iterable[int] = KEPT_CAPS) -> tuple[int, ...]:
    """Switch to ``user`` (QEMU's steps and texts); keep ``keep`` if we are root.

    Returns the capabilities kept. Raises :class:`PrivilegeError`.
    """
    libc = _libc()
    keep = tuple(keep) if os.geteuid() == 0 else ()
    if keep:
        try:
            _prctl(libc, _PR_SET_KEEPCAPS, 1, 0, 0, 0)
        except OSError:
            keep = ()
    try:
        os.setgid(user.gid)
    except OSError:
        raise PrivilegeError(f"Failed to setgid({user.gid})") from None
    if user.name is not None:
        try:
            os.initgroups(user.name, user.gid)
        except OSError:
            raise PrivilegeError(f'Failed to initgroups("{user.name}", {user.gid})') from None
    else:
        try:
            os.setgroups([user.gid])
        except OSError:
            raise PrivilegeError(f"Failed to setgroups(1, [{user.gid}])") from None
    try:
        os.setuid(user.uid)
    except OSError:
        raise PrivilegeError(f"Failed to setuid({user.uid})") from None
    if keep:
        try:
            _set_caps(libc, keep)
            _prctl(libc, _PR_SET_KEEPCAPS, 0, 0, 0, 0)
        except OSError:
            raise PrivilegeError("Dropping privileges failed") from None
    if user.uid != 0:
        try:
            os.setuid(0)
        except OSError:
            pass
        else:
            raise PrivilegeError("Dropping privileges failed")
    return keep


def capabilities(status: str | None = None) -> dict[str, int]:
    """``CapInh``, ``CapPrm``, ``CapEff``, ``CapBnd``, ``CapAmb`` of this process."""
    text = status if status is not None else Path("/proc/self/status").read_text()
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            out[key] = int(value.strip(), 16)
    return out
