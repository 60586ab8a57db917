"""The guest TCP endpoint, state by state, driven by hand-made guest segments and a manual
clock (no sleeps, no private state poked)."""

from __future__ import annotations

import errno

import pytest

from drivers.user.tcp import (
    Event,
    State,
    TcpEndpoint,
)
from netstack.proto.tcp import (
    ACK,
    PSH,
    RST,
    SYN,
    parse_sack_blocks,
    parse_syn_options,
    sack_option,
    syn_options,
)
from tests.unit.tcp_guest import GUEST4, GUEST_OPTS, US4, Guest, events

# -- handshakes ---------------------------------------------------------------------------


def test_passive_open_waits_for_the_host_connect() -> None:
    g = Guest()
    g.syn()
    assert g.m.state is State.CONNECTING and not g.out
    g.m.segment_from_guest(g.seg(SYN, seq=1000, opts=GUEST_OPTS), g.now)  # retransmitted
    assert not g.out and g.m.stats["syn-retransmit-held"] == 1
    assert g.m.host_read_room == 0
    g.m.host_connected(g.now)
    (synack,) = g.take()
    assert synack.flags == SYN | ACK and synack.seq == 5000 and synack.ack == 1001
    opts = parse_syn_options(synack.options)
    assert opts.mss == 1460 and opts.wscale == g.cfg.wscale() == 7
    assert opts.sack_ok and not opts.timestamps
    assert synack.wnd == 65535  # the window of a SYN is never scaled
    g.ack = 5001
    g.send(ACK)
    assert g.m.state is State.ESTABLISHED and events(g) == [Event.ESTABLISHED]


def test_synack_answers_only_what_the_guest_offered() -> None:
    g = Guest(v6=True)
    g.syn(opts=syn_options(1000, None, False))
    g.m.host_connected(g.now)
    (synack,) = g.take()
    opts = parse_syn_options(synack.options)
    assert opts == (1440, None, False, False)  # MSS from MTU 1500 over IPv6
    assert (
        g.m.tx.snd_ws == 0 and g.m.rx.rcv_ws == 0 and not g.m.tx.sack_ok and g.m.tx.snd_mss == 1000
    )


def test_syn_without_mss_uses_the_default() -> None:
    g = Guest()
    g.syn(opts=b"")
    assert g.m.tx.snd_mss == 536
    g6 = Guest(v6=True)
    g6.syn(opts=b"")
    assert g6.m.tx.snd_mss == 1220


def test_synack_retransmitted_then_given_up() -> None:
    g = Guest(syn_retries=2)
    g.syn()
    g.m.host_connected(g.now)
    g.take()
    g.until_deadline()
    (again,) = g.take()
    assert again.flags == SYN | ACK
    g.m.segment_from_guest(g.seg(SYN, seq=1000, opts=GUEST_OPTS), g.now)
    assert [s.flags for s in g.take()] == [SYN | ACK]  # the guest missed it: answer at once
    g.until_deadline()
    g.take()
    g.until_deadline()
    assert g.m.done and events(g) == [Event.TIMEOUT]
    assert [s.flags for s in g.take()] == [RST | ACK]


def test_bad_ack_in_syn_rcvd_gets_rst() -> None:
    g = Guest()
    g.syn()
    g.m.host_connected(g.now)
    g.take()
    g.m.segment_from_guest(g.seg(ACK, ack=12345), g.now)
    (rst,) = g.take()
    assert rst.flags == RST and rst.seq == 12345
    assert g.m.state is State.SYN_RCVD


@pytest.mark.parametrize(
    ("err", "kind"),
    [(errno.ECONNREFUSED, "rst"), (errno.EHOSTUNREACH, "icmp1"), (errno.ENETUNREACH, "icmp0")],
)
def test_failed_connect_answers(err: int, kind: str) -> None:
    g = Guest()
    g.syn()
    g.m.host_error(err, g.now)
    assert g.m.events == [(Event.CONNECT_FAILED, err)] and not g.out and not g.m.done
    g.m.reject(err, g.now)
    assert g.m.done and len(g.out) == 1
    frame = g.out[0]
    if kind == "rst":
        (rst,) = g.take()
        assert rst.flags == RST | ACK and rst.ack == 1001
    else:
        assert frame[23] == 1  # ICMP
        assert frame[34] == 3 and frame[35] == int(kind[-1])


def test_failed_connect_ipv6_icmp() -> None:
    g = Guest(v6=True)
    g.syn()
    g.m.host_error(errno.EHOSTUNREACH, g.now)
    g.m.reject(errno.EHOSTUNREACH, g.now)
    (frame,) = g.out
    assert frame[20] == 58 and frame[54] == 1 and frame[55] == 3


