"""The ``vhost-user`` netdev: netstackd is the vhost-user *back end* real VMs attach to.

QEMU (``-netdev vhost-user,chardev=...`` with shared guest memory) or DPDK's virtio-user
connect to a unix socket chardev of the daemon; the daemon then reads and writes the
guest's virtio-net rings in the shared memory, and the guest's NIC becomes a port of the
daemon like any other netdev (hubs, filters, rx filter, QMP).

Options (``NetdevVhostUserOptions``), checked in QEMU's ``net_init_vhost_user`` order:

1. ``chardev`` must exist (``chardev "X" not found``), be a socket chardev
   (``chardev "X" is not reconnectable``) able to pass descriptors, i.e. unix
   (``chardev "X" does not support FD passing``);
2. ``queues`` (default 1) in 1..1024 (``vhost-user number of queues must be in range
   [1, 1024]``): the number of queue pairs offered (``GET_QUEUE_NUM``);
3. ``mac`` (proposed addition to the schema, used when present): the guest's MAC for the
   rx filter; ``vhostforce`` is accepted and ignored, as in QEMU.

The chardev decides who connects: ``server=on`` (QEMU or testpmd connect, and reconnect
after a VM restart) or a client with ``reconnect``/``reconnect-ms`` (the daemon keeps
reconnecting to a QEMU started with ``server=on``). Modules: :mod:`.protocol` (messages,
descriptors, request handling), :mod:`.memory` (regions, mappings, translation),
:mod:`.memguard` (what backs guest memory, and the SIGBUS guard: docs/vhost-user.md),
:mod:`.virtqueue` (split rings), :mod:`.device` (virtio-net data path), :mod:`.dirtylog`
(dirty-page logging for live migration, ``docs/migration.md``), :mod:`.client` (event
loop, net clients).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netstack.driver import DriverHost, DriverSpec
from netstack.errors import GenericError
from netstack.net.nic import parse_mac
from netstack.qapi import NetdevVhostUserOptions

from .client import VhostUserClient, VhostUserNetdev

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.qapi import Netdev

__all__ = ["SPEC", "VhostUserClient", "VhostUserNetdev", "create"]

#: QEMU's MAX_QUEUE_NUM.
MAX_QUEUES = 1024


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    opts = netdev.options
    assert isinstance(opts, NetdevVhostUserOptions)
    chardev = host.chardev(opts.chardev)
    if chardev is None:
        raise GenericError(f'chardev "{opts.chardev}" not found')
    if not getattr(chardev, "reconnectable", False):
        raise GenericError(f'chardev "{opts.chardev}" is not reconnectable')
    if not getattr(chardev, "fd_pass", False):
        raise GenericError(f'chardev "{opts.chardev}" does not support FD passing')
    queues = 1 if opts.queues is None else opts.queues
    if not 1 <= queues <= MAX_QUEUES:
        raise GenericError(f"vhost-user number of queues must be in range [1, {MAX_QUEUES}]")
    mac_text = getattr(opts, "mac", None)
    mac = parse_mac(mac_text) if mac_text is not None else None
    dev = VhostUserNetdev(
        netdev.id,
        chardev,
        queues,
        loop=host.loop,
        log=host.log,
        emit=host.emit_event,
        mac=mac,
    )
    chardev.attach(dev)
    return list(dev.clients)


SPEC = DriverSpec(
    "vhost-user",
    create,
    "a vhost-user back end VMs attach to (chardev=ID[,queues=N][,mac=MAC])",
)
