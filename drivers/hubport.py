"""The ``hubport`` netdev: a port of a hub, optionally plugged into another netdev.

Follows ``net/hub.c`` (``net_init_hubport``). ``hubid`` names the hub (created on first
use); ``netdev=B`` makes the existing netdev B the port's peer. Where QEMU aborts on an
assertion (B already has a peer) this driver returns an error in
QEMU's qdev wording instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netstack.driver import DriverHost, DriverSpec
from netstack.errors import GenericError
from netstack.qapi import NetdevHubPortOptions

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.qapi import Netdev


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    opts = netdev.options
    assert isinstance(opts, NetdevHubPortOptions)
    hubid = opts.hubid
    peer_name = opts.netdev
    peer = None
    if peer_name is not None:
        peer = host.find_netdev(peer_name)
        if peer is None:
            raise GenericError(f"netdev '{peer_name}' not found")
        if peer.peer is not None:
            raise GenericError(
                f"Property 'hubport.netdev' can't take value '{peer_name}', it's in use"
            )
    port = host.hub(hubid).add_port(netdev.id)
    if peer is not None:
        port.connect(peer)
    return [port]


SPEC = DriverSpec("hubport", create, "a port of a hub (hubid=N[,netdev=ID])")
