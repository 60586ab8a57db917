"""Lending a guest TCP connection to the established-flow fast path, and reclaiming it.

Owns the one rule for when a :class:`~.machine.TcpEndpoint` may run on the fast path
(:func:`lendable`) and the two state transfers: :func:`lend` copies the machine's
steady-state variables into its ``FastFlow`` (:mod:`.fastflow`, or the compiled
``_tcpfast``) and registers it in the netdev's flow cache; :func:`reclaim` copies them
back, puts guest bytes the host socket did not take into the machine's host queue, and
unregisters the flow. While lent, the machine's copies of those variables are stale:
only the fast path moves them. The splicer reclaims before any other use of the
machine (its ``Splice.m`` does so on every access).

A connection is lendable when it is ESTABLISHED and plain: IPv4 with an Ethernet header
and virtio-net headers (the user netdev's frames), no FIN queued or received, nothing
held for the host (in order or not), no SACK scoreboard, no recovery, no duplicate ACKs
counted, no retransmission or probe in progress, no persist timer, everything queued
sent (``snd_nxt == snd_max == end of the send buffer``), the host socket readable and not
shut. Variables the fast path never changes (the state, counters, the challenge-ACK
limiter, SACK permission...) are not copied.
"""

from __future__ import annotations

from typing import Any

from .config import State
from .fastflow import INF, TPL_LEN
from .machine import TcpEndpoint


def lendable(m: TcpEndpoint) -> bool:
    """Whether ``m`` is in the steady state the fast path handles."""
    tx, rx, b = m.tx, m.rx, m.b
    fh = tx.fromhost
    return (
        m.state is State.ESTABLISHED
        and not m.done
        and not m.events
        and not m.host_shut_wr
        and b.vnet
        and not b.v6
        and len(b.l2) == 14
        and not tx.fin_queued
        and not rx.fin_rcvd
        and not rx.tohost.size
        and not rx.tohost.ooo
        and rx.tohost.ooo_fin is None
        and not fh.sacked
        and not tx.in_recovery
        and not tx.dupacks
        and not tx.retries
        and not tx.probes
        and tx.persist_at is None
        and tx.snd_nxt == tx.snd_max == fh.end
        and fh.base == tx.snd_una
        and m._tw_at is None
        and m._connect_at is None
    )


def template(m: TcpEndpoint) -> bytes:
    """The machine's frame template (virtio-net header, Ethernet, IPv4, TCP)."""
    tpl = bytes(m.b._tpl)
    if len(tpl) != TPL_LEN:
        raise ValueError("not an IPv4 frame template with virtio-net and Ethernet headers")
    return tpl


def flow_key(m: TcpEndpoint) -> bytes:
    """The cache key: guest address and port, our address and port (wire order)."""
    b = m.b
    return b.dst + b.dport.to_bytes(2, "big") + b.src + b.sport.to_bytes(2, "big")


def lend(m: TcpEndpoint, f: Any, cache: Any) -> None:
    """Copy ``m``'s steady state into ``f`` and register it in ``cache``."""
    tx, rx = m.tx, m.rx
    rto = tx.rto
    f.now = m._now
    f.last_activity = m._last_activity
    f.rcv_nxt = rx.rcv_nxt
    f.rcv_adv = rx.rcv_adv
    f.rcv_acked = rx.rcv_acked
    f.ack_pending = rx.ack_pending
    f.delack_at = INF if rx.delack_at is None else rx.delack_at
    f.max_guest_flight = rx.max_guest_flight
    f.rcv_ws = rx.rcv_ws
    f.rcv_mss = rx.rcv_mss
    f.ack_threshold = rx.ack_threshold
    f.quick_ack = rx.quick_ack
    f.snd_una = tx.snd_una
    f.snd_nxt = tx.snd_nxt
    f.snd_wnd = tx.snd_wnd
    f.max_snd_wnd = tx.max_snd_wnd
    f.snd_wl1 = tx.snd_wl1
    f.snd_wl2 = tx.snd_wl2
    f.snd_ws = tx.snd_ws
    f.snd_mss = tx.snd_mss
    f.max_burst = m.b.max_burst(tx.snd_mss)
    f.cwnd = tx.cwnd
    f.ssthresh = tx.ssthresh
    f.rtx_at = INF if tx.rtx_at is None else tx.rtx_at
    f.rtt_seq = -1 if tx._rtt_seq is None else tx._rtt_seq
    f.rtt_time = tx._rtt_time
    f.rto = rto.rto
    f.srtt = -1.0 if rto.srtt is None else rto.srtt
    f.rttvar = rto.rttvar
    f.rto_min = rto.min_rto
    f.rto_max = rto.max_rto
    f.err = 0
    f.leftover = b""
    f.unsent = False
    f.held = 0
    f.lent = True
    cache.flows[f.key] = f


def reclaim(m: TcpEndpoint, f: Any, cache: Any) -> None:
    """Copy ``f``'s state back into ``m`` and unregister it; guest bytes the host socket
    did not take go to the machine's host queue (its window already counted them)."""
    f.lent = False
    if cache.flows.get(f.key) is f:
        del cache.flows[f.key]
    tx, rx = m.tx, m.rx
    rto = tx.rto
    m._now = f.now
    m._last_activity = f.last_activity
    rx.rcv_nxt = f.rcv_nxt
    rx.rcv_adv = f.rcv_adv
    rx.rcv_acked = f.rcv_acked
    rx.ack_pending = f.ack_pending
    rx.delack_at = None if f.delack_at == INF else f.delack_at
    rx.max_guest_flight = f.max_guest_flight
    tx.snd_una = tx.fromhost.base = f.snd_una
    tx.snd_nxt = tx.snd_max = f.snd_nxt
    tx.snd_wnd = f.snd_wnd
    tx.max_snd_wnd = f.max_snd_wnd
    tx.snd_wl1 = f.snd_wl1
    tx.snd_wl2 = f.snd_wl2
    tx.cwnd = f.cwnd
    tx.rtx_at = None if f.rtx_at == INF else f.rtx_at
    tx._rtt_seq = None if f.rtt_seq < 0 else f.rtt_seq
    tx._rtt_time = f.rtt_time
    rto.rto = f.rto
    rto.srtt = None if f.srtt < 0 else f.srtt
    rto.rttvar = f.rttvar
    if f.window_updates:
        m.stats["window-updates"] += f.window_updates
        f.window_updates = 0
    leftover = f.leftover
    if leftover:
        rx.tohost.append(memoryview(bytearray(leftover)))
        f.leftover = b""
    f.held = 0
