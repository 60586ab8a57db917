"""Shared rig of the TCP fast-path tests: an established machine, guest frames, caches.

:func:`established` runs a guest handshake on a :class:`TcpEndpoint` with the user
netdev's settings (virtio-net headers, Ethernet, IPv4); :func:`guest_frame` builds the
guest's frames (virtio-net header, Ethernet, IPv4, TCP) with correct checksums, full or
partial (``NEEDS_CSUM``); :func:`cache` makes a flow cache of either implementation
whose output is collected in one list; :func:`play` runs a script of operations on one
lent connection of an implementation and returns everything observable (the
differential test and the fuzzer compare two of them).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from types import ModuleType
from typing import Any

from drivers.user.tcp import TcpConfig, TcpEndpoint, ethernet_header
from drivers.user.tcp.lending import flow_key, lend, lendable, reclaim, template
from netstack.proto.checksum import fold, ones_sum
from netstack.proto.tcp import ACK, SYN, Segment, syn_options

GUEST = bytes([10, 0, 2, 15])
HOST = bytes([10, 0, 2, 2])
GUEST_PORT = 40000
HOST_PORT = 7
GUEST_MAC = bytes.fromhex("525400123456")
GW_MAC = bytes.fromhex("525500000202")
IRS = 5000
ISS = 0xFFFFF000  # wraps within the first 4 KiB
CFG = TcpConfig(vnet=True)


def established(
    *, cfg: TcpConfig = CFG, iss: int = ISS, irs: int = IRS, wscale: int | None = 7,
    sack: bool = True, wnd: int = 65535, out: list[bytes] | None = None,
) -> TcpEndpoint:  # fmt: skip
    """A connection the guest opened and whose handshake completed at time 0."""
    syn = Segment(GUEST, HOST, GUEST_PORT, HOST_PORT, irs, 0, SYN, wnd,
                  syn_options(1460, wscale, sack), b"", GUEST_MAC)  # fmt: skip
    l2 = ethernet_header(GUEST_MAC, GW_MAC, False)
    m = TcpEndpoint.accept(syn, 0.0, config=cfg, l2=l2, out=out, iss=iss)
    m.host_connected(0.0)
    ack = Segment(GUEST, HOST, GUEST_PORT, HOST_PORT, irs + 1, (iss + 1) & 0xFFFFFFFF, ACK,
                  wnd, b"", b"", GUEST_MAC)  # fmt: skip
    m.segment_from_guest(ack, 0.001)
    m.out.clear()
    m.events.clear()
    return m


def guest_frame(
    seq: int, ack: int, flags: int, wnd: int, payload: bytes = b"", *, partial: bool = True,
    options: bytes = b"", bad_csum: bool = False, src_mac: bytes = GUEST_MAC,
    dst_mac: bytes = GW_MAC, sport: int = GUEST_PORT, dport: int = HOST_PORT, gso: int = 0,
) -> bytes:  # fmt: skip
    """A guest frame behind a virtio-net header (``partial``: NEEDS_CSUM, the TCP checksum
    field holds the pseudo-header sum; else a full checksum and no flags). ``gso``: a
    TCPv4 TSO super-frame (2: with the IPv4 total length left 0)."""
    doff = 20 + len(options)
    head = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       doff << 2, flags, wnd, 0, 0)  # fmt: skip
    tcp = bytearray(head + options + payload)
    pseudo = ones_sum(GUEST + HOST, 6 + len(tcp))
    csum = fold(pseudo) if partial else ~ones_sum(bytes(tcp), pseudo) & 0xFFFF
    if bad_csum:
        csum ^= 0x0101
    struct.pack_into("!H", tcp, 16, csum)
    total = 0 if gso == 2 else 20 + len(tcp)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 6, 0,
                               GUEST, HOST))  # fmt: skip
    struct.pack_into("!H", ip, 10, ~ones_sum(bytes(ip)) & 0xFFFF)
    vnet = struct.pack("<BBHHHHH", 1, 0, 54, 0, 34, 16, 0) if partial else bytes(12)
    if gso:
        vnet = struct.pack("<BBHHHHH", 1 if partial else 0, 1, 54, 1448, 34, 16, 0)
    return vnet + dst_mac + src_mac + b"\x08\x00" + bytes(ip) + bytes(tcp)


class Sink:
    """What a cache produced: frames through the outbox (``out``, drained by ``pump``)
    and frames given to ``send`` directly, in one list; the callbacks' calls."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.frames: list[bytes] = []
        self.calls: list[str] = []

    def send(self, frames: list[bytes], vnet: bool) -> None:
        self.calls.append("send")
        self.frames.extend(frames)

    def pump(self) -> None:
        self.calls.append("pump")
        self.frames.extend(self.out)
        self.out.clear()

    def drain(self) -> list[bytes]:
        self.pump()
        self.calls.pop()
        got = self.frames[:]
        self.frames.clear()
        return got


