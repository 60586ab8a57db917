"""The gateway's ICMP checksums as a Linux kernel checks them, the zero case included.

Topology (in-process daemon; the namespace is made and deleted here)::

    ns: uz0 10.0.2.100/24 <- tap (x-netns) -> hub 0 <- user nat0

From a raw ICMP socket in the namespace, echo requests go to the gateway 10.0.2.2: one
whose reply is all zeros but for the checksum (identifier 0, sequence 0, no payload: the
ones'-complement sum is 0 and the field must be 0xFFFF, RFC 1071) and ordinary ones. The
namespace's kernel is the judge: its ``Icmp: InEchoReps`` counts every reply and
``InCsumErrors`` stays where it was (``/proc/net/snmp`` of the namespace).
"""

from __future__ import annotations

import sys

import pytest

import drivers
from netstack.daemon import Netstack
from netstack.qapi import parse_netdev_cli
from tests.kit.netns import ip, netns, require_root, run_in

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

IFNAME = "uz0"

#: Runs in the namespace: sends the echo requests, prints the reply checksums and the
#: kernel's ICMP counters before and after.
PINGER = r"""
import socket, struct, sys, time

def snmp():
    lines = [l.split() for l in open("/proc/net/snmp") if l.startswith("Icmp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:])))

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

before = snmp()
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(5)
sums = []
for ident, seq, payload in ((0, 0, b""), (0, 0, b"\0" * 32), (7, 1, b"abc"), (0, 0, b"")):
    msg = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
    s.sendto(msg, ("10.0.2.2", 0))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data = s.recv(2048)
        icmp = data[(data[0] & 15) * 4:]
        if icmp[0] == 0 and icmp[4:8] == msg[4:8] and icmp[8:] == payload:
            sums.append(struct.unpack("!H", icmp[2:4])[0])
            break
after = snmp()
print(sums, after["InEchoReps"] - before["InEchoReps"],
      after["InCsumErrors"] - before["InCsumErrors"])
"""


async def test_echo_replies_pass_the_kernels_checksum_check() -> None:
    require_root()
    with netns("nsz", ipv6=False) as ns:
        daemon = Netstack(drivers.registry())
        try:
            for spec in (
                "user,id=nat0,ipv6=off",
                f"tap,id=t0,ifname={IFNAME},script=no,downscript=no,x-netns={ns}",
                "hubport,id=h0,hubid=0,netdev=nat0",
                "hubport,id=h1,hubid=0,netdev=t0",
            ):
                await daemon.netdev_add(parse_netdev_cli(spec))
            ip("-n", ns, "addr", "add", "10.0.2.100/24", "dev", IFNAME)
            ip("-n", ns, "link", "set", IFNAME, "up")
            rc, out = await run_in(ns, sys.executable, "-c", PINGER, timeout=60)
            assert rc == 0, out
            sums, replies, csum_errors = out.strip().splitlines()[-1].rsplit(" ", 2)
            # all-zero replies carry 0xFFFF; the one with "abc" its ordinary checksum
            assert sums.startswith("[65535, 65535, ") and sums.endswith(", 65535]"), out
            assert (int(replies), int(csum_errors)) == (4, 0), out
        finally:
            await daemon.close()
