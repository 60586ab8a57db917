"""Lending a guest TCP connection to the fast path and reclaiming it (sans-IO).

:func:`drivers.user.tcp.lending.lendable` on an established machine and on each state the
fast path must not take (one condition at a time); a lend followed by a reclaim leaves
the machine as it was, for both implementations; guest bytes the host socket did not
take reach the machine's host queue on reclaim; window updates counted while lent reach
its counters; the splicer's ``Splice.m`` reclaims on access.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from drivers.user.tcp import Event, TcpConfig, TcpEndpoint, ethernet_header, fastflow
from drivers.user.tcp.config import State
from drivers.user.tcp.lending import flow_key, lend, lendable, reclaim, template
from netstack import fastpath
from tests.property.tcpfast_rig import Sink, cache, established, machine_state

_compiled = fastpath.load("drivers.user.tcp._tcpfast")
IMPLS = [pytest.param(fastflow, id="python")]
if _compiled is not None:
    IMPLS.append(pytest.param(_compiled, id="compiled", marks=pytest.mark.compiled))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_an_established_connection_is_lendable() -> None:
    assert lendable(established())


def _set(path: str, value: Any) -> Callable[[TcpEndpoint], None]:
    def change(m: TcpEndpoint) -> None:
        obj: Any = m
        *parts, last = path.split(".")
        for part in parts:
            obj = getattr(obj, part)
        setattr(obj, last, value)

    return change


def _tohost(m: TcpEndpoint) -> None:
    m.rx.tohost.append(memoryview(b"held"))


def _ooo(m: TcpEndpoint) -> None:
    m.rx.tohost.add_ooo(m.rx.rcv_nxt + 10, memoryview(b"later"), False)


def _unsent(m: TcpEndpoint) -> None:
    m.tx.fromhost.buf += b"unsent"


def _in_flight_gone_back(m: TcpEndpoint) -> None:
    m.tx.fromhost.buf += b"sent"
    m.tx.snd_max += 4  # sent, but snd_nxt pulled back (go-back-N)


NOT_LENDABLE: dict[str, Callable[[TcpEndpoint], None]] = {
    "syn-rcvd": _set("state", State.SYN_RCVD),
    "close-wait": _set("state", State.CLOSE_WAIT),
    "fin-wait-1": _set("state", State.FIN_WAIT_1),
    "done": _set("done", True),
    "events pending": lambda m: m.events.append((Event.CLOSED, 0)),
    "host shut": _set("host_shut_wr", True),
    "fin queued": _set("tx.fin_queued", True),
    "fin received": _set("rx.fin_rcvd", True),
    "bytes for the host": _tohost,
    "out of order": _ooo,
    "out-of-order fin": _set("rx.tohost.ooo_fin", 1),
    "sack scoreboard": lambda m: m.tx.fromhost.sacked.append([1, 2]),
    "recovery": _set("tx.in_recovery", True),
    "dupacks": _set("tx.dupacks", 1),
    "retries": _set("tx.retries", 1),
    "probes": _set("tx.probes", 1),
    "persist": _set("tx.persist_at", 5.0),
    "unsent data": _unsent,
    "go-back-n": _in_flight_gone_back,
    "time-wait timer": _set("_tw_at", 1.0),
    "connect timer": _set("_connect_at", 1.0),
}


@pytest.mark.parametrize("name", sorted(NOT_LENDABLE))
def test_each_condition_keeps_the_connection_on_the_machine(name: str) -> None:
    m = established()
    NOT_LENDABLE[name](m)
    assert not lendable(m)


def test_other_shapes_are_not_lendable() -> None:
    assert not lendable(established(cfg=TcpConfig(vnet=False)))
    m = TcpEndpoint.accept(
        established().syn,  # type: ignore[arg-type]
        0.0, config=TcpConfig(vnet=True), l2=b"",
    )  # fmt: skip
    assert not lendable(m)


@pytest.mark.parametrize("impl", IMPLS)
def test_lend_then_reclaim_leaves_the_machine_as_it_was(
    impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    m = established()
    m.host_data(b"x" * 3000, 0.002)  # in flight: RTT timing and the timer armed
    m.out.clear()
    before = machine_state(m)
    sink = Sink()
    c = cache(impl, sink)
    f = c.flow(flow_key(m), pair[0], template(m), m.tx.fromhost.buf, lambda: None, lambda: None)
    lend(m, f, c)
    assert f.lent and c.flows[f.key] is f
    assert f.rtt_seq == m.tx._rtt_seq and f.rtx_at == m.tx.rtx_at
    reclaim(m, f, c)
    assert not f.lent and f.key not in c.flows
    assert machine_state(m) == before


@pytest.mark.parametrize("impl", IMPLS)
def test_reclaim_moves_untaken_guest_bytes_and_counts(
    impl: ModuleType, pair: tuple[socket.socket, socket.socket]
) -> None:
    m = established()
    c = cache(impl, Sink())
    f = c.flow(flow_key(m), pair[0], template(m), m.tx.fromhost.buf, lambda: None, lambda: None)
    lend(m, f, c)
    f.leftover = b"not written"
    f.window_updates = 2
    reclaim(m, f, c)
    assert b"".join(m.rx.tohost.chunks) == b"not written"
    assert m.rx.tohost.size == 11
    assert m.stats["window-updates"] == 2
    assert f.leftover == b"" and f.window_updates == 0


def test_the_template_and_key_are_the_builders() -> None:
    m = established()
    assert len(template(m)) == 66
    assert template(m)[12:26] == ethernet_header(
        m.b.l2[:6], m.b.l2[6:12], False
    )  # guest MAC, gateway MAC
    assert flow_key(m) == m.b.dst + m.b.dport.to_bytes(2, "big") + m.b.src + (
        m.b.sport.to_bytes(2, "big")
    )
    with pytest.raises(ValueError):
        template(TcpEndpoint.accept(m.syn, 0.0, config=TcpConfig(vnet=False)))  # type: ignore[arg-type]
