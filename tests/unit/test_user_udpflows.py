"""The user netdev's UDP flow sockets (``drivers.user.udpflows``), one class for both
families, against the kernel's loopback: a datagram goes out with the guest's TTL / hop
limit, the answer comes back to the flow, an ICMP port unreachable queued by the kernel
(``IP_RECVERR`` / ``IPV6_RECVERR``) reaches the error callback, and closing leaves no fd."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from drivers.user.hostsock import HostError
from drivers.user.udp_nat import UdpSend
from drivers.user.udpflows import UDP4, UDP6, FlowKey, UdpFamily, UdpFlowSockets
from tests.kit.polling import open_fds, until

GUEST: FlowKey = (b"\x0a\x00\x02\x0f", 40000)

FAMILIES = [
    pytest.param(UDP4, socket.AF_INET, "127.0.0.1", socket.IPPROTO_IP, socket.IP_TTL, id="v4"),
    pytest.param(
        UDP6, socket.AF_INET6, "::1", socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, id="v6"
    ),
]


class Owner:
    """What the family's NAT would get."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[FlowKey, str, int, bytes]] = []
        self.errors: list[tuple[FlowKey, HostError]] = []
        self.failed: list[UdpSend] = []
        self.opened_failed: list[FlowKey] = []
        self.flushes = 0
        self.inputs = 0
        self.internal: list[str] = []
        self.host_errors: list[str] = []
        self.counted: list[str] = []

    def flows(self, fam: UdpFamily[Any], loop: asyncio.AbstractEventLoop) -> UdpFlowSockets[Any]:
        def after(now: float) -> None:
            self.inputs += 1

        def flush(now: float) -> None:
            self.flushes += 1

        return UdpFlowSockets(
            fam, loop, self.counted.append, open_failed=self.opened_failed.append,
            send_failed=lambda a, now: self.failed.append(a),
            host_error_in=lambda key, err, now: self.errors.append((key, err)),
            datagram_in=lambda key, host, port, data, now: self.datagrams.append(
                (key, host, port, data)),
            after_input=after, flush=flush,
            host_error=lambda what, exc: self.host_errors.append(what),
            internal_error=self.internal.append,
        )  # fmt: skip


@pytest.mark.parametrize(("fam", "af", "host", "level", "opt"), FAMILIES)
async def test_round_trip_ttl_errors_and_close(
    fam: UdpFamily[Any], af: int, host: str, level: int, opt: int
) -> None:
    loop = asyncio.get_running_loop()
    before = open_fds()
    peer = socket.socket(af, socket.SOCK_DGRAM)
    peer.bind((host, 0))
    peer.setblocking(False)
    port = peer.getsockname()[1]
    owner = Owner()
    flows = owner.flows(fam, loop)
    try:
        flows.send(UdpSend(GUEST, host, port, b"ping", 7), loop.time())
        assert len(flows) == 1 and flows.counters() == {fam.sockets: 1}
        sock = flows.socks[GUEST]
        assert sock.getsockopt(level, opt) == 7
        data, addr = await loop.sock_recvfrom(peer, 100)
        assert data == b"ping"
        peer.sendto(b"pong", addr)
        await until(lambda: owner.datagrams, what="the answer")
        assert owner.datagrams == [(GUEST, host, port, b"pong")]
        assert owner.inputs >= 1 and owner.flushes >= 1
        flows.send(UdpSend(GUEST, host, port, b"again", 300), loop.time())  # TTL clamped
        assert sock.getsockopt(level, opt) == 255
        assert flows.bound(GUEST) == (str(sock.getsockname()[0]), sock.getsockname()[1])

        peer.close()  # now the port is closed: the kernel answers "port unreachable"
        flows.send(UdpSend(GUEST, host, port, b"lost", 64), loop.time())
        await until(lambda: owner.errors, what="the queued ICMP error")
        key, err = owner.errors[0]
        assert key == GUEST and err.port == port and err.head.startswith(b"lost")
        assert not owner.failed and not owner.internal
    finally:
        peer.close()
        flows.close()
    assert len(flows) == 0 and flows.closed
    assert open_fds() == before
    flows.send(UdpSend(GUEST, host, port, b"late", 64), loop.time())  # closed: ignored
    assert len(flows) == 0
