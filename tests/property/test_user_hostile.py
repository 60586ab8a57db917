"""Hostile input to the user netdev's TCP/IPv6/forwarding surface - TCP NAT with offloads, IPv6,
guestfwd and the QMP forward/connection commands - fed to a real in-process user netdev
(:mod:`tests.property.hostile_rig`: a Netstack with ``u0`` on hub 0 and a guest NIC that
takes virtio-net headers, in a network namespace of its own when root).

The house rule under test: bad input from a hostile guest or QMP client is rejected,
counted and logged; never an exception to the loop, never a crash, never an fd leak, and
everyone else keeps being served. After every hypothesis example :meth:`Rig.check` asserts
it (no internal error counted, nothing in the loop's exception handler, ARP/NS/ping of the
gateway answered on IPv4 and IPv6, every offloaded frame sent well formed, fds bounded by
the live flows); every rig closes with no fd left behind.

Guest frames: random bytes; mutated valid frames (byte-flipped, truncated, extended, with
or without checksums fixed up); bogus virtio-net headers on TCP, UDP and non-IP frames;
TSO super-frames whose IP total length / payload length disagree with the frame; IPv6
extension header chains; TCP option garbage on SYNs, data/ACK segments (SACK blocks while
data is in flight) and on the guest's SYN-ACK of a hostfwd connection. guestfwd ``cmd:``:
children that exit at once, never read, flood; more connections than the child limit; no
zombies (``/proc``), no fd left. guestfwd to a chardev: connections sharing it opened,
fed, half-closed, reset in any order while its peer writes and leaves and the rule goes.
Out of fds: RST, no leak. QMP: a table of hostile requests with the exact error each
gets, and generated ones.

``HOSTILE_SCALE`` (environment) multiplies the example counts for a longer hunt.
The last tests pin bugs this suite found (thousands of digits in ports and masks,
malformed brackets, a zero guest address), since fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import socket
from collections.abc import Iterator, Sequence
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from drivers.user import control as user_control
from netstack import limits
from netstack.proto import vnet
from netstack.proto.checksum import finish, ones_sum
from tests.kit.polling import open_fds, until
from tests.property.hostile_input import (
    DOFF,
    FWD_ADD,
    FWD_DEL,
    HOSTILE_QMP,
    QMP_CALLS,
    U16S,
    Mutation,
    gf,
    hf,
    mutate,
    mutations,
    random_frames,
    rm,
    safe_arguments,
    tcp_options,
    templates,
    v6_chain_frames,
    vnet_headers,
)
from tests.property.hostile_rig import (
    FWD,
    GUEST4,
    Flow,
    Qmp,
    Rig,
    Sandbox,
    gone,
    our_zombies,
    rig_of,
)

pytestmark = pytest.mark.timeout(300)

_SCALE: Final = float(os.environ.get("HOSTILE_SCALE", "1"))
#: The splicer's buffer per direction (``TcpConfig.rcvbuf``/``sndbuf``), its out-of-order
#: allowance and one super-frame.
BUFFER_BOUND: Final = (4 << 20) + (1 << 20) + 65536


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * _SCALE)), deadline=None,
                    suppress_health_check=list(HealthCheck))  # fmt: skip


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox()
    try:
        yield box
    finally:
        box.close()


@pytest.fixture(scope="module")
def rig(sandbox: Sandbox) -> Iterator[Rig]:
    with rig_of(sandbox) as r:
        yield r


def needs_netns(box: Sandbox) -> None:
    if not box.netns:
        pytest.skip("needs a network namespace of its own (root)")


def run(rig: Rig, frames: Sequence[bytes], vnet_flag: bool = False) -> None:
    """Send one example's frames, let the loop run, check the invariants."""

    async def example() -> None:
        await rig.send(frames, vnet_flag)
        await rig.check()

    rig.box.run(example())


# -- guest frames ----------------------------------------------------------------------------


@examples(600)
@given(st.lists(random_frames(), min_size=1, max_size=8))
def test_random_bytes(rig: Rig, frames: list[bytes]) -> None:
    run(rig, frames)


