"""The tap's network scripts (``script=`` / ``downscript=``), without blocking the loop.

Follows QEMU's ``launch_script`` (``net/tap.c``): the script is executed
directly (no shell) with ``argv = [script, ifname]``; file descriptors above 2 are closed
except the tap's own, which the script inherits; a wait status other than "exited with 0"
fails with ``network script S failed with status N`` where N is the raw ``waitpid``
status (exit code 1 is 256), and a script that cannot be executed counts as exit code 1
(QEMU's child ``_exit(1)``), so it reads ``... failed with status 256``. Defaults are
:data:`DEFAULT_SCRIPT` and :data:`DEFAULT_DOWNSCRIPT`; ``no`` (or empty) disables one.

The up-script runs as an asyncio subprocess that ``netdev_add`` awaits: the command
completes after the script, as in QEMU, while the loop keeps serving everyone else. The
downscript runs at cleanup, which is synchronous: it is started there (fork and exec, no
waiting) and holds the tap fd while it runs, so the interface outlives the daemon's close
until the script is done, which keeps QEMU's order (downscript, then close). Its exit is
reaped through a pidfd on the loop and a failure is logged, like QEMU's report at exit.

With ``x-netns`` both scripts run inside the tap's namespace (through
:data:`~drivers.tap.netns.NETNS_TRAMPOLINE`), where their ``ifname`` argument is valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from drivers.tap.netns import NETNS_TRAMPOLINE
from netstack.errors import GenericError

#: ``CONFIG_SYSCONFDIR "/qemu-ifup"`` and ``"/qemu-ifdown"`` of Debian's QEMU.
DEFAULT_SCRIPT = "/etc/qemu-ifup"
DEFAULT_DOWNSCRIPT = "/etc/qemu-ifdown"
#: Raw wait status of a child that could not exec (``_exit(1)``).
EXEC_FAILED_STATUS = 1 << 8


def enabled(script: str | None) -> bool:
    """Whether a (resolved) script value names something to run."""
    return bool(script) and script != "no"


def wait_status(returncode: int) -> int:
    """A ``Popen.returncode`` as the raw ``waitpid`` status QEMU prints."""
    if returncode >= 0:
        return (returncode & 0xFF) << 8
    return -returncode & 0x7F


def script_argv(script: str, args: Sequence[str], nsfd: int | None) -> list[str]:
    """``[script, *args]``, wrapped so that it starts inside namespace ``nsfd``."""
    if nsfd is None:
        return [script, *args]
    return [sys.executable, "-I", "-S", "-c", NETNS_TRAMPOLINE, str(nsfd), script, *args]


def _pass_fds(keep: Sequence[int], nsfd: int | None) -> tuple[int, ...]:
    return tuple(keep) + ((nsfd,) if nsfd is not None else ())


async def run_script(script: str, ifname: str, tap_fd: int, nsfd: int | None = None) -> None:
    """Run the up-script and wait for it; raises QEMU's error when it fails."""
    argv = script_argv(script, [ifname], nsfd)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, pass_fds=_pass_fds((tap_fd,), nsfd), close_fds=True
        )
    except OSError:
        status = EXEC_FAILED_STATUS
    else:
        try:
            status = wait_status(await proc.wait())
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
    if status != 0:
        raise GenericError(f"network script {script} failed with status {status}")


def start_downscript(
    script: str,
    ifname: str,
    tap_fd: int,
    nsfd: int | None,
    log: logging.Logger,
    loop: asyncio.AbstractEventLoop | None,
) -> subprocess.Popen[bytes] | None:
    """Start the downscript now (it inherits ``tap_fd``); its status is logged later."""
    argv = script_argv(script, [ifname], nsfd)
    try:
        proc = subprocess.Popen(argv, pass_fds=_pass_fds((tap_fd,), nsfd), close_fds=True)
    except OSError:
        log.error("network script %s failed with status %d", script, EXEC_FAILED_STATUS)
        return None
    _reap_later(proc, script, log, loop)
    return proc


def _reap_later(
    proc: subprocess.Popen[bytes],
    script: str,
    log: logging.Logger,
    loop: asyncio.AbstractEventLoop | None,
) -> None:
    def report() -> None:
        code = proc.poll()
        if code is None:
            return
        status = wait_status(code)
        if status != 0:
            log.error("network script %s failed with status %d", script, status)

    if loop is not None and not loop.is_closed():
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:
            pidfd = -1
        if pidfd >= 0:

            def on_exit() -> None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
                report()

            try:
                loop.add_reader(pidfd, on_exit)
                return
            except (RuntimeError, OSError):
                os.close(pidfd)
    # No loop to watch it from: a thread waits (off the data path, ends with the child).
    import threading

    def wait() -> None:
        proc.wait()
        report()

    threading.Thread(target=wait, name="netstack-downscript", daemon=True).start()
