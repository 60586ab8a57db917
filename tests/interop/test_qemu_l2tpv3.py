"""l2tpv3 against QEMU 7.2: two guests whose NICs use QEMU's own ``-netdev l2tpv3`` ping
each other through a netstack daemon that joins its two matching l2tpv3 netdevs on hub 0.

Variants: UDP and raw IP (protocol 115, root), each over IPv4 and IPv6 loopback. Link A
uses 64-bit cookies and a running counter, link B 32-bit cookies, a pinned counter and 4
offset bytes. In raw IPv4 mode the guests' QEMUs bind 127.0.0.2 and 127.0.0.3 and the
daemon 127.0.0.1, so each daemon socket also sees the other link's packets; on ::1 every
raw socket sees every packet, its own included. Distinct sessions and cookies keep them
apart: the daemon's drop counters prove that it filtered them, and on ::1 QEMU's stderr
shows that QEMU did too.

A third daemon netdev tunnels to a UDP socket of the test, which plays a host 10.0.0.9:
its crafted ARP and ICMP frames reach guest A byte-exact (checked in a ``filter-dump`` pcap
taken inside guest A's QEMU), and the guest's reply reaches the test byte-exact.

The daemon runs as a subprocess (:data:`RUNNER`, reused by the mesh test); it exits when
its stdin closes, and every process is killed by PID when a test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dpkt
import pytest

from netstack.proto.l2tpv3 import L2TPv3Params, L2TPv3Session
from tools.guest import Guest, GuestImage, virtio_nic_args

REPO = Path(__file__).resolve().parents[2]

RUNNER = r'''
"""A netstack daemon for l2tpv3 tests. argv: -netdev specs. stdin lines: stats | info."""
import asyncio, json, signal, sys


async def main(specs):
    from drivers import hubport, l2tpv3
    from netstack import qapi
    from netstack.daemon import Netstack

    ns = Netstack({"l2tpv3": l2tpv3.SPEC, "hubport": hubport.SPEC})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def control():
        while line := await reader.readline():
            cmd = line.decode().strip()
            if cmd == "stats":
                out = {}
                for nc in ns.clients:
                    entry = nc.stats.as_dict()
                    if hasattr(nc, "counters"):
                        entry.update(nc.counters())
                    out[nc.name] = entry
                print("STATS " + json.dumps(out), flush=True)
            elif cmd == "info":
                print("INFO " + json.dumps(ns.info_network()), flush=True)
        stop.set()  # stdin closed: whoever started us is gone

    try:
        for spec in specs:
            try:
                netdev = qapi.parse_netdev_cli(spec)
                qapi.check_id(netdev.id)
                await ns.netdev_add(netdev)
            except Exception as exc:
                print(f"ERROR {spec}: {getattr(exc, 'desc', exc)}", flush=True)
                return 1
        print("READY", flush=True)
        task = asyncio.create_task(control())
        await stop.wait()
        task.cancel()
    finally:
        await ns.close()
    return 0


sys.exit(asyncio.run(main(sys.argv[1:])))
'''


class Daemon:
    """One netstack daemon process (optionally inside a network namespace)."""

    def __init__(self, specs: Sequence[str], *, netns: str | None = None, name: str = "d"):
        self.specs = list(specs)
        self.netns = netns
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = bytearray()
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self, timeout: float = 20.0) -> None:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.stderr.clear()
        self._lines = asyncio.Queue()
        self.proc = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-c", RUNNER, *self.specs,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=REPO, env=env,
        )  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._read_lines(self.proc.stdout)),
            asyncio.create_task(self._read_err(self.proc.stderr)),
        ]
        line = await self._next_line(timeout)
        if line != "READY":
            await self.kill()
            raise AssertionError(f"daemon {self.name}: {line!r}\n{self.stderr.decode()}")

    async def _read_lines(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            await self._lines.put(raw.decode(errors="replace").rstrip("\n"))
        await self._lines.put("<EOF>")

    async def _read_err(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.stderr.extend(chunk)

    async def _next_line(self, timeout: float) -> str:
        return await asyncio.wait_for(self._lines.get(), timeout)

    async def _ask(self, command: str, tag: str, timeout: float) -> Any:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            line = await self._next_line(max(0.0, deadline - loop.time()))
            if line == "<EOF>":
                raise AssertionError(f"daemon {self.name} ended: {self.stderr.decode()}")
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1 :])

    async def stats(self, timeout: float = 5.0) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = await self._ask("stats", "STATS", timeout)
        return result

    async def info(self, timeout: float = 5.0) -> str:
        text: str = await self._ask("info", "INFO", timeout)
        return text

    async def _reap(self, sig: int, grace: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
            for task in self._tasks:
                task.cancel()
            self._tasks = []
        with contextlib.suppress(Exception):
            if proc.stdin is not None:
                proc.stdin.close()

    async def kill(self) -> None:
        """SIGKILL: no clean-up in the daemon."""
        await self._reap(signal.SIGKILL, 5.0)

    async def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after a grace period); returns the exit status."""
        await self._reap(signal.SIGTERM, 5.0)
        return self.proc.returncode if self.proc is not None else None


