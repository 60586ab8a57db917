"""The IPv6 machines of the user netdev against a real peer: the Linux kernel as the guest.

Each test creates a network namespace with a tap device whose fd this process holds (the
tap is created inside the namespace: ``/dev/net/tun`` opened there); a tiny adapter feeds
the frames the kernel sends out of the tap to :class:`~drivers.user.v6.Ipv6Router` and
writes the router's frames back, with one ``loop.call_at`` timer at the router's deadline.
Then the kernel's own IPv6 does the talking:

* SLAAC from our RA: an address in the prefix, the default route via fe80::2, the link MTU
  from the RA's MTU option;
* ``ping -6`` to the router's addresses (fec0::2, fec0::3, fe80::2), with 3000-byte
  payloads too (the kernel fragments, we reassemble; our reply is fragmented, the kernel
  reassembles);
* the NAT hook: a UDP handler registered for the test echoes datagrams sent to fec0::2:7,
  and a datagram the router sends to a guest address it has forgotten goes out only after
  our Neighbor Solicitation was answered by the kernel;
* the echo relay: the kernel pings a "remote" address (2001:db8::1 on the loopback of a
  second namespace standing in for the host); the router's ``PingSend`` goes out of a real
  unprivileged ICMPv6 ping socket there, and the reply comes back through ``ping_reply``;
* DAD: an address of ours that the kernel tries to use is defended (the kernel marks it
  ``dadfailed``), while the kernel's own addresses pass DAD;
* DHCPv6 with ISC ``dhclient`` (Debian's isc-dhcp-client; skipped when absent): stateful
  (Solicit/Advertise/Request/Reply, then Release) and stateless (Information-Request);
  the lease script is the test's own (it records, it changes nothing on the host).

Then the real thing (:func:`test_a_namespace_served_by_the_user_netdev`): the kernel of a
namespace behind netstack's tap netdev (vnet_hdr on) on a hub with a real user netdev -
SLAAC from its RAs, ping to fec0::2 and through the echo relay, TCP to ``::1`` via fec0::2
and directly to a remote address, UDP, DNS at fec0::3, and the guest's address in the
lease view. The daemon's sockets are made in a second namespace (the event loop's thread
enters it), with the remote address on its loopback, so no host IPv6 is needed.

Everything lives in the namespaces the tests create and delete; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from drivers.user import control as user_control
from drivers.user.v6 import Ipv6Config, Ipv6Router, Packet6, PingClose, icmp6
from drivers.user.v6 import addr as a6
from netstack.proto import ipv6 as pk
from tests.kit.netns import run_in, unique_name

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

TAP = "v6tap0"
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MTU = 1400
PREFIX = ipaddress.ip_network("fec0::/64")


class Namespace:
    """A network namespace with a tap device whose fd we hold."""

    def __init__(self) -> None:
        self.name = unique_name("nsv6-")
        self.etc = Path("/etc/netns") / self.name
        self.fd = -1

    def __enter__(self) -> Namespace:
        from pyroute2 import netns as pr_netns

        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=20)
        try:
            # a resolv.conf of its own, so nothing run in the namespace can touch the host's
            self.etc.mkdir(parents=True, exist_ok=True)
            (self.etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
            pr_netns.pushns(self.name)
            try:
                self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
                ifr = struct.pack("16sH22x", TAP.encode(), IFF_TAP | IFF_NO_PI)
                fcntl.ioctl(self.fd, TUNSETIFF, ifr)
            finally:
                pr_netns.popns()
            self.sh("ip", "link", "set", "lo", "up")
            self.sh("sysctl", "-qw", f"net.ipv6.conf.{TAP}.router_solicitation_delay=0")
            self.sh("ip", "link", "set", TAP, "address", "52:54:00:12:34:56", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def sh(self, *argv: str) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            check=True, timeout=20, capture_output=True, text=True,
        )  # fmt: skip
        return done.stdout

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        subprocess.run(["ip", "netns", "del", self.name], check=False, timeout=20)
        shutil.rmtree(self.etc, ignore_errors=True)

    def socket(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        from pyroute2 import netns as pr_netns

        pr_netns.pushns(self.name)
        try:
            return socket.socket(family, kind, proto)
        finally:
            pr_netns.popns()


class Adapter:
    """Tap fd <-> router: frames in with the loop's clock, frames out, one timer; echo
    relay actions through ping sockets opened in ``host`` (if given)."""

    def __init__(self, fd: int, router: Ipv6Router, host: Namespace | None = None) -> None:
        self.fd = fd
        self.router = router
        self.host = host
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.frames_in = 0
        self.pings: dict[tuple[bytes, int], socket.socket] = {}
        self.loop.add_reader(fd, self._readable)
        self._flush()

    def _readable(self) -> None:
        for _ in range(64):
            try:
                frame = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if len(frame) >= 14 and frame[12:14] == b"\x86\xdd" and self.router.accepts(frame):
                self.frames_in += 1
                self.router.input(frame, self.loop.time())
        self._flush()

    def _act(self) -> None:
        actions = list(self.router.actions)
        self.router.actions.clear()
        for action in actions:
            if isinstance(action, PingClose):
                sock = self.pings.pop(action.key, None)
                if sock is not None:
                    self.loop.remove_reader(sock.fileno())
                    sock.close()
                continue
            if self.host is None:
                continue
            sock = self.pings.get(action.key)
            if sock is None:
                sock = self.host.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6)
                sock.setblocking(False)
                self.pings[action.key] = sock
                self.loop.add_reader(sock.fileno(), self._ping_readable, action.key, sock)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, action.hop_limit)
            request = icmp6.echo_request(action.host_id, action.seq, action.payload)
            sock.sendto(request, (action.host, 0))

    def _ping_readable(self, key: tuple[bytes, int], sock: socket.socket) -> None:
        for _ in range(16):
            try:
                data, peer = sock.recvfrom(65536)
            except BlockingIOError:
                break
            reply = icmp6.parse_echo_reply(data)
            if reply is not None:
                self.router.ping_reply(key, peer[0], reply[1], reply[2], self.loop.time())
        self._flush()

    def _flush(self) -> None:
        self._act()
        out = self.router.out
        for frame in out:
            with contextlib.suppress(BlockingIOError):
                os.write(self.fd, frame)
        out.clear()
        if self.timer is not None:
            self.timer.cancel()
        deadline = self.router.next_deadline()
        if deadline is not None:
            self.timer = self.loop.call_at(deadline, self._tick)

    def _tick(self) -> None:
        self.timer = None
        self.router.tick(self.loop.time())
        self._flush()

    def kick(self) -> None:
        """Flush what the test made the router produce."""
        self._flush()

    def close(self) -> None:
        for sock in self.pings.values():
            self.loop.remove_reader(sock.fileno())
            sock.close()
        self.loop.remove_reader(self.fd)
        if self.timer is not None:
            self.timer.cancel()


@pytest.fixture
def ns() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and taps need root")
    with Namespace() as space:
        yield space


@contextlib.asynccontextmanager
async def running(
    space: Namespace, cfg: Ipv6Config, host: Namespace | None = None
) -> AsyncIterator[Adapter]:
    router = Ipv6Router(cfg, now=asyncio.get_running_loop().time())
    adapter = Adapter(space.fd, router, host)
    try:
        yield adapter
    finally:
        adapter.close()


class Named(Protocol):
    """Anything naming a namespace (a :class:`Namespace`, or one made elsewhere)."""

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class NsName:
    name: str


async def run(space: Named, *argv: str, timeout: float = 20) -> tuple[int, str]:
    return await run_in(space.name, *argv, timeout=timeout)


async def addresses(space: Named) -> list[dict[str, object]]:
    _, out = await run(space, "ip", "-6", "-j", "addr", "show", "dev", TAP)
    info = json.loads(out or "[]")
    return [a for dev in info for a in dev.get("addr_info", [])]


async def slaac_address(space: Named, timeout: float = 15) -> str:
    """Wait for a non-tentative address in the prefix on the tap."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while loop.time() < until:
        for a in await addresses(space):
            local = str(a.get("local", ""))
            if ipaddress.ip_address(local) in PREFIX and not a.get("tentative"):
                return local
        await asyncio.sleep(0.2)
    raise AssertionError(f"no SLAAC address in {PREFIX}: {await addresses(space)}")


