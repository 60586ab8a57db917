"""TcpEndpoint, continued: closing, resets and odd segments, sequence wrap and offloads
(the guest of :mod:`tests.unit.tcp_guest`, a manual clock)."""

from __future__ import annotations

import errno

import pytest

from drivers.user.tcp import (
    Event,
    Segment,
    State,
    TcpEndpoint,
    parse_frame,
)
from netstack.proto import vnet as vnet_hdr
from netstack.proto.tcp import ACK, FIN, PSH, RST, SYN
from tests.unit.tcp_guest import GUEST4, GUEST_OPTS, US4, Guest, M, events

# -- closing ----------------------------------------------------------------------------------


def test_guest_closes_first() -> None:
    g = Guest()
    g.open_passive()
    g.send(ACK | FIN, b"bye")
    (ack,) = g.take()
    assert ack.ack == 1005 and g.m.state is State.CLOSE_WAIT
    assert not g.m.host_shut_wr  # its data is not written yet
    assert g.host_bytes() == b"bye"
    assert g.m.host_shut_wr
    g.m.host_data(b"reply", g.now)
    g.m.host_eof(g.now)
    segs = g.take()
    assert segs[-1].flags & FIN and g.m.state is State.LAST_ACK
    g.ack = 5001 + 5 + 1
    g.send(ACK)
    assert g.m.done and events(g) == [Event.ESTABLISHED, Event.CLOSED]


def test_host_closes_first_then_time_wait() -> None:
    g = Guest(time_wait=2.0)
    g.open_passive()
    g.m.host_eof(g.now)
    (fin,) = g.take()
    assert fin.flags == ACK | FIN | PSH and g.m.state is State.FIN_WAIT_1
    assert g.m.host_read_room == 0
    g.ack = 5002
    g.send(ACK)
    assert g.m.state is State.FIN_WAIT_2
    g.send(ACK, b"late data")  # half-closed: the guest may still send
    g.send(ACK | FIN)
    assert g.m.state is State.TIME_WAIT
    g.take()
    g.m.segment_from_guest(g.seg(ACK | FIN, seq=g.seq - 1), g.now + 1)  # its FIN again
    assert g.take()[0].ack == g.seq
    assert g.host_bytes() == b"late data"
    g.tick(1.5)
    assert not g.m.done  # the retransmitted FIN restarted TIME_WAIT
    g.tick(2.0)
    assert g.m.done and events(g)[-1] is Event.CLOSED


def test_simultaneous_close() -> None:
    g = Guest()
    g.open_passive()
    g.m.host_eof(g.now)
    g.take()
    g.send(ACK | FIN)  # does not acknowledge our FIN yet
    assert g.m.state is State.CLOSING
    g.ack = 5002
    g.send(ACK)
    assert g.m.state is State.TIME_WAIT


def test_fin_retransmitted() -> None:
    g = Guest()
    g.open_passive()
    g.m.host_data(b"d", g.now)
    g.m.host_eof(g.now)
    data, fin = g.take()
    assert bytes(data.payload) == b"d" and fin.flags & FIN and fin.seq == 5002
    g.until_deadline()
    (again,) = g.take()
    assert again.flags & FIN and again.seq == 5001 and bytes(again.payload) == b"d"
    g.ack = 5002  # data acked, FIN not
    g.send(ACK)
    g.until_deadline()
    (fin,) = g.take()
    assert fin.flags & FIN and fin.seq == 5002 and not fin.payload


def test_out_of_order_fin() -> None:
    g = Guest()
    g.open_passive()
    g.send(ACK | FIN, b"tail", seq=1011)
    assert g.m.state is State.ESTABLISHED
    g.send(ACK, b"0123456789", seq=1001)
    assert g.m.state is State.CLOSE_WAIT and g.host_bytes() == b"0123456789tail"


def test_new_syn_takes_over_time_wait() -> None:
    g = Guest()
    g.open_passive()
    g.m.host_eof(g.now)
    g.ack = 5002
    g.send(ACK | FIN)
    assert g.m.state is State.TIME_WAIT
    assert g.m.accepts_syn(g.seg(SYN, seq=g.seq + 100_000))
    assert not g.m.accepts_syn(g.seg(SYN, seq=g.seq - 100))
    assert not g.m.accepts_syn(g.seg(ACK))


# -- resets and odd segments ------------------------------------------------------------------


def test_rst_exact_in_window_and_outside() -> None:
    g = Guest()
    g.open_passive()
    g.send(RST, seq=g.seq + 10)  # in the window but not exact: challenge ACK (RFC 5961)
    (challenge,) = g.take()
    assert challenge.flags == ACK and not g.m.done
    g.send(RST, seq=g.seq + 10_000_000)  # outside: ignored silently
    assert not g.take() and not g.m.done
    g.send(RST)
    assert g.m.done and events(g)[-1] is Event.GUEST_RESET
    assert not g.take()