def free_port(family: socket.AddressFamily, host: str) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def link_opts(mode: str, host: str, src: str, dst: str, ports: tuple[int, int] | None) -> str:
    out = f"src={src},dst={dst}"
    if mode == "udp":
        assert ports is not None
        out += f",udp=on,srcport={ports[0]},dstport={ports[1]}"
    if ":" in host:
        out += ",ipv6=on"
    return out


# (QEMU's txsession, its rxsession, further options of QEMU's side)
Link = tuple[int, int, str]
# Link A: 64-bit cookies, running counter. Link B: 32-bit cookies, pinned counter, offset.
LINK_A: Link = (
    0xA1,
    0xA2,
    "txcookie=0xa1a1a1a1a1a1a1a1,rxcookie=0xa2a2a2a2a2a2a2a2,cookie64=on,counter=on",
)
LINK_B: Link = (
    0xB1,
    0xB2,
    "txcookie=0xb1b1b1b1,rxcookie=0xb2b2b2b2,counter=on,pincounter=on,offset=4",
)


def swapped_cookies(extra: str) -> str:
    parts = dict(p.split("=", 1) for p in extra.split(","))
    parts["txcookie"], parts["rxcookie"] = parts["rxcookie"], parts["txcookie"]
    return ",".join(f"{k}={v}" for k, v in parts.items())


GUEST_SCRIPT = """
ip link set eth0 up
ip addr add {me}/24 dev eth0
i=0
while [ $i -lt 90 ]; do
    ping -c 1 -W 1 {peer} >/dev/null 2>&1 && break
    i=$((i + 1))
done
ping -c 3 -i 0.3 -W 3 {peer}
echo PINGS-DONE
sleep 300
"""

MAC_A, MAC_B, MAC_T = "52:54:00:00:0a:01", "52:54:00:00:0a:02", "02:00:00:00:00:09"
IP_A, IP_B, IP_T = "10.0.0.1", "10.0.0.2", "10.0.0.9"


class Station:
    """The test's own station on the hub: a UDP socket tunnelled to the daemon's ``tt``."""

    def __init__(self, sock: socket.socket, daemon_port: int) -> None:
        self.sock = sock
        self.dst = ("127.0.0.1", daemon_port)
        self.tunnel = L2TPv3Session(
            L2TPv3Params(udp=True, ipv6=False, txsession=0xC1, rxsession=0xC2)
        )
        self.frames: list[bytes] = []
        self.changed = asyncio.Event()

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        from scapy.layers.l2 import ARP, Ether

        for _ in range(64):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            f = self.tunnel.decapsulate(data)
            if f is None:
                continue
            self.frames.append(f)
            pkt = Ether(f)
            if ARP in pkt and pkt[ARP].op == 1 and pkt[ARP].pdst == IP_T:
                reply = Ether(dst=pkt.src, src=MAC_T) / ARP(
                    op=2, hwsrc=MAC_T, psrc=IP_T, hwdst=pkt.src, pdst=pkt[ARP].psrc
                )
                self.send(bytes(reply))
        self.changed.set()
        self.changed = asyncio.Event()

    def send(self, f: bytes) -> None:
        self.sock.sendto(self.tunnel.encapsulate(f), self.dst)


