"""The per-loop read budget (:mod:`netstack.net.fairshare`): the policy on its own, against
a naive model, as the tap's read loop uses it (two taps over unix datagram socketpairs on
one manual-clock loop: a flooding one and a quiet one) and as the vhost-user transmit pass
uses it (the test front end's guest filling its transmit ring).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import drivers.vhost_user as vu
from drivers.tap.client import RX_BATCH, TapClient, make_client
from drivers.vhost_user.client import TX_QUANTUM
from drivers.vhost_user.device import TX_BUDGET
from netstack.daemon import Netstack
from netstack.net import fairshare
from netstack.net.fairshare import FULL, QUANTUM, WINDOW, FairShare, for_loop
from netstack.qapi import parse_chardev_cli, parse_netdev_cli
from tests.kit.clock import running
from tests.kit.polling import until
from tests.kit.vhost_user import GuestSetup, SocketFrontend
from tests.support import Recorder, frame

LOG = logging.getLogger("test")


def test_a_port_alone_gets_the_full_budget_whatever_it_does() -> None:
    share = FairShare()
    a = share.port()
    for t in range(100):
        assert share.budget(a, t * 1e-4) == FULL == 50
        share.active(a, t * 1e-4)


def test_another_ports_work_shrinks_the_budget_for_the_window() -> None:
    share = FairShare()
    a, b = share.port(), share.port()
    share.active(a, 10.0)
    share.active(b, 10.0)
    assert share.budget(a, 10.0) == QUANTUM == 8
    assert share.budget(b, 10.0) == QUANTUM
    share.active(a, 10.001)  # a keeps working; b's work still counts for a
    assert share.budget(a, 10.0 + WINDOW / 2) == QUANTUM
    assert share.budget(a, 10.0 + WINDOW * 1.01) == FULL  # b quiet for a whole window
    assert share.budget(b, 10.001 + WINDOW / 2) == QUANTUM  # a worked more recently
    assert share.budget(b, 10.001 + WINDOW * 1.01) == FULL


def test_a_new_port_waiting_does_not_shrink_anyone() -> None:
    share = FairShare()
    a = share.port()
    share.port()  # registered, never active
    share.active(a, 1.0)
    assert share.budget(a, 1.0) == FULL


def test_tokens_are_distinct_and_never_zero() -> None:
    share = FairShare()
    tokens = [share.port() for _ in range(100)]
    assert len(set(tokens)) == 100 and 0 not in tokens


@pytest.mark.parametrize(("full", "quantum"), [(8, 0), (8, 9), (0, 0)])
def test_budgets_must_be_positive_and_ordered(full: int, quantum: int) -> None:
    with pytest.raises(ValueError, match="quantum"):
        FairShare(full=full, quantum=quantum)


@given(
    st.lists(
        st.tuples(st.integers(1, 4), st.integers(0, 30), st.booleans()), min_size=1, max_size=60
    )
)
def test_matches_a_model_that_remembers_every_port(events: list[tuple[int, int, bool]]) -> None:
    """O(1) state answers like a table of every port's latest work."""
    share = FairShare(full=50, quantum=8, window=0.01)
    ports = {i: share.port() for i in range(1, 5)}
    last: dict[int, float] = {}
    now = 0.0
    for who, step, works in events:
        now += step * 1e-3
        others = [t for p, t in last.items() if p != who]
        expected = 8 if others and now - max(others) < 0.01 else 50
        assert share.budget(ports[who], now) == expected
        if works:
            share.active(ports[who], now)
            last[who] = now


async def test_one_share_per_loop() -> None:
    loop = asyncio.get_running_loop()
    assert for_loop(loop) is for_loop(loop)
    other = asyncio.new_event_loop()
    try:
        assert for_loop(other) is not for_loop(loop)
    finally:
        other.close()


class BatchRecorder(Recorder):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.batches: list[int] = []

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        self.batches.append(len(frames))
        return super().receive(frames, vnet)