def cache(impl: ModuleType, sink: Sink, cfg: TcpConfig = CFG) -> Any:
    """A flow cache of ``impl`` (``_tcpfast`` or ``fastflow``) writing into ``sink``."""
    return impl.FlowCache(sink.out, sink.send, sink.pump, rcvbuf=cfg.rcvbuf,
                          sndbuf=cfg.sndbuf, delack=cfg.delack,
                          idle_timeout=cfg.idle_timeout)  # fmt: skip


#: The FastFlow fields :mod:`drivers.user.tcp.lending` moves, plus the hand-back ones.
FIELDS = (
    "lent", "now", "last_activity", "rcv_nxt", "rcv_adv", "rcv_acked", "ack_pending",
    "delack_at", "max_guest_flight", "rcv_ws", "rcv_mss", "ack_threshold", "quick_ack",
    "snd_una", "snd_nxt", "snd_wnd", "max_snd_wnd", "snd_wl1", "snd_wl2", "snd_ws",
    "snd_mss", "max_burst", "cwnd", "ssthresh", "rtx_at", "rtt_seq", "rtt_time", "rto",
    "srtt", "rttvar", "rto_min", "rto_max", "reported", "err", "leftover", "unsent", "held",
    "touched", "window_updates",
)  # fmt: skip


def flow_state(f: Any) -> dict[str, Any]:
    """Every field of a flow, bool-valued ones as bools, the send buffer as bytes."""
    state = {name: getattr(f, name) for name in FIELDS}
    for name in ("lent", "unsent", "touched"):
        state[name] = bool(state[name])
    state["buf"] = bytes(f.buf)
    return state


def machine_state(m: TcpEndpoint) -> dict[str, Any]:
    """The machine's variables the fast path may move, and its queues."""
    tx, rx = m.tx, m.rx
    return {
        "now": m._now, "last_activity": m._last_activity, "state": m.state,
        "rcv_nxt": rx.rcv_nxt, "rcv_adv": rx.rcv_adv, "rcv_acked": rx.rcv_acked,
        "ack_pending": rx.ack_pending, "delack_at": rx.delack_at,
        "max_guest_flight": rx.max_guest_flight, "tohost": b"".join(rx.tohost.chunks),
        "snd_una": tx.snd_una, "snd_nxt": tx.snd_nxt, "snd_max": tx.snd_max,
        "snd_wnd": tx.snd_wnd, "max_snd_wnd": tx.max_snd_wnd, "wl1": tx.snd_wl1,
        "wl2": tx.snd_wl2, "cwnd": tx.cwnd, "ssthresh": tx.ssthresh, "rtx_at": tx.rtx_at,
        "rtt_seq": tx._rtt_seq, "rtt_time": tx._rtt_time, "rto": tx.rto.rto,
        "srtt": tx.rto.srtt, "rttvar": tx.rto.rttvar, "buf": bytes(tx.fromhost.buf),
        "base": tx.fromhost.base, "stats": dict(m.stats),
    }  # fmt: skip


