"""Traffic modes of the front end (what the CLI runs, and what benches and tests call):
``txonly`` (send one frame as fast as the back end takes it), ``rxonly`` (count what
arrives), ``io`` (send every received frame back, header and all, like testpmd's io
forwarding) and ``ping`` (numbered probes; round-trip times of those that come back).

Frames are Ethernet/IPv4/UDP (:func:`udp_frame`, IPv4 header checksum filled in, UDP
checksum 0) or, for ping, EtherType 0x88B5 (IEEE local experimental) carrying a magic,
a sequence number and a send timestamp.

Each mode is a coroutine that busy-polls the rings and yields to the event loop every
``yield_every`` seconds (so that several front ends, or a control task, share one loop),
reporting once per second through ``report``. Runtime is bounded by ``seconds`` and, for
a count, by ``max_frames``.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .frontend import VhostUserFrontend
from .net import VnetHeader

ETH_P_IP = 0x0800
ETH_P_PING = 0x88B5
PING_MAGIC = b"VHUPING\0"
_PING = struct.Struct("!8sIQ")
MODES = ("txonly", "rxonly", "io", "ping")


def parse_mac(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"bad MAC address {text!r}")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def _ip_checksum(header: bytes) -> int:
    total = sum(int(w) for w in struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(
    size: int,
    *,
    src_mac: bytes = b"\x02\0\0\0\0\x01",
    dst_mac: bytes = b"\xff" * 6,
    src_ip: bytes = bytes([198, 18, 0, 1]),
    dst_ip: bytes = bytes([198, 18, 0, 2]),
    sport: int = 9,
    dport: int = 9,
    fill: int = 0,
    seq: int = 0,
) -> bytes:
    """An Ethernet/IPv4/UDP frame of exactly ``size`` bytes (>= 46; no FCS)."""
    if size < 46:
        raise ValueError("a UDP frame needs at least 46 bytes")
    payload_len = size - 14 - 20 - 8
    payload = struct.pack("!I", seq & 0xFFFFFFFF)[:payload_len].ljust(payload_len, bytes([fill]))
    udp = struct.pack("!HHHH", sport, dport, 8 + payload_len, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + ip + udp


def ping_frame(seq: int, size: int, src_mac: bytes, dst_mac: bytes, now_ns: int) -> bytes:
    body = _PING.pack(PING_MAGIC, seq & 0xFFFFFFFF, now_ns)
    frame = dst_mac + src_mac + struct.pack("!H", ETH_P_PING) + body
    return frame.ljust(max(size, len(frame)), b"\0")


def parse_ping(frame: bytes) -> tuple[int, int] | None:
    if len(frame) < 14 + _PING.size or frame[12:14] != struct.pack("!H", ETH_P_PING):
        return None
    magic, seq, sent = _PING.unpack_from(frame, 14)
    if magic != PING_MAGIC:
        return None
    return int(seq), int(sent)


@dataclass
class Report:
    """Totals of one run (``tx``: completed by the back end; ``rx``: received)."""

    mode: str
    seconds: float = 0.0
    tx_frames: int = 0
    tx_bytes: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    rtts_us: list[float] = field(default_factory=list)
    lost: int = 0
    lost_seqs: list[int] = field(default_factory=list)

    @property
    def tx_pps(self) -> float:
        return self.tx_frames / self.seconds if self.seconds else 0.0

    @property
    def rx_pps(self) -> float:
        return self.rx_frames / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mode": self.mode,
            "seconds": round(self.seconds, 3),
            "tx_frames": self.tx_frames,
            "tx_bytes": self.tx_bytes,
            "rx_frames": self.rx_frames,
            "rx_bytes": self.rx_bytes,
            "tx_pps": round(self.tx_pps),
            "rx_pps": round(self.rx_pps),
        }
        if self.mode == "ping":
            rtts = sorted(self.rtts_us)
            out["replies"] = len(rtts)
            out["lost"] = self.lost
            if rtts:
                out["rtt_us_min"] = round(rtts[0], 1)
                out["rtt_us_avg"] = round(sum(rtts) / len(rtts), 1)
                out["rtt_us_max"] = round(rtts[-1], 1)
        return out


ReportFn = Callable[[Report, Report], None]  # (interval, total)


class _Clock:
    """Per-second interval reports and the yield cadence of a mode loop."""

    def __init__(self, mode: str, seconds: float, report: ReportFn | None, yield_every: float):
        self.mode = mode
        self.start = time.perf_counter()
        self.end = self.start + seconds
        self.next_report = self.start + 1.0
        self.next_yield = self.start + yield_every
        self.yield_every = yield_every
        self.report = report
        self.total = Report(mode)
        self.last = Report(mode)
        self.last_t = self.start

    def tick(self, now: float) -> None:
        if now >= self.next_report:
            t = self.total
            iv = Report(
                self.mode,
                now - self.last_t,
                t.tx_frames - self.last.tx_frames,
                t.tx_bytes - self.last.tx_bytes,
                t.rx_frames - self.last.rx_frames,
                t.rx_bytes - self.last.rx_bytes,
            )
            t.seconds = now - self.start
            if self.report is not None:
                self.report(iv, t)
            self.last = Report(self.mode, 0, t.tx_frames, t.tx_bytes, t.rx_frames, t.rx_bytes)
            self.last_t = now
            self.next_report += 1.0

    async def pause(self, now: float) -> None:
        if now >= self.next_yield:
            await asyncio.sleep(0)
            self.next_yield = time.perf_counter() + self.yield_every

    def finish(self) -> Report:
        self.total.seconds = time.perf_counter() - self.start
        return self.total


async def run_mode(
    fe: VhostUserFrontend,
    mode: str,
    *,
    seconds: float = 5.0,
    size: int = 64,
    src_mac: bytes = b"\x02\0\0\0\0\x01",
    dst_mac: bytes = b"\xff" * 6,
    queue: int = 0,
    batch: int = 64,
    max_frames: int | None = None,
    interval: float = 0.01,
    report: ReportFn | None = None,
    yield_every: float = 0.005,
) -> Report:
    """Run one traffic mode on queue pair ``queue`` of a started front end."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    tx = fe.tx[queue]
    rx = fe.rx[queue]
    clk = _Clock(mode, seconds, report, yield_every)
    tot = clk.total
    limit = max_frames if max_frames is not None else 1 << 62
    if mode == "txonly":
        if max_frames is None:
            tx.blast_prepare(udp_frame(size, src_mac=src_mac, dst_mac=dst_mac))
            base_f, base_b = tx.frames, tx.bytes
            while True:
                now = time.perf_counter()
                if now >= clk.end:
                    break
                tx.blast_step()
                rx.drain()
                tot.tx_frames = tx.frames - base_f
                tot.tx_bytes = tx.bytes - base_b
                clk.tick(now)
                await clk.pause(now)
        else:
            frame = udp_frame(size, src_mac=src_mac, dst_mac=dst_mac)
            while tot.tx_frames < limit:
                now = time.perf_counter()
                if now >= clk.end:
                    break
                n = tx.send([frame] * min(batch, limit - tot.tx_frames))
                tot.tx_frames += n
                tot.tx_bytes += n * len(frame)
                rx.drain()
                clk.tick(now)
                await clk.pause(now)
            while tx.free_slots < tx.vq.num and time.perf_counter() < clk.end + 1.0:
                tx.reclaim()
                await asyncio.sleep(0.001)
    elif mode == "rxonly":
        while tot.rx_frames < limit:
            now = time.perf_counter()
            if now >= clk.end:
                break
            f, b = rx.drain()
            tot.rx_frames += f
            tot.rx_bytes += b
            tx.reclaim()
            clk.tick(now)
            await clk.pause(now)
    elif mode == "io":
        backlog: list[tuple[VnetHeader, bytes]] = []
        while tot.rx_frames < limit or backlog:  # what was received is sent back
            now = time.perf_counter()
            if now >= clk.end:
                break
            if len(backlog) < 4 * tx.vq.num and tot.rx_frames < limit:
                for fr in rx.receive():
                    fr.header.num_buffers = 0
                    backlog.append((fr.header, fr.data))
                    tot.rx_frames += 1
                    tot.rx_bytes += len(fr.data)
            if backlog:
                n = tx.send([d for _, d in backlog], [h for h, _ in backlog])
                tot.tx_frames += n
                tot.tx_bytes += sum(len(d) for _, d in backlog[:n])
                del backlog[:n]
            else:
                tx.reclaim()
            clk.tick(now)
            await clk.pause(now)
    else:
        await _ping(fe, queue, clk, size, src_mac, dst_mac, interval, limit)
    return clk.finish()


