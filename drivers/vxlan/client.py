"""The vxlan netdev's net client: its data path (see :mod:`drivers.vxlan`), MAC table,
counters and views."""

from __future__ import annotations

import errno
import functools
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from drivers.tap.client import downstream_offloads
from drivers.tap.tun import TUN_F_TSO4
from drivers.vxlan.config import VxlanConfig
from netstack.counters import by_name
from netstack.net.client import NetClient
from netstack.net.fdb import MacTable
from netstack.net.fdio import FdWatch, PeerFlow
from netstack.net.rxfilter import format_mac
from netstack.proto.tcpcoalesce import coalesce
from netstack.proto.vxlan import ETH_HLEN, VxlanDecoder, flow_hash, header, too_big_reply
from netstack.ratelog import RateLog

if TYPE_CHECKING:
    import asyncio
    import logging

#: Datagrams read per socket per wake-up.
RX_BATCH = 64
#: Receive buffer: the largest UDP payload.
RX_BUFSIZE = 65536
#: Seconds between two log lines about the same kind of trouble.
LOG_INTERVAL = 30.0

_BACKPRESSURE = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)
_ZERO_MAC = b"\x00" * 6
_SOL_UDP = 17
_UDP_SEGMENT = 103
_U16 = struct.Struct("=H")
_UDP_GRO = 104
_GRO_ANCBUF = socket.CMSG_SPACE(4)
_INT = struct.Struct("=i")
#: The driver's own counters (``query-netdev``), besides the decoder's and the FDB's.
VxlanCounter = Literal[
    "tx-datagrams",
    "rx-datagrams",
    "tx-errors",
    "rx-errors",
    "tx-too-big",
    "frag-needed",
    "oversize",
    "no-destination",
    "own-looped",
    "gso-sends",
    "gro-reads",
    "coalesced",
]


def _gro_size(anc: list[tuple[int, int, bytes]]) -> int:
    """The datagram size of a coalesced (UDP GRO) read, 0 when it holds one datagram."""
    for level, kind, data in anc:
        if level == _SOL_UDP and kind == _UDP_GRO and len(data) >= 4:
            return int(_INT.unpack_from(data)[0])
    return 0


#: Largest UDP payload one segmentation-offload send may carry in total.
_GSO_BYTES = 65000