@examples(600)
@given(st.lists(st.tuples(st.integers(0, 10_000), mutations(), st.booleans()), min_size=1,
                max_size=6))  # fmt: skip
def test_mutated_frames(rig: Rig, picks: list[tuple[int, list[Mutation], bool]]) -> None:
    """Valid frames of every kind, byte-flipped, truncated, extended (checksums fixed up
    or not)."""
    base = templates(rig.echo.port, rig.closed_port)
    run(rig, [mutate(base[i % len(base)], muts, fix) for i, muts, fix in picks])


@examples(500)
@given(st.lists(st.tuples(vnet_headers(), st.integers(0, 10_000), mutations()), min_size=1,
                max_size=6), st.booleans())  # fmt: skip
def test_vnet_headers(
    rig: Rig, picks: list[tuple[bytes, int, list[Mutation]]], mutated: bool
) -> None:
    """Bogus virtio-net headers (flags, gso_type, gso_size, hdr_len, csum_start,
    csum_offset) on TCP, UDP and non-IP frames, and frames shorter than a header."""
    base = templates(rig.echo.port, rig.closed_port)
    frames = [hdr + (mutate(base[i % len(base)], muts, False) if mutated else base[i % len(base)])
              for hdr, i, muts in picks]  # fmt: skip
    run(rig, [*frames, b"", b"\x01", vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4)], True)


@examples(600)
@given(st.lists(v6_chain_frames(), min_size=1, max_size=6), st.booleans())
def test_ipv6_extension_chains(rig: Rig, frames: list[bytes], offload: bool) -> None:
    """Chains of Hop-by-Hop, Routing, Fragment, Destination Options, AH/ESP-like and
    unknown headers with lying lengths and odd options in front of TCP, UDP, ICMPv6, no
    next header or junk; also behind a virtio-net header asking for checksum offload."""
    if offload:
        hdr = vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 54, 16)
        run(rig, [hdr + f for f in frames], True)
    else:
        run(rig, frames)


# -- guest TCP on live connections -----------------------------------------------------------

TARGETS: Final = st.sampled_from(["echo4", "echo6", "guestfwd"])


def flow_to(rig: Rig, target: str) -> Flow:
    """A flow to the echo server over IPv4 or IPv6, or to the guestfwd ``cmd:exec cat``."""
    if target == "guestfwd":
        return Flow(rig, False, FWD, 7)
    assume(rig.box.netns)  # the echo server is reachable only from a namespace of our own
    if target == "echo6":
        return Flow(rig, True, "fec0::2", rig.echo.port)
    return Flow(rig, False, "10.0.2.2", rig.echo.port)


@examples(150)
@given(
    target=TARGETS,
    size=st.integers(1, 30_000),
    length=st.one_of(st.just("true"), st.just(0), st.integers(-200, 200), st.integers(0, 0xFFFF)),
    cut=st.one_of(st.none(), st.integers(-2000, 2000)),
    fix_ip=st.booleans(),
    gso=st.sampled_from([vnet.GSO_TCPV4, vnet.GSO_TCPV6, vnet.GSO_NONE, vnet.GSO_UDP_L4]),
    gso_size=st.one_of(st.sampled_from([1, 536, 1460, 9000, 0xFFFF, 0]), st.integers(0, 0xFFFF)),
    hdr_len=U16S,
)
def test_tso_lengths_lie(
    rig: Rig, target: str, size: int, length: int | str, cut: int | None, fix_ip: bool,
    gso: int, gso_size: int, hdr_len: int,
) -> None:  # fmt: skip
    """TSO super-frames on an established flow whose IP total length (IPv4) or payload
    length (IPv6) disagree with the frame, the frame cut short or padded, the GSO type
    and sizes odd."""
    flow = flow_to(rig, target)

    async def example() -> None:
        assert await flow.open(), "the netdev refused a connection it should take"
        frame = bytearray(flow.frame("PA", bytes(i & 0xFF for i in range(size))))
        field = 18 if flow.v6 else 16
        value = int.from_bytes(frame[field : field + 2], "big")
        if isinstance(length, int):
            value = value + length if -200 <= length <= 200 and length else length
        frame[field : field + 2] = (value & 0xFFFF).to_bytes(2, "big")
        if not flow.v6 and fix_ip:
            frame[24:26] = b"\0\0"
            frame[24:26] = finish(ones_sum(bytes(frame[14:34]))).to_bytes(2, "big")
        if cut is not None:
            frame = frame[:cut] if cut < 0 else frame + bytes(cut)
        hdr = vnet.pack(vnet.NEEDS_CSUM, gso, hdr_len, gso_size, flow.at, 16)
        await rig.send([hdr + bytes(frame)], True)
        await flow.abort()
        await rig.check()

    rig.box.run(example())


