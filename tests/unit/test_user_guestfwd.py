"""guestfwd and restrict=on of the user netdev, in-process: a small guest TCP stack (the
project's own :class:`TcpEndpoint` as a client, peered with the user netdev) plays the
guest; real chardevs, real child processes and real loopback servers play the host.

Covers: the splicer adopting a pre-connected socket; rule errors with QEMU's texts and
nothing left behind; ``cmd:`` rules (a child per connection, its stdio the connection,
reaped when it exits, killed and reaped at netdev_del, the per-netdev child limit);
chardev rules (one chardev stream shared by the rule's connections: writes from all,
reads to the newest; FIN when the chardev's peer leaves); ARP/echo ownership of the
guestfwd address; rules added and removed at run time; restrict=on (outbound refused,
guestfwd allowed, replies to UDP hostfwd flows pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

import drivers.user as user
from drivers import hubport
from drivers.user import control as user_control
from drivers.user.client import UserNetClient
from drivers.user.tcp import (
    Event,
    Segment,
    State,
    TcpConfig,
    TcpEndpoint,
    ethernet_header,
    parse_frame,
)
from netstack import qapi
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.net.nic import NicClient
from netstack.proto.tcp import RST, SYN
from tests.kit.polling import until
from tests.unit.test_user_tcp_splice import GuestSide

GW_MAC = bytes.fromhex("52550a000202")
GUEST_MAC = bytes.fromhex("525400123456")
GUEST_MAC_TEXT = "52:54:00:12:34:56"
GUEST = socket.inet_aton("10.0.2.15")
FWD = "10.0.2.100"


# -- a guest TCP stack -----------------------------------------------------------------------


class Conn:
    """One guest connection (client side)."""

    def __init__(self, stack: GuestStack, ep: TcpEndpoint) -> None:
        self.stack = stack
        self.ep = ep
        self.got = bytearray()
        self.reset = False

    def write(self, data: bytes) -> None:
        assert len(data) <= self.ep.host_read_room
        self.ep.host_data(data, self.stack.loop.time())
        self.stack.pump()

    def fin(self) -> None:
        self.ep.host_eof(self.stack.loop.time())
        self.stack.pump()

    def abort(self) -> None:
        self.ep.abort(self.stack.loop.time())
        self.stack.pump()

    @property
    def established(self) -> bool:
        return self.ep.state in (State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2,
                                 State.CLOSE_WAIT, State.LAST_ACK)  # fmt: skip


class GuestStack(NetClient):
    """A guest with TCP clients, peered directly with a user netdev."""

    type = "test-guest"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__("guest")
        self.loop = loop
        self.cfg = TcpConfig(time_wait=0.1)
        self.conns: dict[int, Conn] = {}
        self.out: list[bytes] = []
        self.frames: list[bytes] = []
        self._next_port = 40000
        self.ticker = loop.create_task(self._tick())

    def open(self, dst: str, dport: int) -> Conn:
        self._next_port += 1
        l2 = ethernet_header(GW_MAC, GUEST_MAC, False)
        now = self.loop.time()
        ep = TcpEndpoint.connect(GUEST, socket.inet_aton(dst), self._next_port, dport, now,
                                 config=self.cfg, l2=l2, out=self.out)  # fmt: skip
        conn = self.conns[self._next_port] = Conn(self, ep)
        self.pump()
        return conn

    def pump(self) -> None:
        if self.out:
            frames = self.out[:]
            self.out.clear()
            self.send(frames)

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        now = self.loop.time()
        for f in frames:
            self.frames.append(bytes(f))
            seg = parse_frame(f, vnet)
            if not isinstance(seg, Segment) or seg.dst != GUEST:
                continue
            conn = self.conns.get(seg.dport)
            if conn is None:
                continue
            if seg.flags & RST:
                conn.reset = True
            if not conn.ep.done:
                conn.ep.segment_from_guest(seg, now)
        for conn in self.conns.values():
            ep = conn.ep
            if ep.done:
                continue
            ep.flush(now)
            n = ep.host_pending
            if n:
                conn.got += b"".join(bytes(c) for c in ep.host_chunks(10_000))
                ep.host_written(n, now)
        self.loop.call_soon(self.pump)
        return len(frames)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            now = self.loop.time()
            for conn in list(self.conns.values()):
                if not conn.ep.done:
                    conn.ep.timer(now)
            self.pump()

    def close(self) -> None:
        self.ticker.cancel()


@contextlib.asynccontextmanager
async def netdev(spec: str, *, chardevs: Sequence[str] = ()) -> AsyncIterator[
    tuple[Netstack, UserNetClient, GuestStack]
]:  # fmt: skip
    ns = Netstack({"user": user.SPEC, "hubport": hubport.SPEC})
    stack = GuestStack(asyncio.get_running_loop())
    try:
        for text in chardevs:
            await ns.chardev_add(qapi.parse_chardev_cli(text), from_cli=True)
        await ns.netdev_add(qapi.parse_netdev_cli(spec))
        client = ns.find_netdev("u0")
        assert isinstance(client, UserNetClient)
        stack.connect(client)
        yield ns, client, stack
    finally:
        stack.close()
        await ns.close()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` still exists (a zombie counts: it was not reaped)."""
    return os.path.exists(f"/proc/{pid}")


