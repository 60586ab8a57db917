"""Prometheus metrics of a running daemon, read from its live state at scrape time.

:class:`NetstackCollector` is a ``prometheus_client`` custom collector: nothing is counted
per packet for it. Each scrape reads the same sources the QMP introspection commands do
(``query-netdev``'s statistics and per-driver counters, the hubs' queues, the user
netdevs' connection and lease tables, the monitors' sessions), so the metrics and QMP
never disagree and the forwarding path pays nothing for an endpoint nobody scrapes.

Names follow the Prometheus conventions (``netstack_`` prefix, base units, ``_total``
for counters, labels rather than names for what varies):

* ``netstack_netdev_{rx,tx}_{frames,bytes,drops}_total``, ``netstack_netdev_rx_filtered
  _total``, ``netstack_netdev_malformed_frames_total``, ``netstack_netdev_queue_frames``,
  ``netstack_netdev_queue_drops_total``, ``netstack_netdev_link_up``: labels ``netdev``,
  ``type``, ``queue`` (the queue index of a multiqueue netdev; 0 otherwise);
* every driver counter of ``query-netdev`` as ``netstack_<type>_<counter>`` with labels
  ``netdev`` and ``queue`` (``netstack_vhost_user_rx_bad_buffers_total``,
  ``netstack_user_tcp_flows``): a counter (``_total``) unless its name says it is a level
  (:data:`GAUGE_SUFFIXES`: live children, open flows and sockets, running rings);
* ``netstack_errors_total{netdev,type,kind}``: the driver counters that count errors
  (names with one of :data:`ERROR_WORDS`) and malformed frames, one ``kind`` each;
* ``netstack_hub_ports{hub}``, ``netstack_hub_queue_frames{hub,port}``;
* ``netstack_nat_flows{netdev,protocol,family}`` (TCP, UDP and ICMP always present),
  ``netstack_nat_forwards{netdev,type}``, ``netstack_dhcp_leases{netdev}``;
* ``netstack_qmp_monitors``, ``netstack_qmp_sessions``, ``netstack_chardevs``,
  ``netstack_netdevs``, ``netstack_daemon_info{version,name}``;
* ``netstack_metrics_requests_total{code}`` and ``netstack_metrics_collect_errors_total``
  about the endpoint itself.

A netdev whose state cannot be read (it raised) is skipped for that scrape and counted in
``netstack_metrics_collect_errors_total``; the scrape still succeeds.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from netstack import __version__
from netstack.ratelog import RateLog

if TYPE_CHECKING:
    from netstack.daemon import Netstack

#: Driver counters that are levels, not running totals, recognised by their name's end.
GAUGE_SUFFIXES: Final = ("-live", "-flows", "-sockets", "-running", "-open", "-active")
#: Words that make a driver counter an error count (``netstack_errors_total``).
ERROR_WORDS: Final = ("error", "malformed", "bad", "refused", "broken", "invalid", "too-big")
NAT_PROTOCOLS: Final = ("tcp", "udp", "icmp")
#: Seconds between two log lines about the same netdev failing to be read.
LOG_INTERVAL: Final = 60.0

_STATS: Final = (
    ("rx-frames", "netstack_netdev_rx_frames", "Frames delivered to the netdev by its peer."),
    ("rx-bytes", "netstack_netdev_rx_bytes", "Bytes delivered to the netdev by its peer."),
    ("rx-dropped", "netstack_netdev_rx_drops", "Frames for the netdev dropped (no room)."),
    ("rx-filtered", "netstack_netdev_rx_filtered", "Frames for the netdev its rx filter refused."),
    ("tx-frames", "netstack_netdev_tx_frames", "Frames the netdev sent to its peer."),
    ("tx-bytes", "netstack_netdev_tx_bytes", "Bytes the netdev sent to its peer."),
    ("tx-dropped", "netstack_netdev_tx_drops", "Frames the netdev sent that were dropped."),
    ("malformed", "netstack_netdev_malformed_frames", "Malformed frames the netdev refused."),
)
_NAME_RE: Final = re.compile(r"[^a-zA-Z0-9_]")

log = logging.getLogger("netstack.service")


def metric_name(*parts: str) -> str:
    """``("vhost-user", "rx-bad-buffers")`` -> ``vhost_user_rx_bad_buffers``."""
    return "_".join(_NAME_RE.sub("_", p) for p in parts if p)


def is_gauge(counter: str) -> bool:
    return counter.endswith(GAUGE_SUFFIXES)


def is_error(counter: str) -> bool:
    return any(word in counter for word in ERROR_WORDS)


class EndpointStats:
    """What the HTTP endpoint counts about itself (requests by status code)."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.collect_errors = 0


