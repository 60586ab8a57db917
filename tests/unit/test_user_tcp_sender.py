"""The send side of a guest TCP connection on its own: :class:`Sender` driven through its
interface (output, on_ack, on_timeout, on_persist) with a stand-in receive side, checking
what it puts on the link and the invariant ``snd_una <= snd_nxt <= snd_max``."""

from __future__ import annotations

from collections import Counter

from drivers.user.tcp import Segment, TcpConfig, ethernet_header, parse_frame
from drivers.user.tcp.builder import FrameBuilder
from drivers.user.tcp.config import TcpCounter
from drivers.user.tcp.sender import M32, Sender
from netstack.proto.tcp import ACK, FIN

LOCAL, GUEST = bytes([10, 0, 2, 2]), bytes([10, 0, 2, 15])
ISS = 0xFFFFFF00  # the stream wraps the 32-bit space


class Rx:
    """The receive side as the sender sees it."""

    def __init__(self) -> None:
        self.rcv_nxt = 5000
        self.acks_sent = 0

    def window(self, ack_sent: bool = False) -> int:
        self.acks_sent += ack_sent
        return 0x4000


def make(**cfg: int) -> tuple[Sender, Rx, list[bytes]]:
    rx = Rx()
    out: list[bytes] = []
    stats: Counter[TcpCounter] = Counter()
    b = FrameBuilder(LOCAL, GUEST, 80, 40000, l2=ethernet_header(bytes(6), bytes(6), False))
    tx = Sender(rx, b, out, stats, ISS, 0.0, config=TcpConfig(**cfg), v6=False)  # type: ignore[arg-type]
    tx.negotiate(1000, None, False, 1460)
    tx.snd_nxt = tx.snd_max = ISS + 1  # our SYN went out
    tx.syn_acked(ISS + 1, 0.01)
    tx.handshake_window(20_000, 1, ISS + 1)
    return tx, rx, out


def segs(out: list[bytes]) -> list[Segment]:
    got = [parse_frame(f) for f in out]
    out.clear()
    assert all(isinstance(s, Segment) for s in got)
    return [s for s in got if isinstance(s, Segment)]


def ack(n: int, wnd: int = 20_000) -> Segment:
    return Segment(GUEST, LOCAL, 40000, 80, 1, (ISS + 1 + n) & M32, ACK, wnd, b"", b"")


def ordered(tx: Sender) -> bool:
    return tx.snd_una <= tx.snd_nxt <= tx.snd_max


def test_output_segments_within_the_congestion_window() -> None:
    tx, rx, out = make(initial_window=4)
    tx.fromhost.buf += bytes(range(256)) * 40  # 10240 bytes
    tx.output(0.0)
    sent = segs(out)
    assert [len(s.payload) for s in sent] == [1000] * 4  # cwnd = 4 segments
    assert sent[0].seq == (ISS + 1) & M32 and sent[0].ack == 5000 and sent[0].wnd == 0x4000
    assert b"".join(bytes(s.payload) for s in sent) == bytes(tx.fromhost.buf[:4000])
    assert rx.acks_sent and tx.rtx_at is not None and ordered(tx)
    assert tx.snd_max == ISS + 1 + 4000


def test_acks_move_snd_una_and_report_our_fin() -> None:
    tx, _rx, out = make(initial_window=10)
    tx.fromhost.buf += b"x" * 3000
    tx.fin_queued = True
    tx.output(0.0)
    sent = segs(out)
    assert sent[-1].flags & FIN and tx.snd_max == ISS + 1 + 3001
    assert tx.on_ack(ack(4000), 1, 0, 0.1) == "unsent"  # beyond what we sent
    assert tx.snd_una == ISS + 1 and tx.stats["ack-unsent"] == 1
    assert tx.on_ack(ack(1000), 1, 0, 0.1) == "ok"
    assert tx.snd_una == tx.fromhost.base == ISS + 1001 and ordered(tx)
    assert tx.on_ack(ack(3001), 1, 0, 0.2) == "fin-acked"
    assert tx.snd_una == tx.snd_max and tx.rtx_at is None and not out


def test_timeout_goes_back_to_snd_una() -> None:
    tx, _rx, out = make(initial_window=4)
    tx.fromhost.buf += b"y" * 4000
    tx.output(0.0)
    segs(out)
    tx.on_timeout(1.0, False, True)
    again = segs(out)
    assert again[0].seq == (ISS + 1) & M32 and tx.cwnd == 1000 and tx.retries == 1
    assert tx.snd_nxt == ISS + 1001 and tx.snd_max == ISS + 4001 and ordered(tx)
    assert tx.stats["timeouts"] == 1 and tx.rtx_at is not None


def test_zero_window_probes_then_gives_up() -> None:
    tx, _rx, out = make(max_retries=2)
    tx.handshake_window(0, 1, ISS + 1)
    tx.fromhost.buf += b"z" * 100
    tx.output(0.0)
    assert not out and tx.persist_at is not None
    probes = 0
    while tx.persist_at is not None and probes < 10:
        if not tx.on_persist(tx.persist_at, True):
            break
        (probe,) = segs(out)
        assert probe.seq == ISS & M32 and not probe.payload  # snd_una - 1
        probes += 1
    assert probes == 2 and tx.stats["window-probes"] == 2 and tx.snd_nxt == tx.snd_una
