"""systemd service notifications (``sd_notify(3)``): readiness, status, stopping, watchdog.

Protocol: ``NOTIFY_SOCKET`` names an ``AF_UNIX`` datagram socket (a path, or an abstract
name written with a leading ``@``); each notification is one datagram of newline-separated
``VAR=VALUE`` assignments. netstackd sends

* ``STATUS=starting`` before it creates anything, then ``READY=1`` with a ``STATUS=``
  line counting what is up, once every configured chardev, netdev, object and monitor
  exists (``Type=notify`` units start their dependants only then), and the status line
  again whenever it changes (:mod:`.hooks`);
* ``MAINPID=`` with READY when it daemonized (``-daemonize`` under ``Type=notify`` needs
  ``NotifyAccess=all``);
* ``WATCHDOG=1`` every half ``WATCHDOG_USEC`` when the unit sets ``WatchdogSec=`` (and
  ``WATCHDOG_PID``, if present, is ours), from the event loop itself, so a wedged loop
  stops the pings and systemd restarts the daemon;
* ``STOPPING=1`` with ``STATUS=stopping`` when shutdown begins.

Written by hand rather than with a library: the protocol is one ``sendto`` of a short
text per event, while the Python bindings (``systemd-python``, built against libsystemd's
headers) would add a C build dependency for it; ``sdnotify`` on PyPI is unmaintained and
does not handle abstract socket names. ``NOTIFY_SOCKET`` and the watchdog variables are
removed from the environment, so children never notify on the daemon's behalf. A failed
send is logged once and otherwise ignored (systemd being gone must not stop the daemon).

Sans-IO: :func:`message` and :func:`watchdog_interval` are pure; :class:`Notifier` owns
the socket and the watchdog timer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

log = logging.getLogger("netstack.service")


def message(**fields: str | int) -> bytes:
    """One notification datagram: ``READY=1\\nSTATUS=...`` (newlines in values are
    replaced: a value is one line)."""
    lines = [f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items()]
    return "\n".join(lines).encode()


def socket_address(value: str) -> str | bytes | None:
    """``NOTIFY_SOCKET`` -> an address for ``sendto`` (abstract names start with NUL)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``WATCHDOG_USEC``), or None."""
    usec = environ.get("WATCHDOG_USEC")
    wpid = environ.get("WATCHDOG_PID")
    if not usec:
        return None
    try:
        if wpid and int(wpid) != pid:
            return None
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Notifier:
    """Sends notifications to the service manager, if there is one."""

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.pop("NOTIFY_SOCKET", "")
        self.address = socket_address(raw) if raw else None
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a socket path; not notifying", raw)
        self.watchdog = watchdog_interval(env, os.getpid()) if self.address else None
        for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(var, None)
        self._sock: socket.socket | None = None
        self._failed = False
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, **fields: str | int) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(message(**fields), self.address)
            self.sent += 1
        except OSError as exc:
            if not self._failed:
                log.warning("sd_notify to %r failed: %s", self.address, exc)
                self._failed = True

    def status(self, text: str) -> None:
        self.notify(STATUS=text)

    def ready(self, status: str, *, mainpid: int | None = None) -> None:
        if mainpid is not None:
            self.notify(READY=1, STATUS=status, MAINPID=mainpid)
        else:
            self.notify(READY=1, STATUS=status)
        if self.watchdog is not None:
            self._ping()

    def stopping(self) -> None:
        self.stop_watchdog()
        self.notify(STOPPING=1, STATUS="stopping")

    def _ping(self) -> None:
        self.notify(WATCHDOG=1)
        assert self.watchdog is not None
        self._timer = asyncio.get_running_loop().call_later(self.watchdog, self._ping)

    def stop_watchdog(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.stop_watchdog()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
