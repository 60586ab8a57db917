"""Two guest-TCP endpoints back to back over a simulated link, driven by hypothesis.

One endpoint opens actively (as for hostfwd), the other accepts the SYN (as for a guest's
outbound connection), so each plays "the guest" for the other. The link loses, duplicates
and delays (hence reorders) frames; each host side feeds its stream in random chunks
within ``host_read_room`` and drains the other's in random amounts, stalling at times (so
windows close and zero-window probing runs); a RST or a host error may be injected at a
random moment, and the host connect may fail. Time is a manual clock jumping from event to
event.

Properties: nothing raises; every host receives a prefix of what the other host sent -
each byte exactly once, in order - and, when nothing was reset, all of it followed by an
orderly close on both ends; buffers stay within their bounds at every step; both ends
finish within a bounded simulated time.
"""

from __future__ import annotations

import errno
import heapq
import os
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.user.tcp import (
    Event,
    FrameBuilder,
    Segment,
    TcpConfig,
    TcpEndpoint,
    ethernet_header,
    parse_frame,
    reset_for,
)
from netstack.proto.tcp import ACK, RST, SYN

IP_A4, IP_B4 = bytes([10, 0, 2, 2]), bytes([10, 0, 2, 15])
IP_A6, IP_B6 = bytes.fromhex("fec0" + "00" * 13 + "02"), bytes.fromhex("fec0" + "00" * 13 + "15")
MAC_A, MAC_B = bytes.fromhex("52550a000202"), bytes.fromhex("525400123456")
TIME_LIMIT = 4000.0
#: Examples per run of the link test (raise it for a soak: TCP_PROP_EXAMPLES=5000).
EXAMPLES = int(os.environ.get("TCP_PROP_EXAMPLES", "60"))


@dataclass
class Scenario:
    seed: int
    v6: bool
    vnet: bool
    sack: bool
    loss: float
    dup: float
    delay_max: float
    a_bytes: int
    b_bytes: int
    mtu: int
    rcvbuf: int
    sndbuf: int
    stall: float
    reset_at: float | None
    reset_how: str
    connect_fails: bool


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    return Scenario(
        seed=draw(st.integers(0, 2**32 - 1)),
        v6=draw(st.booleans()),
        vnet=draw(st.booleans()),
        sack=draw(st.booleans()),
        loss=draw(st.sampled_from([0.0, 0.01, 0.05, 0.2])),
        dup=draw(st.sampled_from([0.0, 0.05])),
        delay_max=draw(st.sampled_from([0.0001, 0.002, 0.05])),
        a_bytes=draw(st.integers(0, 300_000)),
        b_bytes=draw(st.integers(0, 120_000)),
        mtu=draw(st.sampled_from([576, 1500, 9000])),
        rcvbuf=draw(st.sampled_from([4096, 30_000, 262_144])),
        sndbuf=draw(st.sampled_from([3000, 65_536, 1 << 20])),
        stall=draw(st.sampled_from([0.0, 0.1, 0.3])),
        reset_at=draw(st.none() | st.floats(0.0, 3.0)),
        reset_how=draw(st.sampled_from(["abort-a", "abort-b", "host-error-a", "rst-to-b"])),
        connect_fails=draw(st.integers(0, 4)) == 0,
    )


@dataclass
class Side:
    """One host: the stream it sends, what it received, its stall state."""

    name: str
    stream: bytes
    fed: int = 0
    eof_sent: bool = False
    got: bytearray = field(default_factory=bytearray)
    stalled_until: float = 0.0
    m: TcpEndpoint | None = None
    out: list[bytes] = field(default_factory=list)