async def test_slaac_ping_fragments_and_neighbor_resolution(ns: Namespace) -> None:
    cfg = Ipv6Config(mtu=MTU, dnssearch=("test.example",))
    async with running(ns, cfg) as adapter:
        router = adapter.router
        echoed: list[bytes] = []

        def udp_echo(p: Packet6, now: float) -> None:  # the NAT hook: UDP echo on port 7
            sport, dport = struct.unpack_from("!HH", p.payload)
            if p.dst == cfg.host and dport == 7:
                echoed.append(p.payload[8:])
                router.udp_to_guest(p.dst, 7, p.src, sport, p.payload[8:], now)

        router.ip_handlers[pk.IPPROTO_UDP] = udp_echo
        guest = await slaac_address(ns)

        _, routes = await run(ns, "ip", "-6", "-j", "route", "show", "default")
        default = json.loads(routes)
        assert default and default[0]["gateway"] == "fe80::2", routes
        mtu = (await run(ns, "sysctl", "-n", f"net.ipv6.conf.{TAP}.mtu"))[1].strip()
        assert mtu == str(MTU)

        for target in ("fec0::2", "fec0::3", f"fe80::2%{TAP}"):
            code, out = await run(ns, "ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2",
                                  target)  # fmt: skip
            assert code == 0, out
        code, out = await run(ns, "ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2",
                              "-s", "3000", "fec0::2")  # fmt: skip
        assert code == 0 and "3008 bytes from fec0::2" in out, out
        counters = router.counters()
        assert counters["ip6-reassembled"] >= 2 and counters["icmp6-echo-local"] >= 8
        # the kernel's SLAAC address is known by its MAC (learnt from its traffic)
        assert router.neighbors.lookup(a6.parse(guest) or b"") == bytes.fromhex("525400123456")

        # UDP through the handler, both directions
        sock = ns.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        with sock:
            sock.setblocking(False)
            sock.bind((guest, 5555))
            loop = asyncio.get_running_loop()
            await loop.sock_sendto(sock, b"ping over the NAT hook", ("fec0::2", 7))
            data, peer = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 5)
            assert data == b"ping over the NAT hook" and peer[:2] == ("fec0::2", 7)

            # a guest address the router has forgotten: held, solicited, then delivered
            router.neighbors.forget(a6.parse(guest) or b"")
            sent_ns = router.counters().get("ndp-ns-sent", 0)
            router.udp_to_guest(cfg.dns, 53, a6.parse(guest) or b"", 5555, b"after NS", loop.time())
            adapter.kick()
            data, peer = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 5)
            assert data == b"after NS" and peer[:2] == ("fec0::3", 53)
            assert router.counters()["ndp-ns-sent"] == sent_ns + 1
            assert router.counters()["ndp-resolved"] >= 1
        assert router.counters().get("ip6-bad-source", 0) == 0