def test_connect_timeout() -> None:
    g = Guest(connect_timeout=5.0)
    g.syn()
    g.tick(4.9)
    assert not g.m.events
    g.tick(0.2)
    assert g.m.events == [(Event.CONNECT_FAILED, errno.ETIMEDOUT)]


def test_guest_reset_while_connecting() -> None:
    g = Guest()
    g.syn()
    g.m.segment_from_guest(g.seg(RST, seq=999), g.now)
    assert not g.m.done  # wrong sequence number
    g.m.segment_from_guest(g.seg(RST), g.now)
    assert g.m.done and events(g) == [Event.GUEST_RESET]


def test_active_open() -> None:
    g = Guest()
    syn = g.open_active()
    assert syn.flags == SYN and parse_syn_options(syn.options) == (1460, 7, True, False)
    (ack,) = g.take()
    assert ack.flags == ACK and ack.ack == 1001 and ack.seq == 5001
    assert g.m.state is State.ESTABLISHED and events(g) == [Event.ESTABLISHED]
    assert g.m.tx.snd_ws == 7 and g.m.rx.rcv_ws == 7 and g.m.tx.sack_ok


def test_active_open_refused_and_bad_acks() -> None:
    g = Guest()
    g._m = TcpEndpoint.connect(US4, GUEST4, 80, 40000, 0.0, config=g.cfg, l2=g.l2, out=g.out,
                               iss=5000)  # fmt: skip
    g.take()
    g.m.segment_from_guest(g.seg(SYN | ACK, ack=7777), g.now)
    (rst,) = g.take()
    assert rst.flags == RST and rst.seq == 7777 and g.m.state is State.SYN_SENT
    g.m.segment_from_guest(g.seg(RST), g.now)  # RST without ACK: ignored
    assert not g.m.done
    g.m.segment_from_guest(g.seg(RST | ACK, ack=5001), g.now)
    assert g.m.done and events(g) == [Event.REFUSED]


def test_active_open_retries_with_backoff_then_times_out() -> None:
    g = Guest(syn_retries=3)
    g._m = TcpEndpoint.connect(US4, GUEST4, 80, 40000, 0.0, config=g.cfg, l2=g.l2, out=g.out)
    g.take()
    times = []
    for _ in range(3):
        g.until_deadline()
        times.append(g.now)
        assert [s.flags for s in g.take()] == [SYN]
    assert times == [1.0, 3.0, 7.0]
    g.until_deadline()
    assert g.m.done and g.m.events == [(Event.TIMEOUT, errno.ETIMEDOUT)] and not g.out


def test_simultaneous_open() -> None:
    g = Guest()
    g._m = TcpEndpoint.connect(US4, GUEST4, 80, 40000, 0.0, config=g.cfg, l2=g.l2, out=g.out,
                               iss=5000)  # fmt: skip
    g.take()
    g.send(SYN, opts=GUEST_OPTS)
    (synack,) = g.take()
    assert synack.flags == SYN | ACK and g.m.state is State.SYN_RCVD
    g.ack = 5001
    g.send(ACK)
    assert g.m.state is State.ESTABLISHED


# -- data, guest to host --------------------------------------------------------------------


def test_guest_data_is_delivered_and_acked_at_flush() -> None:
    g = Guest()
    g.open_passive()
    g.send(ACK, b"a" * 1460)
    g.send(ACK | PSH, b"b" * 1460)
    assert not g.out  # held back until the batch ends
    g.m.flush(g.now)
    (ack,) = g.take()  # two full segments' worth: acknowledged at the end of the batch
    assert ack.ack == 1001 + 2 * 1460 and ack.flags == ACK
    assert g.host_bytes() == b"a" * 1460 + b"b" * 1460


def test_small_data_ack_waits_for_host_data_or_delack() -> None:
    """A request smaller than two segments is not acknowledged at the end of its batch:
    the host's answer carries the ACK (one guest-bound frame per exchange), or the
    delayed-ACK timer sends it."""
    g = Guest()
    g.open_passive()
    g.send(ACK | PSH, b"hello ")
    g.m.flush(g.now)
    assert not g.take()
    assert g.host_bytes() == b"hello "
    (update,) = g.take()  # the first write opens the scaled window: a window update
    assert update.ack == 1007
    g.send(ACK | PSH, b"world")
    g.m.flush(g.now)
    assert g.host_bytes() == b"world"
    assert not g.take()
    g.m.host_data(b"answer", g.now)
    (seg,) = g.take()
    assert seg.ack == 1012 and seg.payload == b"answer"
    g.send(ACK | PSH, b"again")
    g.m.flush(g.now)
    assert not g.take()
    g.until_deadline()
    (ack,) = g.take()
    assert ack.ack == 1017 and not ack.payload