@pytest.mark.parametrize(
    "state", ["ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT"]
)
def test_rst_in_every_synchronized_state(state: str) -> None:
    g = Guest()
    g.open_passive()
    if state in ("FIN_WAIT_1", "FIN_WAIT_2", "LAST_ACK", "TIME_WAIT"):
        g.send(ACK, b"data")
    if state in ("FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT"):
        g.m.host_eof(g.now)
        if state != "FIN_WAIT_1":
            g.ack = 5002
            g.send(ACK)
        if state == "TIME_WAIT":
            g.send(ACK | FIN)
    if state in ("CLOSE_WAIT", "LAST_ACK"):
        g.send(ACK | FIN)
        if state == "LAST_ACK":
            g.m.host_eof(g.now)
    assert g.m.state.name == state
    g.take()
    g.send(RST)
    pending = g.m.host_pending
    if state in ("LAST_ACK", "TIME_WAIT"):  # the guest's stream was complete: still delivered
        assert Event.GUEST_RESET not in events(g)
        assert g.host_bytes() == b"data" and g.m.done
        assert events(g)[-1] is Event.CLOSED
    else:
        assert Event.GUEST_RESET in events(g)
        if state == "CLOSE_WAIT" or not pending:
            g.host_bytes()
        assert g.m.done
    assert not [s for s in g.take() if s.flags & RST]  # never answer a RST with a RST


def test_syn_on_established_gets_challenge_ack() -> None:
    g = Guest()
    g.open_passive()
    g.send(SYN, seq=4242)
    (ack,) = g.take()
    assert ack.flags == ACK and ack.ack == g.seq and g.m.state is State.ESTABLISHED


def test_segment_without_ack_and_ack_of_unsent() -> None:
    g = Guest()
    g.open_passive()
    g.send(PSH, b"noack")
    assert g.m.stats["no-ack"] == 1 and not g.m.host_pending
    g.send(ACK, b"x", ack=99_999)
    assert g.m.stats["ack-unsent"] == 1 and g.take()


def test_old_segment_gets_ack_and_keepalive_is_answered() -> None:
    g = Guest()
    g.open_passive()
    g.send(ACK, seq=g.seq - 1)  # a keepalive probe
    (ack,) = g.take()
    assert ack.ack == g.seq


def test_idle_timeout() -> None:
    g = Guest(idle_timeout=100.0)
    g.open_passive()
    g.tick(99)
    assert not g.m.done
    g.send(ACK)
    g.tick(99)
    assert not g.m.done
    g.tick(2)
    assert g.m.done and events(g)[-1] is Event.IDLE
    assert [s.flags for s in g.take()] == [RST | ACK]


def test_host_error_resets_the_guest() -> None:
    g = Guest()
    g.open_passive()
    g.m.host_error(errno.ECONNRESET, g.now)
    assert g.m.events[-1] == (Event.HOST_ERROR, errno.ECONNRESET)
    assert [s.flags for s in g.take()] == [RST | ACK] and g.m.done
    g.send(ACK, b"more")  # calls after the end are ignored
    assert g.m.stats["after-close"] == 1


# -- sequence wrap, offloads ---------------------------------------------------------------------


def test_sequence_numbers_wrap() -> None:
    g = Guest()
    g.seq = M - 50
    g.syn()
    g.m.host_connected(g.now)
    g.take()
    g.ack = 5001
    g.send(ACK)
    g.send(ACK, b"a" * 100)
    g.until_deadline()  # the delayed ACK
    (ack,) = g.take()
    assert ack.ack == (M - 50 + 1 + 100) & M
    assert g.host_bytes() == b"a" * 100
    g2 = Guest()
    g2._m = TcpEndpoint.connect(US4, GUEST4, 80, 40000, 0.0, config=g2.cfg, l2=g2.l2,
                                out=g2.out, iss=M - 10)  # fmt: skip
    g2.take()
    g2.ack = (M - 10 + 1) & M
    g2.send(SYN | ACK, opts=GUEST_OPTS)
    g2.take()
    g2.m.host_data(b"b" * 100, g2.now)
    (seg,) = g2.take()
    assert seg.seq == M - 9
    g2.ack = (M - 9 + 100) & M
    g2.send(ACK)
    assert g2.m.send_queue == 0 and g2.m.tx.snd_una == M - 9 + 100


def test_offloaded_output_is_one_tso_frame() -> None:
    g = Guest(vnet=True)
    g.open_passive(wnd=65535)
    g.m.host_data(b"o" * 100_000, g.now)
    frames = list(g.out)
    segs = g.take()
    assert len(frames) == 1 and len(segs[0].payload) == 10 * 1460  # IW10 in one frame
    flags, gso, _hdr, gso_size, _start, _off = vnet_hdr.unpack(frames[0])
    assert flags == vnet_hdr.NEEDS_CSUM and gso == vnet_hdr.GSO_TCPV4 and gso_size == 1460
    g.ack = 5001 + 14600
    g.send(ACK)
    sizes = [len(s.payload) for s in g.take()]
    assert sizes == [20 * 1460]  # slow start doubled the window: one frame again


def test_tso_input_is_one_big_segment() -> None:
    g = Guest()
    g.open_passive()
    big = bytes(range(256)) * 250
    frame = g.g.burst(g.seq, g.ack, ACK | PSH, 4096, memoryview(big), 64_000)[0]
    tso = vnet_hdr.pack(vnet_hdr.NEEDS_CSUM, vnet_hdr.GSO_TCPV4, 54, 1460, 34, 16) + frame
    s = parse_frame(tso, vnet=True)
    assert isinstance(s, Segment) and len(s.payload) == len(big)
    g.m.segment_from_guest(s, g.now)
    assert g.host_bytes() == big