@examples(150)
@given(
    target=TARGETS,
    syn_opts=tcp_options(),
    syn_doff=DOFF,
    acks=st.lists(st.tuples(tcp_options(), DOFF, st.integers(-70000, 70000)), max_size=4),
)
def test_tcp_option_garbage(
    rig: Rig, target: str, syn_opts: bytes, syn_doff: int | None,
    acks: list[tuple[bytes, int | None, int]],
) -> None:  # fmt: skip
    """Garbage options on a guest SYN, then (if a connection came of it) on ACK segments
    while the netdev has data in flight (SACK blocks included), with odd ACK numbers."""
    flow = flow_to(rig, target)

    async def example() -> None:
        await rig.send([flow.raw(0x02, syn_opts, syn_doff)])
        tcp = b""
        if syn_doff is None or 5 <= syn_doff <= (20 + len(syn_opts)) // 4:  # else dropped
            tcp = await flow.reply(lambda fl: bool(fl & 0x06))
        if tcp and tcp[13] & 0x12 == 0x12:
            flow.synced(tcp)
            await rig.send([flow.frame("PA", b"x" * 3000)])  # echoed: data in flight
            flow.seq += 3000
            for opts, doff, delta in acks:
                await rig.send([flow.raw(0x10, opts, doff, ack=flow.ack + delta)])
            await flow.abort()
        await rig.check()

    rig.box.run(example())


@examples(60)
@given(opts=tcp_options(), doff=DOFF, then=st.sampled_from(["data", "rst", "nothing"]))
def test_syn_ack_option_garbage(rig: Rig, opts: bytes, doff: int | None, then: str) -> None:
    """A hostfwd connection: the guest's SYN-ACK to the netdev's SYN carries garbage."""
    needs_netns(rig.box)
    (fwd,) = [f for f in user_control.forwards(rig.client) if f["type"] == "hostfwd"]

    async def example() -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", fwd["host-port"])
        try:
            syn = await rig.wait_for(lambda f: len(f) >= 54 and f[23] == 6 and f[47] == 0x02
                                     and f[36:38] == b"\x00\x50")  # fmt: skip
            guest = Flow(rig, False, "10.0.2.2", int.from_bytes(syn[34:36], "big"))
            guest.sport, guest.seq = 80, 7000
            guest.ack = (int.from_bytes(syn[38:42], "big") + 1) & 0xFFFFFFFF
            await rig.send([guest.raw(0x12, opts, doff)])
            guest.seq += 1
            if then == "data":
                await rig.send([guest.frame("PA", b"hello")])
            elif then == "rst":
                await rig.send([guest.raw(0x04, ack=0)])
        finally:
            writer.close()
        await rig.check()

    rig.box.run(example())


# -- guestfwd cmd: children ------------------------------------------------------------------


def gf_spec(*commands: str) -> str:
    """A user netdev with one ``cmd:`` guestfwd per command, on FWD ports 7, 8, ..."""
    return "user,id=u0,x-dns-upstream=127.0.0.1:53," + ",".join(
        f"guestfwd=tcp:{FWD}:{port}-cmd:{cmd}" for port, cmd in enumerate(commands, 7)
    )


def flow_row(rig: Rig, flow: Flow) -> dict[str, Any]:
    (row,) = [c for c in user_control.connections(rig.client) if c.get("guest-port") == flow.sport]
    return row


