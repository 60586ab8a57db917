"""The tap client's fd adapter, driven over a unix datagram socketpair.

A ``SOCK_DGRAM`` socketpair keeps frame boundaries the way a tap fd does (one frame per
read and per write) and pushes back with EAGAIN when the far end stops reading, which a
real tap practically never does; the client does not know the difference (the ioctls it
issues on its own fd, ``TUNSETOFFLOAD``, fail harmlessly on a socket).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence

import pytest

from drivers.tap import tun
from drivers.tap.client import (
    LOG_INTERVAL,
    RX_BATCH,
    TapClient,
    VnetTapClient,
    downstream_offloads,
    make_client,
    normalize_offloads,
)
from netstack.net.hub import Hub
from netstack.proto import vnet
from tests.kit.clock import running
from tests.kit.polling import until
from tests.support import Recorder, frame

LOG = logging.getLogger("test")

pytestmark = pytest.mark.manual_clock


class BatchRecorder(Recorder):
    def __init__(self, name: str, capacity: int | None = None, accepts_vnet: bool = False):
        super().__init__(name, capacity, accepts_vnet)
        self.batches: list[int] = []

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        self.batches.append(len(frames))
        return super().receive(frames, vnet)


_made: list[TapClient] = []


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(our end, far end); our end's fd is handed to the client, which closes it."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.setblocking(False)
    yield ours, theirs
    theirs.close()
    while _made:
        _made.pop().cleanup()


def client(sock: socket.socket, hdr: int = 0, **kw: object) -> TapClient:
    fd = sock.detach()  # the client owns the fd from here on
    os.set_blocking(fd, False)
    c = make_client("t0", fd, asyncio.get_running_loop(), LOG, vnet_hdr_len=hdr, **kw)  # type: ignore[arg-type]
    _made.append(c)
    c.start()
    return c


async def settle(cond: Callable[[], object] | None = None) -> None:
    """Until ``cond()`` holds (I/O served, time standing still); without one, until
    the loop has nothing left to do."""
    if cond is None:
        await running().settle()
    else:
        await until(cond)


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


async def test_reads_at_most_rx_batch_frames_per_wakeup(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    c = client(ours)
    rec = BatchRecorder("r")
    c.connect(rec)
    frames = [frame(i, 100) for i in range(120)]
    for f in frames:
        theirs.send(f)
    await settle(lambda: len(rec.got) == 120)
    assert rec.got == frames
    assert max(rec.batches) == RX_BATCH == 50
    assert c.frames_read == 120 and c.stats.tx_frames == 120
    c.cleanup()


async def test_short_frames_are_padded(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    c = client(ours)
    rec = Recorder("r")
    c.connect(rec)
    theirs.send(b"\x01" * 42)
    await settle(lambda: rec.got)
    assert rec.got == [b"\x01" * 42 + bytes(18)]
    c.cleanup()


async def test_vnet_frames_cross_untouched_or_get_stripped(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    c = client(ours, hdr=12)
    assert isinstance(c, VnetTapClient) and c.accepts_vnet
    hub = Hub(0)
    port = hub.add_port("p0")
    port.connect(c)
    takes_vnet = Recorder("v", accepts_vnet=True)
    plain = Recorder("p")
    hub.add_port("p1").connect(takes_vnet)
    hub.add_port("p2").connect(plain)
    hdr = vnet.pack(vnet.DATA_VALID)
    theirs.send(hdr + frame(1, 80))
    theirs.send(vnet.PLAIN_HDR + b"\x02" * 20)  # short: padded behind the header
    await settle(lambda: len(plain.got) == 2)
    assert takes_vnet.got == [hdr + frame(1, 80), vnet.PLAIN_HDR + b"\x02" * 20 + bytes(40)]
    assert takes_vnet.vnet_flags == [True, True]
    assert plain.got == [frame(1, 80), b"\x02" * 20 + bytes(40)]
    c.cleanup()


async def test_writes_add_or_keep_headers(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    c = client(ours, hdr=12)
    src = Recorder("src")
    c.connect(src)
    src.send([frame(1)])  # plain frame: a zero header goes in front
    gso = vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 54, 1448, 34, 16)
    src.send([gso + frame(2)], vnet=True)  # kept as it is
    assert drain(theirs) == [bytes(12) + frame(1), gso + frame(2)]
    assert c.frames_written == 2
    c.cleanup()


async def test_legacy_10_byte_headers_are_widened_and_narrowed(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    c = client(ours, hdr=10)
    rec = Recorder("r", accepts_vnet=True)
    c.connect(rec)
    h10 = vnet.pack(vnet.NEEDS_CSUM, 0, 0, 0, 34, 16)[:10]
    theirs.send(h10 + frame(3))
    await settle(lambda: rec.got)
    assert rec.got == [h10 + b"\0\0" + frame(3)]
    rec.send([h10 + b"\x07\x00" + frame(4)], vnet=True)
    rec.send([frame(5)])
    assert drain(theirs) == [h10 + frame(4), bytes(10) + frame(5)]
    c.cleanup()


async def test_eagain_queues_in_order_then_flushes(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    c = client(ours)
    src = Recorder("src")
    c.connect(src)
    frames = [frame(i, 1400) for i in range(400)]
    taken = 0
    for i in range(0, len(frames), 50):
        taken += src.send(frames[i : i + 50])
    assert c.write_eagain > 0
    assert len(c.incoming) > 0 and c.receive_disabled
    got: list[bytes] = []

    def drained() -> bool:
        got.extend(drain(theirs))
        return len(got) >= len(frames)

    await until(drained, interval=0.001)
    assert got == frames
    assert len(c.incoming) == 0 and not c.receive_disabled
    c.cleanup()


async def test_reading_pauses_while_the_peer_queues(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    c = client(ours)
    rec = Recorder("r", capacity=0)
    c.connect(rec)
    frames = [frame(i) for i in range(200)]
    for f in frames[:10]:
        theirs.send(f)
    await settle(lambda: c.frames_read >= 10)
    for f in frames[10:]:
        theirs.send(f)
    await settle()
    assert c.frames_read == 10  # paused: the rest waits in the socket
    rec.make_room(len(frames))
    await settle(lambda: len(rec.got) == 200)
    assert rec.got == frames
    c.cleanup()


async def test_queue_without_peer_sends_through_queue_zero(pair) -> None:  # type: ignore[no-untyped-def]
    socks = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    q0 = client(socks[0][0])
    q1 = client(socks[1][0], queue_index=1, primary=q0)
    rec = Recorder("r")
    q0.connect(rec)
    socks[1][1].send(frame(9))
    await settle(lambda: rec.got)
    assert rec.got == [frame(9)] and q1.frames_read == 1 and q0.stats.tx_frames == 1
    for c in (q0, q1):
        c.cleanup()
    for _ours, theirs in socks:
        theirs.close()


async def test_offload_policy_follows_what_receivers_take(pair) -> None:  # type: ignore[no-untyped-def]
    ours, _theirs = pair
    c = client(ours, hdr=12, offload_caps=tun.TUN_F_ALL)
    assert c.wanted_offloads() == 0  # no peer: nothing to hand super-frames to
    hub = Hub(0)
    hub.add_port("p0").connect(c)
    hub.add_port("p1").connect(Recorder("p"))
    assert c.wanted_offloads() == 0  # only a plain receiver: the kernel segments
    hub.add_port("p2").connect(Recorder("v", accepts_vnet=True))
    # mixed: super-frames cross to the receiver that takes headers; the core cuts them
    # for the plain one
    assert c.wanted_offloads() == tun.TUN_F_ALL
    c.offload_policy = "off"
    assert c.wanted_offloads() == 0
    c.offload_policy = "on"
    assert c.wanted_offloads() == tun.TUN_F_ALL
    c.offload_caps = tun.TUN_F_CSUM | tun.TUN_F_TSO4
    assert c.wanted_offloads() == tun.TUN_F_CSUM | tun.TUN_F_TSO4
    c.cleanup()


def test_downstream_offloads_and_normalisation() -> None:
    hub = Hub(1)
    src = hub.add_port("a")
    assert downstream_offloads(src) == 0  # nobody behind the hub
    narrow = Recorder("n", accepts_vnet=True)
    narrow.vnet_offloads = tun.TUN_F_CSUM | tun.TUN_F_TSO4  # type: ignore[attr-defined]
    hub.add_port("b").connect(narrow)
    assert downstream_offloads(src) == tun.TUN_F_CSUM | tun.TUN_F_TSO4
    assert normalize_offloads(tun.TUN_F_TSO4) == 0  # TSO without CSUM is refused
    assert normalize_offloads(tun.TUN_F_CSUM | tun.TUN_F_TSO_ECN) == tun.TUN_F_CSUM
    # hub to hub: followed through a hubport peered with another hub's port
    other = Hub(2)
    bridge_port = other.add_port("x")
    hub.add_port("c").connect(bridge_port)
    other.add_port("y").connect(Recorder("wide", accepts_vnet=True))
    assert downstream_offloads(src) == tun.TUN_F_ALL


async def test_cleanup_runs_hooks_then_closes(pair) -> None:  # type: ignore[no-untyped-def]
    ours, _theirs = pair
    c = client(ours)
    seen: list[int] = []
    c.on_close.append(lambda fd: seen.append(os.fstat(fd).st_ino))
    fd = c.fd
    c.cleanup()
    assert seen and c.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    assert c.receive([frame(1)], False) == 1  # a closed client sinks frames
    c.cleanup()  # idempotent


async def test_write_errors_are_counted_and_skipped(  # type: ignore[no-untyped-def]
    pair, caplog: pytest.LogCaptureFixture
) -> None:
    ours, theirs = pair
    c = client(ours)
    src = Recorder("src")
    c.connect(src)
    theirs.close()  # writes now fail with ECONNREFUSED
    with caplog.at_level(logging.WARNING, logger="test"):
        assert src.send([frame(1), frame(2)]) == 2
        assert c.write_errors == 2 and c.stats.tx_dropped == 2 and c.frames_written == 0
        assert caplog.text.count("write failed") == 1  # one line per LOG_INTERVAL
        await running().advance(LOG_INTERVAL)
        src.send([frame(3)])
    assert caplog.text.count("write failed") == 2
    assert "(1 similar suppressed)" in caplog.text
    c.cleanup()


async def test_num_buffers_bytes_from_the_kernel_are_cleared(pair) -> None:  # type: ignore[no-untyped-def]
    ours, theirs = pair
    c = client(ours, hdr=12)
    rec = Recorder("r", accepts_vnet=True)
    c.connect(rec)
    hdr = vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 54, 1448, 34, 16)
    theirs.send(hdr[:10] + b"\xaa\xbb" + frame(1, 100))
    await settle(lambda: rec.got)
    assert rec.got == [hdr + frame(1, 100)]
    assert c.gso_read == 1
