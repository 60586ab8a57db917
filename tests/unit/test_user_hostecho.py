"""The echo relays' host end (:mod:`drivers.user.hostecho`) with each family's
:class:`~drivers.user.hostecho.EchoFamily` (``host4.ECHO4``, ``host6.ECHO6``): a flow's echo
to the host address goes to host loopback through a ping socket per flow or one raw
socket, the reply comes back matched to its flow, and every socket is closed with its flow
or at close. Ping sockets need ``net.ipv4.ping_group_range`` to include this process's
group, raw sockets CAP_NET_RAW: a mode this process may not use runs again in a
network namespace made for it, where the ping range is opened.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from drivers.user import hostsock
from drivers.user.hostecho import EchoFamily, EchoSockets
from drivers.user.icmp_relay import EchoFlows, IcmpRelay
from drivers.user.v4.host import ECHO4
from drivers.user.v6.host import ECHO6
from drivers.user.v6.icmp6 import EchoRelay

OPENERS = {
    ("ipv4", "ping"): hostsock.ping_socket,
    ("ipv4", "raw"): hostsock.raw_icmp_socket,
    ("ipv6", "ping"): hostsock.ping6_socket,
    ("ipv6", "raw"): hostsock.raw_icmp6_socket,
}


class Rig:
    """One family's echo sockets, with the sinks they report to."""

    def __init__(self, family: str, mode: str) -> None:
        self.loop = asyncio.get_running_loop()
        fam: EchoFamily
        if family == "ipv4":
            fam, host = ECHO4, socket.inet_aton("10.0.2.2")
            self.guest, self.flows = socket.inet_aton("10.0.2.15"), IcmpRelay(host)
            self.loopback = "127.0.0.1"
        else:
            fam, host = ECHO6, socket.inet_pton(socket.AF_INET6, "fec0::2")
            self.guest = socket.inet_pton(socket.AF_INET6, "fec0::15")
            self.flows = EchoRelay(host)
            self.loopback = "::1"
        self.host = host
        self.stats: Counter[str] = Counter()
        self.replies: list[tuple[Any, ...]] = []
        self.flushes = 0
        self.errors: list[str] = []
        self.echo = EchoSockets(
            self.loop, fam, mode, self.flows, self._count,
            reply=lambda *args: self.replies.append(args[:4]), flush=self._flush,
            host_error=lambda what, exc: self.errors.append(what),
            internal_error=self.errors.append,
        )  # fmt: skip

    def _count(self, name: str) -> None:
        self.stats[name] += 1

    def _flush(self, now: float) -> None:
        self.flushes += 1

    def ping(self, ident: int, seq: int, payload: bytes) -> tuple[bytes, int]:
        flows: EchoFlows[Any, Any] = self.flows
        send = flows.outbound(self.guest, self.host, ident, seq, payload, 64, self.loop.time())
        assert send is not None
        self.echo.send(send.key, send.host_id, send.host, send.seq, send.payload, 64)
        return tuple(send.key)  # type: ignore[return-value]

    async def replied(self, count: int) -> None:
        until = self.loop.time() + 3
        while len(self.replies) < count and self.loop.time() < until:
            await asyncio.sleep(0.005)
        assert len(self.replies) == count, (self.replies, self.errors, self.stats)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def usable(family: str, mode: str) -> bool:
    try:
        OPENERS[family, mode]().close()
    except OSError:
        return False
    return True


#: Modes this process may use here; the others run in a private namespace (below).
USABLE = [(f, m) for f in ("ipv4", "ipv6") for m in ("ping", "raw") if usable(f, m)]


def test_denied_modes_in_a_private_namespace() -> None:
    """Ping sockets are commonly denied by ``net.ipv4.ping_group_range``; that sysctl is
    per network namespace, so as root the denied cases run again in a namespace made for
    them (lo up, the range opened), with this very file."""
    denied = [f"{f}-{m}" for f in ("ipv4", "ipv6") for m in ("ping", "raw") if not usable(f, m)]
    if not denied or os.environ.get("NETSTACK_ECHO_NETNS") or os.geteuid() != 0:
        assert not denied or os.geteuid() != 0 or os.environ.get("NETSTACK_ECHO_NETNS")
        return
    ns = f"echo{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        inner = (
            "ip link set lo up && sysctl -qw net.ipv4.ping_group_range='0 2147483647' && "
            f"exec {sys.executable} -m pytest -q -p no:cacheprovider {__file__} "
            f"-k 'loopback and ({' or '.join(denied)})'"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "sh", "-c", inner], capture_output=True, text=True,
            timeout=120, env={**os.environ, "NETSTACK_ECHO_NETNS": "1"},
        )  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(denied)} passed" in done.stdout, done.stdout


@pytest.mark.parametrize(("family", "mode"), USABLE, ids=[f"{f}-{m}" for f, m in USABLE])
async def test_echo_to_host_loopback_and_sockets_closed(family: str, mode: str) -> None:
    before = open_fds()
    rig = Rig(family, mode)
    try:
        a = rig.ping(0x4242, 3, b"first flow")
        b = rig.ping(0x4343, 9, b"second flow")
        await rig.replied(2)
        assert sorted(rig.replies) == sorted(
            [(a, rig.loopback, 3, b"first flow"), (b, rig.loopback, 9, b"second flow")]
        )
        assert rig.flushes >= 1 and not rig.errors
        if mode == "ping":
            assert set(rig.echo.ping) == {a, b} and rig.echo.raw is None
        else:
            assert not rig.echo.ping and rig.echo.raw is not None
        # the first flow ends: its ping socket goes; the raw socket stays for the other
        rig.flows.close(a)
        rig.echo.close_flow(a)
        assert set(rig.echo.ping) == ({b} if mode == "ping" else set())
        assert (rig.echo.raw is not None) == (mode == "raw")
        rig.ping(0x4343, 10, b"again")
        await rig.replied(3)
        assert rig.replies[-1] == (b, rig.loopback, 10, b"again")
        # the last flow ends: no socket is left
        rig.flows.close(b)
        rig.echo.close_flow(b)
        assert not rig.echo.ping and rig.echo.raw is None
        assert open_fds() <= before
        rig.ping(0x4444, 1, b"reopened")
        await rig.replied(4)
    finally:
        rig.echo.close()
    assert open_fds() <= before, "an echo socket was left open"
    counters = rig.flows.counters
    prefix = "icmp" if family == "ipv4" else "icmp6"
    assert counters[f"{prefix}-echo-relayed"] == 4 and not rig.stats


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_no_mechanism_counts_and_drops(family: str) -> None:
    rig = Rig(family, "none")
    before = open_fds()
    rig.ping(1, 1, b"x")
    prefix = "icmp" if family == "ipv4" else "icmp6"
    assert rig.stats == Counter({f"{prefix}-relay-unavailable": 1})
    assert open_fds() <= before and not rig.echo.ping and rig.echo.raw is None
    rig.echo.close()
