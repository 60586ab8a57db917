"""The service side of the daemon's life, as the command line drives it.

:class:`ServiceHooks` is what ``netstack.cli.serve`` calls at four points: before the
configuration is created (:meth:`~ServiceHooks.attach`: inherited sockets handed to the
chardev table, ``STATUS=starting``), once everything is up (:meth:`~ServiceHooks.started`:
the metrics endpoint, unclaimed inherited sockets reported, ``READY=1``, the watchdog, and
a ``STATUS=`` line kept current as QMP adds and removes netdevs),
when shutdown begins (:meth:`~ServiceHooks.stopping`: ``STOPPING=1``) and at the end
(:meth:`~ServiceHooks.close`). Without ``NOTIFY_SOCKET``, ``LISTEN_FDS`` and ``-metrics``
every hook does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Final

from netstack.service.activation import ListenFds
from netstack.service.notify import Notifier

if TYPE_CHECKING:
    from netstack.daemon import Netstack
    from netstack.service.metrics_http import MetricsServer

log = logging.getLogger("netstack.service")

#: Seconds between two checks of the status line (sent again only when it changed).
STATUS_INTERVAL: Final = 5.0


class ServiceHooks:
    """sd_notify, socket activation and the metrics endpoint of one daemon run."""

    def __init__(self, *, metrics: str | None = None, daemonized: bool = False) -> None:
        self.notifier = Notifier()
        self.listen_fds = ListenFds.from_environ()
        self.metrics_spec = metrics
        self.metrics: MetricsServer | None = None
        self._daemonized = daemonized
        self._status_task: asyncio.Task[None] | None = None

    def attach(self, ns: Netstack) -> None:
        if len(self.listen_fds):
            ns.chardevs.listen_fds = self.listen_fds
        self.notifier.status("starting")

    async def started(self, ns: Netstack) -> None:
        """Everything configured is up. Raises GenericError if the metrics endpoint
        cannot be opened."""
        if self.metrics_spec is not None:
            from netstack.service.metrics_http import MetricsServer, parse_endpoint

            server = MetricsServer(ns, parse_endpoint(self.metrics_spec))
            await server.start(self.listen_fds)
            self.metrics = server
        for left in self.listen_fds.close_unclaimed():
            log.warning("inherited socket %s matches no chardev: closed", left)
        ns.chardevs.listen_fds = None
        status = self.status_line(ns)
        self.notifier.ready(status, mainpid=os.getpid() if self._daemonized else None)
        if self.notifier.enabled:
            self._status_task = asyncio.get_running_loop().create_task(self._follow(ns, status))

    async def _follow(self, ns: Netstack, sent: str) -> None:
        """Keep STATUS= current as netdevs, chardevs and monitors come and go (QMP)."""
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            status = self.status_line(ns)
            if status != sent:
                self.notifier.status(status)
                sent = status

    def status_line(self, ns: Netstack) -> str:
        netdevs = sum(1 for nc in ns.clients if nc.is_netdev and nc.queue_index == 0)
        text = f"running: {netdevs} netdevs, {len(ns.chardevs)} chardevs, "
        text += f"{len(ns.monitors)} monitors"
        if self.metrics is not None:
            text += f", metrics on {self.metrics.address}"
        return text

    def failed(self, reason: str) -> None:
        self.notifier.status(f"failed: {reason}")

    def stopping(self) -> None:
        self._stop_following()
        self.notifier.stopping()

    def _stop_following(self) -> None:
        if self._status_task is not None:
            self._status_task.cancel()
            self._status_task = None

    async def close(self) -> None:
        task = self._status_task
        self._stop_following()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.notifier.close()
        self.listen_fds.close_unclaimed()
        if self.metrics is not None:
            await self.metrics.close()
            self.metrics = None