def test_guestfwd_children_that_exit_at_once(sandbox: Sandbox) -> None:
    """``exit 0``, a command that does not exist, and one that closes its end of the
    connection but lives on: guest data after the handshake is no error, each connection
    gets our FIN, every exited child is reaped and netdev_del ends the one left."""
    spec = gf_spec("exit 0", "/nonexistent/command", "exec sleep 30 <&- >&- 2>&-")
    with rig_of(sandbox, spec) as rig:

        async def body() -> None:
            children = rig.client.guestfwd.children
            pids: list[int] = []
            for port in (7, 7, 7, 8, 8, 9):
                flow = Flow(rig, False, FWD, port)
                assert await flow.open()
                pids.extend(pid for pid in children.live if pid not in pids)
                await rig.send([flow.frame("PA", b"data for a child that is gone" * 40)])
                flow.seq += 29 * 40
                await flow.reply(lambda fl: bool(fl & 0x05))  # its FIN (or an RST)
                await flow.abort()
            await until(lambda: len(children.live) == 1)  # the sleeper lives on
            await rig.check()
            assert not our_zombies() and gone(pids[:-1])
            assert rig.ns is not None
            rig.ns.netdev_del("u0")
            assert gone(pids) and not our_zombies()

        sandbox.run(body())


def test_guestfwd_child_that_never_reads(sandbox: Sandbox) -> None:
    """The guest pushes 8 MiB of TSO super-frames at a child that never reads: what the
    netdev holds stays within its buffer (the rest is out of window), everyone else is
    served; netdev_del kills and reaps the child."""
    with rig_of(sandbox, gf_spec("exec sleep 30")) as rig:

        async def body() -> None:
            flow = Flow(rig, False, FWD, 7)
            assert await flow.open()
            (pid,) = rig.client.guestfwd.children.live
            chunk = bytes(65000)
            hdr = vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 54, 1460, 34, 16)
            for _ in range((8 << 20) // len(chunk) + 1):
                await rig.send([hdr + flow.frame("A", chunk)], True)
                flow.seq += len(chunk)
            await asyncio.sleep(0.1)
            assert 0 < flow_row(rig, flow)["recv-q"] <= BUFFER_BOUND
            await rig.check()
            assert rig.ns is not None
            rig.ns.netdev_del("u0")
            assert gone([pid]) and not our_zombies()

        sandbox.run(body())


def test_guestfwd_child_that_floods(sandbox: Sandbox) -> None:
    """A child writing without end (``yes``) to a guest that never acknowledges: the
    netdev stops reading it once its buffer is full and keeps serving; when the guest
    resets, the child dies of EPIPE and is reaped."""
    with rig_of(sandbox, gf_spec("exec yes")) as rig:

        async def body() -> None:
            flow = Flow(rig, False, FWD, 7)
            assert await flow.open()
            (pid,) = rig.client.guestfwd.children.live
            held = -1
            for _ in range(50):  # until the netdev stops reading the child
                await asyncio.sleep(0.1)
                queued, held = held, flow_row(rig, flow)["send-q"]
                if queued == held:
                    break
            assert 0 < held <= BUFFER_BOUND
            await rig.check()
            await flow.abort()
            await until(lambda: not rig.client.guestfwd.children.live)
            assert gone([pid]) and not our_zombies()
            await rig.check()

        sandbox.run(body())


def test_guestfwd_more_connections_than_children(sandbox: Sandbox) -> None:
    """70 connections at once to a ``cmd:`` rule: 64 children (the limit), RST for the
    other 6; once they end, connections are taken again; nothing left behind."""
    with rig_of(sandbox, gf_spec("exec cat")) as rig:

        async def body() -> None:
            children = rig.client.guestfwd.children
            flows = [Flow(rig, False, FWD, 7) for _ in range(70)]
            await rig.send([f.frame("S") for f in flows])
            answered = []
            for flow in flows:
                tcp = await flow.reply(lambda fl: bool(fl & 0x06))
                if tcp[13] & 0x04:
                    continue
                flow.synced(tcp)
                answered.append(flow)
            assert len(answered) == 64
            assert rig.client.guestfwd.counters()["guestfwd-children-limit"] == 6
            pids = list(children.live)
            assert len(pids) == 64
            await rig.check()
            await rig.send([f.frame("R") for f in answered])
            await until(lambda: not children.live)
            assert gone(pids) and not our_zombies()
            again = Flow(rig, False, FWD, 7)
            assert await again.open()
            await rig.send([again.frame("PA", b"still here")])
            assert (await again.reply(lambda fl: bool(fl & 0x08))).endswith(b"still here")
            await again.abort()
            await rig.check()

        sandbox.run(body())


# -- guestfwd chardev ------------------------------------------------------------------------


class ChardevPeer:
    """The far end of a guestfwd chardev ``tcp:127.0.0.1:PORT``: takes its connection,
    reads what comes (and closes at its end), writes to it, closes it."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.writers.append(w)
            with contextlib.suppress(OSError):
                while await r.read(1 << 20):
                    pass
            w.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


CHARDEV_OPS: Final = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.just(0)),
        st.tuples(st.sampled_from(["data", "fin", "rst", "ack"]), st.integers(0, 5)),
        st.tuples(st.just("peer"), st.integers(1, 600_000)),
        st.tuples(st.sampled_from(["peer-close", "remove-rule"]), st.just(0)),
    ),
    min_size=1,
    max_size=14,
)


@examples(40)
@given(ops=CHARDEV_OPS, size=st.integers(1, 300_000))
def test_guestfwd_chardev_sharing(sandbox: Sandbox, ops: list[tuple[str, int]], size: int) -> None:
    """A chardev rule shared by several guest connections: opened, fed, half-closed,
    reset, acknowledged in any order, while the chardev's peer writes and goes away and
    the rule is removed under them."""
    peer = ChardevPeer()
    sandbox.run(peer.start())
    try:
        with rig_of(sandbox, gf_spec() + f"guestfwd=tcp:{FWD}:9-tcp:127.0.0.1:{peer.port}") as rig:

            async def body() -> None:
                await until(lambda: bool(peer.writers))
                flows: list[Flow] = []
                hdr = vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 54, 1460, 34, 16)
                for op, i in ops:
                    flow = flows[i % len(flows)] if flows else None
                    if op == "open":
                        flow = Flow(rig, False, FWD, 9)
                        await rig.send([flow.frame("S")])
                        tcp = await flow.reply(lambda fl: bool(fl & 0x06))
                        if not tcp[13] & 0x04:
                            flow.synced(tcp)
                            flows.append(flow)
                    elif op == "peer" and peer.writers and not peer.writers[-1].is_closing():
                        peer.writers[-1].write(bytes(i))
                    elif op == "peer-close" and peer.writers:
                        peer.writers[-1].close()
                    elif op == "remove-rule":
                        user_control.guestfwd_remove(rig.client, FWD, 9)
                    elif flow is None:
                        continue
                    elif op == "data":
                        for at in range(0, size, 65000):
                            chunk = bytes(min(65000, size - at))
                            await rig.send([hdr + flow.frame("A", chunk)], True)
                            flow.seq += len(chunk)
                    elif op == "ack":  # everything seen so far: the window opens
                        flow.ack = max([flow.ack, *(seen_end(flow, f) for f in rig.nic.got)])
                        await rig.send([flow.frame("A")])
                    else:
                        await rig.send([flow.frame("FA" if op == "fin" else "R")])
                        flow.seq += op == "fin"
                    await asyncio.sleep(0.005)
                await rig.check()

            sandbox.run(body())
    finally:
        sandbox.run(peer.close())


def seen_end(flow: Flow, f: bytes) -> int:
    """Where the netdev's data in frame ``f`` ends, if it is of ``flow`` (else 0)."""
    if not flow.mine(f):
        return 0
    at = flow.at
    total = (int.from_bytes(f[16:18], "big") + 14) if not flow.v6 else len(f)
    end = int.from_bytes(f[at + 4 : at + 8], "big") + total - at - (f[at + 12] >> 4) * 4
    return end + (1 if f[at + 13] & 0x01 else 0)


# -- out of file descriptors -----------------------------------------------------------------


def test_out_of_fds(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the process's fd limit nearly reached, a guest opening 40 connections each to
    the host (IPv4 and IPv6), a ``cmd:`` rule and a chardev rule gets RST for those the
    daemon cannot open an fd for; nothing raises, nothing leaks, everyone is served.

    The descriptor reserve is sized from the capacity the daemon found at start (as
    ``netstackd`` does through :func:`netstack.limits.raise_nofile`), not from the lowered
    limit, so what refuses here is the kernel's ``EMFILE``, whatever ran before."""
    needs_netns(sandbox)
    soft0, hard0 = resource.getrlimit(resource.RLIMIT_NOFILE)
    monkeypatch.setattr(
        limits, "_current", limits.FdLimits(soft=soft0, hard=hard0, initial_soft=soft0)
    )
    spec = gf_spec("exec cat") + f",guestfwd=tcp:{FWD}:9-null"
    with rig_of(sandbox, spec) as rig:

        async def body() -> dict[str, str]:
            # a listener that never accepts: connects complete in its backlog, no fd here
            lst4 = socket.create_server(("127.0.0.1", 0), backlog=200)
            port = lst4.getsockname()[1]
            lst6 = socket.create_server(("::1", port), family=socket.AF_INET6, backlog=200)
            targets = {"v4": (False, "10.0.2.2", port), "v6": (True, "fec0::2", port),
                       "cmd": (False, FWD, 7), "chardev": (False, FWD, 9)}  # fmt: skip
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            answers: dict[str, str] = {}
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds(collect=False) + 30, hard))
            try:
                for name, (v6, dst, dport) in targets.items():
                    flows = [Flow(rig, v6, dst, dport) for _ in range(40)]
                    await rig.send([f.frame("S") for f in flows])
                    answers[name] = ""
                    for f in flows:
                        tcp = await f.reply(lambda fl: bool(fl & 0x06))
                        answers[name] += "R" if tcp[13] & 0x04 else "S"
                        f.synced(tcp)
                    await rig.send([f.frame("R") for f in flows])
                    await until(lambda: not user_control.connections(rig.client))
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                lst4.close()
                lst6.close()
            await until(lambda: not rig.client.guestfwd.children.live)
            await rig.check()
            assert not our_zombies()
            return answers

        answers = sandbox.run(body())
    for name, got in answers.items():
        assert "S" in got and "R" in got and len(got) == 40, (name, got)


