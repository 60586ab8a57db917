"""Differential test against libslirp (QEMU's ``-netdev user`` stack, run by slirp4netns
with ``-6``): the same crafted guest frames go to libslirp and to our IPv6 router, and the
answers are compared field by field.

libslirp runs behind a tap in a namespace this test creates; the test writes its frames
on that tap with an ``AF_PACKET`` socket (so they reach slirp4netns) and reads libslirp's
answers the same way. Our router gets the same frames in-process, configured like
slirp4netns (prefix fd00::/64, host fd00::2, DNS fd00::3). Compared: the Router
Advertisement (hop limit, flags, lifetimes, source link-layer address, prefix
information), the Neighbor Advertisements for the router and DNS addresses (flags,
target link-layer address: ``52:56`` + the address's low 32 bits), echo replies, and the
DHCPv6 Information-Request reply (DNS server list). The differences we chose (O flag,
MTU option, Server Identifier in DHCPv6 replies) are asserted as such.

libslirp 4.7 (Debian 12) does not reassemble IPv6 fragments; that is shown here too (a
fragmented echo request gets no answer from libslirp and one from us), and that its
DHCPv6 replies leave from UDP port 8962 instead of 547.
"""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_InfoRequest,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptOptReq,
    DHCP6OptServerId,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrFragment,
    fragment6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Packet, raw

from drivers.user.v6 import Ipv6Config, Ipv6Router
from drivers.user.v6 import addr as a6
from tests.kit.netns import unique_name

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

MAC = "02:00:00:00:00:42"
LL = "fe80::42"
GLOBAL = "fd00::42"
TAP = "tap0"
ETH_P_ALL = 0x0003


def ip(text: str) -> bytes:
    value = a6.parse(text)
    assert value is not None
    return value


class Slirp:
    """slirp4netns -6 behind a tap in a fresh namespace, and a packet socket on that tap."""

    def __init__(self) -> None:
        self.name = unique_name("nsv6d-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None

    def __enter__(self) -> Slirp:
        from pyroute2 import netns as pr_netns

        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=20)
        try:
            self._sh("ip", "link", "set", "lo", "up")
            # keep the namespace's own kernel quiet on the tap (no RS/DAD/MLD of its own)
            self._sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            ready_r, ready_w = os.pipe()
            try:
                self.proc = subprocess.Popen(
                    ["slirp4netns", "-6", f"--ready-fd={ready_w}", "--netns-type=path",
                     f"/var/run/netns/{self.name}", TAP],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(ready_w,),
                )  # fmt: skip
                os.close(ready_w)
                ready_w = -1
                ready, _, _ = select.select([ready_r], [], [], 10)
                assert ready and os.read(ready_r, 1) == b"1", "slirp4netns did not get ready"
            finally:
                os.close(ready_r)
                if ready_w >= 0:
                    os.close(ready_w)
            self._sh("ip", "link", "set", TAP, "up", "promisc", "on")
            pr_netns.pushns(self.name)
            try:
                self.sock = socket.socket(
                    socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)
                )
            finally:
                pr_netns.popns()
            self.sock.bind((TAP, 0))
            self.sock.settimeout(0.2)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _sh(self, *argv: str) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.name, *argv], check=True,
                              timeout=20, capture_output=True, text=True)  # fmt: skip
        return done.stdout

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["ip", "netns", "del", self.name], check=False, timeout=20)

    def exchange(
        self, frames: list[bytes], want: Callable[[Packet], bool], *, expect: int = 1,
        wait: float = 2.0,
    ) -> list[Packet]:  # fmt: skip
        """Send ``frames``; the answers ``want`` accepts, once ``expect`` came or after
        ``wait`` seconds."""
        assert self.sock is not None
        for f in frames:
            self.sock.send(f)
        got: list[Packet] = []
        until = time.monotonic() + wait
        while time.monotonic() < until and len(got) < expect:
            try:
                data, meta = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if meta[2] == socket.PACKET_OUTGOING:
                continue  # our own frames
            p = Ether(data)
            if want(p):
                got.append(p)
        return got


def ours(frames: list[bytes], want: Callable[[Packet], bool]) -> list[Packet]:
    r = Ipv6Router(OURS_CFG, now=-10.0, rng=random.Random(1))
    r.tick(-10.0)  # the initial RA, long enough ago for a multicast answer
    r.out.clear()
    for f in frames:
        r.input(f, 1.0)
    return [p for p in map(Ether, r.out) if want(p)]


OURS_CFG = Ipv6Config(prefix=ip("fd00::"), host=ip("fd00::2"), dns=ip("fd00::3"))


@pytest.fixture(scope="module")
def slirp() -> Iterator[Slirp]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("slirp4netns") is None:
        pytest.skip("slirp4netns not installed")
    with Slirp() as s:
        yield s


def frame(p: Packet, dst: str) -> bytes:
    return raw(Ether(src=MAC, dst=dst) / p)


