"""Socket activation: listening sockets handed to the daemon by systemd (or any launcher
speaking the same protocol, such as ``systemd-socket-activate``).

Protocol (``sd_listen_fds(3)``, ``sd_listen_fds_with_names(3)``): ``LISTEN_PID`` is the
pid the sockets are meant for (anything else: they are not ours, ignore them),
``LISTEN_FDS`` how many there are, starting at fd 3, ``LISTEN_FDNAMES`` their
colon-separated names (``FileDescriptorName=`` in the socket unit; ``unknown`` or missing
when unnamed). All three variables are removed from the environment once read, so that
the daemon's children (guestfwd ``cmd:``, tap scripts) never mistake them for their own,
and every inherited fd is made close-on-exec.

Which chardev gets which socket: a listening chardev (``server=on``, the QMP monitor's
and a vhost-user netdev's included) takes the inherited socket

1. whose name is the chardev's id (``FileDescriptorName=vhost0`` for
   ``-chardev socket,id=vhost0,...``), else
2. whose address is the one the chardev would bind: the same unix path
   (``ListenStream=/run/netstack/qmp.sock`` and ``-qmp unix:/run/netstack/qmp.sock``) or
   the same TCP port on a matching host.

The metrics endpoint takes the socket named ``metrics`` or with its address. A chardev
that finds none binds its own as usual. The daemon never unlinks a socket file it
inherited (systemd owns it; it outlives the daemon's restarts), and a socket that
nothing claimed is reported when the daemon is ready and closed.

Sans-IO core: :func:`parse_environ` turns the environment into (fd, name) pairs;
:class:`ListenFds` owns the sockets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from netstack.errors import GenericError, StartupError

SD_LISTEN_FDS_START = 3
#: More than any sane unit passes; a larger LISTEN_FDS is an error, not a loop.
MAX_FDS = 1024

log = logging.getLogger("netstack.service")


class ActivationError(StartupError, ValueError):
    """The environment's LISTEN_* variables are malformed."""


def parse_environ(environ: Mapping[str, str], pid: int) -> list[tuple[int, str]]:
    """The inherited fds and their names; empty when none were passed to ``pid``."""
    listen_pid = environ.get("LISTEN_PID")
    count_text = environ.get("LISTEN_FDS")
    if not listen_pid or not count_text:
        return []
    try:
        target = int(listen_pid)
        count = int(count_text)
    except ValueError:
        raise ActivationError(
            f"LISTEN_PID={listen_pid!r} LISTEN_FDS={count_text!r}: not numbers"
        ) from None
    if target != pid:
        return []
    if not 0 <= count <= MAX_FDS:
        raise ActivationError(f"LISTEN_FDS={count}: out of range 0..{MAX_FDS}")
    names_text = environ.get("LISTEN_FDNAMES")
    names = names_text.split(":") if names_text else []
    return [
        (SD_LISTEN_FDS_START + i, names[i] if i < len(names) and names[i] else "unknown")
        for i in range(count)
    ]


@dataclass
class Inherited:
    """One inherited socket."""

    fd: int
    name: str
    sock: socket.socket | None

    def describe(self) -> str:
        return f"fd {self.fd} ({self.name})"


class ListenFds:
    """The sockets the daemon was started with, until a chardev takes them."""

    def __init__(self, fds: list[tuple[int, str]]) -> None:
        self._left: list[Inherited] = []
        for fd, name in fds:
            try:
                os.set_inheritable(fd, False)
                sock: socket.socket | None = socket.socket(fileno=fd)
            except OSError as exc:
                log.warning("inherited fd %d (%s) is not a socket: %s", fd, name, exc)
                sock = None
            self._left.append(Inherited(fd, name, sock))

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> ListenFds:
        """Read and remove LISTEN_*; malformed values are logged and ignored."""
        env = os.environ if environ is None else environ
        try:
            fds = parse_environ(env, os.getpid())
            if not fds and env.get("LISTEN_FDS") and env.get("LISTEN_PID"):
                log.warning(
                    "LISTEN_PID=%s is not this process (%d): inherited sockets ignored "
                    "(socket activation does not combine with -daemonize)",
                    env["LISTEN_PID"],
                    os.getpid(),
                )
        except ActivationError as exc:
            log.warning("socket activation ignored: %s", exc)
            fds = []
        for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(var, None)
        return cls(fds)

    def __len__(self) -> int:
        return len(self._left)

    def take(
        self,
        name: str,
        *,
        unix_path: str | None = None,
        inet: tuple[str, str] | None = None,
    ) -> socket.socket | None:
        """The listening socket named ``name``, else the one bound to ``unix_path`` or
        ``inet`` (host, port); None if there is none. Raises GenericError if the match
        is not a listening stream socket."""
        found = next((i for i in self._left if i.name == name), None)
        if found is None:
            found = next(
                (
                    i
                    for i in self._left
                    if i.sock is not None and _bound_to(i.sock, unix_path, inet)
                ),
                None,
            )
        if found is None:
            return None
        self._left.remove(found)
        sock = found.sock
        if sock is None or not _listening_stream(sock):
            if sock is not None:
                sock.close()
            raise GenericError(
                f"inherited socket {found.describe()} is not a listening stream socket"
            )
        sock.setblocking(False)
        log.info("using inherited socket %s for %s", found.describe(), name)
        return sock

    def close_unclaimed(self) -> list[str]:
        """Close what no chardev took; returns their descriptions (for a warning)."""
        left = [i.describe() for i in self._left]
        for item in self._left:
            if item.sock is not None:
                item.sock.close()
            else:
                with contextlib.suppress(OSError):
                    os.close(item.fd)
        self._left.clear()
        return left


def _listening_stream(sock: socket.socket) -> bool:
    try:
        return (
            sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        )
    except OSError:
        return False


def _bound_to(sock: socket.socket, unix_path: str | None, inet: tuple[str, str] | None) -> bool:
    try:
        local = sock.getsockname()
    except OSError:
        return False
    if sock.family == socket.AF_UNIX:
        if unix_path is None or not isinstance(local, str) or not local:
            return False
        return local == unix_path or _same_file(local, unix_path)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and inet is not None:
        host, port = inet
        if not port.isdigit() or int(port) != local[1]:
            return False
        return _host_matches(host, local[0])
    return False


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _host_matches(host: str, bound: str) -> bool:
    if host in ("", "0.0.0.0", "::"):
        return True
    try:
        want = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            want = {ipaddress.ip_address(ai[4][0]) for ai in socket.getaddrinfo(host, None)}
        except OSError:
            return False
    try:
        have = ipaddress.ip_address(bound.split("%", 1)[0])
    except ValueError:
        return False
    return have in want or have.is_unspecified
