"""Where a guest's TCP connection goes: the NAT policy of the user netdev.

Owns the decision libslirp makes in ``sotranslate_out`` (``socket.c``) and
``tcp_fconnect``: for a guest SYN, the host address to connect to or the errno to refuse
with, in this order - a guestfwd target (an already-connected socket: guestfwd passes
``restrict=on`` too); ``restrict=on`` refuses (``ECONNREFUSED``, counted); the host
address maps to 127.0.0.1; the DNS address to the first DNS upstream (port 53 to the
upstream's configured port, other ports unchanged; none: refused); other addresses inside
the virtual network are refused (counted ``tcp-not-routed``, answered with RST); routable
ones are connected to directly. IPv6 asks :meth:`.v6.nat.Nat6.tcp_target`.

:meth:`TcpPolicy.routable` is the check before a guest segment reaches the splicer:
multicast, broadcast, loopback and 0/8 destinations are not NATed (counted).

Pure: reads the configuration, the gateway's addresses and upstreams and the guestfwd
rules; opens nothing (a guestfwd target's socket is the guestfwd adapter's).
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Any

from .options import UserConfig
from .tcp import Segment
from .v4.router import DNS_PORT, Gateway

if TYPE_CHECKING:
    from .guestfwd import GuestForwarder
    from .v6.host import Ipv6Service

Target = tuple[int, tuple[Any, ...]] | int | socket.socket


class TcpPolicy:
    """The TCP NAT policy of one user netdev."""

    def __init__(
        self, cfg: UserConfig, gw: Gateway, guestfwd: GuestForwarder,
        v6: Ipv6Service | None,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self._gw = gw
        self._guestfwd = guestfwd
        self._v6 = v6
        self._net_bcast = cfg.broadcast.to_bytes(4, "big")

    def routable(self, dst: bytes) -> bool:
        """Whether guest TCP to IPv4 ``dst`` may be NATed: not multicast, broadcast,
        loopback or 0/8 (counted when not)."""
        if dst[0] >= 224 or dst[0] in (0, 127) or dst == self._net_bcast:
            self._gw.stats["tcp-not-routed"] += 1
            return False
        return True

    def resolve(self, seg: Segment) -> Target:
        """The splicer's resolver: (family, sockaddr) to connect to, an errno, or a
        connected socket (guestfwd)."""
        target = self._guestfwd.resolve(seg)  # guestfwd targets pass restrict=on too
        if target is not None:
            return target
        gw = self._gw
        if self.cfg.restrict:
            gw.stats["restrict-refused"] += 1
            return errno.ECONNREFUSED
        if seg.v6:
            return self._resolve6(seg)
        dst = seg.dst
        if dst == gw.host_ip:
            return socket.AF_INET, ("127.0.0.1", seg.dport)
        if dst == gw.dns_ip:
            if not gw.dns.upstreams:
                return errno.ECONNREFUSED
            family, host, port = gw.dns.upstreams[0]
            return family, (host, port if seg.dport == DNS_PORT else seg.dport)
        if dst in gw.local or self.cfg.in_net(int.from_bytes(dst, "big")):
            gw.stats["tcp-not-routed"] += 1
            return errno.ECONNREFUSED
        return socket.AF_INET, (socket.inet_ntoa(dst), seg.dport)

    def _resolve6(self, seg: Segment) -> tuple[int, tuple[Any, ...]] | int:
        """IPv6 (:meth:`.v6.nat.Nat6.tcp_target`): the host address to ::1, the DNS address
        to the first upstream, other in-prefix addresses refused, global ones connected
        to directly."""
        if self._v6 is None:
            return errno.ECONNREFUSED
        return self._v6.nat.tcp_target(seg.dst, seg.dport)
