"""Sans-IO parts of the service modules, and their thin adapters on real sockets: socket
activation's environment and matching, sd_notify datagrams, the metrics endpoint's HTTP
handling of good and hostile requests, and the capture's view of offloaded frames."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

import drivers
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.filters import wireview
from netstack.proto import vnet
from netstack.proto.checksum import fold, ones_sum
from netstack.qapi import parse_netdev_cli
from netstack.service.activation import ActivationError, ListenFds, parse_environ
from netstack.service.metrics_http import MAX_HEAD, Endpoint, MetricsServer, parse_endpoint
from netstack.service.notify import Notifier, message, socket_address, watchdog_interval
from tests.kit.clock import ManualLoop, run_manual

# -- activation ------------------------------------------------------------------------------


def test_parse_environ() -> None:
    assert parse_environ({}, 10) == []
    assert parse_environ({"LISTEN_PID": "9", "LISTEN_FDS": "2"}, 10) == []  # not ours
    env = {"LISTEN_PID": "10", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "qmp::vhost0"}
    assert parse_environ(env, 10) == [(3, "qmp"), (4, "unknown"), (5, "vhost0")]
    assert parse_environ({"LISTEN_PID": "10", "LISTEN_FDS": "2"}, 10) == [
        (3, "unknown"), (4, "unknown")
    ]  # fmt: skip
    with pytest.raises(ActivationError):
        parse_environ({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, 10)
    with pytest.raises(ActivationError):
        parse_environ({"LISTEN_PID": "10", "LISTEN_FDS": "100000"}, 10)


def test_from_environ_removes_the_variables() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a"}
    assert len(ListenFds.from_environ(env)) == 0
    assert env == {}
    env = {"LISTEN_PID": "nonsense", "LISTEN_FDS": "1"}
    assert len(ListenFds.from_environ(env)) == 0  # logged and ignored


def test_take_by_name_path_and_port(tmp_path: Path) -> None:
    path = str(tmp_path / "a.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    unix.listen()
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    port = str(tcp.getsockname()[1])
    named = socket.socket(socket.AF_UNIX)
    named.bind(str(tmp_path / "b.sock"))
    named.listen()
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    fds = ListenFds([(unix.detach(), "unknown"), (tcp.detach(), "unknown"),
                     (named.detach(), "vhost0"), (idle.detach(), "dgram")])  # fmt: skip
    assert fds.take("nothing", unix_path=str(tmp_path / "c.sock")) is None
    got = fds.take("vhost0", unix_path="/elsewhere")
    assert got is not None and got.getsockname() == str(tmp_path / "b.sock")
    got.close()
    got = fds.take("x", inet=("localhost", port))
    assert got is not None and got.getsockname()[1] == int(port)
    got.close()
    got = fds.take("y", unix_path=path)
    assert got is not None and not got.getblocking()
    got.close()
    with pytest.raises(GenericError, match="not a listening stream socket"):
        fds.take("dgram")
    assert fds.close_unclaimed() == []


# -- sd_notify -------------------------------------------------------------------------------


def test_notify_formats() -> None:
    assert message(READY=1, STATUS="a\nb") == b"READY=1\nSTATUS=a b"
    assert socket_address("@sd") == b"\0sd"
    assert socket_address("/run/x") == "/run/x"
    assert socket_address("vsock:2:3") is None
    assert watchdog_interval({"WATCHDOG_USEC": "3000000"}, 5) == 1.5
    assert watchdog_interval({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "6"}, 5) is None
    assert watchdog_interval({"WATCHDOG_USEC": "zero"}, 5) is None
    assert watchdog_interval({}, 5) is None


def test_notifier_abstract_socket_and_watchdog() -> None:
    run_manual(notifier_abstract_socket_and_watchdog)


async def notifier_abstract_socket_and_watchdog(loop: ManualLoop) -> None:
    name = f"netstack-test-{os.getpid()}"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(b"\0" + name.encode())
    manager.setblocking(False)
    env = {"NOTIFY_SOCKET": f"@{name}", "WATCHDOG_USEC": "100000"}
    notifier = Notifier(env)
    assert env == {}  # children never see it
    try:
        notifier.ready("running")
        await loop.advance(0.17)
        assert loop.pending == pytest.approx([loop.time() + 0.03])  # 50 ms after the last ping
        notifier.stopping()
        assert loop.pending == []
        got = []
        while True:
            try:
                got.append(manager.recv(100))
            except BlockingIOError:
                break
    finally:
        notifier.close()
        manager.close()
    assert got[0] == b"READY=1\nSTATUS=running"
    assert got[1:-1] == [b"WATCHDOG=1"] * 4  # at once, then every 50 ms
    assert got[-1] == b"STOPPING=1\nSTATUS=stopping"


def test_notifier_without_manager_is_silent() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
    notifier.ready("x")  # logged once, no exception
    notifier.status("y")
    assert notifier.sent == 0
    assert not Notifier({}).enabled


# -- metrics endpoint --------------------------------------------------------------------------


def test_parse_endpoint() -> None:
    assert parse_endpoint("unix:/run/m.sock") == Endpoint("unix", path="/run/m.sock")
    assert parse_endpoint("tcp:127.0.0.1:9464") == Endpoint("tcp", host="127.0.0.1", port=9464)
    assert parse_endpoint("tcp:[::1]:9464") == Endpoint("tcp", host="::1", port=9464)
    assert str(parse_endpoint("tcp:[::1]:9464")) == "tcp:[::1]:9464"
    for bad in ("", "unix:", "tcp:1.2.3.4", "tcp::80", "tcp:h:0", "tcp:h:99999", "udp:h:1"):
        with pytest.raises(GenericError, match="expected unix:PATH or tcp:HOST:PORT"):
            parse_endpoint(bad)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[MetricsServer]:
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    for text in ("user,id=u0", "hubport,id=h0,hubid=0,netdev=u0", "hubport,id=h1,hubid=0"):
        await ns.netdev_add(parse_netdev_cli(text))
    srv = MetricsServer(ns, Endpoint("unix", path=str(tmp_path / "m.sock")))
    await srv.start()
    yield srv
    await srv.close()
    await ns.close()
    assert not (tmp_path / "m.sock").exists()


async def exchange(srv: MetricsServer, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(srv.endpoint.path)
    writer.write(data)
    writer.write_eof()
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return out


async def test_scrape_parses(server: MetricsServer) -> None:
    assert oct(os.stat(server.endpoint.path).st_mode & 0o777) == "0o600"
    out = await exchange(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    rx = families["netstack_netdev_rx_frames"]
    assert rx.type == "counter"
    assert {s.labels["netdev"] for s in rx.samples} == {"u0", "h0", "h1"}
    assert families["netstack_hub_ports"].samples[0].value == 2
    flows = families["netstack_nat_flows"].samples
    assert {s.labels["protocol"] for s in flows} == {"tcp", "udp", "icmp"}
    assert families["netstack_user_tcp_flows"].type == "gauge"


async def test_hostile_requests(server: MetricsServer) -> None:
    cases = [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET /metrics SPDY/9\r\n\r\n", b"400"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"400"),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"GET /nope HTTP/1.0\r\n\r\n", b"404"),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n", b"431"),
        (b"GET /metrics HTTP/1.1\r\n", b"400"),  # incomplete, then EOF
        (b"\xff\xfe\x00 \x00 \x00\r\n\r\n", b"400"),
    ]
    for request, code in cases:
        out = await exchange(server, request)
        assert out[9:12] == code, (request[:40], out[:80])
    # Two requests on one kept-alive connection, HEAD without a body; still serving.
    out = await exchange(
        server,
        b"HEAD /metrics HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 200 OK") == 2 and out.endswith(b"/metrics\n")
    out = await exchange(server, b"GET /metrics HTTP/1.0\r\n\r\n")
    body = out.partition(b"\r\n\r\n")[2].decode()
    requests = {
        s.labels["code"]: s.value
        for f in text_string_to_metric_families(body)
        if f.name == "netstack_metrics_requests"
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert requests == {"400": 5, "404": 1, "405": 1, "431": 1, "200": 2}


async def test_openmetrics_negotiated(server: MetricsServer) -> None:
    out = await exchange(
        server,
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert b"Content-Type: application/openmetrics-text" in out
    assert out.rstrip().endswith(b"# EOF")


# -- the capture's view of offloads --------------------------------------------------------------


def offloaded(wire: bytes, mss: int) -> bytes:
    """``wire`` (a correct Ether/IPv4/TCP or UDP frame) as a sender with offloads hands it
    over: the L4 checksum field holds the pseudo-header sum, a vnet header in front."""
    ihl = (wire[14] & 0x0F) * 4
    l4 = 14 + ihl
    proto = wire[23]
    length = len(wire) - l4
    pseudo = ones_sum(wire[26:34]) + proto + length
    off = 16 if proto == 6 else 6
    data = bytearray(wire)
    struct.pack_into("!H", data, l4 + off, fold(pseudo))
    gso = vnet.GSO_TCPV4 if proto == 6 and length - 20 > mss else vnet.GSO_NONE
    hdr = vnet.pack(vnet.NEEDS_CSUM, gso, l4 + 20, mss if gso else 0, l4, off)
    return hdr + bytes(data)


def test_completed_restores_the_checksums() -> None:
    tcp = bytes(Ether() / IP(src="10.0.2.2", dst="10.0.2.15") / TCP(flags="PA") / (b"x" * 4000))
    udp = bytes(Ether() / IP(src="10.0.2.2", dst="10.0.2.15") / UDP(sport=53) / b"answer")
    plain = bytes(Ether() / IP() / b"ip only")
    frames = [offloaded(tcp, 1000), offloaded(udp, 0), vnet.PLAIN_HDR + plain]
    assert frames[0][vnet.HDR_LEN :] != tcp  # the offloaded form differs from the wire's
    assert [bytes(f) for f in wireview.completed(frames)] == [tcp, udp, plain]


def test_segmented_cuts_super_frames_to_the_mss() -> None:
    tcp = bytes(Ether() / IP(src="10.0.2.2", dst="10.0.2.15") / TCP(flags="PA") / (b"y" * 2500))
    out = [bytes(f) for f in wireview.segmented([offloaded(tcp, 1000)])]
    assert [len(f) - 54 for f in out] == [1000, 1000, 500]
    for f in out:
        pkt = Ether(f)
        got = (pkt[IP].chksum, pkt[TCP].chksum)
        del pkt[IP].chksum, pkt[TCP].chksum
        again = Ether(bytes(pkt))
        assert got == (again[IP].chksum, again[TCP].chksum)


def test_inconsistent_offload_fields_are_shown_not_dropped() -> None:
    frame = bytes(Ether() / IP() / TCP())
    bad = vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_NONE, 0, 0, 5000, 16) + frame
    assert [bytes(f) for f in wireview.completed([bad])] == [frame]
    bad_gso = vnet.pack(vnet.NEEDS_CSUM, vnet.GSO_TCPV4, 0, 0, 34, 16) + frame  # gso_size 0
    assert [bytes(f) for f in wireview.segmented([bad_gso])] == [frame]
