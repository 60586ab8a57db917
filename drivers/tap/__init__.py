"""The ``tap`` netdev: a Linux TAP interface (QEMU ``net/tap.c``).

Modules: :mod:`~drivers.tap.options` (validation and defaults, no I/O),
:mod:`~drivers.tap.tun` (``/dev/net/tun`` ioctls), :mod:`~drivers.tap.netdev` (opening,
scripts, fds, helper, multiqueue), :mod:`~drivers.tap.client` (the per-queue fd adapter:
batched reads, writes, vnet headers, offloads), :mod:`~drivers.tap.scripts`,
:mod:`~drivers.tap.helper` (bridge helper protocol), :mod:`~drivers.tap.netns`
(``x-netns``) and :mod:`~drivers.tap.netlink` (pyroute2).

``info network`` shows ``ifname=X,script=S,downscript=D`` (``,x-netns=NS`` when set),
``fd=N`` or ``helper=H``; queues are ``index=0..N-1`` of one name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netstack.driver import DriverHost, DriverSpec
from netstack.qapi import NetdevTapOptions

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.qapi import Netdev


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    from drivers.tap.netdev import create_tap
    from drivers.tap.options import plan_tap

    opts = netdev.options
    assert isinstance(opts, NetdevTapOptions)
    return list(await create_tap(host, netdev.id, plan_tap(opts)))


SPEC = DriverSpec(
    "tap",
    create,
    "a host TAP interface (ifname=,script=,downscript=,vnet_hdr=,queues=,fd=,fds=,helper=,"
    "x-netns=)",
)
