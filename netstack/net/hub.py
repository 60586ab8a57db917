"""Hubs: N-port repeaters joining net clients (QEMU's ``net/hub.c``), and learning switches.

A hub is a list of ports; each port is a net client of type ``hubport`` (model ``hub``)
whose peer is whatever the port connects. A frame received by one port is sent out of
every other port (each applying its own link state as a sender); the source port is
skipped and the hub reports the whole batch as taken even when some ports drop it.
A port can receive when any other port could send. New ports and hubs go to the head of
their lists, so listings are newest first, as QEMU prints them.

Beyond QEMU: a hub can be a *learning switch* (:meth:`Hub.set_learning`, selected with
``hubport,...,x-learning=on``). It keeps a MAC table (:mod:`netstack.net.fdb`): source
addresses are learned per port; a frame to a known unicast address goes out of that one
port only (dropped when that is its own source port, as a bridge filters it); broadcast,
multicast and unknown unicast are flooded to every other port. Split horizon: a port is
*isolated* (``x-isolated=on``, or by default when its peer is an overlay tunnel such as a
vxlan netdev), and a frame that entered through an isolated port never leaves through
another isolated port, so a full mesh of daemons joined by tunnels has no loops (the
Linux bridge's ``isolated`` port flag). A port's entries are flushed when its link (or
its peer's) goes down, when it is removed and when its peer netdev is deleted. NIC
rx filters are untouched: frames the switch delivers still pass the receiver's filter.

Counters (:class:`HubCounters`, both modes): frames in, deliveries out (so deliveries
per input frame can be read off), and for switches the unicast/flood split and drops.

Limits: one MAC table for all VLANs (shared learning: a station seen on two VLANs is
learned behind the port it spoke from last); no static entries; no spanning tree (split
horizon is what keeps a mesh of daemons loop-free).

Deviation from QEMU: adding a port flushes the queues of the ports that could not
forward before (a lone port's peer would otherwise wait until some receiver flushes; a
netdev that starts reading before its hub has a second port stalled there).

The repeater's fan-out (``Hub.forward`` without a MAC table, ``HubPort.receive`` and
``can_receive``) has a compiled twin in ``netstack/net/_fastnet.c`` (see
:mod:`netstack.net.fastcore`); the learning switch runs in Python on both paths.

Invariants: a switch never delivers a frame to its source port; every delivery list
keeps the input order of its frames; the repeater path is unchanged from QEMU's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from netstack.net import fastcore
from netstack.net.client import NetClient
from netstack.net.fdb import DEFAULT_AGEING, MacTable
from netstack.net.rxfilter import format_mac
from netstack.proto import vnet as vnet_hdr


class HubCounters:
    """Per-hub frame counters (monotonic)."""

    __slots__ = (
        "deliveries",
        "filtered",
        "flooded",
        "frames_in",
        "horizon",
        "malformed",
        "unicast",
    )

    def __init__(self) -> None:
        self.frames_in = 0
        self.deliveries = 0
        self.unicast = 0
        self.flooded = 0
        self.filtered = 0
        self.horizon = 0
        self.malformed = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by their QMP names, in that order."""
        return {
            "deliveries": self.deliveries,
            "filtered": self.filtered,
            "flooded": self.flooded,
            "frames-in": self.frames_in,
            "horizon": self.horizon,
            "malformed": self.malformed,
            "unicast": self.unicast,
        }