class Sim:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed)
        self.now = 0.0
        self.heap: list[tuple[float, int, str, bytes]] = []
        self.n = 0
        cfg = dict(mtu=sc.mtu, rcvbuf=sc.rcvbuf, sndbuf=sc.sndbuf, vnet=sc.vnet, sack=sc.sack,
                   max_retries=6, syn_retries=4, rto_max=8.0, time_wait=1.0, idle_timeout=600.0,
                   ooo_max=min(sc.rcvbuf, 50_000), ooo_segs=32)  # fmt: skip
        self.cfg = TcpConfig(**cfg)  # type: ignore[arg-type]
        rnd = random.Random(sc.seed ^ 0x5A5A)
        self.a = Side("a", rnd.randbytes(sc.a_bytes))
        self.b = Side("b", rnd.randbytes(sc.b_bytes))
        ip_a, ip_b = (IP_A6, IP_B6) if sc.v6 else (IP_A4, IP_B4)
        self.a.m = TcpEndpoint.connect(ip_a, ip_b, 80, 40000, 0.0, config=self.cfg,
                                       l2=ethernet_header(MAC_B, MAC_A, sc.v6), out=self.a.out,
                                       iss=self.rng.getrandbits(32))  # fmt: skip
        self.connect_at: float | None = None
        self.reset_done = sc.reset_at is None
        self.reset_happened = False
        self.refused = False

    # -- the link -------------------------------------------------------------------------

    def pump(self) -> None:
        for side, to in ((self.a, "b"), (self.b, "a")):
            frames, side.out[:] = list(side.out), []
            for f in frames:
                if self.rng.random() < self.sc.loss:
                    continue
                copies = 2 if self.rng.random() < self.sc.dup else 1
                for _ in range(copies):
                    t = self.now + self.rng.uniform(0, self.sc.delay_max)
                    self.n += 1
                    heapq.heappush(self.heap, (t, self.n, to, f))

    def deliver(self, to: str, frame: bytes) -> None:
        seg = parse_frame(frame, self.sc.vnet)
        assert isinstance(seg, Segment), seg
        side = self.a if to == "a" else self.b
        if side.m is None:
            if seg.flags & (SYN | ACK | RST) == SYN:
                side.m = TcpEndpoint.accept(seg, self.now, config=self.cfg,
                                            l2=ethernet_header(MAC_A, MAC_B, self.sc.v6),
                                            out=side.out, iss=self.rng.getrandbits(32))  # fmt: skip
                self.connect_at = self.now + self.rng.uniform(0, 0.01)
            else:
                self.answer_rst(seg, side)
            return
        m = side.m
        if m.done:
            if m.accepts_syn(seg) and seg.flags & ACK == 0:
                return  # a stale SYN retransmission after the end: nobody listens again
            self.answer_rst(seg, side)
            return
        m.segment_from_guest(seg, self.now)

    def answer_rst(self, seg: Segment, side: Side) -> None:
        frame = reset_for(seg, l2=ethernet_header(seg.mac, MAC_A, self.sc.v6), vnet=self.sc.vnet)
        if frame is not None:
            side.out.append(frame)

    # -- the hosts ------------------------------------------------------------------------

    def host(self, side: Side) -> None:
        m = side.m
        if m is None or m.done:
            return
        if not side.eof_sent and m.host_read_room:
            n = min(m.host_read_room, self.rng.randint(1, 40_000), len(side.stream) - side.fed)
            if n:
                m.host_data(side.stream[side.fed : side.fed + n], self.now)
                side.fed += n
            if side.fed == len(side.stream) and not m.done:
                side.eof_sent = True
                m.host_eof(self.now)
        if m.host_pending and self.now >= side.stalled_until:
            if self.sc.stall and self.rng.random() < 0.02:
                side.stalled_until = self.now + self.rng.uniform(0, self.sc.stall * 10)
            else:
                budget = self.rng.randint(1, 60_000)
                chunks = m.host_chunks(64)
                taken = b"".join(bytes(c) for c in chunks)[:budget]
                side.got += taken
                m.host_written(len(taken), self.now)

    def events(self, side: Side) -> list[Event]:
        return [e for e, _ in side.m.events] if side.m is not None else []

    def check(self) -> None:
        for side, peer in ((self.a, self.b), (self.b, self.a)):
            assert bytes(side.got) == peer.stream[: len(side.got)], f"{side.name}: corrupted"
            m = side.m
            if m is None:
                continue
            assert m.rx.tohost.size <= self.cfg.rcvbuf
            assert len(m.tx.fromhost.buf) <= self.cfg.sndbuf
            assert m.rx.tohost.ooo_bytes <= self.cfg.ooo_max
            assert len(m.rx.tohost.ooo) <= self.cfg.ooo_segs
            assert m.tx.snd_una <= m.tx.snd_nxt <= m.tx.snd_max

    def inject(self) -> None:
        self.reset_done = True
        self.reset_happened = True
        how = self.sc.reset_how
        a, b = self.a.m, self.b.m
        if how == "abort-a" and a is not None:
            a.abort(self.now)
        elif how == "abort-b" and b is not None:
            b.abort(self.now)
        elif how == "host-error-a" and a is not None:
            a.host_error(errno.ECONNRESET, self.now)
        elif how == "rst-to-b" and b is not None and a is not None and not b.done:
            # a RST exactly at b's rcv_nxt, as the far end would send it
            frame = a.b.frame(b.rx.rcv_nxt & 0xFFFFFFFF, 0, RST, 0)
            seg = parse_frame(frame, self.sc.vnet)
            assert isinstance(seg, Segment)
            b.segment_from_guest(seg, self.now)
        else:
            self.reset_happened = False

    def run(self) -> None:
        steps = 0
        while self.now < TIME_LIMIT:
            steps += 1
            assert steps < 400_000, "no progress"
            a, b = self.a.m, self.b.m
            assert a is not None
            at = self.sc.reset_at
            if not self.reset_done and at is not None and self.now >= at:
                self.inject()
            if self.connect_at is not None and self.now >= self.connect_at and b is not None:
                self.connect_at = None
                if self.sc.connect_fails:
                    b.host_error(errno.ECONNREFUSED, self.now)
                    b.reject(errno.ECONNREFUSED, self.now)
                    self.refused = True
                else:
                    b.host_connected(self.now)
            while self.heap and self.heap[0][0] <= self.now:
                _t, _n, to, frame = heapq.heappop(self.heap)
                self.deliver(to, frame)
            for side in (self.a, self.b):
                if side.m is not None and not side.m.done:
                    side.m.flush(self.now)
                    d = side.m.next_deadline
                    if d is not None and d <= self.now:
                        side.m.timer(self.now)
                self.host(side)
            self.check()
            self.pump()
            if self.finished():
                return
            self.now = self.next_time()
        assert self.now < TIME_LIMIT, "the connection did not finish in time"

    def finished(self) -> bool:
        a, b = self.a.m, self.b.m
        return bool(a is not None and a.done and (b is None or b.done) and not self.heap)

    def next_time(self) -> float:
        times = [self.now + 0.001] if self.busy() else []
        if self.heap:
            times.append(self.heap[0][0])
        for side in (self.a, self.b):
            if side.m is not None and not side.m.done and side.m.next_deadline is not None:
                times.append(side.m.next_deadline)
            if side.stalled_until > self.now:
                times.append(side.stalled_until)
        if self.connect_at is not None:
            times.append(self.connect_at)
        if not self.reset_done and self.sc.reset_at is not None:
            times.append(self.sc.reset_at)
        return max(self.now, min(times)) if times else TIME_LIMIT

    def busy(self) -> bool:
        for side in (self.a, self.b):
            m = side.m
            if m is None or m.done:
                continue
            if (not side.eof_sent and m.host_read_room) or (
                m.host_pending and self.now >= side.stalled_until
            ):
                return True
        return False


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_streams_survive_the_link(sc: Scenario) -> None:
    sim = Sim(sc)
    sim.run()
    a, b = sim.a, sim.b
    assert a.m is not None and a.m.done
    if b.m is not None:
        assert b.m.done
    if sim.reset_happened or sim.refused:
        return
    if b.m is None:
        return  # every SYN was lost: the active side gave up
    ev_a, ev_b = sim.events(a), sim.events(b)
    if Event.TIMEOUT in ev_a + ev_b:
        assert sc.loss >= 0.2, "gave up on a good link"
        return
    assert bytes(b.got) == a.stream, "b did not get all of a's stream"
    assert bytes(a.got) == b.stream, "a did not get all of b's stream"
    assert ev_a[-1] is Event.CLOSED and ev_b[-1] is Event.CLOSED


