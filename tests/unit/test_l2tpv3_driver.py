"""The l2tpv3 driver on loopback: option checks in QEMU's order and texts, the UDP and raw IP
data paths, batching, back-pressure in both directions, clean-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from drivers import l2tpv3
from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.net.hub import Hub
from netstack.proto.l2tpv3 import L2TPv3Params, L2TPv3Session
from netstack.qapi import NetdevL2TPv3Options, parse_netdev_cli
from tests.kit.clock import run_manual, running
from tests.kit.polling import until
from tests.support import Recorder, frame

pytestmark = pytest.mark.timeout(60)

IS_ROOT = os.geteuid() == 0


class FakeHost:
    """The narrow daemon view a driver gets (DriverHost), with real hubs."""

    def __init__(self) -> None:
        self.hubs: dict[int, Hub] = {}
        self.log_records: list[str] = []
        self._log = logging.getLogger("test.l2tpv3")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    @property
    def runtime_dir(self) -> Path:
        return Path("/tmp")

    @property
    def log(self) -> logging.Logger:
        return self._log

    def hub(self, hub_id: int) -> Hub:
        return self.hubs.setdefault(hub_id, Hub(hub_id))

    def find_netdev(self, name: str) -> NetClient | None:
        return None

    def emit_event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        pass

    def chardev(self, chardev_id: str) -> Any:
        return None


def run(coro: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    """Run a test body on a manual-clock loop (:func:`tests.kit.clock.run_manual`)."""
    run_manual(lambda _loop: coro(), timeout=timeout)


def free_udp_port(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def make(
    spec: str, host: FakeHost | None = None, batch_io: bool | None = None
) -> l2tpv3.L2TPv3Client:
    """A client through the driver's ``create`` (batch_io None) or ``open_client``."""
    netdev = parse_netdev_cli(spec)
    if batch_io is None:
        clients = await l2tpv3.SPEC.create(host or FakeHost(), netdev)
        assert len(clients) == 1
        client = clients[0]
    else:
        opts = netdev.options
        assert isinstance(opts, NetdevL2TPv3Options)
        loop = asyncio.get_running_loop()
        log = logging.getLogger("test.l2tpv3")
        client = await l2tpv3.open_client(netdev.id, opts, loop, log, batch_io=batch_io)
    assert isinstance(client, l2tpv3.L2TPv3Client)
    return client


@contextlib.asynccontextmanager
async def made(spec: str, batch_io: bool | None = None) -> AsyncIterator[l2tpv3.L2TPv3Client]:
    client = await make(spec, batch_io=batch_io)
    try:
        yield client
    finally:
        client.cleanup()


# -- options ---------------------------------------------------------------------------------


ERRORS = [
    ("src=127.0.0.1,dst=127.0.0.1,txsession=1,offset=257", "offset must be less than 256 bytes"),
    (
        "src=127.0.0.1,dst=127.0.0.1,txsession=1,rxcookie=1,offset=300",
        "offset must be less than 256 bytes",  # offset is checked first
    ),
    (
        "src=127.0.0.1,dst=127.0.0.1,txsession=1,rxcookie=1,udp=on",
        "require both 'rxcookie' and 'txcookie' or neither",
    ),
    (
        "src=127.0.0.1,dst=127.0.0.1,txsession=1,txcookie=1",
        "require both 'rxcookie' and 'txcookie' or neither",
    ),
    (
        "src=127.0.0.1,dst=127.0.0.1,txsession=1,udp=on,srcport=1",
        "need both src and dst port for udp",
    ),
    (
        "src=::1,dst=127.0.0.1,txsession=1,udp=on,srcport=0,dstport=2",
        "could not resolve src, errno = Address family for hostname not supported",
    ),
    (
        "src=127.0.0.1,dst=127.0.0.1,txsession=1,udp=on,srcport=nosvc,dstport=2",
        "could not resolve src, errno = Servname not supported for ai_socktype",
    ),
    (
        "src=192.0.2.77,dst=::1,txsession=1,udp=on,srcport=0,dstport=2",
        "could not bind socket err=99",  # bind fails before dst is resolved
    ),
    (
        "src=127.0.0.1,dst=::1,txsession=1,udp=on,srcport=0,dstport=2",
        "could not resolve dst, error = Address family for hostname not supported",
    ),
]


@pytest.mark.parametrize(("opts", "text"), ERRORS)
def test_errors_in_qemu_order(opts: str, text: str) -> None:
    async def body() -> None:
        with pytest.raises(GenericError) as info:
            await make(f"l2tpv3,id=l0,{opts}")
        assert info.value.desc == text

    run(body)