class Hub:
    """One hub and its ports (newest first); a repeater unless learning is set."""

    __slots__ = ("clock", "counters", "fdb", "id", "ports")

    def __init__(self, hub_id: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.id = hub_id
        self.ports: list[HubPort] = []
        #: The MAC table of a learning switch; None for a repeater (QEMU's hub).
        self.fdb: MacTable[HubPort] | None = None
        self.clock = clock
        self.counters: HubCounters = fastcore.new_hub_counters()

    def __repr__(self) -> str:
        return f"<Hub {self.id} ports={[p.name for p in self.ports]}>"

    @property
    def learning(self) -> bool:
        return self.fdb is not None

    def set_learning(self, on: bool, ageing: float = DEFAULT_AGEING) -> None:
        """Make this hub a learning switch (``on``) or a repeater; the table starts empty."""
        self.fdb = MacTable(ageing) if on else None

    def add_port(self, name: str | None = None) -> HubPort:
        if name is None:
            name = f"hub{self.id}port{len(self.ports)}"
        port = HubPort(name, self)
        self.ports.insert(0, port)
        # A port alone on its hub cannot receive, so what its peer sent meanwhile waits
        # in its queue (and the peer may have paused); the new port can take it now.
        for other in self.ports[1:]:
            if other.incoming.count:
                other.flush_queued()
        return port

    def remove_port(self, port: HubPort) -> None:
        if port in self.ports:
            self.ports.remove(port)
        self.forget(port)

    def forget(self, port: HubPort) -> int:
        """Flush the MAC entries learned behind ``port``; returns how many."""
        if self.fdb is None:
            return 0
        return self.fdb.flush(lambda dest: dest is port)

    def forward(self, source: HubPort, frames: Sequence[bytes], vnet: bool) -> int:
        if self.fdb is not None:
            self._switch(source, frames, vnet, self.fdb)
            return len(frames)
        counters = self.counters
        counters.frames_in += len(frames)
        for port in self.ports:
            if port is not source:
                port.send(frames, vnet)
                counters.deliveries += len(frames)
        return len(frames)

    def _switch(
        self, source: HubPort, frames: Sequence[bytes], vnet: bool, fdb: MacTable[HubPort]
    ) -> None:
        counters = self.counters
        counters.frames_in += len(frames)
        now = self.clock()
        fdb.maybe_sweep(now)
        off = vnet_hdr.HDR_LEN if vnet else 0
        end, need = off + 12, off + 14
        isolated = source.isolated
        out: dict[HubPort, list[bytes]] = {}
        learn, lookup = fdb.learn, fdb.lookup
        floods: list[bytes] = []
        # Consecutive frames of a batch mostly share their addresses (one flow): the
        # decision is made once per run of equal (dst, src) and reused.
        prev_key = b""
        bucket = floods
        filtered: list[bytes] = []  # to their own port: dropped, as a bridge filters them
        horizon: list[bytes] = []  # overlay to overlay: dropped (split horizon)
        malformed = 0
        for f in frames:
            if len(f) < need:
                malformed += 1
                continue
            key = f[off:end]
            if key != prev_key:
                prev_key = key
                learn(key[6:], source, now)
                if key[0] & 1:
                    bucket = floods
                else:
                    port = lookup(key[:6], now)
                    if port is None:
                        bucket = floods
                    elif port is source:
                        bucket = filtered
                    elif isolated and port.isolated:
                        bucket = horizon
                    else:
                        found = out.get(port)
                        if found is None:
                            found = out[port] = []
                        bucket = found
            bucket.append(f)
        counters.malformed += malformed
        counters.filtered += len(filtered)
        counters.horizon += len(horizon)
        counters.unicast += sum(map(len, out.values()))
        if floods:
            counters.flooded += len(floods)
            flood_to = [p for p in self.ports if p is not source and not (isolated and p.isolated)]
            for port in flood_to:
                batch = out.get(port)
                if not batch:
                    out[port] = floods
                else:  # keep input order for this port
                    order = {id(f): i for i, f in enumerate(frames)}
                    out[port] = sorted(batch + floods, key=lambda x: order[id(x)])
        for port, batch in out.items():
            if batch:
                counters.deliveries += len(batch)
                port.send(batch, vnet)

    def can_forward(self, source: HubPort) -> bool:
        return any(port is not source and port.can_send() for port in self.ports)

    def flush_from(self, source: HubPort) -> None:
        for port in self.ports:
            if port is not source:
                port.incoming.flush()

    # -- views -------------------------------------------------------------------------

    def fdb_rows(self) -> list[dict[str, Any]]:
        """The MAC table as ``query-hub-fdb`` rows (empty for a repeater)."""
        if self.fdb is None:
            return []
        rows: list[dict[str, Any]] = []
        for mac, port, age in self.fdb.items(self.clock()):
            row: dict[str, Any] = {
                "hubid": self.id,
                "mac": format_mac(mac),
                "port": port.name,
                "isolated": port.isolated,
                "age-ms": int((age or 0.0) * 1000),
            }
            if port.peer is not None:
                row["peer"] = port.peer.name
            rows.append(row)
        return rows

    def fdb_text(self) -> str:
        """HMP ``info fdb`` lines for this hub."""
        if self.fdb is None:
            return f"hub {self.id}: repeater\n"
        c = self.counters
        lines = [
            f"hub {self.id}: learning switch, ageing {self.fdb.ageing:g}s, "
            f"{len(self.fdb)} entries, frames-in={c.frames_in} deliveries={c.deliveries} "
            f"flooded={c.flooded}\n"
        ]
        for row in self.fdb_rows():
            peer = f" ({row['peer']})" if "peer" in row else ""
            flags = " isolated" if row["isolated"] else ""
            lines.append(
                f" {row['mac']} port {row['port']}{peer}{flags} age {row['age-ms'] / 1000:.1f}s\n"
            )
        return "".join(lines)


class HubPort(NetClient):
    """A port of a hub; its peer is the client plugged into it."""

    __slots__ = ("hub", "isolated_opt")

    type = "hubport"
    accepts_vnet = True
    count_bytes = False  # frames only: the clients on either side count the bytes

    def __init__(self, name: str, hub: Hub) -> None:
        super().__init__(name, model="hub")
        self.hub = hub
        #: Split horizon as configured; None follows the peer (tunnels are isolated).
        self.isolated_opt: bool | None = None

    @property
    def isolated(self) -> bool:
        """Whether frames from this port stay away from the other isolated ports."""
        if self.isolated_opt is not None:
            return self.isolated_opt
        return bool(getattr(self.peer, "overlay", False))

    @property
    def hub_id(self) -> int:
        return self.hub.id

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        return self.hub.forward(self, frames, vnet)

    def can_receive(self) -> bool:
        return self.hub.can_forward(self)

    def flush_siblings(self) -> None:
        self.hub.flush_from(self)

    def link_status_changed(self) -> None:
        peer = self.peer
        if self.link_down or (peer is not None and peer.link_down):
            self.hub.forget(self)

    def cleanup(self) -> None:
        self.hub.remove_port(self)
