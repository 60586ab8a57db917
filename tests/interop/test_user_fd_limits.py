"""Descriptor capacity and fairness of the user NAT, with a real kernel as the guests.

A ``netstackd`` process is started with the usual soft ``RLIMIT_NOFILE`` of 1024 under a
higher hard limit; Linux network namespaces behind taps are its guests and open real TCP
connections through the NAT to an echo server on host loopback (every connection carries
a byte each way).

* capacity: the daemon raises its soft limit to the hard one and logs it; 3000
  concurrent connections from one namespace all get through (before the raise ~1000 did);
  the daemon's RSS growth per held connection is measured and printed (memory per flow);
* fairness: with capacity 2048, a greedy namespace opening connections gets its budget
  (the default share) and RSTs for the rest - counted in ``query-netdev``, logged once -
  while QMP answers and a second user netdev's namespace makes 100 connections;
* ``x-max-flows=N`` sets the budget explicitly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.user.budget import split
from netstack.limits import FdLimits
from tests.interop.daemon_ns import (
    configure_ns,
    connections,
    counters,
    daemon,
    echo_server,
    qmp_client,
    tap_args,
)
from tests.kit.netns import netns, require_root, unique_name

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(600)]


async def test_raised_limit_carries_3000_connections(tmp_path: Path) -> None:
    require_root()
    ifname = unique_name("fdl")
    with netns("fdl", ipv6=False) as ns:
        args = tap_args("nat0", 0, ns, ifname)
        with daemon(tmp_path, args, nofile=(1024, 16384)) as d:
            configure_ns(ns, ifname)
            log = d.output()
            assert "file descriptors: 16384 (raised from 1024)" in log, log
            rss0, fds0 = d.rss_kib(), d.fds()
            async with echo_server() as port, connections(ns, port, 3000) as out:
                assert out["ok"] == 3000, out
                rss1, fds1 = d.rss_kib(), d.fds()
                async with qmp_client(d.qmp_path) as qmp:
                    c = await counters(qmp, "nat0")
            assert c["tcp-flows"] >= 3000 and c.get("tcp-flow-limit", 0) == 0, c
            assert fds1 - fds0 >= 3000
            per_flow = (rss1 - rss0) * 1024 / 3000
            print(f"\nnetstackd: {out['ok']} connections held, RSS {rss0} -> {rss1} KiB, "
                  f"{per_flow:.0f} bytes per flow, fds {fds0} -> {fds1}")  # fmt: skip


async def test_greedy_guest_gets_its_share_others_carry_on(tmp_path: Path) -> None:
    require_root()
    share = FdLimits(soft=2048, hard=2048, initial_soft=1024).flow_share
    tcp_budget = split(share)["tcp_max_flows"]
    greedy_if, other_if = unique_name("fdg"), unique_name("fdo")
    with netns("fdg", ipv6=False) as greedy, netns("fdo", ipv6=False) as other:
        args = [*tap_args("nat0", 0, greedy, greedy_if), *tap_args("nat1", 1, other, other_if)]
        with daemon(tmp_path, args, nofile=(1024, 2048)) as d:
            configure_ns(greedy, greedy_if)
            configure_ns(other, other_if)
            async with echo_server() as port, connections(greedy, port, 1500) as hog:
                assert hog["ok"] == tcp_budget, hog
                assert hog["refused"] + hog["reset"] == 1500 - tcp_budget, hog
                async with qmp_client(d.qmp_path) as qmp:
                    c = await counters(qmp, "nat0")
                    assert c["tcp-flow-limit"] == 1500 - tcp_budget, c
                    async with connections(other, port, 100) as fair:
                        assert fair["ok"] == 100, fair
                        c1 = await counters(qmp, "nat1")
                        assert c1["tcp-flows"] >= 100 and c1.get("tcp-flow-limit", 0) == 0
                    assert await qmp.execute("query-version")
            log = d.output()
            assert log.count("user nat0: flow budget reached") == 1, log
            assert "nat1: flow budget" not in log


async def test_x_max_flows(tmp_path: Path) -> None:
    require_root()
    ifname = unique_name("fdx")
    with netns("fdx", ipv6=False) as ns:
        args = tap_args("nat0", 0, ns, ifname, ",x-max-flows=64")
        with daemon(tmp_path, args) as d:
            configure_ns(ns, ifname)
            budget = split(64)["tcp_max_flows"]
            async with echo_server() as port, connections(ns, port, 100) as out:
                assert out["ok"] == budget and out["refused"] == 100 - budget, out
                async with qmp_client(d.qmp_path) as qmp:
                    c = await counters(qmp, "nat0")
                    rows = await qmp.execute("query-netdev", {"name": "nat0"})
            assert c["tcp-flow-limit"] == 100 - budget
            assert isinstance(rows, list) and rows[0]["options"]["x-max-flows"] == 64


async def test_reserve_keeps_the_control_plane_open(tmp_path: Path) -> None:
    """A netdev whose budget exceeds the capacity (x-max-flows) meets the reserve: its
    excess is refused (``tcp-fd-reserve``) and QMP, a new QMP session and netdev_add work."""
    require_root()
    ifname = unique_name("fdr")
    with netns("fdr", ipv6=False) as ns:
        args = tap_args("nat0", 0, ns, ifname, ",x-max-flows=100000")
        with daemon(tmp_path, args, nofile=(1024, 1024)) as d:
            configure_ns(ns, ifname)
            ceiling = FdLimits(soft=1024, hard=1024, initial_soft=1024).flow_ceiling
            async with echo_server() as port, connections(ns, port, 1200) as hog:
                assert ceiling - 40 <= hog["ok"] < ceiling, hog
                assert hog["refused"] + hog["reset"] == 1200 - hog["ok"], hog
                async with qmp_client(d.qmp_path) as qmp, qmp_client(d.qmp_path) as second:
                    c = await counters(qmp, "nat0")
                    assert c["tcp-fd-reserve"] == 1200 - hog["ok"], c
                    await second.execute("netdev_add", {"type": "user", "id": "late"})
                    sock = tmp_path / "late.sock"
                    await second.execute(
                        "chardev-add",
                        {"id": "late-c", "backend": {"type": "socket", "data": {
                            "addr": {"type": "unix", "data": {"path": str(sock)}},
                            "server": True, "wait": False}}},
                    )  # fmt: skip
                    assert sock.exists()
                    assert await qmp.execute("query-version")
            assert "flow budget reached" in d.output()
