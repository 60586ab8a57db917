"""The ``vxlan`` netdev (beyond QEMU): an RFC 7348 VXLAN tunnel endpoint (VTEP).

Interoperates with the Linux kernel's vxlan device (``ip link add vx0 type vxlan id N
local A remote B dstport 4789``) and anything else that speaks RFC 7348. Options
(:class:`netstack.qapi.NetdevVxlanOptions`)::

    -netdev vxlan,id=ID,vni=N,local=ADDR,remote=ADDR[,remote=ADDR...][,group=MCAST]
            [,dstport=4789][,localport=P][,srcports=8][,ttl=N][,learning=on]
            [,ageing=300][,mtu=N][,coalesce=off][,x-netns=NS]

* ``local``: the underlay address (IPv4 or IPv6 literal) whose ``localport`` (default
  ``dstport``) receives VXLAN datagrams, like the kernel's ``local``/``dstport``.
* ``remote`` (repeatable; a list in QMP) and ``group`` (a multicast group joined on the
  ``local`` address, as the kernel's ``group``): where broadcast, multicast and unknown
  unicast frames go - to every remote (head-end replication) and to the group. All
  addresses share ``local``'s family.
* Learning (``learning=on``, default): the source MAC of each received inner frame is
  learned behind the datagram's outer source address, with ageing (``ageing`` seconds,
  default 300, the kernel's); a unicast frame to a learned MAC goes to that VTEP only
  (:mod:`netstack.net.fdb`). Entries are flushed when the link goes down.
* Source ports: frames leave from one of ``srcports`` sockets (default 8, kernel-chosen
  ephemeral ports) picked by the inner flow's hash (:func:`netstack.proto.vxlan.flow_hash`),
  so a flow keeps one UDP source port and flows spread; ``srcports=0`` sends from the
  receiving socket (source port = ``localport``, for firewalls that want one port).
* ``x-netns``: the sockets live in that network namespace (as ``tap``'s ``x-netns``:
  netstackd serves an underlay it is not in).
* ``ttl``: outer TTL / hop limit (unicast and multicast; kernel default when absent,
  multicast 1).
* MTU: outer datagrams are sent with path-MTU discovery off, so an inner frame that
  makes the outer packet exceed the underlay MTU is fragmented by the host kernel rather
  than dropped (the kernel vxlan device drops such frames at its bridge port). With
  ``mtu=N`` (the overlay MTU, like the kernel device's MTU) an inner IP packet above N
  that must not be fragmented (IPv4 with DF, any IPv6) is refused with ICMP fragmentation
  needed / packet too big sent back to its sender (``frag-needed`` counts them); IPv4
  without DF is sent and fragmented underneath (``oversize`` counts them). A datagram the
  kernel refuses outright (EMSGSIZE) is counted in ``tx-too-big`` and logged.

Data path: each wake-up reads up to 64 datagrams per socket (``recvfrom_into`` into one
buffer; with UDP GRO on the socket, one read may carry several datagrams of one sender,
cut at the size the kernel reports) and hands the inner frames that pass
:class:`netstack.proto.vxlan.VxlanDecoder` to the peer as one batch - with
``coalesce=on``, and when receivers behind the peer take TSO super-frames (a tap with
headers, the user netdev), consecutive segments of a TCP flow are first merged into one
(:mod:`netstack.proto.tcpcoalesce`, ``coalesced`` counts the frames saved; off by
default: in Python the merge costs more CPU than the receivers save, see
docs/performance.md); while the peer
queues part of a batch reading pauses until the queue's callback (QEMU's contract, as in
the l2tpv3 and socket drivers). Transmit: a run of consecutive unicast frames that go
from one source-port socket to one VTEP with equal datagram sizes (a TCP flow's
segments; the last may be shorter) leaves in one ``sendmsg`` with ``UDP_SEGMENT``, and the
kernel cuts it into datagrams (UDP GSO; ``gso-sends`` counts them); everything else is
one ``sendto`` per frame and destination. A run the kernel refuses with EMSGSIZE (a
segment above the path MTU: segmentation cannot fragment) is sent frame by frame, which
can, and datagrams of that size are no longer batched; EIO/EINVAL turn batching off.
EAGAIN/ENOBUFS on a frame's first destination (or on a run) leaves the rest of the batch
queued in the core until the socket is writable; on further flood destinations the copy
is dropped and counted (``tx-errors``), never re-sent twice to the earlier ones.

Bad input (short datagrams, I flag clear, another VNI, our own multicast echoed back)
is counted per reason (``counters()``, ``stats.malformed``) and logged rate-limited.
A netdev of this type is an *overlay* port: on a learning hub its port is isolated by
default (split horizon, :mod:`netstack.net.hub`).
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from drivers.tap.netns import open_netns, run_in_netns
from drivers.vxlan import control
from drivers.vxlan.client import VxlanClient
from drivers.vxlan.config import VxlanConfig
from drivers.vxlan.sockets import open_sockets
from netstack.driver import DriverHost, DriverSpec
from netstack.qapi import NetdevVxlanOptions

if TYPE_CHECKING:
    from netstack.net.client import NetClient
    from netstack.qapi import Netdev

__all__ = ["SPEC", "VxlanClient", "VxlanConfig", "create"]


def _close_all(socks: tuple[list[socket.socket], list[socket.socket]]) -> None:
    for sock in (*socks[0], *socks[1]):
        sock.close()


async def create(host: DriverHost, netdev: Netdev) -> list[NetClient]:
    opts = netdev.options
    assert isinstance(opts, NetdevVxlanOptions)
    cfg = VxlanConfig(opts)
    if opts.x_netns is None:
        rx, tx = open_sockets(cfg)
    else:
        nsfd = open_netns(opts.x_netns)
        try:
            rx, tx = await run_in_netns(nsfd, lambda: open_sockets(cfg), _close_all)
        finally:
            os.close(nsfd)  # the sockets keep the namespace alive
        cfg.netns = opts.x_netns
    client = VxlanClient(netdev.id, cfg, rx, tx, host.loop, host.log)
    client.start()
    return [client]


SPEC = DriverSpec(
    "vxlan",
    create,
    "a VXLAN tunnel endpoint (vni=N,local=ADDR,remote=ADDR[,remote=...][,group=G][,dstport=4789])",
    control.CONTROL,
)