def test_bind_conflict_and_socket_errno() -> None:
    async def body() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            with pytest.raises(GenericError) as info:
                await make(
                    f"l2tpv3,id=l0,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={port},"
                    "dstport=9,txsession=1"
                )
            assert info.value.desc == "could not bind socket err=98"

    run(body)


def test_defaults_and_cookie64_value_is_honoured() -> None:
    def params(extra: str) -> L2TPv3Params:
        netdev = parse_netdev_cli(f"l2tpv3,id=l,src=a,dst=b,txsession=7,{extra}")
        opts = netdev.options
        assert isinstance(opts, NetdevL2TPv3Options)
        return l2tpv3.params_from_options(opts)[0]

    p = params("offset=256")
    assert (p.udp, p.ipv6, p.rxsession, p.cookie_len, p.counter, p.offset) == (
        False, False, 7, 0, False, 256)  # fmt: skip
    assert params("rxsession=9").rxsession == 9
    assert params("rxcookie=1,txcookie=2").cookie_len == 4
    assert params("rxcookie=1,txcookie=2,cookie64=on").cookie_len == 8
    assert params("rxcookie=1,txcookie=2,cookie64=off").cookie_len == 4  # QEMU: 8
    assert params("cookie64=on").cookie_len == 0
    p = params("pincounter=on")
    assert (p.counter, p.pincounter, p.header_len) == (False, True, 4)
    p = params("udp=on,srcport=1,dstport=2,counter=on,ipv6=on")
    assert (p.udp, p.ipv6, p.header_len) == (True, True, 12)


# -- UDP data path ---------------------------------------------------------------------------


def udp_pair_specs(extra: str = "", host: str = "127.0.0.1") -> tuple[str, str, int, int]:
    pa, pb = free_udp_port(host), free_udp_port(host)
    v6 = ",ipv6=on" if ":" in host else ""
    common = f"src={host},dst={host},udp=on{v6}{extra}"
    a = f"l2tpv3,id=a,{common},srcport={pa},dstport={pb},txsession=10,rxsession=20"
    b = f"l2tpv3,id=b,{common},srcport={pb},dstport={pa},txsession=20,rxsession=10"
    return a, b, pa, pb


BATCH_IO = pytest.mark.parametrize("batch_io", [True, False], ids=["mmsg", "plain"])


@BATCH_IO
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
@pytest.mark.parametrize(
    "extra", ["", ",counter=on,offset=3", ",rxcookie=5,txcookie=5,cookie64=on,counter=on"]
)
def test_udp_tunnel_both_ways(host: str, extra: str, batch_io: bool) -> None:
    async def body() -> None:
        spec_a, spec_b, _, _ = udp_pair_specs(extra, host)
        async with made(spec_a, batch_io) as a, made(spec_b, not batch_io) as b:
            assert a.info_str == "l2tpv3: connected"
            assert a.info_line() == "a: index=0,type=l2tpv3,l2tpv3: connected"
            ra, rb = Recorder("ra"), Recorder("rb")
            a.connect(ra)
            b.connect(rb)
            sent = [frame(i, 60 + i) for i in range(10)]
            assert ra.send(sent) == 10
            await until(lambda: len(rb.got) == 10)
            assert rb.got == sent
            back = [frame(100 + i, 1500) for i in range(3)]
            rb.send(back)
            await until(lambda: len(ra.got) == 3)
            assert ra.got == back
            assert a.session.tx_frames == 10 and b.session.rx_frames == 10
            assert a.stats.malformed == 0 and b.stats.malformed == 0

    run(body)