def test_router_advertisement_matches_libslirp(slirp: Slirp) -> None:
    rs = frame(IPv6(src=LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
               / ICMPv6NDOptSrcLLAddr(lladdr=MAC), "33:33:00:00:00:02")  # fmt: skip

    def is_ra(p: Packet) -> bool:
        return ICMPv6ND_RA in p

    (theirs,) = slirp.exchange([rs], is_ra)[:1]
    (mine,) = ours([rs], is_ra)
    for p in (theirs, mine):
        assert p.src == "52:56:00:00:00:02" and p.dst == "33:33:00:00:00:01"
        assert p[IPv6].src == "fe80::2" and p[IPv6].dst == "ff02::1" and p[IPv6].hlim == 255
    a, b = theirs[ICMPv6ND_RA], mine[ICMPv6ND_RA]
    same = ("chlim", "M", "routerlifetime", "reachabletime", "retranstimer")
    assert {f: a.getfieldval(f) for f in same} == {f: b.getfieldval(f) for f in same}
    assert a.O == 0 and b.O == 1  # ours: DHCPv6 has DNS to give (documented choice)
    assert a[ICMPv6NDOptSrcLLAddr].lladdr == b[ICMPv6NDOptSrcLLAddr].lladdr
    pa, pb = a[ICMPv6NDOptPrefixInfo], b[ICMPv6NDOptPrefixInfo]
    fields = ("prefix", "prefixlen", "L", "A", "validlifetime", "preferredlifetime")
    assert {f: pa.getfieldval(f) for f in fields} == {f: pb.getfieldval(f) for f in fields}
    assert ICMPv6NDOptMTU not in a and b[ICMPv6NDOptMTU].mtu == 1500


@pytest.mark.parametrize("target", ["fd00::2", "fd00::3", "fe80::2"])
def test_neighbor_advertisements_match_libslirp(slirp: Slirp, target: str) -> None:
    group = a6.solicited_node(ip(target))
    ns = frame(IPv6(src=GLOBAL, dst=a6.text(group), hlim=255) / ICMPv6ND_NS(tgt=target)
               / ICMPv6NDOptSrcLLAddr(lladdr=MAC), a6.multicast_mac(group).hex(":"))  # fmt: skip

    def is_na(p: Packet) -> bool:
        return ICMPv6ND_NA in p and p[ICMPv6ND_NA].tgt == target

    theirs = slirp.exchange([ns], is_na)
    mine = ours([ns], is_na)
    assert theirs and mine
    a, b = theirs[0], mine[0]
    assert (a.src, a.dst, a[IPv6].src, a[IPv6].dst) == (b.src, b.dst, b[IPv6].src, b[IPv6].dst)
    assert (a.R, a.S, a.O) == (b.R, b.S, b.O) == (1, 1, 1)
    assert a[ICMPv6NDOptDstLLAddr].lladdr == b[ICMPv6NDOptDstLLAddr].lladdr


def test_echo_and_fragments_against_libslirp(slirp: Slirp) -> None:
    teach = frame(IPv6(src=GLOBAL, dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt="fd00::2")
                  / ICMPv6NDOptSrcLLAddr(lladdr=MAC), "33:33:ff:00:00:02")  # fmt: skip
    ping = frame(IPv6(src=GLOBAL, dst="fd00::3") / ICMPv6EchoRequest(id=5, seq=1, data=b"hi" * 20),
                 "52:56:00:00:00:03")  # fmt: skip

    def is_reply(p: Packet) -> bool:
        return ICMPv6EchoReply in p and p[ICMPv6EchoReply].id == 5

    theirs = slirp.exchange([teach, ping], is_reply)
    mine = ours([teach, ping], is_reply)
    assert theirs and mine
    a, b = theirs[0], mine[0]
    assert (a.src, a.dst, a[IPv6].src) == (b.src, b.dst, b[IPv6].src)
    assert raw(a[ICMPv6EchoReply]) == raw(b[ICMPv6EchoReply])

    big = IPv6(src=GLOBAL, dst="fd00::2") / IPv6ExtHdrFragment(id=9) / ICMPv6EchoRequest(
        id=6, data=b"f" * 2000)  # fmt: skip
    frags = [frame(f, "52:56:00:00:00:02") for f in fragment6(big, 1280)]

    def is_big_reply(p: Packet) -> bool:
        return IPv6ExtHdrFragment in p or (ICMPv6EchoReply in p and p[ICMPv6EchoReply].id == 6)

    # libslirp drops fragments: nothing within a second
    assert slirp.exchange([teach, *frags], is_big_reply, expect=2, wait=1.0) == []
    assert len(ours([teach, *frags], is_big_reply)) == 2  # ours: reassembled, reply fragmented


def test_dhcpv6_information_request_matches_libslirp(slirp: Slirp) -> None:
    req = frame(IPv6(src=LL, dst="ff02::1:2") / UDP(sport=546, dport=547)
                / DHCP6_InfoRequest(trid=0x4242) / DHCP6OptClientId(duid=DUID_LL(lladdr=MAC))
                / DHCP6OptOptReq(reqopts=[23]), "33:33:00:01:00:02")  # fmt: skip

    def is_reply(p: Packet) -> bool:
        return UDP in p and p[UDP].dport == 546

    # libslirp must know the client's MAC first (it queues a reply behind its own NS)
    teach = frame(IPv6(src=LL, dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt="fe80::2")
                  / ICMPv6NDOptSrcLLAddr(lladdr=MAC), "33:33:ff:00:00:02")  # fmt: skip
    theirs = slirp.exchange([teach, req], is_reply)
    mine = ours([teach, req], is_reply)
    assert theirs and mine
    a, b = theirs[0], mine[0]
    assert a[IPv6].dst == b[IPv6].dst == LL
    # libslirp's reply leaves from port 8962: 547 byte-swapped (its ``sin6_port`` is set
    # without htons); ours from 547 as RFC 8415 says
    assert a[UDP].sport == 0x2302 and b[UDP].sport == 547
    assert bytes(a[UDP].payload)[:4] == bytes(b[UDP].payload)[:4] == b"\x07\x00\x42\x42"
    assert a[DHCP6OptDNSServers].dnsservers == b[DHCP6OptDNSServers].dnsservers == ["fd00::3"]
    assert DHCP6OptServerId not in a and DHCP6OptServerId in b  # RFC 8415 requires it
    # libslirp answers from its host address, we from fe80::2 (link-scope request)
    assert a[IPv6].src == "fd00::2" and b[IPv6].src == "fe80::2"
