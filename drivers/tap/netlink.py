"""rtnetlink operations on taps and bridges, all through pyroute2 (never ``ip``).

:func:`rtnl` opens an ``AsyncIPRoute`` in the daemon's namespace, or in another one when
given its fd (the netlink socket is created on a thread inside that namespace, see
:mod:`drivers.tap.netns`, and handed to pyroute2 with ``use_socket``). Requests are
awaited on the daemon's loop; nothing blocks it.

:func:`attach_to_bridge` does what ``qemu-bridge-helper`` does once it has created the tap
(QEMU ``qemu-bridge-helper.c``): the tap takes the bridge's MTU, the first octet of its MAC
address becomes 0xfe (the bridge takes the lowest MAC of its ports, so a tap must not win
it), it is enslaved to the bridge and brought up. Failures carry the helper's texts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from drivers.tap.netns import run_in_netns
from netstack.errors import GenericError

NETLINK_ROUTE = 0
CAP_NET_ADMIN = 12


def has_cap_net_admin() -> bool:
    """Whether this process has CAP_NET_ADMIN in its effective set."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)


@asynccontextmanager
async def rtnl(nsfd: int | None = None) -> AsyncIterator[Any]:
    """An ``AsyncIPRoute`` acting in namespace ``nsfd`` (None: the daemon's own)."""
    from pyroute2 import AsyncIPRoute

    sock = None
    if nsfd is not None:
        sock = await run_in_netns(nsfd, _netlink_socket, discard=socket.socket.close)
    try:
        ipr = AsyncIPRoute(use_socket=sock) if sock is not None else AsyncIPRoute()
        async with ipr:
            yield ipr
    finally:
        if sock is not None:
            sock.close()


def netlink_strerror(exc: Exception) -> str:
    """The text of a pyroute2 ``NetlinkError`` (or any OSError-like error)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code)
    return str(exc)


def _netlink_errors() -> tuple[type[Exception], ...]:
    from pyroute2 import NetlinkError

    return (NetlinkError, OSError)


async def link_info(ipr: Any, ifname: str) -> dict[str, Any] | None:
    """The RTM_NEWLINK message of ``ifname``, or None if there is no such interface."""
    try:
        msgs = await ipr.link("get", ifname=ifname)
    except _netlink_errors():
        return None
    return msgs[0] if msgs else None


async def attach_to_bridge(ipr: Any, ifname: str, bridge: str) -> None:
    """qemu-bridge-helper's steps after TUNSETIFF (MTU, MAC, enslave, up)."""
    errors = _netlink_errors()
    try:
        br = (await ipr.link("get", ifname=bridge))[0]
        mtu = int(br.get("IFLA_MTU"))
    except errors as exc:
        raise GenericError(
            f"failed to get mtu of bridge `{bridge}': {netlink_strerror(exc)}"
        ) from None
    try:
        tap = (await ipr.link("get", ifname=ifname))[0]
        index = int(tap["index"])
    except errors as exc:
        raise GenericError(
            f"failed to get MAC address of device `{ifname}': {netlink_strerror(exc)}"
        ) from None
    try:
        await ipr.link("set", index=index, mtu=mtu)
    except errors as exc:
        raise GenericError(
            f"failed to set mtu of device `{ifname}' to {mtu}: {netlink_strerror(exc)}"
        ) from None
    mac = str(tap.get("IFLA_ADDRESS") or "00:00:00:00:00:00")
    try:
        await ipr.link("set", index=index, address="fe" + mac[2:])
    except errors as exc:
        raise GenericError(
            f"failed to set MAC address of device `{ifname}': {netlink_strerror(exc)}"
        ) from None
    try:
        await ipr.link("set", index=index, master=int(br["index"]))
    except errors as exc:
        raise GenericError(
            f"failed to add interface `{ifname}' to bridge `{bridge}': {netlink_strerror(exc)}"
        ) from None
    try:
        await ipr.link("set", index=index, state="up")
    except errors as exc:
        raise GenericError(
            f"failed to bring up interface `{ifname}': {netlink_strerror(exc)}"
        ) from None