def test_delayed_ack_timer_without_flush() -> None:
    g = Guest(delack=0.01)
    g.open_passive()
    g.send(ACK, b"x")
    assert g.m.next_deadline == pytest.approx(0.01)
    g.until_deadline()
    (ack,) = g.take()
    assert ack.ack == 1002


def test_ack_threshold() -> None:
    g = Guest(rcvbuf=32 * 1024)
    g.open_passive()
    for _ in range(3):
        g.send(ACK, b"y" * 1460)
    (ack,) = g.take()  # after 2 full segments (threshold max(2 * MSS, rcvbuf / 16))
    assert ack.ack == 1001 + 2 * 1460


def test_out_of_order_is_held_and_sacked() -> None:
    g = Guest()
    g.open_passive()
    g.send(ACK, b"A" * 100, seq=1101)
    (dup,) = g.take()
    assert dup.ack == 1001
    assert parse_sack_blocks(dup.options) == [(1101, 1201)]
    g.send(ACK, b"C" * 100, seq=1301)
    (dup,) = g.take()
    assert parse_sack_blocks(dup.options) == [(1301, 1401), (1101, 1201)]  # latest first
    g.send(ACK, b"Z" * 100, seq=1001)
    (ack,) = g.take()  # the hole is filled up to the next one: immediate ACK
    assert ack.ack == 1201 and parse_sack_blocks(ack.options) == [(1301, 1401)]
    assert g.host_bytes() == b"Z" * 100 + b"A" * 100


def test_out_of_order_bound() -> None:
    g = Guest(ooo_segs=2)
    g.open_passive()
    for i in range(4):
        g.send(ACK, b"q" * 10, seq=2000 + 100 * i)
    assert g.m.stats["out-of-order-dropped"] == 2


def test_duplicates_are_acked_not_delivered_twice() -> None:
    g = Guest()
    g.open_passive()
    g.send(ACK, b"once")
    g.m.flush(g.now)
    g.take()
    g.send(ACK, b"once", seq=1001)
    (ack,) = g.take()
    assert ack.ack == 1005
    g.send(ACK, b"oncemore", seq=1001)  # overlapping: only the new part counts
    g.m.flush(g.now)
    assert g.host_bytes() == b"oncemore"


def test_window_is_scaled_closes_and_reopens() -> None:
    g = Guest(rcvbuf=12 * 16384)
    g.open_passive()
    assert g.m.rx.rcv_ws == 2
    sent = 0
    while sent < 12 * 16384:
        g.send(ACK, b"w" * 16384)
        sent += 16384
    g.m.flush(g.now)
    last = g.take()[-1]
    assert last.wnd == 0 and last.ack == 1001 + sent
    assert g.m.host_read_room > 0  # the other direction is unaffected
    g.send(ACK, b"x")  # beyond the window: dropped, re-acked
    assert g.m.stats["beyond-window"] == 1
    g.take()
    data = g.host_bytes()
    assert len(data) == sent
    (update,) = g.take()  # the window reopened: the guest is told at once
    assert update.wnd << 2 == 12 * 16384


def test_window_edge_does_not_retract() -> None:
    g = Guest(rcvbuf=64 * 1024)
    g.open_passive()
    unit = 1 << g.m.rx.rcv_ws
    best = 0
    for n in (1000, 3, 7, 1500, 1, 60_000, 2000, 1):
        g.send(ACK, b"s" * n)
        g.m.flush(g.now)
        for ack in g.take():
            edge = ack.ack + (ack.wnd << g.m.rx.rcv_ws)
            assert edge > best - unit  # only the rounding of the last scale unit
            best = max(best, edge)
    assert g.m.host_pending <= 64 * 1024


# -- data, host to guest --------------------------------------------------------------------


def test_host_data_respects_mss_window_and_push() -> None:
    g = Guest()
    g.open_passive(opts=syn_options(536, 2, True), wnd=1000)  # 4000 bytes of window
    g.m.host_data(b"h" * 10_000, g.now)
    segs = g.take()
    assert [len(s.payload) for s in segs] == [536] * 7 + [248]
    assert all(not s.flags & PSH for s in segs)
    g.ack = 5001 + 4000
    g.send(ACK, wnd=10_000)
    segs = g.take()
    assert sum(len(s.payload) for s in segs) == 6000 and segs[-1].flags & PSH


