"""The vde_plug control protocol, sans I/O: where to connect, what to send, what came back.

A VDE plug (libvdeplug's ``vde`` module, ``libvdeplug_vde.c`` of vdeplug4; the switch side
is ``src/vde_switch/datasock.c`` of vde-2) joins a running ``vde_switch`` in two sockets:

1. a ``SOCK_STREAM`` connection to the switch's control socket ``SOCK/ctl`` (or, for a
   named port group, ``SOCK/GROUP`` first), kept open for the life of the port: the switch
   drops the port when it closes, and the plug sees the switch go when it reaches EOF;
2. a ``SOCK_DGRAM`` socket the plug binds in the switch directory (``SOCK/.PID-NNNNN``)
   and announces in its request, ``struct request_v3`` in host byte order, packed::

       uint32 magic = 0xfeedface, uint32 version = 3, uint32 type,
       struct sockaddr_un sock (110 bytes), char description[] (no NUL, < 128 bytes)

   ``type`` is ``REQ_NEW_CONTROL`` (0) with the wanted port in its upper bits
   (``port << 8``; 0: any free port), or ``REQ_NEW_PORT0`` (1) for the management port.
   The switch connects a datagram socket of its own to ours, binds it at
   ``SOCK/PPP.FD`` and writes its ``struct sockaddr_un`` (110 bytes) back on the control
   stream; the plug connects its datagram socket there, and from then on every datagram
   is one Ethernet frame, both ways.

``sock`` spellings (``vde_open_real`` and ``vde_parsepathparms``): a directory path, the
same with a ``vde://`` prefix, either with a ``[...]`` suffix of ``/``-separated
parameters (``port=``, ``portgroup=``, ``group=``, ``mode=`` in octal, abbreviations
allowed, a bare value meaning the port or port group) that override the netdev options;
empty or absent: ``~/.vdeplug/default``, ``~/.vde2/default.switch``, then
``/var/run/vde.ctl`` and ``/tmp/vde.ctl``. A regular file at the path holds the URL to use
on its first line.

Deviations from libvdeplug: other plug modules (``vxvde://``, ``tap://``, ...) are refused
with "Protocol not supported" (what libvdeplug says when a module is missing); quoting and
``%XX`` escapes inside ``[...]`` are not decoded; an unknown non-numeric ``group`` is an
error (libvdeplug's ``atoi`` turns it into group 0, root).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from netstack.errors import NetstackError

SWITCH_MAGIC = 0xFEEDFACE
VERSION = 3
REQ_NEW_CONTROL = 0
REQ_NEW_PORT0 = 1
#: ``sizeof(struct sockaddr_un)`` on Linux: ``sa_family_t`` and 108 bytes of path.
SOCKADDR_UN_LEN = 110
SUN_PATH_LEN = SOCKADDR_UN_LEN - 2
#: ``MAXDESCR`` of ``libvdeplug.h``: the description, NUL included.
MAXDESCR = 128
DEFAULT_MODE = 0o700
#: The largest port a request can carry (``type`` holds it above its low 8 bits).
MAX_PORT = 0xFFFFFF

_HEADER = struct.Struct("=III")
_FAMILY = struct.Struct("=H")

#: Fallback switch directories, in libvdeplug's order, when ``sock`` is empty.
FALLBACK_DIRS = ("/var/run/vde.ctl", "/tmp/vde.ctl")
#: Per-user default switch links under ``$HOME``.
HOME_DEFAULTS = (".vdeplug/default", ".vde2/default.switch")


class PlugError(NetstackError):
    """The plug could not be opened: an errno (QEMU reports ``strerror``) and/or a text."""

    def __init__(self, err: int, detail: str | None = None) -> None:
        super().__init__(err, detail)
        self.errno = err
        self.detail = detail

    @property
    def reason(self) -> str:
        """What follows QEMU's "Could not open vde: "."""
        return self.detail if self.detail is not None else os.strerror(self.errno)


@dataclass(frozen=True)
class Target:
    """Where and how to plug in: the switch directory and the port request."""

    #: Switch directory candidates, tried in order (one unless ``sock`` was empty).
    dirs: tuple[str, ...]
    #: Port number wanted (0: any free port; -1: the management port 0).
    port: int = 0
    #: A named port group socket (``SOCK/NAME``) to try before ``SOCK/ctl``.
    portgroup: str | None = None
    #: Group owning our data socket (name or number), or None.
    group: str | None = None
    #: Permission bits of our data socket.
    mode: int = DEFAULT_MODE