def tap_on(sock: socket.socket, name: str) -> TapClient:
    fd = sock.detach()
    os.set_blocking(fd, False)
    c = make_client(name, fd, asyncio.get_running_loop(), LOG, vnet_hdr_len=0)
    c.start()
    return c


@pytest.mark.manual_clock
async def test_a_flooding_tap_takes_a_quantum_while_another_tap_has_work() -> None:
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2)]
    for _ours, theirs in pairs:
        theirs.setblocking(False)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    flood_tap, quiet_tap = tap_on(pairs[0][0], "flood"), tap_on(pairs[1][0], "quiet")
    flood_rx, quiet_rx = BatchRecorder("f"), BatchRecorder("q")
    flood_tap.connect(flood_rx)
    quiet_tap.connect(quiet_rx)
    flood, quiet = pairs[0][1], pairs[1][1]
    try:
        # alone: QEMU's 50 per wake-up
        for i in range(120):
            flood.send(frame(i, 60))
        await until(lambda: len(flood_rx.got) == 120)
        assert max(flood_rx.batches) == RX_BATCH == fairshare.FULL
        # the quiet tap has work now: from the flooder's next wake-up on, a quantum each
        quiet.send(frame(999, 60))
        await until(lambda: len(quiet_rx.got) == 1)
        flood_rx.batches.clear()
        for i in range(64):
            flood.send(frame(i, 60))
        await until(lambda: len(flood_rx.got) == 184)
        assert flood_rx.batches and max(flood_rx.batches) == fairshare.QUANTUM
        # a whole window later without the quiet tap: the full budget again
        await running().advance(fairshare.WINDOW * 2)
        flood_rx.batches.clear()
        for i in range(100):
            flood.send(frame(i, 60))
        await until(lambda: len(flood_rx.got) == 284)
        assert max(flood_rx.batches) == fairshare.FULL
    finally:
        flood_tap.cleanup()
        quiet_tap.cleanup()
        for _ours, theirs in pairs:
            theirs.close()


def test_a_port_may_name_its_own_full_budget() -> None:
    share = FairShare()
    ring, tap = share.port(), share.port()
    assert share.budget(ring, 1.0, 256) == 256
    share.active(tap, 1.0)
    assert share.budget(ring, 1.0, 256) == QUANTUM
    assert share.budget(ring, 1.0, 256, 64) == 64  # and its own quantum


async def test_a_vhost_user_ring_passes_its_quantum_while_another_port_has_work(
    tmp_path: Path,
) -> None:
    ns = Netstack({"vhost-user": vu.SPEC}, runtime_dir=tmp_path)
    path = str(tmp_path / "v.sock")
    guest = GuestSetup(num=256)
    try:
        await ns.chardev_add(
            parse_chardev_cli(f"socket,id=cv,path={path},server=on,wait=off"), from_cli=True
        )
        (nc,) = await ns.netdev_add(parse_netdev_cli("vhost-user,id=v,chardev=cv"))
        rec = BatchRecorder("r")
        nc.connect(rec)
        fe = await SocketFrontend.connect(path)
        await fe.start(guest)
        share = for_loop(asyncio.get_running_loop())
        share.window = 3600.0  # what counts as contention does not expire during the test
        frames = [frame(i, 60, dst=b"\x02" * 6) for i in range(60 + 160)]
        guest.send_frames(frames[:60])
        guest.kick(1)
        await until(lambda: len(rec.got) == 60)
        assert rec.batches == [60]  # alone: one pass takes all (up to TX_BUDGET)
        assert TX_BUDGET > 60
        share.active(share.port(), asyncio.get_running_loop().time())  # another port works
        rec.batches.clear()
        guest.send_frames(frames[60:])
        guest.kick(1)
        await until(lambda: len(rec.got) == 220)
        assert rec.got == frames
        assert max(rec.batches) == TX_QUANTUM < TX_BUDGET and sum(rec.batches) == 160
        fe.close()
    finally:
        await ns.close()
        guest.close()