async def netdev_error(spec: str, chardevs: Sequence[str] = ()) -> str:
    ns = Netstack({"user": user.SPEC})
    try:
        for text in chardevs:
            await ns.chardev_add(qapi.parse_chardev_cli(text), from_cli=True)
        before = open_fds()
        with pytest.raises(GenericError) as info:
            await ns.netdev_add(qapi.parse_netdev_cli(spec))
        await asyncio.sleep(0.05)  # background chardev closes
        assert ns.find_netdev("u0") is None
        assert open_fds() <= before, "an fd was left behind"
        return str(info.value.desc)
    finally:
        await ns.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the splicer adopts a connected socket -----------------------------------------------------


async def test_splicer_adopts_a_preconnected_socket() -> None:
    loop = asyncio.get_running_loop()
    far: list[socket.socket] = []

    def resolve(seg: Segment) -> socket.socket:
        ours, theirs = socket.socketpair()
        far.append(ours)
        return theirs

    g = GuestSide(loop, {"resolve": resolve})
    try:
        ep = g.connect(7)
        # answered without a connect: SYN-ACK at once
        await until(lambda: ep.state.name == "ESTABLISHED")
        assert g.splicer.stats["adopted"] == 1 and g.splicer.stats.get("connects", 0) == 0
        ep.host_data(b"ping", loop.time())
        g.pump()
        (other,) = far
        other.settimeout(3)
        assert other.recv(100) == b"ping"
        other.sendall(b"pong")
        await until(lambda: bytes(g.got) == b"pong")
        other.close()  # the far end closes: FIN to the guest
        await until(lambda: ep.rx.fin_rcvd)
        ep.host_eof(loop.time())
        g.pump()
        await until(lambda: not g.splicer.flows)
    finally:
        g.close()


# -- rule errors --------------------------------------------------------------------------------


async def test_rule_errors_and_nothing_left_behind() -> None:
    rule = "tcp:10.0.2.100:80-cmd:true"
    # QEMU processes the rules last to first: the first one given is the conflicting one
    assert await netdev_error(f"user,id=u0,guestfwd={rule},guestfwd=::80-cmd:x,"
                              "guestfwd=tcp:10.0.2.100:80-null") == (
        f"Conflicting/invalid host:port in guest forwarding rule '{rule}'"
    )  # fmt: skip
    port = closed_port()
    opening = "Could not open guest forwarding device 'guestfwd.tcp.80'"
    for target in (f"tcp:127.0.0.1:{port}", "bogus", "chardev:nope", "mon:stdio",
                   f"unix:/nonexistent/{port}"):  # fmt: skip
        assert await netdev_error(f"user,id=u0,guestfwd=tcp:{FWD}:80-{target}") == opening
    # a chardev already in use (here by another rule) is QEMU's qemu_chr_fe_init error
    assert (
        await netdev_error(
            f"user,id=u0,guestfwd=tcp:{FWD}:80-chardev:c0,guestfwd=tcp:{FWD}:81-chardev:c0",
            ["null,id=c0"],
        )
        == "Device 'c0' is in use"
    )


