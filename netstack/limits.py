"""The daemon's file-descriptor capacity: the raised ``RLIMIT_NOFILE``, the reserve kept for
the control plane, and the default flow budget of a user netdev.

Owns the one process-wide fact every flow-making driver needs: how many descriptors the
process may hold (:class:`FdLimits`). At start the daemon raises its soft ``RLIMIT_NOFILE``
to the hard limit (:func:`raise_nofile`, as long-running daemons do: systemd leaves 1024 soft
under a large hard limit so that ``select()`` users stay safe; netstackd uses epoll), and
logs the capacity. QEMU does not do this (it runs with what it is given); a NAT that holds
one host socket per guest connection would otherwise refuse connections past ~1000, with
nothing said.

Two guards come from here, both cheap enough for the per-connection path:

* the **reserve**: the last :attr:`FdLimits.reserve` descriptors below the soft limit are
  never used for guest flows, so QMP connections, ``netdev_add`` and chardevs still open
  when guests have taken everything else. :func:`check_flow_fd` tests a freshly created
  flow socket: Linux hands out the lowest free descriptor, so a new socket numbered at or
  above ``soft - reserve`` proves that many are in use (no ``/proc`` scan needed);
* the **share**: :meth:`FdLimits.flow_share`, the default number of host sockets one user
  netdev may hold for guest flows, half of what is left after the reserve, so one greedy
  guest cannot starve the others (the user netdev splits it into TCP, UDP and ICMP
  budgets: ``drivers.user.budget``).

:func:`current` answers from the last :func:`raise_nofile`, or from ``getrlimit`` when the
daemon did not raise (in-process tests). No side effect at import.
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
from dataclasses import dataclass
from typing import Final

#: Descriptors kept back for the control plane at least (QMP clients, netdev_add, chardevs).
MIN_RESERVE: Final = 64
#: The reserve grows with the capacity: 1/64 of it.
RESERVE_FRACTION: Final = 64
#: Below this capacity the daemon warns at start.
LOW_CAPACITY: Final = 4096
#: A user netdev's default share is never below this many flows.
MIN_SHARE: Final = 64
_NR_OPEN: Final = "/proc/sys/fs/nr_open"


@dataclass(frozen=True)
class FdLimits:
    """The descriptor capacity of the process (``soft``), and what is held back."""

    soft: int
    hard: int
    #: The soft limit found at start, before :func:`raise_nofile`.
    initial_soft: int

    @property
    def reserve(self) -> int:
        return max(MIN_RESERVE, self.soft // RESERVE_FRACTION)

    @property
    def flow_ceiling(self) -> int:
        """A guest-flow socket must be numbered below this (the reserve lies above)."""
        return max(0, self.soft - self.reserve)

    @property
    def flow_share(self) -> int:
        """The default flow budget of one user netdev: half the descriptors outside the
        reserve (so a second netdev always finds the other half)."""
        return max(MIN_SHARE, self.flow_ceiling // 2)


_current: FdLimits | None = None


def _hard_cap(hard: int) -> int:
    if hard != resource.RLIM_INFINITY:
        return hard
    try:
        with open(_NR_OPEN) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def raise_nofile(log: logging.Logger | None = None) -> FdLimits:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; log and remember the capacity."""
    global _current
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _hard_cap(hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            if log is not None:
                log.warning("could not raise the open-files limit from %d to %d: %s",
                            soft, target, exc)  # fmt: skip
            target = soft
    else:
        target = soft if soft != resource.RLIM_INFINITY else target
    _current = FdLimits(soft=target, hard=_hard_cap(hard), initial_soft=_hard_cap(soft))
    if log is not None and _current.soft < LOW_CAPACITY:
        log.warning(
            "only %d file descriptors (hard limit %d): each guest connection through a user "
            "netdev holds one; raise the hard limit (LimitNOFILE=, ulimit -Hn)",
            _current.soft, _current.hard,
        )  # fmt: skip
    if log is not None:
        lim = _current
        raised = f" (raised from {lim.initial_soft})" if lim.initial_soft < lim.soft else ""
        log.info(
            "file descriptors: %d%s; %d kept for the control plane; "
            "default flow budget per user netdev: %d",
            lim.soft, raised, lim.reserve, lim.flow_share,
        )  # fmt: skip
    return _current


def current() -> FdLimits:
    """The capacity in force (from :func:`raise_nofile`, else from ``getrlimit``)."""
    if _current is not None:
        return _current
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = _hard_cap(soft)
    return FdLimits(soft=soft, hard=_hard_cap(hard), initial_soft=soft)


def check_flow_fd(sock: socket.socket) -> socket.socket:
    """Return ``sock``, or close it and raise ``EMFILE`` when it lies in the reserve."""
    if sock.fileno() >= current().flow_ceiling:
        sock.close()
        raise OSError(errno.EMFILE, "descriptor reserve reached (kept for the control plane)")
    return sock