class VxlanClient(NetClient):
    """One VXLAN tunnel endpoint: its sockets, its MAC table, its counters."""

    type = "vxlan"
    #: An overlay tunnel: split horizon applies to its hub port.
    overlay: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        cfg: VxlanConfig,
        rx_socks: list[socket.socket],
        tx_socks: list[socket.socket],
        loop: asyncio.AbstractEventLoop,
        log: logging.Logger,
    ) -> None:
        super().__init__(name)
        self.cfg = cfg
        self.info_str = cfg.info()
        self.decoder = VxlanDecoder(cfg.vni)
        self.fdb: MacTable[str] = MacTable(cfg.ageing if cfg.learning else 0.0)
        self._hdr = header(cfg.vni)
        self._rx = rx_socks
        self._tx = tx_socks
        self._loop = loop
        self._log = log
        self._flood: list[tuple[str, int]] = [(r, cfg.dstport) for r in cfg.remotes]
        if cfg.group is not None:
            self._flood.append((cfg.group, cfg.dstport))
        self._own_ports = {s.getsockname()[1] for s in (*rx_socks, *tx_socks)}
        self._buf = bytearray(RX_BUFSIZE)
        self._view = memoryview(self._buf)
        self._closed = False
        self._rx_watches = [
            FdWatch(loop, s.fileno(), functools.partial(self._on_readable, s)) for s in rx_socks
        ]
        self._tx_watches = {
            id(s): FdWatch(loop, s.fileno(), None, self._on_writable) for s in tx_socks
        }
        #: The transmit socket waited on while full (frames wait in the core's queue).
        self._blocked: FdWatch | None = None
        self._flow = PeerFlow(self._hold_reading)
        self._ratelog = RateLog(log, interval=LOG_INTERVAL, clock=loop.time)
        #: Send runs of equal-size datagrams with UDP_SEGMENT (off once the kernel refuses).
        self._gso = True
        #: Merge received TCP segments for receivers that take offloads (``coalesced``).
        self._coalesce = False
        self._offloads_checked = -1e9
        #: Receiving sockets with UDP GRO on (coalesced reads of one sender's datagrams).
        self._gro: set[int] = set()
        for sock in rx_socks:
            try:
                sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
            except OSError:
                continue
            self._gro.add(sock.fileno())
        #: Datagrams larger than this go one by one (a segment must fit the path MTU).
        self._gso_limit = 65535
        self.c: dict[VxlanCounter, int] = dict.fromkeys(get_args(VxlanCounter), 0)

    @property
    def local_port(self) -> int:
        """The UDP port datagrams are received on (``localport``, or the one bound)."""
        return int(self._rx[0].getsockname()[1])

    def start(self) -> None:
        for watch in self._rx_watches:
            watch.set_reading(True)

    # -- socket -> peer ------------------------------------------------------------------

    def _hold_reading(self, on: bool) -> None:
        for watch in self._rx_watches:
            watch.hold(on)

    def _on_readable(self, sock: socket.socket) -> None:
        decoder = self.decoder
        inner_start = decoder.inner_start
        drops_before = decoder.drops.total
        buf, view = self._buf, self._view
        gro = sock.fileno() in self._gro
        recvfrom_into, recvmsg_into = sock.recvfrom_into, sock.recvmsg_into
        learning = self.fdb.ageing > 0
        learn = self.fdb.learn
        now = self._loop.time()
        local, own = self.cfg.local, self._own_ports
        frames: list[bytes] = []
        count = 0
        looped = 0
        for _ in range(RX_BATCH):
            try:
                if gro:
                    n, anc, _flags, addr = recvmsg_into((buf,), _GRO_ANCBUF)
                    seg = _gro_size(anc) or n
                else:
                    n, addr = recvfrom_into(buf)
                    seg = n
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self.c["rx-errors"] += 1
                self._warn("rx", "receive error: %s", exc)
                break
            if addr[1] in own and addr[0] == local:
                looped += 1  # our own flood, back through the multicast group
                count += 1
                continue
            # with UDP GRO one read may hold several datagrams of one sender, each
            # ``seg`` bytes (the last may be shorter)
            if seg < n:
                self.c["gro-reads"] += 1
            for off in range(0, max(n, 1), seg or 1):
                count += 1
                size = min(seg, n - off)
                one = view[off : off + size] if seg != n else buf
                start = inner_start(one, size)
                if start < 0:
                    continue
                frame = view[off + start : off + size].tobytes()
                if learning:
                    learn(frame[6:12], addr[0], now)
                frames.append(frame)
        self.c["rx-datagrams"] += count
        bad = decoder.drops.total - drops_before + looped
        if bad:
            self.c["own-looped"] += looped
            self.stats.malformed += bad
            self._warn("drop", "dropped datagrams: %s", decoder.drops.as_dict())
        if not frames:
            return
        if len(frames) > 1 and self._coalescing(now):
            merged = coalesce(frames)
            self.c["coalesced"] += len(frames) - len(merged)
            self._flow.send(self, merged, True)
        else:
            self._flow.send(self, frames, False)

    def _coalescing(self, now: float) -> bool:
        """Whether receivers behind the peer take TSO super-frames (checked each second)."""
        if not self.cfg.coalesce:
            return False
        if now >= self._offloads_checked + 1.0:
            self._offloads_checked = now
            self._coalesce = bool(downstream_offloads(self.peer) & TUN_F_TSO4)
        return self._coalesce

    # -- peer -> socket ------------------------------------------------------------------

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        if self._closed or self._blocked is not None:
            return len(frames) if self._closed else 0
        hdr = self._hdr
        tx = self._tx
        ntx = len(tx)
        flood = self._flood
        lookup = self.fdb.lookup
        now = self._loop.time()
        self.fdb.maybe_sweep(now)
        dstport = self.cfg.dstport
        mtu = self.cfg.mtu
        c = self.c
        sent = 0
        # a run: consecutive unicast datagrams of one size, one socket and one
        # destination, sent with one UDP_SEGMENT sendmsg (the kernel cuts them)
        run: list[bytes] = []
        run_at = 0
        run_sock: socket.socket | None = None
        run_dest: tuple[str, int] | None = None
        run_len = 0
        for i, frame in enumerate(frames):
            if len(frame) < ETH_HLEN:
                self.stats.tx_dropped += 1
                continue
            if mtu is not None and len(frame) - ETH_HLEN > mtu and not self._fits(frame, mtu):
                continue
            remote = None if frame[0] & 1 else lookup(frame[:6], now)
            sock = tx[flow_hash(frame) % ntx] if ntx > 1 else tx[0]
            data = hdr + frame
            if remote is not None:
                dest = (remote, dstport)
                if (
                    run
                    and sock is run_sock
                    and dest == run_dest
                    and len(data) <= run_len
                    and (len(run) + 1) * run_len <= _GSO_BYTES
                    and len(run) < 64
                ):
                    run.append(data)
                    if len(data) < run_len:  # a shorter datagram ends a run
                        err = self._send_run(run, run_len, run_sock, run_dest)
                        if err:
                            return self._stalled(run_at, sent, run_sock)
                        sent += len(run)
                        run = []
                    continue
                if run:
                    assert run_sock is not None and run_dest is not None
                    if self._send_run(run, run_len, run_sock, run_dest):
                        return self._stalled(run_at, sent, run_sock)
                    sent += len(run)
                if self._gso and len(data) <= self._gso_limit:
                    run, run_at, run_sock, run_dest, run_len = [data], i, sock, dest, len(data)
                    continue
                run = []
                dests = [dest]
            else:
                if run:
                    assert run_sock is not None and run_dest is not None
                    if self._send_run(run, run_len, run_sock, run_dest):
                        return self._stalled(run_at, sent, run_sock)
                    sent += len(run)
                    run = []
                dests = flood
                if not dests:
                    c["no-destination"] += 1
                    self.stats.tx_dropped += 1
                    continue
            for k, dest in enumerate(dests):
                try:
                    sock.sendto(data, dest)
                    sent += 1
                except OSError as exc:
                    if exc.errno in _BACKPRESSURE and k == 0:
                        return self._stalled(i, sent, sock)
                    self._tx_error(exc)
        if run:
            assert run_sock is not None and run_dest is not None
            if self._send_run(run, run_len, run_sock, run_dest):
                return self._stalled(run_at, sent, run_sock)
            sent += len(run)
        c["tx-datagrams"] += sent
        return len(frames)

    def _stalled(self, index: int, sent: int, sock: socket.socket) -> int:
        """The socket is full: frames from ``index`` on wait in the core's queue."""
        self.c["tx-datagrams"] += sent
        self._wait_writable(sock)
        return index

    def _send_run(
        self, run: list[bytes], size: int, sock: socket.socket, dest: tuple[str, int]
    ) -> bool:
        """Send a run of datagrams; True when the socket is full (nothing of it sent)."""
        try:
            if len(run) == 1:
                sock.sendto(run[0], dest)
            else:
                cmsg = [(_SOL_UDP, _UDP_SEGMENT, _U16.pack(size))]
                sock.sendmsg([b"".join(run)], cmsg, 0, dest)
                self.c["gso-sends"] += 1
            return False
        except OSError as exc:
            if exc.errno in _BACKPRESSURE:
                return True
            if len(run) > 1 and exc.errno == errno.EMSGSIZE:
                # a segment above the path MTU: segmentation offload cannot fragment, a
                # plain send can (the host kernel fragments the outer packet)
                self._gso_limit = min(self._gso_limit, size - 1)
            elif len(run) > 1 and exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                self._gso = False  # no UDP GSO here (device or kernel): one by one
                self._warn("gso", "UDP segmentation offload unavailable: %s", exc)
            else:
                self._tx_error(exc)
                return False
        for data in run:
            try:
                sock.sendto(data, dest)
            except OSError as exc:
                self._tx_error(exc)
        return False

    def _fits(self, frame: bytes, mtu: int) -> bool:
        """Whether an inner packet above the overlay MTU may still go (IPv4 without DF,
        or not IP); else answer it with ICMP and count it."""
        reply = too_big_reply(frame, mtu)
        if reply is None:
            self.c["oversize"] += 1
            return True
        self.c["frag-needed"] += 1
        self.stats.tx_dropped += 1
        self._warn("mtu", "inner packet of %d bytes above mtu %d refused", len(frame) - 14, mtu)
        self._loop.call_soon(self._reply, reply)
        return False

    def _reply(self, reply: bytes) -> None:
        if not self._closed:
            self.send((reply,))

    def _tx_error(self, exc: OSError) -> None:
        if exc.errno == errno.EMSGSIZE:
            self.c["tx-too-big"] += 1
        else:
            self.c["tx-errors"] += 1
        self.stats.tx_dropped += 1
        self._warn("tx", "send failed: %s", exc)

    def _wait_writable(self, sock: socket.socket) -> None:
        if self._closed:
            return
        self._blocked = self._tx_watches[id(sock)]
        self._blocked.wait_writable()

    def _on_writable(self) -> None:
        self._blocked = None
        self.flush_queued()

    def _warn(self, kind: str, fmt: str, *args: Any) -> None:
        self._ratelog.warning(kind, "vxlan %s: " + fmt, self.name, *args)

    # -- views and life ------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        out = by_name(self.c)
        out.update(self.decoder.drops.as_dict())
        out["fdb-entries"] = len(self.fdb)
        out["fdb-learned"] = self.fdb.learned
        out["fdb-moves"] = self.fdb.moves
        out["fdb-full"] = self.fdb.full_drops
        return out

    def fdb_rows(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        base = {"netdev": self.name, "port": cfg.dstport, "vni": cfg.vni}
        rows: list[dict[str, Any]] = [
            {**base, "mac": format_mac(_ZERO_MAC), "remote": host, "static": True}
            for host, _port in self._flood
        ]
        for mac, host, age in self.fdb.items(self._loop.time()):
            rows.append(
                {
                    **base,
                    "mac": format_mac(mac),
                    "remote": host,
                    "static": age is None,
                    "age-ms": int((age or 0.0) * 1000),
                }
            )
        return rows

    def fdb_text(self) -> str:
        lines = [f"{self.name}: {self.info_str}\n"]
        for row in self.fdb_rows():
            tail = " permanent" if row["static"] else f" age {row['age-ms'] / 1000:.1f}s"
            lines.append(
                f" {row['mac']} dst {row['remote']} port {row['port']} vni {row['vni']}{tail}\n"
            )
        return "".join(lines)

    def link_status_changed(self) -> None:
        if self.link_down:
            self.fdb.flush()

    def cleanup(self) -> None:
        if self._closed:
            return
        for watch in (*self._rx_watches, *self._tx_watches.values()):
            watch.close()
        self._blocked = None
        self._closed = True
        self.fdb.flush()
        for sock in {id(s): s for s in (*self._rx, *self._tx)}.values():
            sock.close()
