"""The ``vde`` netdev (``net/vde.c``): a port on a running ``vde_switch``.

``NetdevVdeOptions``: ``sock`` (the switch directory, or a ``vde://`` URL, see
:mod:`.protocol`), ``port`` (0: any free port), ``group`` (group of our data socket) and
``mode`` (its permissions, default ``0700``). QEMU hands these to ``vde_open``; here
:mod:`.plug` speaks the same protocol natively: a control stream to ``SOCK/ctl`` and one
Ethernet frame per datagram on a connected unix ``SOCK_DGRAM`` socket
(:class:`~drivers.socket.transport.DatagramTransport` does the data path and its
back-pressure).

Why native Python rather than ctypes over Debian's ``libvdeplug.so.2``: the protocol is
small (one request, one 110-byte reply), a binding would make the daemon depend on the
library's blocking ``vde_open`` (which waits forever on a switch that neither answers nor
closes, see :mod:`.plug`) and on its ``dlopen``'d plug modules, and the data path is a
plain datagram socket either way. The real switch and Debian's ``vde_plug`` (libvdeplug)
are what the tests talk to.

As QEMU: a missing switch fails ``netdev_add``/``-netdev`` with "Could not open vde: No
such file or directory", a dead one (stale ``ctl``) with "...: Connection refused";
``info network`` shows ``sock=SOCK,fd=FD`` (``sock=(null)`` without ``sock``). The port's
description in the switch (``port/print``) is ``netstackd:ID user=USER pid=PID`` (QEMU's:
``QEMU user=USER pid=PID``).

Beyond QEMU (whose port is dead once its switch goes): the control stream is watched, and
when the switch closes it (it exited, or dropped the port) the link goes down
(``info network`` then ends in ``(disconnected)``) and the driver re-plugs with backoff
(0.1 s doubling to 2 s) into whatever switch serves the same directory again, asking for
the same port; the link comes back up when that succeeds (unless ``set_link`` took it down).
``query-netdev`` counters: ``connects``, ``disconnects``, ``connect-failures``,
``ctl-unexpected`` (bytes the switch sent on the control stream after its reply; ignored),
``port`` (the switch port in use, -1 while unplugged). Clear errors where QEMU has an
accident of ``errno``: a switch that closes without a reply ("the switch closed the control
connection without a reply", QEMU: whatever ``errno`` was), a malformed reply, or none
within 5 s (QEMU hangs).

Data path differences: when the switch's queue for our port is full, frames wait in the
core's queue (back-pressure, resumed when the socket is writable) where QEMU's
``vde_receive`` returns -1 and drops them; up to 256 datagrams are read per wake-up and
handed on as one batch where ``vde_to_qemu`` reads one; empty datagrams are counted
(``malformed``) and dropped.
"""

from __future__ import annotations

import asyncio
import errno
import getpass
import os
from typing import TYPE_CHECKING

from drivers.socket.transport import DatagramTransport
from netstack.driver import DriverHost, DriverSpec
from netstack.errors import GenericError
from netstack.net.fdio import FdWatch
from netstack.qapi import NetdevVdeOptions
from netstack.ratelog import RateLog

from .plug import DEFAULT_TIMEOUT, Plug, open_plug
from .protocol import Backoff, PlugError, Target, description, target

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.qapi import Netdev

#: Failed re-plug attempts are logged at most this often (seconds).
LOG_INTERVAL = 30.0


