"""The ``bridge`` netdev: a tap attached to a host bridge (QEMU ``net_init_bridge``).

Options: ``br`` (default ``br0``), ``helper`` (default
``/usr/lib/qemu/qemu-bridge-helper``, Debian's path) and, beyond QEMU, ``x-netns`` (the
bridge lives in that network namespace; the tap is made there too).

QEMU always runs the helper, a privileged program that creates ``tap%d``, gives it the
bridge's MTU and a 0xfe-led MAC, enslaves it and hands the fd back (see
:mod:`drivers.tap.helper`). netstackd does the same when it must, and does the work itself
when it can:

* ``helper=`` given: that helper runs, as in QEMU;
* no ``helper=`` and the daemon has CAP_NET_ADMIN: the daemon creates the tap and
  attaches it with pyroute2 (:func:`drivers.tap.netlink.attach_to_bridge`; errors carry
  the helper's texts, e.g. "failed to get mtu of bridge `br0': No such device");
* otherwise the default helper runs.

The client is a tap (``type=tap``, model ``bridge``) with vnet headers when the tap has
them. ``info network`` shows QEMU's ``helper=H,br=B`` when a helper made the tap and
``ifname=T,br=B`` when the daemon did (deviation: there is no helper to name). The tap is
not persistent: it disappears when the netdev is deleted or the daemon exits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netstack.driver import DriverHost, DriverSpec
from netstack.qapi import NetdevBridgeOptions

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.qapi import Netdev


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    from drivers.tap.helper import DEFAULT_BRIDGE, DEFAULT_HELPER
    from drivers.tap.netdev import create_bridge_port
    from drivers.tap.netlink import has_cap_net_admin
    from drivers.tap.options import TapPlan, netns_option

    opts = netdev.options
    assert isinstance(opts, NetdevBridgeOptions)
    plan = TapPlan(
        "helper",
        helper=opts.helper if opts.helper is not None else DEFAULT_HELPER,
        bridge=opts.br if opts.br is not None else DEFAULT_BRIDGE,
        netns=netns_option(opts),
    )
    direct = opts.helper is None and has_cap_net_admin()
    return list(await create_bridge_port(host, netdev.id, plan, direct=direct))


SPEC = DriverSpec("bridge", create, "a tap attached to a host bridge (br=,helper=,x-netns=)")