def test_guestfwd_spawn_of_a_command_with_a_nul(sandbox: Sandbox) -> None:
    """A command no process can run (a NUL in it: refused as a rule, so only reachable
    directly) makes the guest's connection an errno, not an exception; no fd is left."""
    from drivers.user.guestfwd import Children

    async def body() -> None:
        children = Children(asyncio.get_running_loop(), logging.getLogger(__name__))
        before = open_fds(collect=False)
        assert isinstance(children.spawn("cat\x00rm"), int)
        assert open_fds(collect=False) == before and not children.live
        assert children.stats["guestfwd-spawn-failed"] == 1

    sandbox.run(body())


# -- QMP -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qmp(sandbox: Sandbox) -> Iterator[Qmp]:
    q = Qmp(sandbox)
    before = open_fds(collect=False)
    sandbox.run(q.start())
    try:
        yield q
    finally:
        assert q.ns is not None
        sandbox.run(q.ns.close())
    assert open_fds(collect=False) <= before, "an fd was left behind"


def test_qmp_hostile_arguments(qmp: Qmp) -> None:
    """Wrong types, huge and negative ports, bad and bracket-mangled addresses, unknown
    and non-user netdevs, missing and extra members, NUL characters, very long rules:
    every request gets its error with a clear text (QEMU's where QEMU has one), nothing
    is added, and the daemon keeps answering."""
    before = qmp("query-user-forwards")["return"]
    for command, arguments, expected in HOSTILE_QMP:
        reply = qmp(command, arguments)
        assert "error" in reply, (command, arguments, reply)
        got = (reply["error"]["class"], reply["error"]["desc"])
        assert got == expected, (command, arguments)
    qmp.box.run(asyncio.sleep(0.05))  # a background chardev opening would fail by now
    assert qmp("query-user-forwards")["return"] == before
    assert "return" in qmp("query-user-connections")
    assert not qmp.box.loop_errors