def test_host_read_room_is_bounded() -> None:
    g = Guest(sndbuf=10_000)
    g.open_passive()
    assert g.m.host_read_room == 10_000
    g.m.host_data(b"r" * 10_000, g.now)
    assert g.m.host_read_room == 0
    g.m.host_data(b"more", g.now)
    assert g.m.stats["host-data-over-room"] == 1
    g.ack = 5001 + 4000
    g.send(ACK)
    assert g.m.host_read_room == 4000


def test_congestion_window_starts_at_iw10() -> None:
    g = Guest()
    g.open_passive(wnd=65535)  # scaled by 7: ~8 MB
    g.m.host_data(b"c" * 100_000, g.now)
    assert sum(len(s.payload) for s in g.take()) == 10 * 1460


def test_retransmission_timeout_backoff_and_give_up() -> None:
    g = Guest(max_retries=3)
    g.open_passive()
    g.m.host_data(b"lost", g.now)
    g.take()
    times = []
    for _ in range(3):
        g.until_deadline()
        (again,) = g.take()
        assert bytes(again.payload) == b"lost" and again.seq == 5001
        times.append(round(g.now, 3))
    # the handshake took no time on the manual clock: RTO at its 200 ms floor, doubled
    assert times == [0.2, 0.6, 1.4]
    g.until_deadline()
    (rst,) = g.take()
    assert rst.flags == RST | ACK and g.m.done
    assert events(g)[-1] is Event.TIMEOUT


def test_rtt_sample_sets_rto() -> None:
    g = Guest()
    g.open_passive()
    g.m.host_data(b"t", g.now)
    g.take()
    g.now += 0.05
    g.ack = 5002
    g.send(ACK)
    # the SYN-ACK gave a 0 s sample, this one 50 ms: SRTT 1/8 of it, RTO at the floor
    assert g.m.tx.rto.srtt == pytest.approx(0.00625) and g.m.tx.rto.rto == pytest.approx(0.2)


def test_fast_retransmit_newreno() -> None:
    g = Guest()
    g.open_passive(opts=syn_options(1000, 7, False), wnd=1000)
    g.m.host_data(b"n" * 10_000, g.now)
    assert len(g.take()) == 10
    for _ in range(3):
        g.send(ACK, wnd=1000)  # duplicate ACKs: the first segment was lost
    (rtx,) = g.take()
    assert rtx.seq == 5001 and len(rtx.payload) == 1000
    assert g.m.stats["fast-retransmits"] == 1
    g.ack = 5001 + 3000  # partial ACK: the next hole goes at once
    g.send(ACK, wnd=1000)
    rtx2 = g.take()
    assert rtx2[0].seq == 5001 + 3000


def test_sack_recovery_retransmits_only_holes() -> None:
    g = Guest()
    g.open_passive(opts=syn_options(1000, 7, True), wnd=1000)
    g.m.host_data(b"k" * 10_000, g.now)
    g.take()
    # segments 1 and 4 lost; the guest SACKs the rest
    blocks = [(5001 + 1000, 5001 + 3000)]
    g.send(ACK, opts=sack_option(blocks))
    blocks = [(5001 + 4000, 5001 + 10_000), (5001 + 1000, 5001 + 3000)]
    g.send(ACK, opts=sack_option(blocks))
    g.send(ACK, opts=sack_option(blocks))
    rtx = g.take()
    assert sorted((s.seq - 5001, len(s.payload)) for s in rtx) == [(0, 1000), (3000, 1000)]


def test_zero_window_persist_probe() -> None:
    g = Guest()
    g.open_passive(wnd=1)  # 128 bytes
    g.m.host_data(b"p" * 1000, g.now)
    (first,) = g.take()
    assert len(first.payload) == 128
    g.ack = 5001 + 128
    g.send(ACK, wnd=0)
    assert not g.take()
    g.until_deadline()
    (probe,) = g.take()
    assert probe.seq == (5001 + 128 - 1) and not probe.payload
    g.until_deadline()  # backed off
    assert len(g.take()) == 1
    g.send(ACK, wnd=100)
    segs = g.take()
    assert sum(len(s.payload) for s in segs) == 872


def test_small_window_is_used_by_the_persist_timer() -> None:
    g = Guest(initial_window=100)
    g.open_passive(opts=syn_options(1460, 0, True), wnd=60_000)
    g.m.host_data(b"s" * 60_000, g.now)
    g.take()
    g.ack = 5001 + 60_000 - 100  # the window edge leaves 100 bytes usable
    g.send(ACK, wnd=100)
    g.m.host_data(b"s" * 1000, g.now)
    g.ack = 5001 + 60_000
    g.send(ACK, wnd=100)  # 100 bytes of window, 1000 waiting: SWS avoidance holds them
    assert not g.take()
    g.until_deadline()
    (seg,) = g.take()
    assert len(seg.payload) == 100