def _params(text: str) -> dict[str, str]:
    """``port=3/group=g`` (inside ``[...]``) as a dict; a bare value is the port group."""
    keys = ("port", "portgroup", "group", "mode")
    out: dict[str, str] = {}
    for elem in text.split("/"):
        tag, eq, value = elem.partition("=")
        if not tag:
            continue
        match = next((k for k in keys if k.startswith(tag)), None) if eq else None
        if match is None:
            if eq:
                raise PlugError(errno.EINVAL, f"unknown key '{tag}' in the vde URL")
            out["portgroup"] = elem
            continue
        out["port" if match == "port" else match] = value
    return out


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """A plug URL as (directory, bracketed parameters); other plug modules are refused."""
    scheme, sep, rest = url.partition("://")
    if sep:
        if scheme != "vde":
            raise PlugError(errno.EPROTONOSUPPORT)
        url = rest
    path, bracket, tail = url.partition("[")
    if not bracket:
        return path, {}
    inner = tail[: tail.rfind("]")] if "]" in tail else tail
    return path, _params(inner)


def _octal(text: str) -> int:
    digits = ""
    for ch in text.strip():
        if ch not in "01234567":
            break
        digits += ch
    return int(digits, 8) & 0o7777 if digits else 0


def target(
    sock: str | None,
    port: int | None,
    group: str | None,
    mode: int | None,
    *,
    home: str | None = None,
    read_indirect: bool = True,
) -> Target:
    """The netdev options and the ``sock`` URL as one :class:`Target` (see the docstring)."""
    url = sock or ""
    if not url and home:
        for rel in HOME_DEFAULTS:
            candidate = os.path.join(home, rel)
            if os.path.lexists(candidate):
                url = candidate
                break
    if url and "://" not in url and read_indirect and os.path.isfile(url):
        try:
            with open(url, encoding="utf-8", errors="replace") as f:
                first = f.readline().rstrip("\n")
        except OSError as exc:
            raise PlugError(exc.errno or errno.EIO) from exc
        if first:
            url = first
    path, params = split_url(url)
    base = Target(dirs=(path,) if path else FALLBACK_DIRS, port=port or 0, group=group)
    base = replace(base, mode=DEFAULT_MODE if mode is None else mode)
    if "group" in params:
        base = replace(base, group=params["group"])
    if "mode" in params:
        base = replace(base, mode=_octal(params["mode"]))
    portgroup = params.get("port", params.get("portgroup"))
    if portgroup:
        if portgroup.isdigit():
            number = int(portgroup)
            if number > MAX_PORT:
                raise PlugError(errno.EINVAL, f"port {portgroup} out of range")
            base = replace(base, port=number if number else -1)
        else:
            base = replace(base, portgroup=portgroup)
    return base


def control_paths(directory: str, t: Target) -> list[str]:
    """The control sockets to try, in order: a named port group, then ``ctl``."""
    paths = [os.path.join(directory, t.portgroup)] if t.portgroup else []
    return [*paths, os.path.join(directory, "ctl")]


def request_type(port: int, via_ctl: bool) -> int:
    """The request's ``type``: the port rides in its upper bits on ``ctl``."""
    if not via_ctl or port == 0:
        return REQ_NEW_CONTROL
    if port < 0:
        return REQ_NEW_PORT0
    return REQ_NEW_CONTROL + (port << 8)


def sockaddr_un(path: bytes) -> bytes:
    """``struct sockaddr_un`` for ``path``, zero-padded to its full 110 bytes."""
    if len(path) >= SUN_PATH_LEN:
        raise PlugError(errno.ENAMETOOLONG)
    return _FAMILY.pack(socket.AF_UNIX) + path.ljust(SUN_PATH_LEN, b"\0")


def encode_request(kind: int, data_path: bytes, description: bytes) -> bytes:
    """``struct request_v3`` as libvdeplug sends it: the description without its NUL."""
    descr = description.split(b"\0", 1)[0][: MAXDESCR - 1]
    return _HEADER.pack(SWITCH_MAGIC, VERSION, kind) + sockaddr_un(data_path) + descr


