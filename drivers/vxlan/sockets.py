"""The vxlan netdev's sockets: the receiving one (``local:localport``), the multicast group
member, and the source-port pool, tuned (path-MTU discovery off so the host kernel
fragments outer packets; TTL; multicast interface, TTL and no loop-back of our own floods).
Opening is all-or-nothing: on failure every socket made so far is closed.
"""

from __future__ import annotations

import contextlib
import socket

from drivers.socket.dgramsock import mcast_socket, udp_socket
from drivers.vxlan.config import VxlanConfig
from netstack.net.sockaddr import InetAddr

#: Receive socket buffer asked for (capped by ``net.core.rmem_max``).
SOCKET_RCVBUF = 4 * 1024 * 1024
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_PMTUDISC_DONT = 0


def _tune(sock: socket.socket, cfg: VxlanConfig, tx: bool) -> None:
    """Path-MTU discovery off (the kernel fragments), TTL, multicast interface and loop."""
    v6 = cfg.family == socket.AF_INET6
    with contextlib.suppress(OSError):
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _PMTUDISC_DONT)
        else:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _PMTUDISC_DONT)
    if not tx:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
        return
    if cfg.ttl is not None:
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, cfg.ttl)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, cfg.ttl)
    if cfg.group is not None:
        ttl = cfg.ttl if cfg.ttl is not None else 1
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
        else:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(cfg.local))


def open_sockets(cfg: VxlanConfig) -> tuple[list[socket.socket], list[socket.socket]]:
    """The receiving sockets (``local:localport``, the group) and the sending ones."""
    made: list[socket.socket] = []
    try:
        main = udp_socket(InetAddr(cfg.family, cfg.local, cfg.localport))
        made.append(main)
        _tune(main, cfg, tx=False)
        if cfg.srcports == 0:
            _tune(main, cfg, tx=True)
        rx = [main]
        if cfg.group is not None:
            interface = cfg.local if cfg.family == socket.AF_INET else None
            msock = mcast_socket(InetAddr(cfg.family, cfg.group, cfg.localport), interface)
            made.append(msock)
            _tune(msock, cfg, tx=False)
            rx.append(msock)
        tx = [main] if cfg.srcports == 0 else []
        for _ in range(cfg.srcports):
            sock = udp_socket(InetAddr(cfg.family, cfg.local, 0))
            made.append(sock)
            _tune(sock, cfg, tx=True)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            tx.append(sock)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return rx, tx