@BATCH_IO
def test_crafted_datagram_arrives_byte_exact_and_bad_ones_are_counted(
    caplog: pytest.LogCaptureFixture, batch_io: bool
) -> None:
    async def body() -> None:
        port, tport = free_udp_port(), free_udp_port()
        spec = (
            f"l2tpv3,id=t,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={port},dstport={tport},"
            "txsession=0xa,rxsession=0xb,txcookie=0x1122334455667788,rxcookie=0x99,cookie64=on,"
            "counter=on"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as test:
            test.bind(("127.0.0.1", tport))
            test.settimeout(5)
            async with made(spec, batch_io) as t:
                rec = Recorder("rec")
                t.connect(rec)
                good = b"\x00\x03\x00\x00" + (0xB).to_bytes(4, "big") + (0x99).to_bytes(8, "big")
                good += b"\xde\xad\xbe\xef"  # counter: ignored on receive
                payload = frame(1, 99)
                wrong_session = good[:4] + b"\x00\x00\x00\x0c" + good[8:] + payload
                wrong_cookie = good[:8] + bytes(8) + good[16:] + payload
                for dgram in (wrong_session, good + payload, wrong_cookie, good):
                    test.sendto(dgram, ("127.0.0.1", port))
                await until(lambda: t.session.drops.total == 3)
                assert rec.got == [payload]
                d = t.counters()
                assert (d["drop-session-mismatch"], d["drop-unknown-cookie-id"]) == (1, 1)
                assert d["drop-short-datagram"] == 1 and t.stats.malformed == 3
                assert "l2tpv3 t: session mismatch" in caplog.text  # the first drop, once
                assert "unknown cookie id" not in caplog.text
                # later drops: one summary per LOG_INTERVAL, the first after it has passed
                test.sendto(wrong_cookie, ("127.0.0.1", port))
                await until(lambda: t.session.drops.total == 4)
                assert "since the last report" not in caplog.text
                await running().advance(l2tpv3.LOG_INTERVAL)
                test.sendto(wrong_session, ("127.0.0.1", port))
                await until(lambda: t.session.drops.total == 5)
                assert caplog.text.count("since the last report") == 1
                assert (
                    "(totals: unknown cookie id: 2, session mismatch: 2, short datagram: 1)"
                    in caplog.text
                )
                rec.send([payload, payload])
                for seq in (1, 2):
                    data = await asyncio.to_thread(test.recv, 65536)
                    assert (
                        data
                        == b"\x00\x03\x00\x00\x00\x00\x00\x0a"
                        + (0x1122334455667788).to_bytes(8, "big")
                        + seq.to_bytes(4, "big")
                        + payload
                    )

    with caplog.at_level(logging.WARNING, logger="test.l2tpv3"):
        run(body)


class BatchRecorder(Recorder):
    def __init__(self, name: str, capacity: int | None = None) -> None:
        super().__init__(name, capacity)
        self.batches: list[int] = []

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        taken = super().receive(frames, vnet)
        self.batches.append(taken)
        return taken


@BATCH_IO
def test_reader_drains_batches_of_at_most_64(batch_io: bool) -> None:
    async def body() -> None:
        _, spec_b, _, pb = udp_pair_specs()
        async with made(spec_b, batch_io) as b:
            rec = BatchRecorder("rec")
            b.connect(rec)
            sender = L2TPv3Session(L2TPv3Params(udp=True, ipv6=False, txsession=10, rxsession=20))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(150):  # all queued in the socket before the loop looks
                    s.sendto(sender.encapsulate(frame(i)), ("127.0.0.1", pb))
                await until(lambda: len(rec.got) == 150)
            assert rec.got == [frame(i) for i in range(150)]
            assert rec.batches[:3] == [64, 64, 22]

    run(body)


@BATCH_IO
def test_receiver_backpressure_pauses_reading_until_flushed(batch_io: bool) -> None:
    async def body() -> None:
        _, spec_b, _, pb = udp_pair_specs()
        async with made(spec_b, batch_io) as b:
            rec = Recorder("rec", capacity=5)
            b.connect(rec)
            sender = L2TPv3Session(L2TPv3Params(udp=True, ipv6=False, txsession=10, rxsession=20))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(20):
                    s.sendto(sender.encapsulate(frame(i)), ("127.0.0.1", pb))
                await until(lambda: len(rec.got) == 5)
                await running().settle()
                # the rest of the first batch waits in the queue; the socket is not read
                assert len(rec.got) == 5 and len(rec.incoming) == 15
                for i in range(20, 30):
                    s.sendto(sender.encapsulate(frame(i)), ("127.0.0.1", pb))
                await running().settle()
                assert len(rec.incoming) == 15 and b.session.rx_frames == 20
                rec.make_room(100)
                await until(lambda: len(rec.got) == 30)
            assert rec.got == [frame(i) for i in range(30)]

    run(body)


class FlakySocket:
    """A UDP socket whose sendmsg reports EAGAIN for a while (injected transport)."""

    def __init__(self, real: socket.socket, fail_after: int, failures: int) -> None:
        self.real = real
        self.fail_after = fail_after
        self.failures = failures
        self.calls = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def recv_into(self, buf: bytearray) -> int:
        return self.real.recv_into(buf)

    def sendmsg(self, bufs: Sequence[bytes], anc: Any, flags: int, addr: Any) -> int:
        self.calls += 1
        if self.calls > self.fail_after and self.failures > 0:
            self.failures -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        if self.calls == 2:
            raise OSError(90, "Message too long")  # a hard error drops just that frame
        return self.real.sendmsg(bufs, anc, flags, addr)

    def close(self) -> None:
        self.real.close()


def test_transmit_eagain_queues_and_writer_flushes() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        real.bind(("127.0.0.1", 0))
        real.setblocking(False)
        flaky = FlakySocket(real, fail_after=3, failures=1)
        session = L2TPv3Session(
            L2TPv3Params(udp=True, ipv6=False, txsession=1, rxsession=1, counter=True)
        )
        client = l2tpv3.L2TPv3Client(
            "t",
            flaky,  # type: ignore[arg-type]
            rx.getsockname(),
            session,
            loop,
            logging.getLogger("test.l2tpv3"),
            batch_io=False,
        )
        client.start()
        try:
            src = Recorder("src")
            src.connect(client)
            frames = [frame(i) for i in range(6)]
            assert src.send(frames) == 3  # #2 failed hard, #4 hit EAGAIN
            assert client.receive_disabled and len(client.incoming) == 3
            assert client.tx_errors == 1 and client.stats.tx_dropped == 1
            await until(lambda: len(client.incoming) == 0)
            got = [await asyncio.to_thread(rx.recv, 2048) for _ in range(5)]
            assert [g[12:] for g in got] == [frames[i] for i in (0, 2, 3, 4, 5)]
            # counters: the dropped frame used one value, the EAGAIN one did not
            assert [int.from_bytes(g[8:12], "big") for g in got] == [1, 3, 4, 5, 6]
            assert not client.receive_disabled
        finally:
            client.cleanup()
            rx.close()

    run(body)


def test_cleanup_closes_socket_and_tolerates_late_callbacks() -> None:
    async def body() -> None:
        spec_a, _, pa, _ = udp_pair_specs()
        client = await make(spec_a)
        peer = Recorder("p")
        client.connect(peer)
        client.cleanup()
        client.cleanup()
        assert client.receive([frame(0)], False) == 1
        # the port is free again
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", pa))

    run(body)


def test_hub_joins_two_tunnels() -> None:
    async def body() -> None:
        host = FakeHost()
        a1, b1, _, _ = udp_pair_specs()
        a2, b2, _, _ = udp_pair_specs()
        x = await make(a1.replace("id=a", "id=x"), host)
        y = await make(a2.replace("id=a", "id=y"), host)
        far1 = await make(b1, host)
        far2 = await make(b2.replace("id=b", "id=c"), host)
        try:
            hub = host.hub(0)
            hub.add_port("px").connect(x)
            hub.add_port("py").connect(y)
            r1, r2 = Recorder("r1"), Recorder("r2")
            far1.connect(r1)
            far2.connect(r2)
            r1.send([frame(1)])
            await until(lambda: len(r2.got) == 1)
            r2.send([frame(2)])
            await until(lambda: len(r1.got) == 1)
            assert r2.got == [frame(1)] and r1.got == [frame(2)]
        finally:
            for c in (x, y, far1, far2):
                c.cleanup()

    run(body)


# -- raw IP mode (needs CAP_NET_RAW) ---------------------------------------------------------


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="raw sockets need root")
@BATCH_IO
@pytest.mark.parametrize(
    ("addr_a", "addr_b", "v6"),
    [("127.0.0.1", "127.0.0.2", ""), ("::1", "::1", ",ipv6=on")],
)
def test_raw_ip_tunnel(addr_a: str, addr_b: str, v6: str, batch_io: bool) -> None:
    async def body() -> None:
        # Distinct sessions: on ::1 each end also receives its own packets and must drop them.
        a_spec = f"l2tpv3,id=a,src={addr_a},dst={addr_b},txsession=0x101,rxsession=0x202{v6}"
        b_spec = f"l2tpv3,id=b,src={addr_b},dst={addr_a},txsession=0x202,rxsession=0x101{v6}"
        async with made(a_spec, batch_io) as a, made(b_spec, batch_io) as b:
            ra, rb = Recorder("ra"), Recorder("rb")
            a.connect(ra)
            b.connect(rb)
            sent = [frame(i, 200) for i in range(5)]
            ra.send(sent)
            await until(lambda: len(rb.got) == 5)
            rb.send([frame(9)])
            await until(lambda: len(ra.got) == 1)
            await running().settle()
            assert rb.got == sent and ra.got == [frame(9)]
            if v6:  # each saw its own transmissions and dropped them as foreign sessions
                assert a.session.drops.bad_session >= 5 and b.session.drops.bad_session >= 1

    run(body)


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="raw sockets need root")
@BATCH_IO
def test_raw_ipv4_with_ip_options_is_parsed_by_ihl(batch_io: bool) -> None:
    async def body() -> None:
        spec = "l2tpv3,id=r,src=127.0.0.3,dst=127.0.0.4,txsession=0x77"
        async with made(spec, batch_io) as r:
            rec = Recorder("rec")
            r.connect(rec)
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, 115) as s:
                # IP options: NOP NOP NOP EOL (4 bytes) -> IHL 6
                s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, b"\x01\x01\x01\x00")
                s.sendto((0x77).to_bytes(4, "big") + frame(5), ("127.0.0.3", 0))
                await until(lambda: len(rec.got) == 1)
            assert rec.got == [frame(5)]

    run(body)