# -- cmd: ------------------------------------------------------------------------------------


async def test_cmd_rule_runs_a_child_per_connection() -> None:
    async with netdev(f"user,id=u0,guestfwd=tcp:{FWD}:7-cmd:echo hi $$; exec cat") as (
        _ns, client, stack,
    ):  # fmt: skip
        children = client.guestfwd.children
        a = stack.open(FWD, 7)
        b = stack.open(FWD, 7)
        await until(lambda: a.established and b.established)
        await until(lambda: b"\n" in a.got and b"\n" in b.got)
        pid_a, pid_b = int(a.got.split()[1]), int(b.got.split()[1])
        assert pid_a != pid_b and {pid_a, pid_b} <= set(children.live)
        a.write(b"echo me\n")
        await until(lambda: a.got.endswith(b"echo me\n"))
        # the guest's FIN is the child's EOF: cat exits, its end closes, FIN to the guest
        a.fin()
        await until(lambda: a.ep.done)
        await until(lambda: pid_a not in children.live)
        assert not pid_alive(pid_a)  # reaped, not a zombie
        assert pid_b in children.live
        counters = client.guestfwd.counters()
        assert counters["guestfwd-children"] == 2 and counters["guestfwd-connections"] == 2


async def test_netdev_del_kills_and_reaps_children() -> None:
    async with netdev(f"user,id=u0,guestfwd=tcp:{FWD}:7-cmd:echo $$; exec sleep 60") as (
        ns, client, stack,
    ):  # fmt: skip
        conn = stack.open(FWD, 7)
        await until(lambda: b"\n" in conn.got)
        pid = int(conn.got.split()[0])
        assert pid_alive(pid)
        ns.netdev_del("u0")
        assert not pid_alive(pid)
        assert not client.guestfwd.children.live


async def test_child_limit_refuses_with_rst() -> None:
    async with netdev(f"user,id=u0,guestfwd=tcp:{FWD}:7-cmd:exec sleep 60") as (
        _ns, client, stack,
    ):  # fmt: skip
        client.guestfwd.children.limit = 1
        first = stack.open(FWD, 7)
        await until(lambda: first.established)
        second = stack.open(FWD, 7)
        await until(lambda: second.reset)
        assert client.guestfwd.counters()["guestfwd-children-limit"] == 1


# -- chardevs ----------------------------------------------------------------------------------


class Peer:
    """The host end of a ``tcp:127.0.0.1:PORT`` chardev: accepts its connections."""

    def __init__(self) -> None:
        self.conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.conns.append((r, w))

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for _r, w in self.conns:
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_chardev_rule_shares_one_stream() -> None:
    peer = Peer()
    port = await peer.start()
    try:
        async with netdev(f"user,id=u0,guestfwd=tcp:{FWD}:4321-tcp:127.0.0.1:{port}") as (
            _ns, client, stack,
        ):  # fmt: skip
            await until(lambda: len(peer.conns) == 1)  # opened at creation, as QEMU does
            reader, writer = peer.conns[0]
            fwd = client.guestfwd.forwards[0]
            assert fwd.chardev is not None and fwd.chardev.id == "guestfwd.tcp.4321"
            a = stack.open(FWD, 4321)
            await until(lambda: a.established)
            a.write(b"from a;")
            assert await asyncio.wait_for(reader.readexactly(7), 3) == b"from a;"
            writer.write(b"to a")
            await until(lambda: a.got == b"to a")
            b = stack.open(FWD, 4321)
            await until(lambda: b.established)
            b.write(b"from b;")
            a.write(b"a again;")
            got = await asyncio.wait_for(reader.readexactly(15), 3)
            assert sorted(got.split(b";")) == sorted([b"from b", b"a again", b""])
            writer.write(b"to the newest")  # the newest connection receives
            await until(lambda: b.got == b"to the newest")
            assert a.got == b"to a"
            # the newest half-closes: it still receives (as in QEMU)
            b.fin()
            writer.write(b"; still b")
            await until(lambda: b.got == b"to the newest; still b")
            # the newest leaves: the older one receives again
            b.abort()
            writer.write(b"back to a")
            await until(lambda: a.got == b"to aback to a")
            # the chardev's peer leaves: every guest connection gets our FIN
            writer.close()
            await until(lambda: a.ep.rx.fin_rcvd)
            a.fin()
            await until(lambda: a.ep.done and not client.tcp.flows)
            counters = client.guestfwd.counters()
            assert counters["guestfwd-chardev-connections"] == 2
    finally:
        await peer.close()


