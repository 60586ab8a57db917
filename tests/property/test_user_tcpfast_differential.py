"""The compiled TCP fast path (``_tcpfast``) against its Python twin (``fastflow``).

Hypothesis scripts drive one lent connection in each implementation with the same
operations - guest frames near the connection's sequence space (in order or not, ACKs
within and beyond what was sent, every flag, zero windows, options, payloads, corrupted
checksums and bytes, plain and virtio-net framing), host bytes and read wake-ups, host
socket reads by the peer (a small socket buffer, so writes are cut short), ends of
batches, time passing, reclaims and re-lends - and require identical observable output:
the frames, in order and byte for byte; the bytes the host peer received; which frames
were taken; the hand-backs (with their errno, leftover and unsent flag) and deadline
reports; every field of the flow after each operation; the counters; and the machine's
state after the final reclaim.
"""

from __future__ import annotations

import contextlib
import socket
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.user.tcp import fastflow
from drivers.user.tcp.lending import flow_key, lend, lendable, reclaim, template
from netstack import fastpath
from tests.property.tcpfast_rig import (
    Sink,
    cache,
    established,
    flow_state,
    guest_frame,
    machine_state,
)

compiled = fastpath.load("drivers.user.tcp._tcpfast")
pytestmark = [
    pytest.mark.compiled,
    pytest.mark.skipif(compiled is None, reason="drivers.user.tcp._tcpfast not built"),
]

FLAGS = (0x10, 0x18, 0x10, 0x18, 0x11, 0x12, 0x14, 0x19, 0x30, 0x02, 0x00, 0x50, 0x90)

guest_op = st.tuples(
    st.just("guest"),
    st.sampled_from((0, 0, 0, 0, 1, -1, 1000, -70000)),  # seq offset from rcv_nxt
    st.integers(-3, 8),  # ack: snd_una + n * 700 (beyond snd_nxt: clipped or not)
    st.sampled_from(FLAGS),
    st.sampled_from((0, 1, 512, 65535, 32768)),  # window field
    st.sampled_from((0, 0, 1, 1, 7, 1448, 3000, 40000)),  # payload length
    st.booleans(),  # virtio-net NEEDS_CSUM (else a full checksum)
    st.sampled_from(("", "", "", "csum", "byte", "trunc", "opts", "mac", "vnet-off")),
    st.integers(0, 200),
    st.integers(0, 255),
)
host_op = st.tuples(st.just("host"), st.sampled_from((0, 1, 5, 1448, 5000, 70000)))
ops = st.lists(
    st.one_of(
        guest_op,
        guest_op,
        host_op,
        st.tuples(st.just("peer-read")),
        st.tuples(st.just("flush")),
        st.tuples(st.just("time"), st.sampled_from((0.0001, 0.004, 0.3))),
        st.tuples(st.just("relend")),
    ),
    max_size=40,
)


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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_compiled_and_python_twin_agree(script: list[tuple[Any, ...]]) -> None:
    assert compiled is not None
    want = play(fastflow, script)
    got = play(compiled, script)
    for key in want:
        assert got[key] == want[key], key


def test_a_request_response_exchange_is_taken_by_both() -> None:
    assert compiled is not None
    script: list[tuple[Any, ...]] = []
    for _ in range(5):
        script += [("guest", 0, 0, 0x18, 65535, 1, True, "", 0, 0), ("flush",),
                   ("peer-read",), ("host", 1), ("time", 0.0001)]  # fmt: skip
    want, got = play(fastflow, script), play(compiled, script)
    assert got == want
    # one ACK: the window update that opens the scaled window after the handshake's
    assert want["counters"] == {"fast-frames-in": 5, "fast-reads": 5, "fast-acks": 1,
                                "fast-frames-out": 5}  # fmt: skip
    assert want["peer"] == b"\x01" * 5