class Run:
    """One implementation's run of a script."""

    def __init__(self, impl: ModuleType) -> None:
        self.m = established(wscale=2)
        self.sink = Sink()
        self.c = cache(impl, self.sink)
        self.a, self.b = socket.socketpair()
        self.a.setblocking(False)
        self.a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.b.setblocking(False)
        self.log: list[Any] = []
        self.peer = bytearray()
        self.now = 1.0
        m = self.m
        self.f = self.c.flow(flow_key(m), self.a, template(m), m.tx.fromhost.buf,
                             self.on_slow, self.on_deadline)  # fmt: skip
        lend(m, self.f, self.c)

    def close(self) -> None:
        self.a.close()
        self.b.close()

    def on_slow(self) -> None:
        f = self.f
        self.log.append(("slow", f.lent, f.err, bytes(f.leftover), bool(f.unsent)))
        if f.lent:
            f.err = 0
            f.unsent = False
            reclaim(self.m, f, self.c)

    def on_deadline(self) -> None:
        self.log.append(("deadline", self.f.reported))

    def state(self) -> tuple[int, int, int, int]:
        f, m = self.f, self.m
        if f.lent:
            return f.rcv_nxt, f.snd_una, f.snd_nxt, f.rcv_ws
        return m.rx.rcv_nxt, m.tx.snd_una, m.tx.snd_nxt, m.rx.rcv_ws

    def guest(self, op: tuple[Any, ...]) -> None:
        _, seq_off, ack_n, flags, wnd, plen, partial, corrupt, at, val = op
        rcv_nxt, snd_una, snd_nxt, _ = self.state()
        ack = snd_una + ack_n * 700
        if ack_n >= 0 and ack > snd_nxt and ack_n % 2 == 0:
            ack = snd_nxt
        payload = bytes((i * 7 + plen) & 0xFF for i in range(plen))
        frame = guest_frame(rcv_nxt + seq_off, ack, flags, wnd, payload, partial=partial,
                            options=b"\x01\x01\x01\x01" if corrupt == "opts" else b"",
                            gso={"gso": 1, "gso0": 2}.get(corrupt, 0),
                            bad_csum=corrupt == "csum",
                            src_mac=bytes(6) if corrupt == "mac" else None or
                            bytes.fromhex("525400123456"))  # fmt: skip
        vnet = True
        if corrupt == "byte":
            raw = bytearray(frame)
            raw[at % len(raw)] = val
            frame = bytes(raw)
        elif corrupt == "trunc":
            frame = frame[: at % len(frame)]
        elif corrupt == "vnet-off":
            frame = frame[12:]
            vnet = False
        took = self.c.guest_frames([frame], 0, self.now, vnet)
        self.log.append(("took", took))

    def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "guest":
            self.guest(op)
        elif kind == "host":
            if op[1]:
                try:
                    self.b.send(bytes(range(256)) * (op[1] // 256) + bytes(op[1] % 256))
                except BlockingIOError:
                    self.log.append(("peer-full",))
            self.f.readable(self.now)
        elif kind == "raw":
            self.log.append(("took", self.c.guest_frames([op[1]], 0, self.now, op[2])))
        elif kind == "peer-read":
            with contextlib.suppress(BlockingIOError):
                self.peer += self.b.recv(1 << 20)
        elif kind == "flush":
            self.c.flush(self.now)
        elif kind == "time":
            self.now += op[1]
        elif kind == "relend":
            if self.f.lent:
                reclaim(self.m, self.f, self.c)
            if lendable(self.m) and not self.m.rx.tohost.size:
                lend(self.m, self.f, self.c)
                self.log.append(("lent", self.f.next_deadline()))
        self.log.append(flow_state(self.f))
        self.log.append(self.sink.drain())

    def finish(self) -> dict[str, Any]:
        if self.f.lent:
            reclaim(self.m, self.f, self.c)
        with contextlib.suppress(BlockingIOError):
            self.peer += self.b.recv(1 << 22)
        return {
            "log": self.log, "peer": bytes(self.peer), "machine": machine_state(self.m),
            "counters": self.c.counters(), "out": self.m.out,
        }  # fmt: skip


def play(impl: ModuleType, script: list[tuple[Any, ...]]) -> dict[str, Any]:
    r = Run(impl)
    try:
        for op in script:
            r.run(op)
        return r.finish()
    finally:
        r.close()
