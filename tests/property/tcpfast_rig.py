"""Shared rig of the TCP fast-path tests: an established machine, guest frames, caches.

:func:`established` runs a guest handshake on a :class:`TcpEndpoint` with the user
netdev's settings (virtio-net headers, Ethernet, IPv4); :func:`guest_frame` builds the
guest's frames (virtio-net header, Ethernet, IPv4, TCP) with correct checksums, full or
partial (``NEEDS_CSUM``); :func:`cache` makes a flow cache of either implementation
whose output is collected in one list; :func:`play` runs a script of operations on a
lent connection of an implementation (and a second one, for batches that mix two flows)
and returns everything observable (the differential test and the fuzzer compare two of
them). Scripts may make ``on_deadline`` raise, make ``on_slow`` change the batch being
taken (as a re-entrant netdev could), and close the host peer (EOF, ``EPIPE``,
``ECONNRESET``).
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
    port: int = GUEST_PORT,
) -> TcpEndpoint:  # fmt: skip
    """A connection the guest opened (from ``port``) whose handshake completed at time 0."""
    syn = Segment(GUEST, HOST, port, HOST_PORT, irs, 0, SYN, wnd,
                  syn_options(1460, wscale, sack), b"", GUEST_MAC)  # fmt: skip
    l2 = ethernet_header(GUEST_MAC, GW_MAC, False)
    m = TcpEndpoint.accept(syn, 0.0, config=cfg, l2=l2, out=out, iss=iss)
    m.host_connected(0.0)
    ack = Segment(GUEST, HOST, port, HOST_PORT, irs + 1, (iss + 1) & 0xFFFFFFFF, ACK,
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


class Conn:
    """One lent connection of a run: its machine, flow, host socket pair and peer bytes."""

    def __init__(self, run: Run, tag: int, port: int) -> None:
        self.run = run
        self.tag = tag
        self.port = port
        self.m = established(wscale=2, port=port)
        self.a, self.b = socket.socketpair()
        self.a.setblocking(False)
        self.a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.b.setblocking(False)
        self.peer = bytearray()
        self.peer_closed = False
        m = self.m
        self.f = run.c.flow(flow_key(m), self.a, template(m), m.tx.fromhost.buf,
                            self.on_slow, self.on_deadline)  # fmt: skip
        lend(m, self.f, run.c)

    def close(self) -> None:
        self.a.close()
        self.b.close()

    def on_slow(self) -> None:
        f, run = self.f, self.run
        run.log.append(("slow", self.tag, f.lent, f.err, bytes(f.leftover), bool(f.unsent)))
        if f.lent:
            f.err = 0
            f.unsent = False
            reclaim(self.m, f, run.c)
        batch = run.batch
        if run.mutate == "clear":
            batch.clear()
        elif run.mutate == "pop" and batch:
            batch.pop()
        elif run.mutate == "extend" and batch:
            batch.append(batch[0])

    def on_deadline(self) -> None:
        self.run.log.append(("deadline", self.tag, self.f.reported))
        if self.run.deadline_raises:
            raise RuntimeError("on_deadline failed")

    def state(self) -> tuple[int, int, int]:
        f, m = self.f, self.m
        if f.lent:
            return f.rcv_nxt, f.snd_una, f.snd_nxt
        return m.rx.rcv_nxt, m.tx.snd_una, m.tx.snd_nxt

    def frame(self, op: tuple[Any, ...]) -> tuple[bytes, bool]:
        """A guest frame of this connection from a script's ``guest`` operation."""
        _, seq_off, ack_n, flags, wnd, plen, partial, corrupt, at, val = op
        rcv_nxt, snd_una, snd_nxt = self.state()
        ack = snd_una + ack_n * 700
        if ack_n >= 0 and ack > snd_nxt and ack_n % 2 == 0:
            ack = snd_nxt
        payload = bytes((i * 7 + plen) & 0xFF for i in range(plen))
        frame = guest_frame(rcv_nxt + seq_off, ack, flags, wnd, payload, partial=partial,
                            options=b"\x01\x01\x01\x01" if corrupt == "opts" else b"",
                            gso={"gso": 1, "gso0": 2}.get(corrupt, 0),
                            bad_csum=corrupt == "csum", sport=self.port,
                            src_mac=bytes(6) if corrupt == "mac" else GUEST_MAC)  # fmt: skip
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
        return frame, vnet

    def host(self, n: int) -> None:
        if n and not self.peer_closed:
            try:
                self.b.send(bytes(range(256)) * (n // 256) + bytes(n % 256))
            except OSError as exc:
                self.run.log.append(("peer-send", exc.errno))
        self.f.readable(self.run.now)

    def peer_read(self) -> None:
        if not self.peer_closed:
            with contextlib.suppress(OSError):
                self.peer += self.b.recv(1 << 22)

    def peer_end(self, how: str) -> None:
        """The host peer ends: ``shut`` (EOF to our reads), ``close`` after reading all
        (EPIPE to our writes), ``reset`` with bytes unread (ECONNRESET)."""
        if self.peer_closed:
            return
        if how == "shut":
            self.b.shutdown(socket.SHUT_WR)
            return
        self.peer_read()
        if how == "reset":
            with contextlib.suppress(OSError):
                self.a.send(b"unread")  # the kernel resets a close with bytes unread
        else:
            self.peer_read()
        self.b.close()
        self.peer_closed = True

    def relend(self) -> None:
        c = self.run.c
        if self.f.lent:
            reclaim(self.m, self.f, c)
        if lendable(self.m) and not self.m.rx.tohost.size:
            lend(self.m, self.f, c)
            self.run.log.append(("lent", self.tag, self.f.next_deadline()))

    def finish(self) -> dict[str, Any]:
        if self.f.lent:
            reclaim(self.m, self.f, self.run.c)
        self.peer_read()
        return {"peer": bytes(self.peer), "machine": machine_state(self.m), "out": self.m.out}


class Run:
    """One implementation's run of a script: connection 0, and connection 1 from the
    first batch on."""

    def __init__(self, impl: ModuleType) -> None:
        self.sink = Sink()
        self.c = cache(impl, self.sink)
        self.log: list[Any] = []
        self.now = 1.0
        self.batch: list[bytes] = []
        self.mutate = ""
        self.deadline_raises = False
        self.conns = [Conn(self, 0, GUEST_PORT)]

    @property
    def f(self) -> Any:
        return self.conns[0].f

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

    def conn(self, i: int) -> Conn:
        if i and len(self.conns) == 1:
            self.conns.append(Conn(self, 1, GUEST_PORT + 1))
        return self.conns[min(i, 1)]

    def take(self, frames: list[bytes], vnet: bool) -> None:
        """A batch as the user netdev takes it: the fast path first, each frame it
        declines skipped (the general way), then the rest offered again."""
        self.batch = frames
        took = []
        i = -1
        for _ in range(2 * len(frames) + 2):
            i = self.c.guest_frames(frames, i + 1, self.now, vnet)
            took.append(i)
            if i >= len(frames):
                break
        self.log.append(("took", *took))

    def run(self, op: tuple[Any, ...]) -> None:
        try:
            self.op(op)
        except Exception as exc:  # what a callback raised reaches the caller: compared
            self.log.append(("raised", type(exc).__name__, str(exc)))
        for conn in self.conns:
            self.log.append(flow_state(conn.f))
        self.log.append(self.sink.drain())

    def op(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "guest":
            frame, vnet = self.conns[0].frame(op)
            took = self.c.guest_frames([frame], 0, self.now, vnet)
            self.log.append(("took", took))
        elif kind == "batch":
            self.take([self.conn(i).frame(("guest", *g))[0] for i, *g in op[1]], True)
        elif kind == "host":
            self.conn(op[2] if len(op) > 2 else 0).host(op[1])
        elif kind == "raw":
            self.log.append(("took", self.c.guest_frames([op[1]], 0, self.now, op[2])))
        elif kind == "peer-read":
            for conn in self.conns:
                conn.peer_read()
        elif kind == "peer-end":
            self.conn(op[2] if len(op) > 2 else 0).peer_end(op[1])
        elif kind == "flush":
            self.c.flush(self.now)
        elif kind == "time":
            self.now += op[1]
        elif kind == "relend":
            for conn in self.conns:
                conn.relend()
        elif kind == "deadline-raises":
            self.deadline_raises = bool(op[1])
        elif kind == "mutate":
            self.mutate = op[1]

    def finish(self) -> dict[str, Any]:
        ends = [conn.finish() for conn in self.conns]
        return {
            "log": self.log, "peer": ends[0]["peer"], "machine": ends[0]["machine"],
            "counters": self.c.counters(), "out": ends[0]["out"], "more": ends[1:],
        }  # fmt: skip


def play(impl: ModuleType, script: list[tuple[Any, ...]]) -> dict[str, Any]:
    r = Run(impl)
    try:
        for op in script:
            r.run(op)
        return r.finish()
    finally:
        r.close()
