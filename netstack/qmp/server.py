"""The control plane of one daemon: its QMP command table and the monitors on its chardevs.

The composition root (:mod:`netstack.cli`, the web view, tests) calls :func:`monitor_add`
for ``-qmp DEV`` / ``-qmp-pretty DEV`` / ``-mon chardev=ID,mode=control[,pretty=on]``
(QEMU's ``monitor/monitor.c`` ``monitor_init``), and :func:`command_table` for the table
every monitor of a daemon shares (built once: the core's commands, then the drivers').
The daemon is seen only through :class:`~.control.Control`.
"""

from __future__ import annotations

import weakref

from netstack import qapi
from netstack.errors import GenericError
from netstack.qmp.commands import VERSION_INFO, Commands
from netstack.qmp.control import Control
from netstack.qmp.dispatch import CommandTable
from netstack.qmp.monitor import QmpMonitor

_tables: weakref.WeakKeyDictionary[Control, CommandTable] = weakref.WeakKeyDictionary()


def command_table(ns: Control) -> CommandTable:
    """The QMP command table of ``ns`` (built once, shared by every monitor)."""
    table = _tables.get(ns)
    if table is None:
        table = _tables[ns] = Commands(ns).table()
    return table


async def monitor_add(ns: Control, kind: str, text: str, pretty: bool, index: int) -> None:
    """Attach a QMP monitor: ``kind`` ``qmp`` (``text`` is a ``-qmp`` shorthand or
    ``chardev:ID``) or ``mon`` (``text`` is ``-mon`` options); ``index`` numbers the
    chardev a shorthand creates (``compat_monitorN``)."""
    from netstack.qapi.chardev_cli import parse_mon_cli

    mode = "control"
    if kind == "qmp":
        if text.startswith("chardev:"):
            chardev_id = text[len("chardev:") :]
        else:
            chardev_id = f"compat_monitor{index}"
            spec = qapi.parse_qmp_shorthand(text, chardev_id)
            await ns.chardev_add(spec, socket_mode=0o600, from_cli=True)
    else:
        chardev_id, mode, pretty = parse_mon_cli(text)
    chardev = ns.chardevs.get(chardev_id)
    if chardev is None:
        raise GenericError(f'chardev "{chardev_id}" not found')
    if mode != "control":
        raise GenericError(
            f"monitor mode '{mode}' is not supported: netstackd has QMP monitors "
            "only (mode=control); HMP commands work through human-monitor-command"
        )
    monitor = QmpMonitor(
        command_table(ns),
        version=VERSION_INFO,
        pretty=pretty,
        oob=chardev.backend == "socket",
        subscribe=ns.add_listener,
        unsubscribe=ns.remove_listener,
    )
    chardev.attach(monitor)
    ns.monitors.append(monitor)