class VdeNetdev(DatagramTransport):
    """A switch port: the data socket of :class:`DatagramTransport` plus the control stream."""

    type = "vde"

    def __init__(
        self, name: str, host: DriverHost, sock: str | None, t: Target, descr: bytes, plug: Plug
    ) -> None:
        super().__init__(name, host, plug.data, None)
        self.sock_opt = sock
        self.target = t
        self.descr = descr
        self.plug: Plug | None = None
        self._ctl: FdWatch | None = None
        self.backoff = Backoff()
        self.admin_down = False
        self.connects = 0
        self.disconnects = 0
        self.connect_failures = 0
        self.ctl_unexpected = 0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._ratelog = RateLog(host.log, interval=LOG_INTERVAL, clock=host.loop.time)
        self._plugged(plug, first=True)

    # -- state -----------------------------------------------------------------------------

    def _plugged(self, plug: Plug, first: bool = False) -> None:
        self.plug = plug
        if not first:
            self.close_socket()
            self._drop_waiter()
            self.blocked = False
            self._set_socket(plug.data)
            self._start_reading()
        self.connects += 1
        self.backoff.reset()
        self._ctl = FdWatch(self.loop, plug.ctl.fileno(), self._on_ctl)
        self._ctl.set_reading(True)
        # Re-plug into the same switch directory and port after a switch restart.
        t = self.target
        port = plug.port if plug.port is not None and t.port == 0 else t.port
        self.target = Target((plug.directory,), port, t.portgroup, t.group, t.mode)
        self.link_down = self.admin_down
        self.info_str = f"sock={self._sock_text()},fd={plug.data.fileno()}"
        self.flush_queued()

    def _sock_text(self) -> str:
        return "(null)" if self.sock_opt is None else self.sock_opt

    def _unplug(self, reason: str) -> None:
        plug, self.plug = self.plug, None
        if plug is None:
            return
        self.disconnects += 1
        self._close_ctl(plug)
        self._drop_waiter()
        self.blocked = False
        self.close_socket()  # closes plug.data
        self.link_down = True
        self.info_str = f"sock={self._sock_text()},fd=-1 (disconnected)"
        self.log.warning("%s: vde switch lost (%s); reconnecting", self.name, reason)
        self.flush_queued()
        self._arm()

    def _on_ctl(self) -> None:
        plug = self.plug
        if plug is None:
            return
        try:
            data = plug.ctl.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._unplug(exc.strerror or str(exc))
            return
        if not data:
            self._unplug("the switch closed the control connection")
            return
        self.ctl_unexpected += len(data)

    # -- re-plugging -----------------------------------------------------------------------

    def _arm(self) -> None:
        if self._closed or self._timer is not None or self._task is not None:
            return
        self._timer = self.loop.call_later(self.backoff.next(), self._replug)

    def _replug(self) -> None:
        self._timer = None
        if not self._closed:
            self._task = self.loop.create_task(self._try_plug())

    async def _try_plug(self) -> None:
        try:
            plug = await open_plug(self.target, self.descr, DEFAULT_TIMEOUT)
        except PlugError as exc:
            self._task = None
            self.connect_failures += 1
            self._ratelog.warning("replug", "%s: Could not open vde: %s", self.name, exc.reason)
            self._arm()
            return
        self._task = None
        if self._closed:
            plug.close()
            return
        self.log.warning("%s: vde switch port %s plugged again", self.name, plug.port)
        self._ratelog.reset("replug")
        self._plugged(plug)

    # -- NetClient hooks ---------------------------------------------------------------------

    def link_status_changed(self) -> None:
        self.admin_down = self.link_down
        if self.plug is None:
            self.link_down = True

    def counters(self) -> dict[str, int]:
        port = self.plug.port if self.plug is not None else None
        return {
            "connects": self.connects,
            "disconnects": self.disconnects,
            "connect-failures": self.connect_failures,
            "ctl-unexpected": self.ctl_unexpected,
            "port": -1 if port is None else port,
        }

    def cleanup(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        plug, self.plug = self.plug, None
        if plug is not None:
            self._close_ctl(plug)
        super().cleanup()

    def _close_ctl(self, plug: Plug) -> None:
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        plug.ctl.close()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.geteuid())


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    opts = netdev.options
    assert isinstance(opts, NetdevVdeOptions)
    try:
        t = target(opts.sock, opts.port, opts.group, opts.mode, home=os.environ.get("HOME"))
        descr = description(f"netstackd:{netdev.id}", _user(), os.getpid())
        plug = await open_plug(t, descr, DEFAULT_TIMEOUT)
    except PlugError as exc:
        raise GenericError(f"Could not open vde: {exc.reason}") from None
    except ValueError as exc:  # e.g. a NUL in a path
        raise GenericError(f"Could not open vde: {os.strerror(errno.EINVAL)}") from exc
    return [VdeNetdev(netdev.id, host, opts.sock, t, descr, plug)]


SPEC = DriverSpec(
    "vde",
    create,
    "a port on a running vde_switch (sock=DIR[,port=N][,group=G][,mode=0700])",
)
