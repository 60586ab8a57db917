"""The user netdev's endpoint contract (:mod:`drivers.user.endpoint`): the outbox, the
deadline heap with lazy invalidation, and the one timer per netdev; and that the netdev
keeps one loop timer however many TCP connections it has."""

from __future__ import annotations

import asyncio
import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

import drivers
from drivers.user.client import UserNetClient
from drivers.user.endpoint import Deadlines, NetdevTimer, Outbox
from drivers.user.options import UserConfig
from drivers.user.v4.router import Gateway
from netstack import qapi
from netstack.daemon import Netstack
from netstack.net.nic import NicClient
from tests.kit.polling import until


class Machine:
    """A timed machine whose deadline the test moves."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.when: float | None = None
        self.fired: list[float] = []

    def next_deadline(self) -> float | None:
        return self.when

    def on_deadline(self, now: float) -> None:
        if self.when is not None and now >= self.when:
            self.fired.append(now)
            self.when = None


def test_outbox_drains_in_order_and_keeps_its_lists() -> None:
    box = Outbox()
    frames, actions = box.frames, box.actions
    assert not box
    box.frames.extend([b"a", b"b"])
    box.vnet_frames.append(b"v")
    box.actions.append("x")
    box.events.append(("E", {"k": 1}))
    assert box
    assert box.drain() == ([b"a", b"b"], [b"v"], ["x"], [("E", {"k": 1})])
    assert not box and box.frames is frames and box.actions is actions  # never swapped
    assert box.drain() == ([], [], [], [])


def test_deadline_moved_later_costs_no_heap_entry_and_fires_late() -> None:
    armed: list[float] = []
    d = Deadlines(armed.append)
    m = Machine("m")
    m.when = 1.0
    d.changed(m)
    assert armed == [1.0] and d.earliest() == 1.0
    m.when = 5.0
    d.changed(m)  # later: recorded, the old entry stays
    assert armed == [1.0] and len(d._heap) == 1
    d.run(1.0)  # the stale entry is pushed again at 5.0, nothing fires
    assert m.fired == [] and d.earliest() == 5.0
    d.run(5.0)
    assert m.fired == [5.0] and d.earliest() is None and len(d) == 0


def test_deadline_moved_earlier_rearms_and_drop_forgets() -> None:
    armed: list[float] = []
    d = Deadlines(armed.append)
    a, b = Machine("a"), Machine("b")
    a.when, b.when = 10.0, 20.0
    d.changed(a)
    d.changed(b)
    b.when = 2.0
    d.changed(b)
    assert armed == [10.0, 2.0]
    d.drop(b)
    d.run(30.0)
    assert b.fired == [] and a.fired == [30.0]


def test_deadline_heap_stays_bounded_under_churn() -> None:
    d = Deadlines()
    machines = [Machine(str(i)) for i in range(10)]
    for step in range(5000):
        m = machines[step % 10]
        m.when = 1000.0 - step * 0.1  # always earlier: a push each time
        d.changed(m)
    assert len(d._heap) <= 4 * len(d) + 64


def test_request_response_pattern_pushes_once_per_timeout() -> None:
    """A connection arms its retransmission timer with every answer and clears it with
    every ACK: the heap keeps one entry, pushed again only when it surfaces."""
    armed: list[float] = []
    d = Deadlines(armed.append)
    m = Machine("tcp")
    now = 0.0
    for _ in range(1000):
        m.when = now + 0.2  # the answer went out: retransmission timer
        d.changed(m)
        m.when = now + 7200.0  # its ACK came: idle timeout only
        d.changed(m)
        now += 0.0001
        d.run(now)
    assert len(d._heap) == 1 and len(armed) == 1 and m.fired == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.one_of(st.none(), st.floats(0, 100)), st.floats(0, 5)),
        max_size=60,
    )
)
def test_deadlines_match_a_reference_model(ops: list[tuple[int, float | None, float]]) -> None:
    """Whatever the moves, a machine fires exactly when its current deadline is due."""
    d = Deadlines()
    machines = [Machine(str(i)) for i in range(6)]
    now = 0.0
    for index, when, step in ops:
        m = machines[index]
        m.when = None if when is None else now + when
        d.changed(m)
        now += step
        due = [x for x in machines if x.when is not None and x.when <= now]
        before = {x.name: len(x.fired) for x in machines}
        d.run(now)
        for x in machines:
            assert len(x.fired) == before[x.name] + (1 if x in due else 0)
        earliest = d.earliest()
        pending = [x.when for x in machines if x.when is not None]
        assert (earliest is None) == (not pending)
        if pending:
            assert earliest is not None and earliest <= min(pending)


def test_gateway_pushes_only_the_parts_it_touched() -> None:
    """A guest datagram opens a UDP flow (one push: the NAT's expiry); a DNS answer on
    another flow moves the NAT's deadline earlier (pushed again); host datagrams on
    other ports leave the heap alone."""
    g = Gateway(UserConfig())
    guest, remote = socket.inet_aton("10.0.2.15"), socket.inet_aton("192.0.2.1")
    g.arp[guest] = bytes.fromhex("525400123456")  # no ARP hold for the answers
    g.udp.outbound(guest, 1000, remote, 9, b"x", 64, 0.0)
    g.deadlines.changed(g.parts[4])
    assert g.deadlines.earliest() == 240.0
    g.udp.outbound(guest, 1001, remote, 53, b"q", 64, 100.0)
    g.udp_from_host((guest, 1000), "192.0.2.1", 9, b"r", 150.0)
    assert g.deadlines.earliest() == 240.0  # later moves are not pushed
    g.udp_from_host((guest, 1001), "192.0.2.1", 53, b"a", 150.0)
    assert g.deadlines.earliest() == 160.0  # the DNS flow's 10 s
    g.deadlines.run(160.0)
    assert (guest, 1001) not in g.udp.flows and (guest, 1000) in g.udp.flows


async def test_netdev_timer_fires_once_for_the_earliest() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    m = Machine("m")

    def fire() -> None:
        timer.deadlines.run(loop.time())
        fired.append(loop.time())
        timer.rearm()

    timer = NetdevTimer(loop, fire)
    m.when = loop.time() + 0.05
    timer.deadlines.changed(m)
    await until(lambda: m.fired, timeout=5)
    assert len(fired) == 1
    timer.close()


async def test_one_loop_timer_for_many_tcp_connections() -> None:
    """Twenty guest connections: one deadline entry each, one ``call_at`` handle."""
    ns = Netstack(drivers.registry())
    await ns.netdev_add(qapi.parse_netdev_cli("user,id=u0"))
    await ns.netdev_add(qapi.parse_netdev_cli("hubport,id=hu,hubid=0,netdev=u0"))
    nic = NicClient("nic0", bytes.fromhex("525400123456"))
    ns.add_client(nic)
    ns.hub(0).add_port("hn").connect(nic)
    client = ns.find_netdev("u0")
    assert isinstance(client, UserNetClient)
    server = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = server.getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        before = len(loop._scheduled)  # type: ignore[attr-defined]
        frames = [
            bytes(
                Ether(dst="52:55:0a:00:02:02", src="52:54:00:12:34:56")
                / IP(src="10.0.2.15", dst="10.0.2.2")
                / TCP(sport=41000 + i, dport=port, seq=1000, flags="S", window=65535)
            )
            for i in range(20)
        ]
        nic.send(frames)
        await until(lambda: len(client.tcp.flows) == 20, timeout=10)
        scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
        assert scheduled - before <= 1
        assert len(client.deadlines) >= 20
    finally:
        server.close()
        await ns.close()