@examples(300)
@given(call=QMP_CALLS)
def test_qmp_generated_arguments(qmp: Qmp, call: tuple[str, Any]) -> None:
    """Generated requests (rules from their grammar's pieces): every reply is a return
    or a proper error; what a ``user-forward-add`` added is removed again by what it
    returned; the rule tables end as they started."""
    needs_netns(qmp.box)  # rules bind host ports: only in a namespace of our own
    command, arguments = call
    assume(safe_arguments(arguments))
    before = qmp("query-user-forwards")["return"]
    reply = qmp(command, arguments)
    if command == FWD_ADD and "return" in reply:
        row = reply["return"]
        if row["type"] == "hostfwd":
            selector = rm("hostfwd", protocol=row["protocol"], host_addr=row["host-addr"],
                          host_port=row["host-port"])  # fmt: skip
        else:
            selector = rm("guestfwd", guest_addr=row["guest-addr"], guest_port=row["guest-port"])
        selector["netdev"] = row["netdev"]
        assert qmp(FWD_DEL, selector) == {"return": {}, "id": 1}, (row, selector)
    assert qmp("query-user-forwards")["return"] == before
    assert not qmp.box.loop_errors


# -- bugs found by this suite, fixed ---------------------------------------------------------

DIGITS: Final = "9" * 5000  # beyond Python's int() limit of 4300 decimal digits