def decode_request(data: bytes) -> tuple[int, bytes, bytes]:
    """(type, data socket path, description) of a request (for tests and fake switches)."""
    if len(data) < _HEADER.size + SOCKADDR_UN_LEN:
        raise ValueError("short request")
    magic, version, kind = _HEADER.unpack_from(data)
    if magic != SWITCH_MAGIC or version != VERSION:
        raise ValueError(f"bad magic/version {magic:#x}/{version}")
    path = data[_HEADER.size + 2 : _HEADER.size + SOCKADDR_UN_LEN].split(b"\0", 1)[0]
    return kind, path, data[_HEADER.size + SOCKADDR_UN_LEN :]


def decode_reply(reply: bytes) -> bytes:
    """The switch's data socket path from its 110-byte reply; garbage raises PlugError."""
    if len(reply) != SOCKADDR_UN_LEN:
        raise PlugError(errno.EPROTO, f"short reply from the switch ({len(reply)} bytes)")
    (family,) = _FAMILY.unpack_from(reply)
    if family != socket.AF_UNIX:
        raise PlugError(errno.EPROTO, f"bad reply from the switch (address family {family})")
    raw = reply[2:]
    if b"\0" not in raw:
        raise PlugError(errno.EPROTO, "bad reply from the switch (unterminated path)")
    path = raw.split(b"\0", 1)[0]
    if not path.startswith(b"/"):
        raise PlugError(errno.EPROTO, f"bad reply from the switch (path {path[:40]!r})")
    return path


def data_socket_names(
    directory: str, pid: int, tries: int = 1000, prefix: str = "."
) -> Iterator[str]:
    """Names for our datagram socket: ``DIR/.PPPPP-NNNNN`` as libvdeplug numbers them
    (``vde.PPPPP-NNNNN`` in its fallback directories)."""
    for n in range(tries):
        yield os.path.join(directory, f"{prefix}{pid:05d}-{n:05d}")


def description(owner: str, user: str, pid: int) -> bytes:
    """The port description shown by the switch (``port/print``)."""
    return f"{owner} user={user} pid={pid}".encode()[: MAXDESCR - 1]


def socket_mode(
    mode: int, group_given: bool, ctl_uid: int | None, euid: int, can_chgrp: bool
) -> int:
    """The data socket's final mode (``vde_vde_open``'s rule when no group is given).

    Without ``group`` and with no group/other bits asked for, a switch owned by another
    (non-root) user could not write to us: give its group access if we could hand the
    socket to the switch's group (``can_chgrp``), everyone's otherwise.
    """
    if group_given or mode & 0o077 or ctl_uid is None:
        return mode
    if ctl_uid in (0, euid):
        return mode
    return mode | (0o070 if can_chgrp else 0o077)


def resolve_gid(group: str, lookup: Sequence[tuple[str, int]] | None = None) -> int:
    """A group name or number as a gid (``grp`` unless a table is given)."""
    if group.isdigit():
        return int(group)
    if lookup is not None:
        for name, gid in lookup:
            if name == group:
                return gid
    else:
        import grp

        try:
            return grp.getgrnam(group).gr_gid
        except KeyError:
            pass
    raise PlugError(errno.EINVAL, f"unknown group '{group}'")


class ReplyReader:
    """Collects the switch's reply from the control stream (it may arrive in pieces)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes | None:
        """Add received bytes; the data socket path once the 110 bytes are in."""
        if not data:
            raise PlugError(
                errno.ECONNRESET, "the switch closed the control connection without a reply"
            )
        self._buf += data
        if len(self._buf) < SOCKADDR_UN_LEN:
            return None
        if len(self._buf) > SOCKADDR_UN_LEN:
            raise PlugError(errno.EPROTO, f"bad reply from the switch ({len(self._buf)} bytes)")
        return decode_reply(bytes(self._buf))

    @property
    def pending(self) -> int:
        return len(self._buf)


class Backoff:
    """Reconnect delays: ``first`` doubling up to ``cap`` seconds; :meth:`reset` on success."""

    def __init__(self, first: float = 0.1, cap: float = 2.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first
