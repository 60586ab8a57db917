"""Sans-IO parts of the descriptor limits, the flow budget and the confinement options,
plus the seccomp filter loaded into a child interpreter (a forbidden call fails with
EPERM and the process carries on)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.user.budget import MIN_FLOWS, split
from drivers.user.options import parse_options
from netstack.errors import GenericError
from netstack.limits import MIN_RESERVE, FdLimits
from netstack.privileges import RunAs, capabilities, parse_run_with, parse_user
from netstack.qapi import NetdevUserOptions
from netstack.sandbox import SandboxSpec, parse


@given(st.integers(min_value=MIN_FLOWS, max_value=1 << 22))
def test_split_stays_within_the_budget(total: int) -> None:
    b = split(total)
    assert b["tcp_max_flows"] >= 1 and b["udp_max_flows"] >= 1 and b["icmp_max_flows"] >= 1
    assert b["tcp_max_flows"] + 2 * (b["udp_max_flows"] + b["icmp_max_flows"]) <= total
    assert b["udp_max_flows"] <= 1024 and b["icmp_max_flows"] <= 256


def test_fd_limits() -> None:
    lim = FdLimits(soft=2048, hard=2048, initial_soft=1024)
    assert lim.reserve == MIN_RESERVE and lim.flow_ceiling == 2048 - MIN_RESERVE
    assert lim.flow_share == (2048 - MIN_RESERVE) // 2
    big = FdLimits(soft=1 << 20, hard=1 << 20, initial_soft=1024)
    assert big.reserve == (1 << 20) // 64
    # two netdevs at their share never reach into the reserve
    assert 2 * big.flow_share <= big.flow_ceiling


def test_x_max_flows_option() -> None:
    assert parse_options(NetdevUserOptions(x_max_flows=100)).max_flows == 100
    assert parse_options(NetdevUserOptions()).max_flows is None
    with pytest.raises(GenericError, match="'x-max-flows' must be at least 8"):
        parse_options(NetdevUserOptions(x_max_flows=3))


def test_reserve_refuses_flow_sockets_in_a_child() -> None:
    prog = textwrap.dedent(
        """
        import errno, resource, socket
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))
        from netstack.limits import check_flow_fd, current
        ceiling = current().flow_ceiling
        held, refused = [], 0
        for _ in range(300):
            try:
                held.append(check_flow_fd(socket.socket()))
            except OSError as e:
                assert e.errno == errno.EMFILE
                refused += 1
        assert max(s.fileno() for s in held) < ceiling
        extra = [socket.socket() for _ in range(ceiling // 2 - 10)]  # the reserve is usable
        print(ceiling, len(held), refused, len(extra))
        """
    )
    done = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    ceiling, held, refused, _extra = map(int, done.stdout.split())
    assert ceiling == 200 - MIN_RESERVE and refused == 300 - held and held < ceiling


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("root", RunAs(0, 0, "root")),
        ("1000:1000", RunAs(1000, 1000)),
        ("0x10:010", RunAs(16, 8)),
        (" 5:6", RunAs(5, 6)),
    ],
)
def test_parse_user(text: str, want: RunAs) -> None:
    assert parse_user(text) == want


def test_run_with() -> None:
    assert parse_run_with("user=1:2") == RunAs(1, 2)
    assert parse_run_with("async-teardown=on") is None
    assert parse_run_with("async-teardown=off,user=root") == RunAs(0, 0, "root")


def test_sandbox_spec() -> None:
    assert parse("off") == SandboxSpec()
    spec = parse("on,spawn=deny,elevateprivileges=children,resourcecontrol=deny")
    allowed = spec.allowed()
    assert spec.enable and "execve" not in allowed and "setuid" not in allowed
    assert "setpriority" not in allowed and "socket" in allowed
    assert "sysfs" not in allowed and "sysfs" in parse("on,obsolete=allow").allowed()
    # an invalid set is not looked at while the sandbox is off (QEMU's order)
    assert parse("off,spawn=whatever") == SandboxSpec()


def test_capabilities_parse() -> None:
    caps = capabilities("CapInh:\t0000000000003000\nCapEff:\t000001ffffffffff\nUid: 0\n")
    assert caps == {"CapInh": 0x3000, "CapEff": 0x1FFFFFFFFFF}


def test_forbidden_call_fails_with_eperm_and_the_process_lives() -> None:
    prog = textwrap.dedent(
        """
        import errno, os, socket, subprocess, threading
        from netstack import sandbox
        sandbox.install(sandbox.parse("on,spawn=deny,resourcecontrol=deny"))
        out = [str(sandbox.seccomp_mode())]
        for call in (lambda: os.chroot("/"), lambda: os.setpriority(0, 0, 1),
                     lambda: subprocess.run(["true"])):
            try:
                call()
                out.append("allowed")
            except OSError as e:
                out.append(errno.errorcode[e.errno])
        t = threading.Thread(target=lambda: out.append("thread"))
        t.start(); t.join()
        a, b = socket.socketpair(); a.send(b"x"); out.append(b.recv(1).decode())
        print(" ".join(out))
        """
    )
    done = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "EPERM", "EPERM", "EPERM", "thread", "x"]


async def test_user_netdev_takes_its_budget_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import logging
    import socket

    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from drivers.user.client import UserNetClient
    from drivers.user.options import UserConfig
    from netstack.net.nic import NicClient

    nc = UserNetClient(
        "b0",
        UserConfig(dns_upstreams=((socket.AF_INET, "127.0.0.1", 9),), max_flows=64),
        asyncio.get_running_loop(),
        logging.getLogger("netstack.test"),
        icmp_mode="none",
    )
    want = split(64)
    assert nc.tcp.max_flows == want["tcp_max_flows"]
    assert nc.gw.udp.max_flows == want["udp_max_flows"]
    assert nc.gw.icmp.max_flows == want["icmp_max_flows"]
    assert nc.v6 is not None and nc.v6.nat.udp.max_flows == want["udp_max_flows"]
    mac = "52:54:00:12:34:56"
    nic = NicClient("nic0", bytes.fromhex(mac.replace(":", "")))
    nic.connect(nc)
    caplog.set_level(logging.WARNING, logger="netstack.test")
    try:
        frames = [
            bytes(Ether(dst="52:55:0a:00:02:02", src=mac)
                  / IP(src="10.0.2.15", dst="10.0.2.2") / UDP(sport=2000 + i, dport=9)
                  / b"x")
            for i in range(want["udp_max_flows"] + 5)
        ]  # fmt: skip
        for f in frames:
            nic.send([f])
        c = nc.counters()
        assert c["udp-flow-limit"] == 5, c
        assert c["udp-sockets"] == want["udp_max_flows"]
        logged = [r for r in caplog.records if "flow budget reached" in r.getMessage()]
        assert len(logged) == 1
    finally:
        nc.cleanup()
