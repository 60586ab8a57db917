"""The ``user`` netdev: a virtual gateway with NAT and services, QEMU's ``-netdev user``.

Follows QEMU's ``net/slirp.c`` and libslirp (reference §7): the guest sees a router at the
host address (10.0.2.2) and a DNS server (10.0.2.3) on a virtual 10.0.2.0/24, gets an
address by DHCP, reaches the host's loopback through 10.0.2.2 and everything else through
host sockets. In place: ARP, ICMP, IPv4 reassembly and fragmentation, UDP NAT, DHCP, DNS
relay (UDP and TCP), TFTP, ``restrict``, guest TCP through :mod:`.tcp` (IPv4) and hostfwd
(:mod:`.hostfwd`, TCP and UDP, IPv4). Still to wire: guestfwd and IPv6 (the machines are
in :mod:`.ipv6`), which slot in through :attr:`.router.Gateway.ip_handlers` /
:attr:`.router.Gateway.eth_handlers` and :meth:`.router.Gateway.add_local`.

Modules: :mod:`.options` (QEMU's options, defaults and errors), :mod:`.router` (the
sans-IO gateway), :mod:`.ipv4` (hot-path codecs, fragmentation), :mod:`.reassembly`,
:mod:`.dhcp`, :mod:`.dns`, :mod:`.tftp` with :mod:`.tftproot` (confinement),
:mod:`.udp_nat`, :mod:`.icmp_relay`, :mod:`.hostsock` (Linux socket specifics) and
:mod:`.client` (the net client: fds, timer, monitor views). Importing has no side effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netstack.driver import DriverHost, DriverSpec
from netstack.qapi import NetdevUserOptions

from .client import UserNetClient
from .options import UserConfig, parse_options

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.qapi import Netdev

__all__ = ["SPEC", "UserConfig", "UserNetClient", "create", "parse_options"]


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    opts = netdev.options
    assert isinstance(opts, NetdevUserOptions)
    cfg = parse_options(opts)
    client = UserNetClient(netdev.id, cfg, host.loop, host.log, host.emit_event)
    try:
        await client.guestfwd.open(host.chardev)  # guestfwd chardevs (QEMU's texts)
    except BaseException:
        client.cleanup()
        raise
    return [client]


SPEC = DriverSpec(
    "user",
    create,
    "user-mode networking: NAT gateway with DHCP, DNS, TFTP "
    "(net=,host=,dns=,dhcpstart=,tftp=,bootfile=,restrict=,...)",
)