class NetstackCollector:
    """Reads ``ns`` at every scrape (register it in a ``CollectorRegistry``)."""

    def __init__(self, ns: Netstack, stats: EndpointStats | None = None) -> None:
        self.ns = ns
        self.stats = stats or EndpointStats()
        self._ratelog = RateLog(log, interval=LOG_INTERVAL)

    def collect(self) -> Iterable[Metric]:
        ns = self.ns
        yield from self._daemon(ns)
        yield from self._netdevs(ns)
        yield from self._hubs(ns)
        yield from self._user(ns)
        yield from self._qmp(ns)
        yield from self._endpoint()

    # -- families ------------------------------------------------------------------------

    def _daemon(self, ns: Netstack) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "netstack_daemon_info", "The daemon's version and name.", labels=["version", "name"]
        )
        info.add_metric([__version__, ns.name or ""], 1)
        yield info
        yield GaugeMetricFamily(
            "netstack_netdevs",
            "Netdevs (backends) configured.",
            value=sum(1 for nc in ns.clients if nc.is_netdev and nc.queue_index == 0),
        )
        yield GaugeMetricFamily("netstack_chardevs", "Chardevs configured.", value=len(ns.chardevs))

    def _netdevs(self, ns: Netstack) -> Iterator[Metric]:
        labels = ["netdev", "type", "queue"]
        stats = {key: CounterMetricFamily(name, doc, labels=labels) for key, name, doc in _STATS}
        link = GaugeMetricFamily("netstack_netdev_link_up", "1 if the link is up.", labels=labels)
        queued = GaugeMetricFamily(
            "netstack_netdev_queue_frames", "Frames waiting for the netdev.", labels=labels
        )
        qdrops = CounterMetricFamily(
            "netstack_netdev_queue_drops", "Frames its full queue dropped.", labels=labels
        )
        errors = CounterMetricFamily(
            "netstack_errors",
            "Errors by kind (driver counters).",
            labels=["netdev", "type", "kind"],
        )
        driver: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for entry in self._entries(ns):
            row = [entry["id"], entry["type"], str(entry["queue-index"])]
            for key, family in stats.items():
                family.add_metric(row, entry["statistics"].get(key, 0))
            link.add_metric(row, 1 if entry["link-up"] else 0)
            queued.add_metric(row, entry["queued"])
            qdrops.add_metric(row, entry["queue-dropped"])
            malformed = entry["statistics"].get("malformed", 0)
            if malformed:
                errors.add_metric([entry["id"], entry["type"], "malformed-frames"], malformed)
            for counter, value in sorted(entry.get("counters", {}).items()):
                name = f"netstack_{metric_name(entry['type'], counter)}"
                dfam = driver.get(name)
                if dfam is None:
                    doc = f"{entry['type']} netdev counter '{counter}' (query-netdev)."
                    if is_gauge(counter):
                        dfam = GaugeMetricFamily(name, doc, labels=["netdev", "queue"])
                    else:
                        dfam = CounterMetricFamily(name, doc, labels=["netdev", "queue"])
                    driver[name] = dfam
                dfam.add_metric([entry["id"], row[2]], value)
                if is_error(counter):
                    errors.add_metric([entry["id"], entry["type"], counter], value)
        yield from stats.values()
        yield from (link, queued, qdrops)
        yield from driver.values()
        yield errors

    def _entries(self, ns: Netstack) -> list[dict[str, Any]]:
        """``query-netdev``'s rows of every non-NIC client (one pass; should a driver's
        counters raise, the netdevs are read one by one and the failing ones skipped)."""
        nics = {nc.name for nc in ns.clients if nc.is_nic}
        try:
            return [e for e in ns.query_netdev() if e["id"] not in nics]
        except Exception:
            pass
        out: list[dict[str, Any]] = []
        for nc in list(ns.clients):
            if nc.is_nic:
                continue
            try:
                rows = ns.query_netdev(nc.name)
            except Exception:
                self._failed(nc.name)
                continue
            out += [e for e in rows if e["queue-index"] == nc.queue_index]
        return out

    def _hubs(self, ns: Netstack) -> Iterator[Metric]:
        ports = GaugeMetricFamily("netstack_hub_ports", "Ports of the hub.", labels=["hub"])
        depth = GaugeMetricFamily(
            "netstack_hub_queue_frames", "Frames queued at a hub port.", labels=["hub", "port"]
        )
        for hub in list(ns.hubs):
            ports.add_metric([str(hub.id)], len(hub.ports))
            for port in list(hub.ports):
                depth.add_metric([str(hub.id), port.name], len(port.incoming))
        yield ports
        yield depth

    def _user(self, ns: Netstack) -> Iterator[Metric]:
        flows = GaugeMetricFamily(
            "netstack_nat_flows",
            "NAT flows and connections of a user netdev.",
            labels=["netdev", "protocol", "family"],
        )
        forwards = GaugeMetricFamily(
            "netstack_nat_forwards", "hostfwd/guestfwd rules.", labels=["netdev", "type"]
        )
        leases = GaugeMetricFamily("netstack_dhcp_leases", "DHCP leases.", labels=["netdev"])
        for nc, tables in ns.nat_tables():
            if nc.type != "user":
                continue
            try:
                conns = tables.connections()
                fwds = tables.forwards()
                nleases = len(tables.leases())
            except Exception:
                self._failed(nc.name)
                continue
            count = Counter((c["protocol"].lower(), c["family"]) for c in conns)
            for proto in NAT_PROTOCOLS:
                count.setdefault((proto, "ipv4"), 0)
            for (proto, family), value in sorted(count.items()):
                flows.add_metric([nc.name, proto, family], value)
            kinds = Counter(f["type"] for f in fwds)
            for kind in ("hostfwd", "guestfwd"):
                forwards.add_metric([nc.name, kind], kinds.get(kind, 0))
            leases.add_metric([nc.name], nleases)
        yield from (flows, forwards, leases)

    def _qmp(self, ns: Netstack) -> Iterator[Metric]:
        monitors = list(ns.monitors)
        yield GaugeMetricFamily("netstack_qmp_monitors", "QMP monitors.", value=len(monitors))
        sessions = sum(len(getattr(m, "sessions", ())) for m in monitors)
        yield GaugeMetricFamily("netstack_qmp_sessions", "Connected QMP sessions.", value=sessions)

    def _endpoint(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "netstack_metrics_requests", "Requests to this endpoint by status.", labels=["code"]
        )
        for code, value in sorted(self.stats.requests.items()):
            requests.add_metric([code], value)
        yield requests
        yield CounterMetricFamily(
            "netstack_metrics_collect_errors",
            "Netdevs whose state could not be read during a scrape.",
            value=self.stats.collect_errors,
        )

    def _failed(self, name: str) -> None:
        """Count a netdev that could not be read; log it at most once a minute."""
        self.stats.collect_errors += 1
        self._ratelog.emit(logging.WARNING, name, "metrics: reading %s failed", name, exc_info=True)
