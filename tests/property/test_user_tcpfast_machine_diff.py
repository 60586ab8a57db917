"""The TCP fast path on against off, over the whole splicer (machine, lending, sockets).

A guest (frames built here, acknowledging what it received) and a host peer (one end of
a socket pair the resolver hands the splicer) run scripted exchanges through a
:class:`~drivers.user.tcp.TcpSplicer` twice: once with a flow cache (frames tried on the
fast path first, in order, as :class:`~drivers.user.client.UserNetClient` does; host
wake-ups through the flow's ``readable``) and once without. The guest-bound frames and
the bytes each side receives must be identical: 1-byte request/response exchanges,
bulk in both directions (the congestion window and socket buffers push the connection
in and out of the fast path), a SACK-carrying duplicate ACK, both FINs. Runs with the
compiled cache and with the Python twin. No timer runs (times are the loop's clock,
which only timers would read).
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from drivers.user.endpoint import Deadlines, Outbox
from drivers.user.tcp import TcpSplicer, ethernet_header, fastflow
from netstack import fastpath
from netstack.proto.tcp import ACK, FIN, PSH, SYN, parse_frame, syn_options
from tests.property.tcpfast_rig import CFG, GUEST_MAC, GW_MAC, IRS, guest_frame

_compiled = fastpath.load("drivers.user.tcp._tcpfast")
IMPLS = [pytest.param(fastflow, id="python")]
if _compiled is not None:
    IMPLS.append(pytest.param(_compiled, id="compiled", marks=pytest.mark.compiled))


class Rig:
    """A splicer with one guest connection to a socket-pair host peer."""

    def __init__(self, impl: ModuleType | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.outbox = Outbox()
        self.frames: list[bytes] = []
        self.host, self.peer = socket.socketpair()
        self.peer.setblocking(False)
        self.cache: Any = None
        if impl is not None:
            self.cache = impl.FlowCache(
                self.outbox.vnet_frames, self.send, self.pump, rcvbuf=CFG.rcvbuf,
                sndbuf=CFG.sndbuf, delack=CFG.delack, idle_timeout=CFG.idle_timeout,
            )  # fmt: skip
        self.splicer = TcpSplicer(
            self.loop, CFG, send=self.frames.extend, resolve=lambda seg: self.host,
            l2_for=lambda seg: ethernet_header(GUEST_MAC, GW_MAC, False),
            outbox=self.outbox, deadlines=Deadlines(), pump=self.pump, fast=self.cache,
        )  # fmt: skip
        self.seq = IRS  # the guest's next sequence number
        self.ack = 0  # what the guest acknowledges
        self.got = bytearray()  # what the guest received
        self.peer_got = bytearray()
        self.seen = 0

    def close(self) -> None:
        self.splicer.close()
        self.loop.close()
        self.peer.close()

    def send(self, frames: list[bytes], vnet: bool) -> None:
        assert vnet
        self.frames.extend(frames)

    def pump(self) -> None:
        self.frames.extend(self.outbox.vnet_frames)
        self.outbox.vnet_frames.clear()

    def feed(self, frames: list[bytes]) -> None:
        """A batch of guest frames, as the user netdev takes them."""
        now = self.loop.time()
        n = len(frames)
        i = 0 if self.cache is None else self.cache.guest_frames(frames, 0, now, True)
        while i < n:
            seg = parse_frame(frames[i], True)
            assert not isinstance(seg, str), seg
            self.splicer.guest_segment(seg, now)
            i = i + 1 if self.cache is None else self.cache.guest_frames(frames, i + 1, now, True)
        if self.cache is not None:
            self.cache.flush(now)
        self.splicer.flush_acks()
        self.pump()

    def read_frames(self) -> None:
        """The guest takes what was sent to it (in order, no loss)."""
        for frame in self.frames[self.seen :]:
            self.seen += 1
            seg = parse_frame(frame, True)
            assert not isinstance(seg, str), seg
            if seg.flags & SYN:
                self.ack = seg.seq + 1
                continue
            if seg.seq == self.ack & 0xFFFFFFFF:
                self.got += seg.payload
                self.ack += len(seg.payload) + (1 if seg.flags & FIN else 0)

    def segment(
        self, payload: bytes = b"", flags: int = ACK | PSH, options: bytes = b"", gso: int = 0
    ) -> bytes:
        frame = guest_frame(self.seq, self.ack, flags if payload or flags & FIN else ACK,
                            65535, payload, options=options, gso=gso)  # fmt: skip
        self.seq += len(payload) + (1 if flags & (SYN | FIN) else 0)
        return frame

    def host_wakeup(self) -> None:
        (sp,) = self.splicer.flows.values()
        if sp.fast is not None:
            sp.fast.readable(self.loop.time())
        else:
            self.splicer._readable(sp)

    def peer_read(self) -> None:
        try:
            while chunk := self.peer.recv(1 << 20):
                self.peer_got += chunk
        except BlockingIOError:
            pass


def script(r: Rig) -> list[bytes]:
    random.seed(5)  # the same initial sequence number in both runs
    syn = guest_frame(r.seq, 0, SYN, 65535, options=syn_options(1460, 7, True))
    r.seq += 1
    r.feed([syn])
    r.read_frames()
    r.feed([r.segment()])
    for i in range(30):  # request/response
        r.feed([r.segment(bytes([i]))])
        r.peer_read()
        r.peer.send(bytes([i + 1]))
        r.host_wakeup()
        r.read_frames()
    r.feed([r.segment()])
    blob = bytes(range(256)) * 600  # host -> guest bulk, acknowledged as it arrives
    assert r.peer.send(blob) == len(blob)
    for _ in range(20):
        r.host_wakeup()
        r.read_frames()
        r.feed([r.segment()])
    r.feed([r.segment(options=b"\x01\x01\x05\x0a" + bytes(8)), r.segment()])  # SACK-ish dup
    for k in range(12):  # guest -> host bulk in batches of 8 segments
        r.feed([r.segment(bytes([k]) * 1448) for _ in range(8)])
        r.peer_read()
    for k in range(4):  # TSO super-frames (one with the IPv4 length left 0)
        r.feed([r.segment(bytes([k]) * 20000, gso=1 + k % 2)])
        r.peer_read()
    r.feed([r.segment(b"bye", ACK | PSH | FIN)])
    r.peer_read()
    r.peer.shutdown(socket.SHUT_WR)
    r.host_wakeup()
    r.read_frames()
    r.feed([r.segment()])
    return r.frames


@pytest.fixture
def runs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for r in made:
        r.close()


@pytest.mark.parametrize("impl", IMPLS)
def test_fast_path_on_and_off_give_the_same_wire_and_bytes(
    impl: ModuleType, runs: list[Rig]
) -> None:
    runs += [Rig(None), Rig(impl)]
    off, on = (script(r) for r in runs)
    assert len(on) == len(off)
    for i, (a, b) in enumerate(zip(off, on, strict=True)):
        assert a == b, f"frame {i} differs"
    r_off, r_on = runs
    assert r_on.got == r_off.got and len(r_on.got) == 30 + 256 * 600
    assert r_on.peer_got == r_off.peer_got
    assert len(r_on.peer_got) == 30 + 12 * 8 * 1448 + 4 * 20000 + 3
    counters = r_on.splicer.counters()
    assert counters["fast-frames-in"] >= 30 and counters["fast-frames-out"] >= 30, counters
    assert counters["fast-lends"] >= 2, counters
    off_c = r_off.splicer.counters()
    assert {k: v for k, v in counters.items() if not k.startswith("fast-")} == off_c
