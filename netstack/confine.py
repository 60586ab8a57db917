"""The daemon's confinement: file modes, the user it runs as, and its seccomp sandbox.

Owns the command-line options ``-run-with user=USER`` / ``-runas USER``
(:mod:`netstack.privileges`) and ``-sandbox ...`` (:mod:`netstack.sandbox`), collected in
a :class:`Confinement`, and the order they take effect in once the command line's
netdevs, chardevs, objects and monitors are open (:meth:`Confinement.apply`):

1. the runtime directory, every socket file a chardev made and the pid file are handed to
   the user (so it can remove them at exit where the directory allows: ours, or sticky);
2. privileges are dropped (QEMU's steps; root keeps only ``CAP_NET_ADMIN``/``CAP_NET_RAW``);
3. the seccomp filter is loaded (it forbids ``set*id``-style calls only when asked, but is
   loaded last so the switch never depends on it).

File modes (:func:`private_files`): the daemon runs with umask 077, so every socket
(QMP, vhost-user, chardev), log and capture file it creates is 0600 and every directory
0700 - other users can neither connect nor read; the per-user runtime directory is forced
to 0700 even when it existed; only the pid file is made 0644, as daemons do. QEMU keeps
the caller's umask (027 with ``-daemonize``); netstackd's sockets carry guest traffic and
the control plane, so they are private whatever the umask was.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from netstack import privileges, sandbox
from netstack.errors import GenericError, StartupError

#: The command-line options this module parses (without the leading dash).
CLI_OPTIONS: Final = frozenset({"runas", "run-with", "sandbox"})
PRIVATE_UMASK: Final = 0o077
PIDFILE_MODE: Final = 0o644


#: ``-run-with help`` (printed as is, exit status 1, as QEMU does).
OptionHelp = privileges.RunWithHelp


class ConfineError(StartupError):
    """Confinement failed after start-up (printed as is; exit status 1)."""


@dataclass
class Confinement:
    """What ``-run-with``/``-runas`` and ``-sandbox`` asked for (the last one wins, as
    in QEMU)."""

    user: privileges.RunAs | None = None
    sandbox: sandbox.SandboxSpec = field(default_factory=sandbox.SandboxSpec)
    #: Capabilities kept after the switch (set by :meth:`apply`).
    kept_caps: tuple[int, ...] = ()

    def add_option(self, name: str, value: str) -> None:
        """One option (``runas``, ``run-with``, ``sandbox``); GenericError with QEMU's
        text."""
        if name == "runas":
            self.user = privileges.parse_user(value)
        elif name == "run-with":
            user = privileges.parse_run_with(value)
            if user is not None:
                self.user = user
        elif name == "sandbox":
            self.sandbox = sandbox.parse(value)
        else:
            raise GenericError(f"-{name}: invalid option")

    def apply(self, runtime_dir: Path, own_files: Iterable[str], log: logging.Logger) -> None:
        """Drop privileges, then load the sandbox; ConfineError with QEMU's texts."""
        if self.user is not None:
            owned = [runtime_dir, *_entries(runtime_dir), *(Path(p) for p in own_files)]
            privileges.hand_over(owned, self.user)
            try:
                self.kept_caps = privileges.drop(self.user)
            except privileges.PrivilegeError as exc:
                raise ConfineError(str(exc)) from exc
            log.info(
                "running as uid %d gid %d%s", self.user.uid, self.user.gid,
                f", keeping capabilities {list(self.kept_caps)}" if self.kept_caps else "",
            )  # fmt: skip
            if not os.access(runtime_dir, os.W_OK | os.X_OK):
                log.warning(
                    "runtime directory %s is out of reach for uid %d (a parent directory is "
                    "closed to it): sockets made there later, and removing them at exit, "
                    "will fail; set XDG_RUNTIME_DIR to a directory of that user",
                    runtime_dir, self.user.uid,
                )  # fmt: skip
        if self.sandbox.enable:
            try:
                sandbox.install(self.sandbox)
            except GenericError as exc:
                raise ConfineError(exc.desc) from exc
            log.info("seccomp sandbox on: %s", self.sandbox)


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def private_files() -> None:
    """Make everything the daemon creates from now on private to its user (umask 077)."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """``path`` as a 0700 directory of ours (made if missing, tightened if wider)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def write_pidfile(path: Path) -> None:
    """The pid file: the one file others may read (0644)."""
    path.write_text(f"{os.getpid()}\n")
    path.chmod(PIDFILE_MODE)