def random_scenario(seed: int) -> Scenario:
    """A scenario drawn uniformly (hypothesis favours small, boundary values; this
    favours big transfers over bad links)."""
    rng = random.Random(seed)
    return Scenario(
        seed=rng.getrandbits(32), v6=rng.random() < 0.5, vnet=rng.random() < 0.5,
        sack=rng.random() < 0.5, loss=rng.choice([0.0, 0.01, 0.05, 0.2]),
        dup=rng.choice([0.0, 0.05]), delay_max=rng.choice([0.0001, 0.002, 0.05]),
        a_bytes=rng.randint(0, 300_000), b_bytes=rng.randint(0, 120_000),
        mtu=rng.choice([576, 1500, 9000]), rcvbuf=rng.choice([4096, 30_000, 262_144]),
        sndbuf=rng.choice([3000, 65_536, 1 << 20]), stall=rng.choice([0.0, 0.1, 0.3]),
        reset_at=rng.choice([None, None, rng.uniform(0, 3)]),
        reset_how=rng.choice(["abort-a", "abort-b", "host-error-a", "rst-to-b"]),
        connect_fails=rng.random() < 0.1,
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_uniform_scenarios(seed: int) -> None:
    test_streams_survive_the_link.hypothesis.inner_test(random_scenario(seed))  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_parser_is_total(data: bytes, vnet: bool) -> None:
    result = parse_frame(data, vnet)
    assert isinstance(result, Segment | str)


@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255),
    st.integers(0, 65535), st.binary(max_size=40).filter(lambda o: len(o) % 4 == 0),
    st.binary(max_size=3000), st.sampled_from(["syn-sent", "established", "closing"]),
)  # fmt: skip
def test_any_segment_in_any_state_never_raises(
    seq: int, ack: int, flags: int, wnd: int, opts: bytes, data: bytes, where: str
) -> None:
    out: list[bytes] = []
    cfg = TcpConfig(rcvbuf=8192, sndbuf=8192)
    m = TcpEndpoint.connect(IP_A4, IP_B4, 80, 40000, 0.0, config=cfg, out=out, iss=100)
    guest = FrameBuilder(IP_B4, IP_A4, 40000, 80, l2=ethernet_header(MAC_A, MAC_B, False))
    if where != "syn-sent":
        s = parse_l4_frame(guest.frame(7000, 101, SYN | ACK, 1000, b"", b"\x02\x04\x05\xb4"))
        m.segment_from_guest(s, 0.0)
        m.host_data(b"x" * 5000, 0.0)
        if where == "closing":
            m.host_eof(0.0)
    seg = parse_l4_frame(guest.frame(seq, ack, flags, wnd, data, opts))
    m.segment_from_guest(seg, 0.1)
    m.timer(5.0)
    m.host_written(len(b"".join(bytes(c) for c in m.host_chunks())), 5.0)
    assert m.rx.tohost.size <= cfg.rcvbuf and len(m.tx.fromhost.buf) <= cfg.sndbuf


def parse_l4_frame(frame: bytes) -> Segment:
    seg = parse_frame(frame)
    assert isinstance(seg, Segment)
    return seg