async def test_chardev_rule_waits_for_a_listening_chardevs_client(tmp_path: Any) -> None:
    path = tmp_path / "gf.sock"
    async with netdev(f"user,id=u0,guestfwd=tcp:{FWD}:9-unix:{path},,server=on,,wait=off") as (
        _ns, _client, stack,
    ):  # fmt: skip
        a = stack.open(FWD, 9)
        await until(lambda: a.established)
        a.write(b"early bytes")  # held (not read) until the chardev has a client
        reader, writer = await asyncio.open_unix_connection(str(path))
        assert await asyncio.wait_for(reader.readexactly(11), 3) == b"early bytes"
        writer.write(b"reply")
        await until(lambda: a.got == b"reply")
        writer.close()
        await until(lambda: a.ep.rx.fin_rcvd)


async def test_chardev_by_id_is_detached_not_deleted() -> None:
    async with netdev(f"user,id=u0,guestfwd=tcp:{FWD}:9-chardev:r0",
                      chardevs=["ringbuf,id=r0"]) as (ns, client, stack):  # fmt: skip
        dev = ns.chardevs.get("r0")
        assert dev is not None and dev.frontend is client.guestfwd.forwards[0].bridge
        conn = stack.open(FWD, 9)
        await until(lambda: conn.established)
        conn.write(b"into the ring")
        await until(lambda: ns.chardevs.ringbuf_read("r0", 100) == "into the ring")
        ns.netdev_del("u0")
        assert ns.chardevs.get("r0") is dev and dev.frontend is None


# -- ownership of the address, run-time rules --------------------------------------------------


def arp_request(target: str) -> bytes:
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=GUEST_MAC_TEXT)
                 / ARP(op=1, hwsrc=GUEST_MAC_TEXT, psrc="10.0.2.15", pdst=target))  # fmt: skip


def echo_request(target: str) -> bytes:
    return bytes(Ether(dst="52:55:0a:00:02:02", src=GUEST_MAC_TEXT)
                 / IP(src="10.0.2.15", dst=target) / ICMP(id=1, seq=1) / b"x")  # fmt: skip


def replies(stack: GuestStack, want: Callable[[Ether], bool]) -> list[Ether]:
    return [p for p in map(Ether, stack.frames) if want(p)]


