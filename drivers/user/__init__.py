"""The ``user`` netdev: a virtual gateway with NAT and services, QEMU's ``-netdev user``.

Follows QEMU's ``net/slirp.c`` and libslirp: the guest sees a router at the
host address (10.0.2.2, fec0::2) and a DNS server (10.0.2.3, fec0::3) on a virtual
10.0.2.0/24 and fec0::/64, gets addresses by DHCP, SLAAC or DHCPv6, reaches the host's
loopback through the host address and everything else through host sockets. In place:
ARP, ICMP, IPv4 reassembly and fragmentation, UDP NAT, DHCP, DNS relay (UDP and TCP), TFTP,
``restrict``, guest TCP with offloads (TSO and checksum offload both ways), hostfwd (TCP
and UDP, either family), guestfwd (a chardev or ``cmd:``), ``smb=`` (a private Samba
smbd), IPv6 (NDP, RAs with RDNSS, ICMPv6 echo, DHCPv6, UDP and TCP NAT), run-time forwards
over HMP and QMP, and a connection table.

Modules: :mod:`.options` (QEMU's options, defaults and errors), :mod:`.v4.router` (the
sans-IO IPv4 gateway) with :mod:`netstack.proto.ipv4` (hot-path codecs, fragmentation),
:mod:`.v4.fragments`, :mod:`.v4.dhcp`, :mod:`.dns`, :mod:`.tftp` with :mod:`.tftproot`
(confinement), :mod:`.udp_nat` and :mod:`.icmp_relay`; :mod:`.v6` (the sans-IO IPv6
router: NDP, RAs, ICMPv6, DHCPv6) with :mod:`.v6.nat` (its UDP/DNS NAT and TCP policy);
:mod:`.tcp` (guest TCP endpoints spliced to host sockets); the host sides -
:mod:`.hostsock` (Linux socket specifics), :mod:`.hostecho` (ping/raw echo sockets, shared
by both families), :mod:`.v4.host` (the IPv4 host sockets), :mod:`.v6.host` (the IPv6 router,
NAT and host sockets), :mod:`.hostfwd`, :mod:`.guestfwd` with :mod:`.guestfwd_chardev`,
:mod:`.smb` (``smb=``: a private smbd behind exec forwards);
:mod:`.conntable` (the forward and connection tables of QMP and ``info usernet``);
:mod:`.migration` with :mod:`.tcp_repair` (the guest-facing state moved to another daemon
with a live-migrated VM, ``docs/migration.md``); and
:mod:`.client` (the net client composing them: fds, timer, monitor views). Importing has
no side effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netstack.driver import DriverHost, DriverSpec
from netstack.qapi import NetdevUserOptions

from . import control
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
        client.start_smb()  # smb= after the forwarding rules, as QEMU
    except BaseException:
        client.cleanup()
        raise
    return [client]


SPEC = DriverSpec(
    "user",
    create,
    "user-mode networking: NAT gateway with DHCP, DNS, TFTP "
    "(net=,host=,dns=,dhcpstart=,tftp=,bootfile=,restrict=,smb=,...)",
    control.CONTROL,
)
