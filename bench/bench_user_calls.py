"""Python function calls per TCP request/response exchange through the user netdev.

In-process, on one asyncio loop: a NIC stand-in on hub 0 plays the guest (frames built
with scapy outside the counted window), a ``user`` netdev on the same hub splices the
guest's connection to an echo server on host 127.0.0.1 (a thread, blocking sockets: not
counted). One exchange is one guest frame carrying ``--size`` bytes (and the ACK of the
previous answer) into the hub, the user netdev's ``sendmsg`` to the host socket, the
echo read back on the loop and the guest-bound frame delivered to the NIC. The count is
taken with ``sys.setprofile`` on the loop's thread over ``--exchanges`` exchanges and
divided: Python-level calls (``call`` events) and calls into C (``c_call``), the asyncio
loop's own work included. ``--cpu`` measures the process CPU time per exchange instead
(no profiling; the echo thread's CPU included; the scapy work between exchanges not).

    python bench/bench_user_calls.py [--exchanges 2000] [--size 1] [--cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

import drivers
from netstack import qapi
from netstack.daemon import Netstack
from netstack.net.nic import NicClient

MAC = bytes.fromhex("525400123456")
MAC_TEXT = "52:54:00:12:34:56"
ROUTER_MAC = "52:55:0a:00:02:02"
GUEST = "10.0.2.15"
HOST = "10.0.2.2"
SPORT = 40000


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


class GuestNic(NicClient):
    """The guest: wakes the bench when a frame with TCP payload arrives."""

    def __init__(self) -> None:
        super().__init__("nic0", MAC)
        self.waiter: asyncio.Future[None] | None = None

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        took = super().receive(frames, vnet)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        return took


def echo_server() -> int:
    ls = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = ls.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn, contextlib.suppress(ConnectionResetError):  # the bench ends with a RST
            while data := conn.recv(65536):
                conn.sendall(data)
        ls.close()

    threading.Thread(target=serve, daemon=True).start()
    port: int = ls.getsockname()[1]
    return port


def frame(port: int, flags: str, seq: int, ack: int, payload: bytes = b"") -> bytes:
    return bytes(
        Ether(dst=ROUTER_MAC, src=MAC_TEXT)
        / IP(src=GUEST, dst=HOST)
        / TCP(sport=SPORT, dport=port, seq=seq, ack=ack, flags=flags, window=65535)
        / payload
    )


async def next_segment(nic: GuestNic, timeout: float = 5.0) -> tuple[TCP, int]:
    """The next guest-bound TCP segment and its payload length (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in nic.drain():
            pkt = Ether(raw)
            if TCP in pkt:
                seg: TCP = pkt[TCP]
                return seg, int(pkt[IP].len) - 4 * int(pkt[IP].ihl) - 4 * int(seg.dataofs)
        loop = asyncio.get_running_loop()
        nic.waiter = loop.create_future()
        try:
            await asyncio.wait_for(nic.waiter, max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            pass
        finally:
            nic.waiter = None
    raise RuntimeError("no segment from the user netdev")


async def run(exchanges: int, size: int, profile: bool = True) -> tuple[Counting, float]:
    ns = Netstack(drivers.registry())
    await ns.netdev_add(qapi.parse_netdev_cli("user,id=u0"))
    await ns.netdev_add(qapi.parse_netdev_cli("hubport,id=hu,hubid=0,netdev=u0"))
    nic = GuestNic()
    ns.add_client(nic)
    ns.hub(0).add_port("hn").connect(nic)
    port = echo_server()
    seq = 1000
    nic.send([frame(port, "S", seq, 0)])
    synack, _ = await next_segment(nic)
    seq += 1
    ack = (synack.seq + 1) & 0xFFFFFFFF
    message = b"x" * size
    counting = Counting()
    elapsed = 0.0
    for _ in range(exchanges):
        data = frame(port, "PA", seq, ack, message)
        loop = asyncio.get_running_loop()
        nic.waiter = loop.create_future()
        t0 = time.process_time()
        if profile:
            sys.setprofile(counting)
        nic.send([data])
        await nic.waiter
        if profile:
            sys.setprofile(None)
        elapsed += time.process_time() - t0
        nic.waiter = None
        seq += size
        got = 0
        while got < size:
            seg, length = await next_segment(nic)
            got += length
            ack = (seg.seq + length) & 0xFFFFFFFF
    nic.send([frame(port, "RA", seq, ack)])
    await ns.close()
    return counting, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exchanges", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1)
    parser.add_argument(
        "--cpu", action="store_true", help="no counting: process CPU per exchange only"
    )
    args = parser.parse_args()
    counting, elapsed = asyncio.run(run(args.exchanges, args.size, profile=not args.cpu))
    n = args.exchanges
    if args.cpu:
        print(f"{n} exchanges of {args.size} B: {1e6 * elapsed / n:.1f} us of CPU each")
        return 0
    print(
        f"{n} exchanges of {args.size} B: {counting.py / n:.0f} Python calls and "
        f"{counting.c / n:.0f} C calls per exchange ({1e6 * elapsed / n:.0f} us of CPU "
        "each, profiled)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