async def test_address_ownership_and_runtime_rules() -> None:
    async with netdev("user,id=u0") as (_ns, client, stack):
        with pytest.raises(GenericError) as info:
            user_control.guestfwd_add(client, "tcp:10.0.2.2:1-cmd:true")
        assert info.value.desc == (
            "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.2:1-cmd:true'"
        )
        with pytest.raises(GenericError) as info:
            user_control.guestfwd_add(client, "udp:10.0.2.100:1-cmd:true")
        assert info.value.desc == ("Invalid guest forwarding rule 'udp:10.0.2.100:1-cmd:true'")
        user_control.guestfwd_add(client, f"tcp:{FWD}:7-cmd:exec cat")
        with pytest.raises(GenericError) as info:
            user_control.guestfwd_add(client, f"tcp:{FWD}:7-null")
        assert info.value.desc == (
            f"Conflicting/invalid host:port in guest forwarding rule 'tcp:{FWD}:7-null'"
        )
        assert [r.text for r in user_control.guestfwd_rules(client)] == [
            f"tcp:{FWD}:7-cmd:exec cat"
        ]
        stack.send([arp_request(FWD), echo_request(FWD)])
        arp = replies(stack, lambda p: ARP in p and p[ARP].op == 2)
        assert [(p[ARP].psrc, p[ARP].hwsrc) for p in arp] == [(FWD, "52:55:0a:00:02:64")]
        assert replies(stack, lambda p: ICMP in p and p[ICMP].type == 0)
        conn = stack.open(FWD, 7)
        await until(lambda: conn.established)
        conn.write(b"x")
        await until(lambda: conn.got == b"x")

        # a chardev spec opens in the background; one that fails is removed again
        user_control.guestfwd_add(client, f"tcp:{FWD}:8-tcp:127.0.0.1:{closed_port()}")
        assert len(user_control.guestfwd_rules(client)) == 2
        await until(lambda: len(user_control.guestfwd_rules(client)) == 1)
        assert client.guestfwd.counters()["guestfwd-open-failed"] == 1

        assert user_control.guestfwd_remove(client, FWD, 7) is True
        assert user_control.guestfwd_remove(client, FWD, 7) is False
        assert user_control.guestfwd_rules(client) == []
        # an established connection of a removed cmd: rule lives on
        conn.write(b"y")
        await until(lambda: conn.got == b"xy")
        stack.frames.clear()
        stack.send([arp_request(FWD), echo_request(FWD)])
        await asyncio.sleep(0.05)
        assert not replies(stack, lambda p: ARP in p or ICMP in p)
        late = stack.open(FWD, 7)  # nobody owns the address any more: refused
        await until(lambda: late.reset)


# -- restrict=on -------------------------------------------------------------------------------


async def test_restrict_refuses_outbound_but_not_guestfwd() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        async with netdev(f"user,id=u0,restrict=on,guestfwd=tcp:{FWD}:7-cmd:exec cat") as (
            _ns, client, stack,
        ):  # fmt: skip
            out = stack.open("10.0.2.2", port)  # a listening host port: still refused
            await until(lambda: out.reset)
            assert any(
                isinstance(seg := parse_frame(f), Segment) and seg.flags & RST
                and not seg.flags & SYN for f in stack.frames
            )  # fmt: skip
            fwd = stack.open(FWD, 7)
            await until(lambda: fwd.established)
            fwd.write(b"allowed")
            await until(lambda: fwd.got == b"allowed")
            assert client.counters()["restrict-refused"] == 1


async def test_restrict_keeps_udp_hostfwd_answers() -> None:
    ns = Netstack({"user": user.SPEC, "hubport": hubport.SPEC})
    try:
        await ns.netdev_add(qapi.parse_netdev_cli(
            "user,id=u0,restrict=on,hostfwd=udp:127.0.0.1:0-:5353"))  # fmt: skip
        client = ns.find_netdev("u0")
        assert isinstance(client, UserNetClient)
        nic = NicClient("nic0", GUEST_MAC)
        nic.connect(client)
        (fwd,) = client.fwd.forwards
        host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        host.bind(("127.0.0.1", 0))
        host.settimeout(3)
        try:
            nic.send([arp_request("10.0.2.2")])  # the gateway learns the guest's MAC
            host.sendto(b"query", fwd.bound)
            for _ in range(300):
                got = [Ether(f) for f in nic.drain()]
                query = [p for p in got if UDP in p and p[UDP].dport == 5353]
                if query:
                    break
                await asyncio.sleep(0.01)
            assert query and query[0][UDP].load == b"query"
            q = query[0]
            nic.send([bytes(Ether(dst="52:55:0a:00:02:02", src=GUEST_MAC_TEXT)
                            / IP(src="10.0.2.15", dst=q[IP].src)
                            / UDP(sport=5353, dport=q[UDP].sport) / b"answer")])  # fmt: skip
            loop = asyncio.get_running_loop()
            data, _ = await loop.run_in_executor(None, host.recvfrom, 100)
            assert data == b"answer"
            # any other guest datagram is still dropped
            nic.send([bytes(Ether(dst="52:55:0a:00:02:02", src=GUEST_MAC_TEXT)
                            / IP(src="10.0.2.15", dst="10.0.2.2")
                            / UDP(sport=5353, dport=9) / b"out")])  # fmt: skip
            assert client.counters()["restrict-dropped"] == 1
        finally:
            host.close()
    finally:
        await ns.close()


