"""IPv6 for the ``user`` netdev: NDP, router advertisements, ICMPv6 echo, DHCPv6.

Standalone sans-IO machines (frames and ``now`` in; frames, host actions, events and the
next deadline out) that the user netdev's adapter wires in beside the IPv4 gateway. The
composition is :class:`.router.Ipv6Router`; its parts are usable alone:

* :mod:`.config` - QEMU's ``ipv6-*`` options, defaults, checks and texts
  (:func:`~.config.parse_ipv6_options`, :func:`~.config.families_enabled` with QEMU's
  ``ipv4``/``ipv6`` quirk, :func:`~.config.check_families`), :class:`~.config.Ipv6Config`;
* :mod:`.addr` (address classes, multicast and virtual MACs), :mod:`netstack.proto.ipv6` (IPv6
  header, extension-header walk, checksums, frames and fragments), :mod:`.fragments`
  (reassembly);
* :mod:`.ndp` (NDP codec), :mod:`.neighbors` (the neighbor table and resolution queue),
  :mod:`.advert` (the RA schedule);
* :mod:`.icmp6` (echo relay, error rules, rate limit, host-socket codec);
* :mod:`.dhcpv6_codec` and :mod:`.dhcpv6` (stateless and stateful DHCPv6 server),
  :mod:`.dnsname` (DNS names in wire format).

Wiring (see :mod:`.router`; the user netdev's adapter is :mod:`drivers.user.v6.host`, its
NAT :mod:`drivers.user.v6.nat`): Ethernet frames of type 0x86DD go to
:meth:`Ipv6Router.input` (its :meth:`~Ipv6Router.accepts` is the MAC filter: IPv6 needs
33:33:xx multicast and the router's 52:56:xx MACs); UDP and TCP beyond NDP/DHCPv6 arrive at
the handlers registered in :attr:`Ipv6Router.ip_handlers`; the NAT answers through
:meth:`Ipv6Router.send`/:meth:`~Ipv6Router.udp_to_guest` and
:meth:`~Ipv6Router.icmp_error`/:meth:`~Ipv6Router.icmp_error_to`; the adapter drains
``out``, ``actions`` (echo relay) and ``events``, and keeps one timer at
:meth:`~Ipv6Router.next_deadline` calling :meth:`~Ipv6Router.tick`. Importing has no side
effects.
"""

from __future__ import annotations

from .config import (
    Ipv6Addresses,
    Ipv6Config,
    check_families,
    families_enabled,
    family_quirk_note,
    ipv6_config,
    parse_ipv6_options,
)
from .icmp6 import EchoRelay, PingClose, PingSend, echo_request, parse_echo_reply
from .router import Action, Handler, Ipv6Router, Packet6

__all__ = [
    "Action",
    "EchoRelay",
    "Handler",
    "Ipv6Addresses",
    "Ipv6Config",
    "Ipv6Router",
    "Packet6",
    "PingClose",
    "PingSend",
    "check_families",
    "echo_request",
    "families_enabled",
    "family_quirk_note",
    "ipv6_config",
    "parse_echo_reply",
    "parse_ipv6_options",
]
