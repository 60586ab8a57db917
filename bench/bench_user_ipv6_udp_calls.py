"""Python calls and CPU per guest IPv6 UDP datagram to the host through the user netdev.

In-process, on one asyncio loop: the guest is a :class:`tests.support.Recorder` peer (the
frame is built with scapy once, outside the counted window); the user netdev NATs each
datagram from the guest to ``fec0::2`` onto a flow socket that reaches a UDP socket bound to
host ``::1`` (drained outside the counted window). One datagram is one
``UserNetClient.receive`` of one frame: the router's checks, the NAT's flow lookup, the
host action in the netdev's outbox and the pump's ``sendto``. Calls are counted with
``sys.setprofile`` over ``--datagrams`` datagrams (Python ``call`` and C ``c_call``
events); CPU is the process time per datagram, ``--rounds`` rounds, median.

    python bench/bench_user_ipv6_udp_calls.py [--datagrams 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import statistics
import sys
import time
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from drivers.user import parse_options
from drivers.user.client import UserNetClient
from netstack import qapi
from tests.support import Recorder

GUEST_MAC = "52:54:00:12:34:56"
ROUTER_MAC = "52:56:00:00:00:02"  # fec0::2
GUEST = "fec0::5054:ff:fe12:3456"


class Counting:
    """A ``sys.setprofile`` hook that counts Python and C calls."""

    def __init__(self) -> None:
        self.py = 0
        self.c = 0

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            self.py += 1
        elif event == "c_call":
            self.c += 1


def drain(sock: socket.socket) -> None:
    for _ in range(100_000):
        try:
            sock.recv(2048)
        except BlockingIOError:
            return


async def run(datagrams: int, rounds: int) -> None:
    netdev = qapi.parse_netdev_cli("user,id=u0,x-dns-upstream=127.0.0.1:9")
    assert isinstance(netdev.options, qapi.NetdevUserOptions)
    loop = asyncio.get_running_loop()
    user = UserNetClient(netdev.id, parse_options(netdev.options), loop, logging.getLogger("b"))
    user.connect(Recorder("guest"))
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as server:
        server.bind(("::1", 0))
        server.setblocking(False)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        port = server.getsockname()[1]
        pkt = Ether(src=GUEST_MAC, dst=ROUTER_MAC) / IPv6(src=GUEST, dst="fec0::2")
        frame = bytes(pkt / UDP(sport=4000, dport=port) / (b"x" * 64))
        for _ in range(200):  # the flow and its socket exist before counting
            user.receive([frame], False)
        drain(server)
        count = Counting()
        sys.setprofile(count)
        for i in range(datagrams):
            user.receive([frame], False)
            if i % 100 == 99:
                sys.setprofile(None)
                drain(server)
                sys.setprofile(count)
        sys.setprofile(None)
        drain(server)
        cpu: list[float] = []
        for _ in range(rounds):
            t0 = time.process_time()
            for i in range(datagrams):
                user.receive([frame], False)
                if i % 100 == 99:
                    drain(server)
            cpu.append((time.process_time() - t0) / datagrams * 1e6)
            drain(server)
        sent = user.counters().get("udp6-flows-opened", 0)
    user.cleanup()
    print(f"per datagram: {count.py / datagrams:.1f} Python calls, {count.c / datagrams:.1f} "
          f"C calls; CPU median {statistics.median(cpu):.2f} us over {rounds} rounds "
          f"({', '.join(f'{x:.2f}' for x in cpu)}); flows opened {sent}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datagrams", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.datagrams, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
