"""Scripted worlds for comparing the compiled forwarding core with the Python reference.

A world (:class:`World`) is a repeater hub with three clients, a learning switch with two
NIC-class clients (rx filters apply) and a pair of directly peered clients. A script is a
list of operations (tuples, see :func:`run`): sends (with and without completion
callbacks, vnet headers, as lists or tuples), link changes on clients and hub ports,
receivers that take only a prefix or raise, re-entrant receivers (a frame ending in
:data:`REENTER` makes its receiver send a reply from inside ``receive``), queue flushes,
purges and bounds, deleted clients, NIC rx filters and net filters. :func:`run` plays a
script on the path given (``netstack.net._fastnet`` or None for Python) and returns
everything observable: each receive's frames, each send's result or exception, each
completion callback, every counter, queue depth and drop count. Used by
tests/property/test_fastcore_differential.py (hypothesis) and tests/fuzz/fuzz_fastcore.py
(atheris).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

from netstack.net import fastcore
from netstack.net.client import NetClient
from netstack.net.filter import Direction, NetFilter
from netstack.net.hub import Hub
from netstack.net.rxfilter import RxFilter

MAC_A = bytes.fromhex("525400000001")
MAC_B = bytes.fromhex("525400000002")
BCAST = b"\xff" * 6
REENTER = 0xEE  # a frame whose last byte is this makes the receiver send a reply
#: Clients of a world (senders), and clients plus hub ports (link and queue targets).
N_CLIENTS = 7
N_TARGETS = 12


class Probe(NetClient):
    """A receiver that records, takes a scripted prefix, may raise or send from receive."""

    type = "socket"

    def __init__(self, name: str, log: list[Any]) -> None:
        super().__init__(name)
        self.log = log
        self.take: int | None = None
        self.fail = False

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        self.log.append(("rx", self.name, list(frames), vnet))
        if self.fail:
            raise ValueError(self.name)
        taken = len(frames) if self.take is None else min(self.take, len(frames))
        for f in frames[:taken]:
            if f and f[-1] == REENTER:
                self.log.append(("reply", self.name, self.send([f[:-1] + b"\x01"])))
        return taken


class Vnic(Probe):
    """A NIC-class receiver (its rx filter applies) that takes vnet headers."""

    type = "nic"
    accepts_vnet = True


class DropFilter(NetFilter):
    """Drops frames whose last byte is odd; records what it saw."""

    def __init__(self, fid: str, netdev: NetClient, log: list[Any], queue: str) -> None:
        super().__init__(fid, netdev, queue=queue)  # type: ignore[arg-type]
        self.log = log

    def receive(
        self, sender: NetClient, direction: Direction, frames: Sequence[bytes], vnet: bool
    ) -> Sequence[bytes]:
        self.log.append(("filter", self.id, sender.name, direction, len(frames)))
        return [f for f in frames if not f or f[-1] % 2 == 0]


class World:
    def __init__(self) -> None:
        self.log: list[Any] = []
        self.hub = Hub(0)
        self.switch = Hub(1)
        self.switch.set_learning(True)
        self.clients: list[Probe] = []
        for i in range(3):
            c = Probe(f"h{i}", self.log)
            self.hub.add_port().connect(c)
            self.clients.append(c)
        for i in range(2):
            c = Vnic(f"s{i}", self.log)
            self.switch.add_port().connect(c)
            self.clients.append(c)
        a, b = Probe("pa", self.log), Probe("pb", self.log)
        a.connect(b)
        self.clients += [a, b]
        self.ports = list(self.hub.ports) + list(self.switch.ports)
        self.nics = [c for c in self.clients if isinstance(c, Vnic)]

    def cb(self, tag: int) -> Any:
        return lambda n: self.log.append(("cb", tag, n))

    def snapshot(self) -> list[Any]:
        out: list[Any] = []
        for c in self.clients + self.ports:
            out.append(
                (
                    c.name,
                    c.stats.as_dict(),
                    len(c.incoming),
                    c.incoming.dropped,
                    c.receive_disabled,
                    c.link_down,
                )
            )
        out.append(self.hub.counters.as_dict())
        out.append(self.switch.counters.as_dict())
        return out


def run(mod: ModuleType | None, script: list[tuple[Any, ...]]) -> list[Any]:
    with fastcore.use(mod):
        w = World()
        if mod is not None:
            assert all(type(c.stats) is mod.Counters for c in w.clients)
            assert NetClient.send is not fastcore._reference_send
        else:
            assert NetClient.send is fastcore._reference_send
        nfilters = 0
        for step, op in enumerate(script):
            kind = op[0]
            if kind == "send":
                _, who, frames, vnet, with_cb = op
                try:
                    r = w.clients[who].send(frames, vnet, w.cb(step) if with_cb else None)
                    w.log.append(("sent", step, r))
                except ValueError as exc:
                    w.log.append(("raised", step, str(exc)))
            elif kind == "link":
                target = (w.clients + w.ports)[op[1]]
                target.link_down = op[2]
                target.link_status_changed()
            elif kind == "take":
                w.clients[op[1]].take = op[2]
            elif kind == "fail":
                w.clients[op[1]].fail = op[2]
            elif kind == "flush":
                try:
                    w.clients[op[1]].flush_queued()
                except ValueError as exc:
                    w.log.append(("raised", step, str(exc)))
            elif kind == "purge":
                w.log.append(("purged", step, w.clients[op[1]].purge_queued()))
            elif kind == "maxlen":
                (w.clients + w.ports)[op[1]].incoming.maxlen = op[2]
            elif kind == "delete":
                w.clients[op[1]].deleted = True
            elif kind == "filter":
                nfilters += 1
                c = w.clients[op[1]]
                c.filters.append(DropFilter(f"f{nfilters}", c, w.log, op[2]))
            elif kind == "unfilter":
                if w.clients[op[1]].filters:
                    w.clients[op[1]].filters.pop(0)
            elif kind == "rxfilter":
                nic = w.nics[op[1]]
                if op[2]:
                    rx = RxFilter(MAC_A if op[1] == 0 else MAC_B)
                    nic.rx_filter = rx
                else:
                    nic.rx_filter = None
        return [w.log, w.snapshot()]
