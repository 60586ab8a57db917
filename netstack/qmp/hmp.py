"""The human monitor commands reachable through QMP ``human-monitor-command``.

QEMU's HMP is a large command set; a network daemon answers the net ones: ``info network``
(``net/net.c`` ``hmp_info_network``), ``netdev_del`` and ``set_link``; beyond QEMU ``info
fdb`` (MAC tables of learning hubs and vxlan netdevs). Drivers add ``info`` topics and
commands through :class:`netstack.driver.DriverControl` (the user netdev: ``info usernet``,
``hostfwd_add`` / ``hostfwd_remove``); ``info`` alone lists the topics, the drivers' after
``network``. Output lines end with
``\\n`` here; the QMP layer turns them into CRLF as QEMU's monitor output layer does.
Unknown commands answer ``unknown command: 'X'`` like QEMU.
"""

from __future__ import annotations

import shlex

from netstack.driver import HmpCommand, HmpInfo
from netstack.errors import ControlError
from netstack.qmp.control import Control

_NETWORK_HELP = "info network  -- show the network state\n"
_FDB_HELP = "info fdb      -- show the MAC tables of learning hubs and tunnels\n"


async def run_hmp(ns: Control, line: str) -> str:
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    if not words:
        return ""
    cmd, args = words[0], words[1:]
    try:
        if cmd == "info":
            return _info(ns, args)
        if cmd == "netdev_del" and len(args) == 1:
            ns.netdev_del(args[0])
            return ""
        if cmd == "set_link" and len(args) == 2 and args[1] in ("on", "off"):
            ns.set_link(args[0], args[1] == "on")
            return ""
        for command in _driver_commands(ns):
            if command.name == cmd:
                return command.run(ns, args)
    except ControlError as exc:
        return f"Error: {exc.desc}\n"
    return f"unknown command: '{cmd}'\n"


def _driver_infos(ns: Control) -> list[HmpInfo]:
    return [info for spec in ns.registry.values() for info in spec.control.hmp_info]


def _driver_commands(ns: Control) -> list[HmpCommand]:
    return [cmd for spec in ns.registry.values() for cmd in spec.control.hmp_commands]


def _info(ns: Control, args: list[str]) -> str:
    what = args[0] if args else ""
    if what == "network":
        return ns.info_network()
    if what == "fdb":
        return ns.info_fdb()
    infos = _driver_infos(ns)
    for info in infos:
        if info.name == what:
            return info.show(ns)
    if not what:
        lines = [f"info {info.name:<8} -- {info.help}\n" for info in infos]
        return "".join([_NETWORK_HELP, *lines, _FDB_HELP])
    return f"unknown command: 'info {what}'\n"