async def test_guest_events_never_escape() -> None:
    """A guest connection to a rule whose chardev is being removed, and SYN floods to a
    cmd rule beyond the limit, never raise out of the client."""
    async with netdev(f"user,id=u0,guestfwd=tcp:{FWD}:9-null,guestfwd=tcp:{FWD}:7-cmd:true") as (
        _ns, client, stack,
    ):  # fmt: skip
        conns = [stack.open(FWD, 9) for _ in range(3)]
        await until(lambda: all(c.established for c in conns))
        assert user_control.guestfwd_remove(client, FWD, 9)
        await until(lambda: all(c.ep.rx.fin_rcvd or c.ep.done for c in conns))
        quick = [stack.open(FWD, 7) for _ in range(5)]
        await until(lambda: all(c.ep.rx.fin_rcvd or c.reset for c in quick))
        await until(lambda: not client.guestfwd.children.live)
        assert client.counters().get("internal-error", 0) == 0
        assert not any(e is Event.HOST_ERROR for c in conns for e, _ in c.ep.events)


async def test_runtime_chardev_rule_and_no_fd_left_behind() -> None:
    before = open_fds()
    peer = Peer()
    port = await peer.start()
    try:
        async with netdev(f"user,id=u0,guestfwd=tcp:{FWD}:7-cmd:exec cat") as (
            ns, client, stack,
        ):  # fmt: skip
            user_control.guestfwd_add(client, f"tcp:{FWD}:8-tcp:127.0.0.1:{port}")
            await until(lambda: len(peer.conns) == 1)  # opened in the background
            reader, writer = peer.conns[0]
            a, b = stack.open(FWD, 7), stack.open(FWD, 8)
            await until(lambda: a.established and b.established)
            a.write(b"to cat")
            b.write(b"to the chardev")
            assert await asyncio.wait_for(reader.readexactly(14), 3) == b"to the chardev"
            writer.write(b"from the chardev")
            await until(lambda: a.got == b"to cat" and b.got == b"from the chardev")
            ns.netdev_del("u0")  # live connections, a live child, an open chardev
            assert not client.guestfwd.children.live and not client.tcp.flows
            assert await asyncio.wait_for(reader.read(), 3) == b""  # the chardev closed
    finally:
        await peer.close()
    await asyncio.sleep(0.05)
    assert open_fds() <= before, "an fd was left behind"


async def feed(conn: Conn, data: bytes) -> None:
    """Send ``data`` from the guest as the connection's window allows."""
    sent = 0
    for _ in range(100_000):
        if sent == len(data):
            return
        room = conn.ep.host_read_room
        if room:
            n = min(room, len(data) - sent, 65536)
            conn.write(data[sent : sent + n])
            sent += n
        await asyncio.sleep(0.001)
    raise AssertionError("guest could not send")


async def test_bulk_both_ways_through_chardev_and_cmd() -> None:
    size = 3 << 20
    up, down = os.urandom(size), os.urandom(size)
    peer = Peer()
    port = await peer.start()
    try:
        rules = f"guestfwd=tcp:{FWD}:8-tcp:127.0.0.1:{port},guestfwd=tcp:{FWD}:7-cmd:exec cat"
        async with netdev(f"user,id=u0,{rules}") as (_ns, client, stack):
            await until(lambda: len(peer.conns) == 1)
            reader, writer = peer.conns[0]
            c, e = stack.open(FWD, 8), stack.open(FWD, 7)
            await until(lambda: c.established and e.established)

            async def host_side() -> bytes:
                writer.write(down)
                drained = writer.drain()
                got = await reader.readexactly(size)
                await drained
                return got

            host = asyncio.create_task(host_side())
            await asyncio.gather(feed(c, up), feed(e, up))
            assert await asyncio.wait_for(host, 30) == up  # guest -> chardev, in order
            await until(lambda: len(c.got) == size and len(e.got) == size, 30)
            assert bytes(c.got) == down and bytes(e.got) == up
            assert client.counters().get("internal-error", 0) == 0
    finally:
        await peer.close()
