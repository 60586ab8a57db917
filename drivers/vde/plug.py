"""Opening a vde_plug connection: the sockets and the handshake of :mod:`.protocol`.

:func:`open_plug` does what ``vde_open`` does for a ``vde_switch`` (``libvdeplug_vde.c``),
asynchronously and bounded by a timeout: connect the control stream, bind our datagram
socket in the switch directory (``DIR/.PID-NNNNN``; if that directory refuses,
``/var/run``, ``/var/tmp`` and ``/tmp`` as ``vde.PID-NNNNN``), give it the requested group
and mode, send the request, read the switch's reply, connect the datagram socket to the
switch's and unlink our socket's name (the connection outlives it). Failures raise
:class:`~.protocol.PlugError` with the errno QEMU would report (``ENOENT`` for a missing
switch, ``ECONNREFUSED`` for a dead one) and leave nothing behind.

Beyond libvdeplug: the whole handshake is bounded (``timeout``): Debian's vde_switch 2.3.2
neither answers nor closes when it refuses a port (a port number beyond ``-n``), which
leaves QEMU waiting forever at start-up; here that is ``ETIMEDOUT``. A reply shorter or
longer than a ``struct sockaddr_un``, of another address family or with a relative path is
refused (libvdeplug reads one ``recv`` and uses whatever came). A switch path too long
for a ``sockaddr_un`` is "File name too long" (libvdeplug truncates it and usually reports
"No such file or directory").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from dataclasses import dataclass

from .protocol import (
    PlugError,
    ReplyReader,
    Target,
    control_paths,
    data_socket_names,
    encode_request,
    request_type,
    resolve_gid,
    socket_mode,
)

#: Where the data socket goes when the switch directory refuses it (libvdeplug's list).
FALLBACK_DATA_DIRS = ("/var/run", "/var/tmp", "/tmp")
DEFAULT_TIMEOUT = 5.0


@dataclass
class Plug:
    """An open plug: the control stream and the connected data socket."""

    ctl: socket.socket
    data: socket.socket
    #: The switch directory actually used.
    directory: str
    #: The switch's data socket (``DIR/PPP.FD``) we are connected to.
    switch_path: str

    @property
    def port(self) -> int | None:
        """The switch port number, from the name of the switch's data socket."""
        head = os.path.basename(self.switch_path).split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def close(self) -> None:
        self.ctl.close()
        self.data.close()


def _bind_data(directory: str) -> tuple[socket.socket, str]:
    data = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    pid = os.getpid()
    last: OSError | None = None
    names = [data_socket_names(directory, pid)]
    names += [data_socket_names(extra, pid, prefix="vde.") for extra in FALLBACK_DATA_DIRS]
    for candidates in names:
        for path in candidates:
            try:
                data.bind(path)
            except OSError as exc:
                last = exc
                if exc.errno == errno.EADDRINUSE:
                    continue
                break
            return data, path
    data.close()
    err = last.errno if last is not None and last.errno else errno.EADDRINUSE
    raise PlugError(err)


def _set_owner(path: str, ctl_path: str, t: Target) -> None:
    """Group and mode of our data socket, as ``vde_vde_open`` sets them."""
    mode = t.mode
    if t.group is not None:
        gid = resolve_gid(t.group)
        try:
            os.chown(path, -1, gid)
        except OSError as exc:
            raise PlugError(exc.errno or errno.EPERM) from exc
    else:
        try:
            st = os.stat(ctl_path)
        except OSError:
            ctl_uid, ctl_gid = None, -1
        else:
            ctl_uid, ctl_gid = st.st_uid, st.st_gid
        can_chgrp = False
        if ctl_uid not in (None, 0, os.geteuid()) and not mode & 0o077:
            try:
                os.chown(path, -1, ctl_gid)
                can_chgrp = True
            except OSError:
                pass
        mode = socket_mode(mode, False, ctl_uid, os.geteuid(), can_chgrp)
    with contextlib.suppress(OSError):
        os.chmod(path, mode)


async def _connect_ctl(
    loop: asyncio.AbstractEventLoop, directory: str, t: Target
) -> tuple[socket.socket, str]:
    last = errno.ENOENT
    for path in control_paths(directory, t):
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        ctl.setblocking(False)
        try:
            await loop.sock_connect(ctl, path)
        except OSError as exc:
            ctl.close()
            last = exc.errno or errno.ENAMETOOLONG  # errno-less: 'AF_UNIX path too long'
            continue
        except BaseException:
            ctl.close()
            raise
        return ctl, path
    raise PlugError(last)


async def _handshake(
    loop: asyncio.AbstractEventLoop, t: Target, descr: bytes
) -> tuple[socket.socket, socket.socket, str, str]:
    error: PlugError | None = None
    for given in t.dirs:
        directory = given
        if len(t.dirs) == 1:
            try:
                directory = os.path.realpath(given, strict=True)
            except OSError as exc:
                raise PlugError(exc.errno or errno.ENOENT) from exc
        try:
            ctl, ctl_path = await _connect_ctl(loop, directory, t)
        except PlugError as exc:
            error = exc
            continue
        break
    else:
        assert error is not None
        raise error
    data: socket.socket | None = None
    path: str | None = None
    try:
        data, path = _bind_data(directory)
        _set_owner(path, ctl_path, t)
        via_ctl = os.path.basename(ctl_path) == "ctl"
        request = encode_request(request_type(t.port, via_ctl), os.fsencode(path), descr)
        await loop.sock_sendall(ctl, request)
        reader = ReplyReader()
        while True:
            try:
                chunk = await loop.sock_recv(ctl, 512)
            except OSError as exc:
                raise PlugError(exc.errno or errno.EIO) from exc
            reply = reader.feed(chunk)
            if reply is not None:
                break
        switch_path = os.fsdecode(reply)
        data.setblocking(False)
        try:
            data.connect(switch_path)
        except OSError as exc:
            raise PlugError(exc.errno or errno.ENAMETOOLONG) from exc
        return ctl, data, directory, switch_path
    except BaseException:
        ctl.close()
        if data is not None:
            data.close()
        raise
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


async def open_plug(t: Target, descr: bytes, timeout: float = DEFAULT_TIMEOUT) -> Plug:
    """Plug into the switch of ``t``; :class:`PlugError` if that cannot be done."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            ctl, data, directory, switch_path = await _handshake(loop, t, descr)
    except TimeoutError:
        raise PlugError(
            errno.ETIMEDOUT, f"the switch did not answer within {timeout:g} s"
        ) from None
    except OSError as exc:
        raise PlugError(exc.errno or errno.EIO) from exc
    return Plug(ctl, data, directory, switch_path)
