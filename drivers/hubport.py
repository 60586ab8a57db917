"""The ``hubport`` netdev: a port of a hub, optionally plugged into another netdev.

Follows ``net/hub.c`` (``net_init_hubport``). ``hubid`` names the hub (created on first
use); ``netdev=B`` makes the existing netdev B the port's peer. Where QEMU aborts on an
assertion (B already has a peer) this driver returns an error in QEMU's qdev wording
instead.

Beyond QEMU (``net/hub.py``): ``x-learning=on`` makes the hub a learning switch and
``x-learning=off`` a repeater. A hub's mode is set by the port that creates it (or joins
it while it has no ports; absent means repeater); a port that asks for the other mode of a
hub in use gets ``hub N is a repeater`` / ``hub N is a learning switch``. ``x-ageing=S``
(seconds, learning hubs only) likewise. ``x-isolated=on|off`` sets the port's split
horizon flag (default: follow the peer; tunnel netdevs such as vxlan are isolated).

Why an option of ``hubport`` rather than a new object: a hub has no existence of its own
in QEMU or here - it is created by the first ``hubport`` naming its id and listed with
its ports - so the ports' options are the one place where an operator already describes
a hub, over ``-netdev`` and ``netdev_add`` alike, and ``query-netdev`` shows the choice
with each port's options. A learning hub is a hub in every other respect (``info
network``, ``hub:N`` capture, queues, link state); the default stays QEMU's repeater.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netstack.driver import DriverHost, DriverSpec
from netstack.errors import GenericError
from netstack.net.fdb import DEFAULT_AGEING
from netstack.qapi import NetdevHubPortOptions

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.net.hub import Hub
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
    hub = host.hub(hubid)
    _set_mode(hub, opts)
    port = hub.add_port(netdev.id)
    port.isolated_opt = opts.x_isolated
    if peer is not None:
        port.connect(peer)
    return [port]


def _set_mode(hub: Hub, opts: NetdevHubPortOptions) -> None:
    learning = opts.x_learning
    if learning is None:
        learning = hub.learning if hub.ports else opts.x_ageing is not None
    if opts.x_ageing is not None and not learning:
        raise GenericError("x-ageing needs a learning hub (x-learning=on)")
    ageing = float(opts.x_ageing) if opts.x_ageing is not None else DEFAULT_AGEING
    if not hub.ports:
        hub.set_learning(learning, ageing)
        return
    if learning != hub.learning:
        kind = "learning switch" if hub.learning else "repeater"
        raise GenericError(f"hub {hub.id} is a {kind}")
    if hub.fdb is not None and opts.x_ageing is not None and hub.fdb.ageing != ageing:
        raise GenericError(f"hub {hub.id} has ageing time {hub.fdb.ageing:g}")


SPEC = DriverSpec(
    "hubport", create, "a port of a hub (hubid=N[,netdev=ID][,x-learning=on,x-isolated=on])"
)