def test_qmp_port_with_thousands_of_digits(qmp: Qmp) -> None:
    """QEMU's strtol saturates (ERANGE): a port of 5000 digits is just a bad port."""
    for rule, why in ((f"tcp::{DIGITS}-:22", "Bad host port"),
                      (f"tcp::0-:{DIGITS}", "Bad guest port")):  # fmt: skip
        reply = qmp(FWD_ADD, hf(rule))
        assert reply["error"]["desc"] == f"Invalid host forwarding rule '{rule}' ({why})"
    reply = qmp("netdev_add", {"type": "socket", "id": "s9", "connect": f"127.0.0.1:{DIGITS}"})
    assert reply["error"]["class"] == "GenericError"


def test_qmp_guestfwd_and_netmask_with_thousands_of_digits(qmp: Qmp) -> None:
    rule = f"tcp::{DIGITS}-cmd:true"
    assert qmp(FWD_ADD, gf(rule))["error"]["desc"] == f"Invalid guest forwarding rule '{rule}'"
    reply = qmp("netdev_add", {"type": "user", "id": "u9", "net": f"10.0.2.0/{DIGITS}"})
    assert reply["error"]["desc"] == "Invalid netmask provided (must be in range 4-32)"
    hmp = qmp("human-monitor-command", {"command-line": f"hostfwd_remove u0 tcp::{DIGITS}"})
    assert hmp["return"] == "invalid format\r\n"


def test_qmp_remove_with_malformed_brackets(qmp: Qmp) -> None:
    for addr in ("[::1", "::1]", "[[::1]]", "]::1["):
        reply = qmp(FWD_DEL, rm("hostfwd", host_port=22, host_addr=addr))
        assert reply["error"]["desc"] == "Parameter 'host-addr' expects an IP address", addr


def test_hostfwd_to_guest_address_zero_means_the_dhcp_address(sandbox: Sandbox) -> None:
    needs_netns(sandbox)
    with rig_of(sandbox, "user,id=u0,hostfwd=tcp:127.0.0.1:0-0.0.0.0:22") as rig:

        async def body() -> tuple[str, bytes]:
            await rig.check()  # the liveness probes come from GUEST4: its MAC is learnt
            (fwd,) = user_control.forwards(rig.client)
            _reader, writer = await asyncio.open_connection("127.0.0.1", fwd["host-port"])
            try:
                syn = await rig.wait_for(
                    lambda f: len(f) >= 54 and f[23] == 6 and f[47] == 0x02, timeout=1.0
                )
            finally:
                writer.close()
            return fwd["guest-addr"], syn[30:34]

        listed, syn_dst = sandbox.run(body())
        assert syn_dst == socket.inet_aton(GUEST4) and listed == GUEST4