def read_pcap(path: Path) -> list[bytes]:
    with path.open("rb") as fh:
        return [bytes(buf) for _, buf in dpkt.pcap.Reader(fh)]


async def ping_from_test_host(
    th: Station, payload: bytes, timeout: float = 20.0
) -> tuple[bytes, bytes]:
    """ARP + ICMP echo to guest A from 10.0.0.9; returns (request frame, reply frame)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import ARP, Ether

    arp = Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC_T) / ARP(op=1, hwsrc=MAC_T, psrc=IP_T, pdst=IP_A)
    echo = bytes(
        Ether(dst=MAC_A, src=MAC_T)
        / IP(src=IP_T, dst=IP_A, id=4242)
        / ICMP(type=8, id=0x7777, seq=1)
        / payload
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        th.send(bytes(arp))
        th.send(echo)
        until = loop.time() + 1.0
        while loop.time() < until:
            for f in th.frames:
                pkt = Ether(f)
                if ICMP in pkt and pkt[ICMP].type == 0 and bytes(pkt[ICMP].payload) == payload:
                    return echo, f
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(th.changed.wait(), max(0.0, until - loop.time()))
    raise AssertionError("no echo reply from guest A")


VARIANTS = [
    pytest.param("udp", "127.0.0.1", id="udp-ipv4"),
    pytest.param("udp", "::1", id="udp-ipv6"),
    pytest.param("ip", "127.0.0.1", id="ip-ipv4", marks=pytest.mark.root),
    pytest.param("ip", "::1", id="ip-ipv6", marks=pytest.mark.root),
]


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("mode", "host"), VARIANTS)
def test_two_qemu_guests_ping_through_daemon(
    guest_image: GuestImage, tmp_path: Path, mode: str, host: str
) -> None:
    if mode == "ip" and os.geteuid() != 0:
        pytest.skip("raw IP mode needs root")
    asyncio.run(asyncio.wait_for(scenario(guest_image, tmp_path, mode, host), 280))


async def scenario(image: GuestImage, tmp: Path, mode: str, host: str) -> None:
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether

    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = mode == "udp"
    qa, da, qb, db = (free_port(fam, host) for _ in range(4)) if udp else (0, 0, 0, 0)
    addr = {"qa": host, "qb": host, "d": host}
    if not udp and fam == socket.AF_INET:  # raw IPv4: one address per end
        addr = {"qa": "127.0.0.2", "qb": "127.0.0.3", "d": "127.0.0.1"}

    def netdev(name: str, me: str, peer: str, ports: tuple[int, int], link: Link) -> str:
        tx, rx, extra = link
        if me == "d":  # the daemon's side: sessions and cookies mirrored
            tx, rx, extra = rx, tx, swapped_cookies(extra)
        opts = link_opts(mode, host, addr[me], addr[peer], ports if udp else None)
        return f"l2tpv3,id={name},{opts},txsession={tx},rxsession={rx},{extra}"

    qemu_a = netdev("n0", "qa", "d", (qa, da), LINK_A)
    qemu_b = netdev("n0", "qb", "d", (qb, db), LINK_B)
    d_ta = netdev("ta", "d", "qa", (da, qa), LINK_A)
    d_tb = netdev("tb", "d", "qb", (db, qb), LINK_B)

    test_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    test_sock.bind(("127.0.0.1", 0))
    test_sock.setblocking(False)
    tt_port = free_port(socket.AF_INET, "127.0.0.1")
    d_tt = (
        f"l2tpv3,id=tt,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={tt_port},"
        f"dstport={test_sock.getsockname()[1]},txsession=0xc2,rxsession=0xc1"
    )
    daemon = Daemon(
        [d_ta, "hubport,id=ha,hubid=0,netdev=ta", d_tb, "hubport,id=hb,hubid=0,netdev=tb",
         d_tt, "hubport,id=ht,hubid=0,netdev=tt"],
        name="hub",
    )  # fmt: skip
    th = Station(test_sock, tt_port)
    pcap = tmp / "a.pcap"
    guest_a = Guest(
        image,
        GUEST_SCRIPT.format(me=IP_A, peer=IP_B),
        ["-netdev", qemu_a, *virtio_nic_args("n0", MAC_A),
         "-object", f"filter-dump,id=dump0,netdev=n0,file={pcap}"],
        name="l2tp-a", timeout=240, log_path=tmp / "a.log",
    )  # fmt: skip
    guest_b = Guest(
        image,
        GUEST_SCRIPT.format(me=IP_B, peer=IP_A),
        ["-netdev", qemu_b, *virtio_nic_args("n0", MAC_B)],
        name="l2tp-b", timeout=240, log_path=tmp / "b.log",
    )  # fmt: skip
    try:
        await daemon.start()
        th.start()
        info = await daemon.info()
        assert "ta: index=0,type=l2tpv3,l2tpv3: connected" in info, info
        await guest_a.start()
        await guest_b.start()
        for g in (guest_a, guest_b):
            await g.wait_for("PINGS-DONE", timeout=150)
        for g in (guest_a, guest_b):
            assert "3 packets transmitted, 3 packets received" in g.console, g.console[-3000:]

        payload = b"netstack-l2tpv3-" + os.urandom(24)
        echo, reply = await ping_from_test_host(th, payload)
        stats = await daemon.stats()
    finally:
        th.close()
        await guest_a.stop()
        await guest_b.stop()
        await daemon.stop()

    print(f"{mode}/{host} daemon counters: {json.dumps(stats)}")
    # byte-exact: the crafted frame as QEMU's l2tpv3 netdev handed it to guest A's NIC, and
    # the guest's reply as QEMU sent it, equal to what the test sent and received
    dumped = read_pcap(pcap)
    assert echo in dumped
    assert reply in dumped
    rep = Ether(reply)
    assert rep[IP].src == IP_A and rep[IP].dst == IP_T and rep[ICMP].id == 0x7777
    # every frame guest A sent went out of the hub to the test host unchanged
    mac_a = bytes.fromhex(MAC_A.replace(":", ""))
    sent_by_a = [f for f in dumped[: dumped.index(reply) + 1] if f[6:12] == mac_a]
    assert len(sent_by_a) > 5 and all(f in th.frames for f in sent_by_a)

    for name in ("ta", "tb"):
        s = stats[name]
        assert s["rx-datagrams"] > 3 and s["tx-datagrams"] > 3, stats
        # every accepted datagram went up to the hub, every frame from the hub went out
        assert (s["rx-datagrams"], s["tx-datagrams"]) == (s["tx-frames"], s["rx-frames"]), stats
    if mode == "ip":
        # the raw sockets saw the other link's (and, on ::1, their own) packets: dropped
        for name in ("ta", "tb"):
            s = stats[name]
            foreign = s["drop-unknown-cookie-id"] + s["drop-session-mismatch"]
            assert foreign > 0 and s["malformed"] == foreign, stats
        if fam == socket.AF_INET6:
            # QEMU's raw sockets on ::1 saw foreign packets too, and said so (once each)
            for guest in (guest_a, guest_b):
                stderr = (await guest.wait()).stderr
                assert "unknown cookie id" in stderr or "session mismatch" in stderr, stderr
    else:
        for name in ("ta", "tb", "tt"):
            assert stats[name]["malformed"] == 0, stats


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    from tools.guest import HostUnavailable, build, ensure_qemu

    try:
        ensure_qemu(install=os.environ.get("NETSTACK_NO_INSTALL") != "1")
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")
    return build()
