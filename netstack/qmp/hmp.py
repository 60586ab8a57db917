"""The human monitor commands reachable through QMP ``human-monitor-command``.

QEMU's HMP is a large command set; a network daemon answers the net ones: ``info network``
(``net/net.c`` ``hmp_info_network``), ``info usernet`` (from user netdevs that provide it),
``hostfwd_add`` / ``hostfwd_remove`` (user netdevs), ``netdev_del`` and ``set_link``; beyond
QEMU ``info fdb`` (MAC tables of learning hubs and vxlan netdevs). Output lines end with
``\\n`` here; the QMP layer turns them into CRLF as QEMU's monitor output layer does.
Unknown commands answer ``unknown command: 'X'`` like QEMU.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from netstack.errors import NetstackError

if TYPE_CHECKING:
    from netstack.daemon import Netstack


async def run_hmp(ns: Netstack, line: str) -> str:
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
        if cmd in ("hostfwd_add", "hostfwd_remove"):
            return ns.hmp_hostfwd(cmd, args)
    except NetstackError as exc:
        return f"Error: {exc.desc}\n"
    return f"unknown command: '{cmd}'\n"


def _info(ns: Netstack, args: list[str]) -> str:
    what = args[0] if args else ""
    if what == "network":
        return ns.info_network()
    if what == "usernet":
        return ns.info_usernet()
    if what == "fdb":
        return ns.info_fdb()
    if not what:
        return (
            "info network  -- show the network state\n"
            "info usernet  -- show user network stack connection states\n"
            "info fdb      -- show the MAC tables of learning hubs and tunnels\n"
        )
    return f"unknown command: 'info {what}'\n"
