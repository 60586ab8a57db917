"""Guest-side TCP for the user netdev: each guest connection ends in a TCP endpoint here.

The user netdev (like libslirp, passt, gvisor-tap-vsock) terminates every guest TCP
connection in the daemon and splices its byte stream to a host socket. This package is
that endpoint, sans-IO, plus the flow bookkeeping that ties it to host sockets:

* :mod:`netstack.proto.tcp` - parsing guest frames / L4 bytes into :class:`Segment` (IPv4 and IPv6,
  virtio-net headers: checksum-partial frames are not verified, TSO super-frames are one
  big segment), TCP options;
* :mod:`.builder` - guest-bound frames from precomputed header templates (IPv4/IPv6,
  optional virtio-net header with checksum offload and TSO), RSTs and ICMP unreachables
  for SYNs nobody takes;
* :mod:`.machine` - :class:`TcpEndpoint`, the per-connection state machine, holding its
  send side (:mod:`.sender`: send queue, retransmission, congestion, persist) and its
  receive side (:mod:`.receiver`: guest bytes for the host, our window); byte queues in
  :mod:`.queues`, RTO in :mod:`.rto`, settings/states/events/counters in :mod:`.config`;
* :mod:`.splice` - :class:`TcpSplicer`, the asyncio adapter: flow table, host sockets,
  timers, batching;
* :mod:`.fastflow` (compiled twin ``_tcpfast``, chosen by :mod:`.fastpath`) - the
  established-flow fast path: connections in a plain steady state are lent to a
  per-netdev flow cache (:mod:`.lending`), which takes in-order guest data and ACKs and
  the host socket's reads without the machine, and hands anything else back.

Decisions (the reasoning the code relies on):

* **Window scaling** (RFC 7323) whenever the guest offers it: our shift lets the whole
  ``rcvbuf`` (4 MiB by default) be advertised; the guest's shift is honoured. libslirp
  has none and caps at 64 KiB.
* **SACK** (RFC 2018) accepted and used both ways when the guest offers it: blocks for
  our held out-of-order data go in our ACKs; the guest's blocks drive RFC 6675-style hole
  retransmission. Losses on this link are queue overflows in bursts, exactly where SACK
  saves go-back-N retransmission of a 4 MiB window.
* **No timestamps** (RFC 7323 TSopt): never offered, so the guest never sends them. RTT
  comes from Karn-style timing of one segment per flight; PAWS guards against old
  duplicates from a slow network, and this link has no such delays. Saves 12 bytes and
  an option parse per segment. passt makes the same call.
* **Out of order**: guest segments beyond a hole are kept (``ooo_max`` 1 MiB in at most
  256 pieces, within the advertised window) and SACKed; past the bound they are dropped
  and counted (the guest retransmits).
* **TIME_WAIT** lasts ``time_wait`` (2 s), not 2*MSL: it only has to re-ACK a
  retransmitted FIN; a new SYN with a higher sequence number takes the 4-tuple over
  at once (:meth:`TcpEndpoint.accepts_syn`). After it, segments for the flow get RSTs.
* **Failed host connects** are reported (``Event.CONNECT_FAILED`` with the errno); the
  guest's SYN is held without an answer until then, and the adapter picks RST or ICMP
  unreachable (:meth:`TcpEndpoint.reject` implements libslirp's choice).
* **ACKs** for in-order data are coalesced to one per guest batch (``flush``); the
  congestion window (RFC 5681, byte counting, IW10) protects the guest's rx queue from
  4 MiB bursts; Nagle is off (we relay, so latency matters more than tiny segments).
* **Offloads** (``TcpConfig.vnet``): frames carry virtio-net headers, checksums are left
  to the peer (NEEDS_CSUM) and data goes out as TSO super-frames of up to 64 KiB with
  gso_size = MSS; the core converts for peers that cannot take them.
* Urgent data is delivered inline; ECN is not negotiated; keepalive is not sent (the
  idle timeout, 2 h by default, reclaims dead flows).

Importing has no side effects.
"""

from __future__ import annotations

from netstack.proto.tcp import Segment, parse_frame, parse_l4

from .builder import (
    FrameBuilder,
    ethernet_header,
    rejection,
    reset_for,
    unreachable_for,
    unreachable_frame,
)
from .config import Event, State, TcpConfig
from .machine import TcpEndpoint
from .splice import Splice, TcpSplicer

__all__ = [
    "Event",
    "FrameBuilder",
    "Segment",
    "Splice",
    "State",
    "TcpConfig",
    "TcpEndpoint",
    "TcpSplicer",
    "ethernet_header",
    "parse_frame",
    "parse_l4",
    "rejection",
    "reset_for",
    "unreachable_for",
    "unreachable_frame",
]
