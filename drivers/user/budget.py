"""A user netdev's flow budget: how many host sockets its guest may hold, per protocol.

Every guest-initiated flow of the NAT costs the daemon one descriptor (a TCP connection's
host socket, a UDP flow's socket, a ping socket per echo flow), so the budget is counted
in descriptors. One number, ``x-max-flows=N`` on ``-netdev user`` (default: the process's
:attr:`netstack.limits.FdLimits.flow_share`, half the descriptors outside the control-plane
reserve), is split by :func:`split`:

* UDP: N/8 flows per address family (at most libslirp-like 1024), IPv4 and IPv6 each;
* ICMP echo: N/32 flows per family (at most 256);
* TCP: the rest, shared by both families.

So ``tcp + 2 * (udp + icmp) <= N``. Past its budget a guest's new TCP connection gets a
RST (ECONNREFUSED), a new UDP flow or echo flow is dropped; each is counted
(``tcp-flow-limit``, ``udp-flow-limit``, ``icmp-flow-limit`` and their IPv6 forms in
``query-netdev``) and logged at most every 30 s, and flows already open carry on. The
process-wide reserve (:func:`netstack.limits.check_flow_fd`) is the second line: a flow
socket that would eat into it is closed at once and the flow refused the same way.

QEMU (libslirp) has no such budget: its guests share the process's descriptors until
``socket()`` fails.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from netstack import limits

if TYPE_CHECKING:
    from .tcp import TcpSplicer
    from .v4.router import Gateway
    from .v6.host import Ipv6Service

#: The smallest ``x-max-flows`` accepted (one flow of each kind per family, and TCP).
MIN_FLOWS: Final = 8
_UDP_MAX: Final = 1024
_ICMP_MAX: Final = 256


def split(total: int) -> dict[str, int]:
    """The per-protocol limits for a budget of ``total`` descriptors (keyword names of
    :class:`~.client.UserNetClient`)."""
    udp = max(1, min(_UDP_MAX, total // 8))
    icmp = max(1, min(_ICMP_MAX, total // 32))
    tcp = max(1, total - 2 * (udp + icmp))
    return {"tcp_max_flows": tcp, "udp_max_flows": udp, "icmp_max_flows": icmp}


def flow_limits(max_flows: int | None) -> dict[str, int]:
    """The limits for ``x-max-flows`` (None: the process's default share)."""
    return split(limits.current().flow_share if max_flows is None else max_flows)


def refused(tcp: TcpSplicer, gw: Gateway, v6: Ipv6Service | None) -> int:
    """Guest flows refused so far for the budget or the descriptor reserve (cheap: a few
    counter lookups, done once per batch of guest frames)."""
    n = tcp.stats["flow-limit"] + tcp.stats["fd-reserve"]
    n += gw.udp.counters["udp-flow-limit"] + gw.icmp.counters["icmp-flow-limit"]
    if v6 is not None:
        echo = v6.router.echo
        n += v6.nat.udp.counters["udp-flow-limit"] + echo.counters[echo.NAMES.flow_limit]
    return n
