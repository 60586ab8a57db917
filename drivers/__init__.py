"""The drivers: one module (or package) per ``Netdev`` type of ``qapi/net.json``.

:func:`registry` lists every driver this build provides, keyed by its type name. Importing
this package has no side effects; the composition root (``netstack.cli``) calls
:func:`registry` and hands the result to the daemon.
"""

from __future__ import annotations

from netstack.driver import DriverSpec


def registry() -> dict[str, DriverSpec]:
    """Every driver this build provides, by ``Netdev`` type."""
    from drivers import (
        bridge,
        dgram,
        hubport,
        l2tpv3,
        socket,
        stream,
        tap,
        user,
        vde,
        vhost_user,
        vxlan,
    )

    specs = [
        hubport.SPEC,
        user.SPEC,
        tap.SPEC,
        bridge.SPEC,
        socket.SPEC,
        stream.SPEC,
        dgram.SPEC,
        l2tpv3.SPEC,
        vhost_user.SPEC,
        vde.SPEC,
        vxlan.SPEC,
    ]
    return {spec.type: spec for spec in specs}