async def test_echo_relay_through_a_host_ping_socket(ns: Namespace) -> None:
    with Namespace() as host:
        host.sh("ip", "-6", "addr", "add", "2001:db8::1/128", "dev", "lo")
        host.sh("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
        async with running(ns, Ipv6Config(), host) as adapter:
            await slaac_address(ns)
            code, out = await run(ns, "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2",
                                  "-s", "1000", "2001:db8::1")  # fmt: skip
            assert code == 0 and "1008 bytes from 2001:db8::1" in out, out
            counters = adapter.router.counters()
            assert counters["icmp6-echo-relayed"] == 3 and counters["icmp6-echo-replies"] == 3
            assert len(adapter.pings) == 1  # one flow: one guest identifier
            # hop limit 1: Time Exceeded from the router, nothing relayed
            code, out = await run(ns, "ping", "-6", "-n", "-c", "1", "-W", "2", "-t", "1",
                                  "2001:db8::1")  # fmt: skip
            assert code != 0 and "Time exceeded" in out, out
            assert adapter.router.counters()["icmp6-echo-relayed"] == 3


async def test_dad_defends_our_addresses(ns: Namespace) -> None:
    async with running(ns, Ipv6Config()) as adapter:
        await slaac_address(ns)  # the kernel's own addresses pass DAD
        await run(ns, "ip", "-6", "addr", "add", "fec0::3/64", "dev", TAP)
        loop = asyncio.get_running_loop()
        until = loop.time() + 10
        state: dict[str, object] = {}
        while loop.time() < until:
            found = [a for a in await addresses(ns) if a.get("local") == "fec0::3"]
            state = found[0] if found else {}
            if state.get("dadfailed"):
                break
            await asyncio.sleep(0.2)
        assert state.get("dadfailed"), state
        assert adapter.router.counters()["ndp-dad-defended"] >= 1


DHCLIENT_SCRIPT = """#!/bin/sh
echo "reason=$reason addr=$new_ip6_address plen=$new_ip6_prefixlen \
dns=$new_dhcp6_name_servers search=$new_dhcp6_domain_search" >> "{log}"
exit 0
"""


async def dhclient(ns: Namespace, tmp: Path, *flags: str, want: str, timeout: float = 20) -> str:
    """Run ``dhclient -6`` in the foreground until the lease script logged ``want``."""
    log = tmp / "script.log"
    script = tmp / "script.sh"
    script.write_text(DHCLIENT_SCRIPT.format(log=log))
    script.chmod(0o755)
    argv = ["ip", "netns", "exec", ns.name, "dhclient", "-6", "-d", "-1", "-v", "-D", "LL",
            "-sf", str(script), "-lf", str(tmp / "leases"), "-pf", str(tmp / "pid"),
            *flags, TAP]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    try:
        while loop.time() < until and proc.returncode is None:
            text = log.read_text() if log.exists() else ""
            if want in text:
                return text
            await asyncio.sleep(0.2)
        text = log.read_text() if log.exists() else ""
        if want in text:  # it logged and exited (``-1`` with an Information-Request)
            return text
        err = b""
        if proc.returncode is not None and proc.stderr is not None:
            err = await proc.stderr.read()
        raise AssertionError(f"dhclient did not reach {want}: {text!r} {err.decode()[-2000:]}")
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@pytest.mark.skipif(shutil.which("dhclient") is None, reason="isc-dhcp-client not installed")
async def test_dhclient_stateful_and_stateless(ns: Namespace, tmp_path: Path) -> None:
    cfg = Ipv6Config(dnssearch=("test.example",))
    async with running(ns, cfg) as adapter:
        router = adapter.router
        await slaac_address(ns)
        bound = await dhclient(ns, tmp_path, want="reason=BOUND6")
        line = next(x for x in bound.splitlines() if "reason=BOUND6" in x)
        fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
        assert ipaddress.ip_address(fields["addr"]) in PREFIX
        assert fields["dns"] == "fec0::3" and fields["search"] == "test.example."
        leases = router.leases(asyncio.get_running_loop().time())
        assert [x["ip-address"] for x in leases] == [fields["addr"]]
        assert leases[0]["state"] == "bound" and leases[0]["mac-address"] == "52:54:00:12:34:56"
        granted = [e for e in router.events if e[0] == "DHCP_LEASE_GRANTED"]
        assert granted and granted[0][1]["ip-address"] == fields["addr"]

        # release: dhclient -r sends a Release for the lease in its lease file
        code, out = await run(ns, "dhclient", "-6", "-r", "-v", "-D", "LL", "-sf",
                              str(tmp_path / "script.sh"), "-lf", str(tmp_path / "leases"),
                              "-pf", str(tmp_path / "pid2"), TAP)  # fmt: skip
        assert code == 0, out
        released = [e for e in router.events if e[0] == "DHCP_LEASE_RELEASED"]
        assert released and released[0][1]["reason"] == "release", router.events
        assert router.leases(asyncio.get_running_loop().time()) == []

        info_dir = tmp_path / "stateless"
        info_dir.mkdir()
        # dhclient 4.4 runs its script with reason RENEW6 for an Information-Request reply
        info = await dhclient(ns, info_dir, "-S", want="dns=fec0::3")
        assert "search=test.example." in info and "addr= " in info
        counters = router.counters()
        assert counters["dhcpv6-rx-information-request"] >= 1
        assert counters.get("dhcpv6-invalid", 0) == 0 and counters.get("dhcpv6-malformed", 0) == 0


# -- through the real user netdev ------------------------------------------------------------

#: The guest's client programs (run with this interpreter inside the guest namespace).
GUEST_TCP = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(sys.argv[3].encode() * 20000)
s.shutdown(socket.SHUT_WR)
got = b""
while chunk := s.recv(65536):
    got += chunk
print("TCP", len(got), got[:16].decode())
"""
GUEST_UDP = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
data, peer = s.recvfrom(2048)
print("UDP", data.decode(), peer[0])
"""
GUEST_DNS = """
import socket, struct
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"\\x04host\\x04test\\x00\\x00\\x1c\\x00\\x01"
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, ("fec0::3", 53))
data, peer = s.recvfrom(2048)
answer = socket.inet_ntop(socket.AF_INET6, data[-16:])
print("DNS", hex(struct.unpack("!H", data[:2])[0]), peer[0], peer[1], answer)
"""
REMOTE = "2001:db8::1"
ANSWER = "2001:db8::53"


def dns_answer(query: bytes) -> bytes:
    """An AAAA answer (``ANSWER``) to ``query`` (the question copied, name compressed)."""
    head = struct.pack("!HHHHHH", struct.unpack("!H", query[:2])[0], 0x8180, 1, 1, 0, 0)
    rdata = socket.inet_pton(socket.AF_INET6, ANSWER)
    record = struct.pack("!HHHIH", 0xC00C, 28, 1, 60, 16) + rdata
    return head + query[12:] + record


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run this thread (the event loop's) in namespace ``name``: every socket the daemon
    opens for the NAT is made there."""
    from pyroute2 import netns as pr_netns

    pr_netns.pushns(name)
    try:
        yield
    finally:
        pr_netns.popns()


@pytest.mark.parametrize("echo", ["ping", "raw"])
async def test_a_namespace_served_by_the_user_netdev(echo: str) -> None:
    """The real UserNetClient behind a tap (vnet_hdr) in a namespace: SLAAC, ping to the
    gateway and beyond (the echo relay, through ICMPv6 ping sockets when
    ``net.ipv4.ping_group_range`` allows them, else a raw socket), TCP to ::1 via fec0::2
    and directly to a remote address, UDP, DNS at fec0::3, the guest's address in the
    lease view. The daemon's own side runs in a second namespace (``REMOTE`` on its
    loopback) so nothing here depends on the host's IPv6."""
    from drivers import registry
    from netstack.daemon import Netstack
    from netstack.qapi import parse_netdev_cli
    from tests.kit.netns import ip, netns, require_root

    require_root()
    loop = asyncio.get_running_loop()
    with netns("g6") as guest_ns, netns("h6") as host_ns:
        ip("-n", host_ns, "-6", "addr", "add", f"{REMOTE}/128", "dev", "lo")
        groups = "0 2147483647" if echo == "ping" else "1 0"
        await run(NsName(host_ns), "sysctl", "-qw", f"net.ipv4.ping_group_range={groups}")
        guest = NsName(guest_ns)
        await run(guest, "sysctl", "-qw", "net.ipv6.conf.default.router_solicitation_delay=0")
        with in_netns(host_ns):
            # the host side: a TCP upper-casing echo on ::1 and on REMOTE, UDP echo on
            # REMOTE, a DNS upstream on ::1
            async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                data = await r.read()
                w.write(data.upper())
                await w.drain()
                w.close()

            loopback = await asyncio.start_server(serve, "::1", 0)
            remote = await asyncio.start_server(serve, REMOTE, 0)
            udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            udp.bind((REMOTE, 0))
            udp.setblocking(False)
            dns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            dns.bind(("::1", 0))
            dns.setblocking(False)

            def udp_echo() -> None:
                with contextlib.suppress(BlockingIOError):
                    data, peer = udp.recvfrom(2048)
                    udp.sendto(data[::-1], peer)

            def dns_serve() -> None:
                with contextlib.suppress(BlockingIOError):
                    data, peer = dns.recvfrom(2048)
                    dns.sendto(dns_answer(data), peer)

            loop.add_reader(udp.fileno(), udp_echo)
            loop.add_reader(dns.fileno(), dns_serve)
            daemon = Netstack(registry())
            try:
                for spec in (
                    f"user,id=nat0,x-dns-upstream=[::1]:{dns.getsockname()[1]}",
                    f"tap,id=t0,ifname={TAP},script=no,downscript=no,vnet_hdr=on,"
                    f"x-netns={guest_ns}",
                    "hubport,id=h0,hubid=0,netdev=nat0",
                    "hubport,id=h1,hubid=0,netdev=t0",
                ):
                    await daemon.netdev_add(parse_netdev_cli(spec))
                ip("-n", guest_ns, "link", "set", TAP, "address", "52:54:00:12:34:56", "up")
                address = await slaac_address(guest)
                _, routes = await run(guest, "ip", "-6", "-j", "route", "show", "default")
                assert json.loads(routes)[0]["gateway"] == "fe80::2", routes

                for target in ("fec0::2", REMOTE):
                    code, out = await run(guest, "ping", "-6", "-n", "-c", "2", "-i", "0.2",
                                          "-W", "2", target)  # fmt: skip
                    assert code == 0, out
                lport = loopback.sockets[0].getsockname()[1]
                rport = remote.sockets[0].getsockname()[1]
                for dst, port, word in (("fec0::2", lport, "loop"), (REMOTE, rport, "far")):
                    code, out = await run(guest, sys.executable, "-c", GUEST_TCP, dst,
                                          str(port), word)  # fmt: skip
                    assert code == 0 and f"TCP {len(word) * 20000} {word.upper() * 4}" in out, out
                code, out = await run(guest, sys.executable, "-c", GUEST_UDP, REMOTE,
                                      str(udp.getsockname()[1]), "datagram")  # fmt: skip
                assert code == 0 and f"UDP margatad {REMOTE}" in out, out
                code, out = await run(guest, sys.executable, "-c", GUEST_DNS)
                assert code == 0 and f"DNS 0x4242 fec0::3 53 {ANSWER}" in out, out

                user = daemon.find_netdev("nat0")
                assert user is not None and user.v6.icmp_mode == echo  # type: ignore[attr-defined]
                counters = user.counters()  # type: ignore[attr-defined]
                assert counters["icmp6-echo-local"] >= 2 and counters["icmp6-echo-replies"] >= 2
                assert counters["tcp-connects"] == 2 and counters["dns6-answers"] == 1
                assert counters.get("internal-error", 0) == 0
                mac = bytes.fromhex("525400123456")
                (nat0,) = user_control.user_netdevs(daemon, "nat0")
                assert (address, 64) in user_control.addresses_for(nat0, mac)
            finally:
                loop.remove_reader(udp.fileno())
                loop.remove_reader(dns.fileno())
                udp.close()
                dns.close()
                loopback.close()
                remote.close()
                await daemon.close()