async def _ping(
    fe: VhostUserFrontend,
    queue: int,
    clk: _Clock,
    size: int,
    src_mac: bytes,
    dst_mac: bytes,
    interval: float,
    limit: int,
) -> None:
    tx = fe.tx[queue]
    rx = fe.rx[queue]
    tot = clk.total
    outstanding: dict[int, int] = {}
    seq = 0
    next_send = time.perf_counter()
    draining = False
    drain_until = clk.end
    while True:
        now = time.perf_counter()
        sending = now < clk.end and seq < limit
        if not sending and not draining:
            draining = True  # give the last probes time to come back
            drain_until = now + max(1.0, 20 * interval)
        if not sending and (not outstanding or now >= drain_until):
            break
        if sending and now >= next_send:
            frame = ping_frame(seq, size, src_mac, dst_mac, time.perf_counter_ns())
            if tx.send([frame]):
                outstanding[seq] = time.perf_counter_ns()
                tot.tx_frames += 1
                tot.tx_bytes += len(frame)
                seq += 1
            next_send += interval
        for fr in rx.receive():
            tot.rx_frames += 1
            tot.rx_bytes += len(fr.data)
            got = parse_ping(fr.data)
            if got is not None and got[0] in outstanding:
                sent_ns = outstanding.pop(got[0])
                tot.rtts_us.append((time.perf_counter_ns() - sent_ns) / 1000.0)
        tx.reclaim()
        clk.tick(now)
        await clk.pause(now)
    tot.lost = len(outstanding)
    tot.lost_seqs = sorted(outstanding)
