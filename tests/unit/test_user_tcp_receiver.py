"""The receive side of a guest TCP connection on its own: :class:`Receiver` placing guest
bytes in order and out of order, reporting the guest's FIN, and the window it advertises."""

from __future__ import annotations

from collections import Counter

from drivers.user.tcp import TcpConfig
from drivers.user.tcp.config import TcpCounter
from drivers.user.tcp.receiver import ACK_NOW, FIN_IN, Receiver


def make(**cfg: int) -> Receiver:
    stats: Counter[TcpCounter] = Counter()
    rx = Receiver(TcpConfig(**cfg), stats, False)  # type: ignore[arg-type]
    rx.rcv_nxt = rx.rcv_adv = rx.rcv_acked = 1001  # the guest's SYN was 1000
    rx.window(True)
    return rx


def test_in_order_out_of_order_and_fin() -> None:
    rx = make(rcvbuf=65536)
    assert rx.take(1001, b"a" * 100, False) == 0 and rx.ack_pending == 100
    assert rx.take(1001, b"a" * 100, False) == ACK_NOW and rx.stats["duplicate"] == 1
    assert rx.take(1201, b"c" * 100, True) == ACK_NOW  # beyond a hole: held
    assert rx.rcv_nxt == 1101 and rx.stats["out-of-order"] == 1
    assert rx.take(1101, b"b" * 100, False) == FIN_IN  # the hole filled, the FIN follows
    assert rx.rcv_nxt == 1302 and rx.fin_rcvd
    assert b"".join(bytes(c) for c in rx.tohost.head(8)) == b"a" * 100 + b"b" * 100 + b"c" * 100


def test_window_never_retracts_and_acks_clear_the_debt() -> None:
    rx = make(rcvbuf=8192)
    first = rx.window()
    assert first == 8192 and rx.rcv_adv == 1001 + 8192
    assert rx.take(1001, b"x" * 4000, False) == 0
    assert rx.window(True) == 8192 - 4000 and rx.rcv_adv == 1001 + 8192
    assert rx.ack_pending == 0 and rx.rcv_acked == rx.rcv_nxt == 5001
    assert rx.take(5001, b"y" * 5000, False) == 0  # clipped to the advertised edge
    assert rx.stats["beyond-window"] == 1 and rx.rcv_nxt == 1001 + 8192
    assert rx.window() == 0 and rx.rcv_adv == 1001 + 8192