def test_mmsg_transmit_backpressure_on_a_full_peer_queue() -> None:
    """sendmmsg stops at EAGAIN (a unix datagram peer whose queue is full stands in for a
    full socket buffer); the rest waits in the core and the writer flushes it in order."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        mine.setblocking(False)
        theirs.setblocking(False)
        session = L2TPv3Session(
            L2TPv3Params(udp=True, ipv6=False, txsession=1, rxsession=1, counter=True)
        )
        client = l2tpv3.L2TPv3Client(
            "u",
            mine,
            None,  # type: ignore[arg-type]  # connected: no destination address
            session,
            loop,
            logging.getLogger("test.l2tpv3"),
            batch_io=True,
        )
        client.start()
        try:
            src = Recorder("src")
            src.connect(client)
            frames = [frame(i, 100) for i in range(300)]
            taken = src.send(frames)
            assert 0 < taken < 300 and client.receive_disabled
            got: list[bytes] = []

            def drain() -> None:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        got.append(theirs.recv(4096))

            def drained() -> bool:
                drain()
                return len(got) >= 300

            await until(drained)
            assert [g[12:] for g in got] == frames
            assert [int.from_bytes(g[8:12], "big") for g in got] == list(range(1, 301))
            assert not client.receive_disabled and session.tx_frames == 300
        finally:
            client.cleanup()
            theirs.close()

    run(body)


def test_through_the_daemon_netdev_add_info_network_and_del() -> None:
    from drivers import hubport
    from netstack.daemon import Netstack
    from netstack.qapi import check_id

    async def body() -> None:
        ns = Netstack({"l2tpv3": l2tpv3.SPEC, "hubport": hubport.SPEC})
        port = free_udp_port()
        spec = (
            f"l2tpv3,id=l0,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={port},dstport=9,txsession=1"
        )
        try:
            for text in (spec, "hubport,id=h0,hubid=0,netdev=l0"):
                netdev = parse_netdev_cli(text)
                check_id(netdev.id)
                await ns.netdev_add(netdev)
            assert ns.info_network() == (
                "hub 0\n \\ h0: l0: index=0,type=l2tpv3,l2tpv3: connected\n"
            )
            with pytest.raises(GenericError, match="Duplicate ID 'l0'"):
                await ns.netdev_add(parse_netdev_cli(spec))
            ns.netdev_del("l0")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))  # the netdev's socket is closed
        finally:
            await ns.close()

    run(body)


@BATCH_IO
def test_garbage_datagrams_are_counted_and_the_tunnel_keeps_working(batch_io: bool) -> None:
    async def body() -> None:
        rng = random.Random(1234)
        _, spec_b, _, pb = udp_pair_specs(",rxcookie=0x5eed,txcookie=1")
        async with made(spec_b, batch_io) as b:
            rec = Recorder("rec")
            b.connect(rec)
            good = L2TPv3Session(
                L2TPv3Params(
                    udp=True, ipv6=False, txsession=10, rxsession=20,
                    cookie_len=4, txcookie=0x5EED,
                )
            )  # fmt: skip
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for i in range(200):
                    s.sendto(rng.randbytes(rng.randrange(0, 80)), ("127.0.0.1", pb))
                    if i % 20 == 0:
                        s.sendto(good.encapsulate(frame(i)), ("127.0.0.1", pb))
                await until(lambda: b.session.drops.total + len(rec.got) == 210)
            assert rec.got == [frame(i) for i in range(0, 200, 20)]
            assert b.stats.malformed == 200 and b.rx_errors == 0

    run(body)
