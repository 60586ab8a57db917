"""The rig of the hostile-input tests (:mod:`tests.property.test_user_hostile`): a real user
netdev in-process, a guest NIC that takes virtio-net headers, and the invariant checks.

:class:`Sandbox` runs an event loop on a thread of its own; when the process may create
one (root), that thread lives in a fresh network namespace with only loopback up, so
every host socket the netdev opens for hostile guest traffic (and every ``cmd:`` child it
starts) sees that namespace alone - never a port of the machine. :class:`Rig` is a
:class:`~netstack.daemon.Netstack` with a user netdev ``u0`` on hub 0, a
:class:`GuestNic` and an echo server (127.0.0.1 and ::1, in the namespace); without a
namespace the netdev runs with ``restrict=on`` so hostile frames reach nothing on the
host. :meth:`Rig.check` is the house rule as assertions: no internal error counted, no
exception in the loop's handler, the netdev still answers ARP and NS for the gateway and
pings to 10.0.2.2 and fec0::2, every offloaded frame it sent converts to wire frames, the
connection table is valid QMP data, and the fd count is bounded by the live flows.
:class:`Flow` is one guest TCP connection driven by hand; :func:`tcp_frame` builds guest
TCP frames with any options and data offset. :class:`Qmp` drives the daemon's QMP command
table in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import socket
import struct
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from functools import cache
from typing import Any, Final, TypeVar

import drivers
from drivers.user import control as user_control
from drivers.user.client import UserNetClient
from netstack import qapi
from netstack.daemon import Netstack
from netstack.net.nic import NicClient
from netstack.proto import vnet
from netstack.proto.checksum import finish, ones_sum
from netstack.qmp.dispatch import dispatch
from netstack.qmp.server import command_table
from tests.kit.polling import open_fds

T = TypeVar("T")

CLONE_NEWNET: Final = 0x40000000
GUEST_MAC: Final = bytes.fromhex("525400123456")
GW_MAC: Final = bytes.fromhex("52550a000202")
GW6_MAC: Final = bytes.fromhex("525600000002")
GUEST4: Final = "10.0.2.15"
GUEST6: Final = "fec0::5054:ff:fe12:3456"
GUEST_LL: Final = "fe80::5054:ff:fe12:3456"
FWD: Final = "10.0.2.100"
FEC0_2: Final = socket.inet_pton(socket.AF_INET6, "fec0::2")
#: The module rig: a guestfwd to ``cat``, a hostfwd to guest port 80, DNS upstream local.
SPEC: Final = (
    "user,id=u0,x-dns-upstream=127.0.0.1:53,"
    f"guestfwd=tcp:{FWD}:7-cmd:exec cat,hostfwd=tcp:127.0.0.1:0-:80"
)


# -- the sandbox -----------------------------------------------------------------------------


def _enter_fresh_netns() -> bool:
    """Move the calling thread (only) into a new network namespace with loopback up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        return False
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    return True


class Sandbox:
    """An event loop on its own thread (in a fresh network namespace when possible);
    :meth:`run` executes a coroutine there and returns its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        #: What reached the loop's exception handler (must stay empty).
        self.loop_errors: list[str] = []
        self.netns = False
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10), "sandbox thread did not start"

    def _main(self, ready: threading.Event) -> None:
        try:
            self.netns = _enter_fresh_netns()
        except OSError:
            self.netns = False
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(self._on_loop_error)
        ready.set()
        self.loop.run_forever()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")
        loop.default_exception_handler(context)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(asyncio.sleep(0.05))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# -- the guest NIC, the host's echo server, the rig ------------------------------------------


class GuestNic(NicClient):
    """The guest's NIC: takes virtio-net headers (as tap vnet_hdr or vhost-user with
    offloads do), sees every frame (no rx filter), keeps them plain in :attr:`got`, and
    counts offloaded frames from the netdev that do not convert to wire frames."""

    accepts_vnet = True

    def __init__(self) -> None:
        super().__init__("nic0", GUEST_MAC)
        self.rx_filter = None
        self.got: list[bytes] = []
        self.bad_offloads = 0

    def receive(self, frames: Sequence[bytes], vnet_flag: bool) -> int:
        if not vnet_flag:
            self.got.extend(frames)
            return len(frames)
        for frame in frames:
            plain = vnet.to_plain([frame])
            if not plain:
                self.bad_offloads += 1
            self.got.extend(plain)
        return len(frames)


class EchoServer:
    """A TCP echo server on 127.0.0.1 and ::1 (of the sandbox's namespace)."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        s4 = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = s4.sockets[0].getsockname()[1]
        self.servers.append(s4)
        with contextlib.suppress(OSError):
            self.servers.append(await asyncio.start_server(self._serve, "::1", self.port))

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writers.add(w)
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            self.writers.discard(w)
            w.close()

    async def close(self) -> None:
        for w in list(self.writers):
            w.close()
        for s in self.servers:
            s.close()
            await s.wait_closed()


class Rig:
    """A Netstack with ``u0`` (``spec``; ``restrict=on`` outside a namespace of its own)
    on hub 0, a :class:`GuestNic` and an :class:`EchoServer`; :meth:`check` asserts the
    house rule."""

    def __init__(self, box: Sandbox, spec: str = SPEC) -> None:
        self.box = box
        self.spec = spec
        self.ns: Netstack | None = None
        self.nic = GuestNic()
        self.echo = EchoServer()
        self.fd_base = 0
        self.closed_port = 0
        self.sports = itertools.count(20000)

    @property
    def client(self) -> UserNetClient:
        assert self.ns is not None
        nc = self.ns.find_netdev("u0")
        assert isinstance(nc, UserNetClient)
        return nc

    async def start(self) -> None:
        await self.echo.start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.closed_port = s.getsockname()[1]
        self.fd_base = open_fds(collect=False)
        self.ns = Netstack(drivers.registry())
        spec = self.spec if self.box.netns else self.spec + ",restrict=on"
        await self.ns.netdev_add(qapi.parse_netdev_cli(spec))
        await self.ns.netdev_add(qapi.parse_netdev_cli("hubport,id=hu,hubid=0,netdev=u0"))
        self.ns.add_client(self.nic)
        self.ns.hub(0).add_port("hn").connect(self.nic)

    async def stop(self) -> None:
        assert self.ns is not None
        await self.ns.close()
        await self.echo.close()

    async def send(self, frames: Sequence[bytes], vnet_flag: bool = False) -> None:
        """Frames from the guest, then a few loop turns (host sockets' callbacks)."""
        self.nic.send(list(frames), vnet_flag)
        for _ in range(3):
            await asyncio.sleep(0)

    async def wait_for(self, want: Callable[[bytes], bool], timeout: float = 3.0) -> bytes:
        """The first frame from the netdev that ``want`` accepts (taken out of ``got``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, frame in enumerate(self.nic.got):
                if want(frame):
                    del self.nic.got[i]
                    return frame
            if loop.time() > deadline:
                raise AssertionError("no matching frame from the netdev")
            await asyncio.sleep(0.002)

    async def check(self) -> None:
        """The invariants, after an example."""
        client = self.client
        internal = {k: v for k, v in client.counters().items() if "internal" in k and v}
        assert not internal, f"an exception reached the netdev: {internal}"
        assert not self.box.loop_errors, self.box.loop_errors
        assert self.nic.bad_offloads == 0, "the netdev sent an offloaded frame that is bad"
        self.nic.got.clear()
        self.nic.send(probes())
        replies = list(self.nic.got)
        missing = [name for name, ok in PROBE_ANSWERS if not any(map(ok, replies))]
        assert not missing, f"the netdev stopped answering: {missing}"
        self.nic.got.clear()
        rows = user_control.connections(client)
        for row in rows:  # the connection table stays valid QMP data
            assert connection_row_ok(row), row
        user_control.usernet_info(client)
        live = len(rows) + len(client.guestfwd.children.live)
        assert open_fds(collect=False) <= self.fd_base + 2 * live + 32, (
            "fds grow beyond the live flows"
        )


def connection_row_ok(row: dict[str, Any]) -> bool:
    """A ``UserConnectionInfo`` as the schema has it."""
    ports = [row[k] for k in ("guest-port", "remote-port") if k in row]
    return (
        row["protocol"] in ("tcp", "udp", "icmp")
        and row["family"] in ("ipv4", "ipv6")
        and row["direction"] in ("outbound", "hostfwd", "guestfwd")
        and all(isinstance(p, int) and 0 <= p <= 0xFFFF for p in ports)
        and all(isinstance(row[k], int) and row[k] >= 0 for k in ("recv-q", "send-q"))
        and isinstance(row["guest-addr"], str)
        and isinstance(row["remote-addr"], str)
    )


@contextlib.contextmanager
def rig_of(box: Sandbox, spec: str = SPEC) -> Iterator[Rig]:
    """A started :class:`Rig` for the block; on exit its Netstack closes and must leave
    no fd behind."""
    r = Rig(box, spec)
    before = open_fds(collect=False)
    box.run(r.start())
    try:
        yield r
    finally:
        box.run(r.stop())

    async def settle() -> int:
        for _ in range(50):
            if open_fds(collect=False) <= before:
                break
            await asyncio.sleep(0.01)
        return open_fds(collect=False)

    assert box.run(settle()) <= before, "netdev_del left an fd behind"


# -- liveness probes -------------------------------------------------------------------------


@cache
def probes() -> list[bytes]:
    """ARP for 10.0.2.2, ping 10.0.2.2, NS for fec0::2, ping fec0::2."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr, IPv6
    from scapy.layers.l2 import ARP, Ether

    g = "52:54:00:12:34:56"
    return [
        bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=g)
              / ARP(op=1, hwsrc=g, psrc=GUEST4, pdst="10.0.2.2")),
        bytes(Ether(dst="52:55:0a:00:02:02", src=g) / IP(src=GUEST4, dst="10.0.2.2")
              / ICMP(type=8, id=0x4E53, seq=1) / b"alive?"),
        bytes(Ether(dst="33:33:ff:00:00:02", src=g)
              / IPv6(src=GUEST_LL, dst="ff02::1:ff00:2", hlim=255)
              / ICMPv6ND_NS(tgt="fec0::2") / ICMPv6NDOptSrcLLAddr(lladdr=g)),
        bytes(Ether(dst="52:56:00:00:00:02", src=g) / IPv6(src=GUEST6, dst="fec0::2")
              / ICMPv6EchoRequest(id=0x4E53, seq=1, data=b"alive?")),
    ]  # fmt: skip


_GW4: Final = bytes([10, 0, 2, 2])


def _arp_reply(f: bytes) -> bool:
    return f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02" and f[28:32] == _GW4


def _ping_reply(f: bytes) -> bool:
    return (
        f[12:14] == b"\x08\x00" and f[23] == 1 and f[26:30] == _GW4 and f[34] == 0
        and f[38:40] == b"\x4e\x53"
    )  # fmt: skip


def _na(f: bytes) -> bool:
    return f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136 and f[62:78] == FEC0_2


def _ping6_reply(f: bytes) -> bool:
    return (
        f[12:14] == b"\x86\xdd" and f[20] == 58 and f[22:38] == FEC0_2 and f[54] == 129
        and f[58:60] == b"\x4e\x53"
    )  # fmt: skip


PROBE_ANSWERS: Final = (
    ("ARP 10.0.2.2", _arp_reply),
    ("ping 10.0.2.2", _ping_reply),
    ("NS fec0::2", _na),
    ("ping fec0::2", _ping6_reply),
)


# -- guest TCP -------------------------------------------------------------------------------


def tcp_frame(
    v6: bool, src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
    options: bytes = b"", payload: bytes = b"", doff: int | None = None,
) -> bytes:  # fmt: skip
    """A guest TCP frame built by hand: ``options`` as given (padded to 4 bytes unless
    ``doff`` overrides the data offset), checksums right."""
    opts = options + bytes(-len(options) % 4) if doff is None else options
    off = (20 + len(opts)) // 4 if doff is None else doff
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                                (off & 15) << 4, flags, 65535, 0, 0))  # fmt: skip
    tcp += opts + payload
    if v6:
        s, d = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
        pseudo = s + d + struct.pack("!IxxxB", len(tcp), 6)
        tcp[16:18] = finish(ones_sum(pseudo + tcp)).to_bytes(2, "big")
        ip6 = struct.pack("!IHBB", 6 << 28, len(tcp), 6, 64) + s + d
        return GW6_MAC + GUEST_MAC + b"\x86\xdd" + ip6 + bytes(tcp)
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    pseudo = s + d + struct.pack("!xBH", 6, len(tcp))
    tcp[16:18] = finish(ones_sum(pseudo + tcp)).to_bytes(2, "big")
    ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0) + s + d)
    ip[10:12] = finish(ones_sum(bytes(ip))).to_bytes(2, "big")
    return GW_MAC + GUEST_MAC + b"\x08\x00" + bytes(ip) + bytes(tcp)


class Flow:
    """One guest TCP connection driven by hand (IPv4 or IPv6)."""

    def __init__(self, rig: Rig, v6: bool, dst: str, dport: int) -> None:
        self.rig, self.v6, self.dst, self.dport = rig, v6, dst, dport
        self.src = GUEST6 if v6 else GUEST4
        self.sport = next(rig.sports)
        self.seq = 1000
        self.ack = 0
        self.at = 54 if v6 else 34  # where the TCP header starts in a frame

    def frame(self, flags: str, payload: bytes = b"", options: Any = ()) -> bytes:
        from scapy.layers.inet import IP, TCP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import Ether

        if self.v6:
            l2: Any = Ether(dst="52:56:00:00:00:02", src="52:54:00:12:34:56")
            l3: Any = IPv6(src=GUEST6, dst=self.dst)
        else:
            l2 = Ether(dst="52:55:0a:00:02:02", src="52:54:00:12:34:56")
            l3 = IP(src=GUEST4, dst=self.dst)
        tcp = TCP(sport=self.sport, dport=self.dport, seq=self.seq, ack=self.ack, flags=flags,
                  window=65535, options=list(options))  # fmt: skip
        return bytes(l2 / l3 / tcp / payload)

    def raw(self, flags: int, options: bytes = b"", doff: int | None = None, **kw: int) -> bytes:
        """A segment of this flow by :func:`tcp_frame` (``seq``/``ack`` overridable)."""
        seq, ack = kw.get("seq", self.seq), kw.get("ack", self.ack)
        return tcp_frame(self.v6, self.src, self.dst, self.sport, self.dport, seq, ack, flags,
                         options, doff=doff)  # fmt: skip

    def mine(self, f: bytes) -> bool:
        proto = f[20] if self.v6 else f[23]
        return (
            len(f) >= self.at + 20
            and proto == 6
            and f[self.at + 2 : self.at + 4] == self.sport.to_bytes(2, "big")
        )

    async def reply(self, want: Callable[[int], bool], timeout: float = 3.0) -> bytes:
        """The TCP header (and on) of the next segment of this flow whose flags pass
        ``want``."""
        at = self.at
        frame = await self.rig.wait_for(lambda f: self.mine(f) and want(f[at + 13]), timeout)
        return frame[at:]

    def synced(self, tcp: bytes) -> None:
        """Take the netdev's SYN-ACK ``tcp``: our SYN is acknowledged, theirs taken."""
        self.seq += 1
        self.ack = (int.from_bytes(tcp[4:8], "big") + 1) & 0xFFFFFFFF

    async def open(self) -> bool:
        """Handshake; False if the netdev refused (RST)."""
        await self.rig.send([self.frame("S", options=[("MSS", 1460), ("WScale", 7)])])
        tcp = await self.reply(lambda fl: bool(fl & 0x06))
        if tcp[13] & 0x04:
            return False
        self.synced(tcp)
        await self.rig.send([self.frame("A")])
        return True

    async def abort(self) -> None:
        """RST; if the netdev took data we do not know the length of (a hostile segment),
        its challenge ACK (RFC 5961) tells the sequence number the RST must carry."""
        await self.rig.send([self.frame("R")])
        acked = None
        for _ in range(10):
            for f in self.rig.nic.got:
                if self.mine(f) and f[self.at + 13] & 0x10:
                    acked = int.from_bytes(f[self.at + 8 : self.at + 12], "big")
            self.rig.nic.got.clear()
            await asyncio.sleep(0.002)
        if acked is not None and acked != self.seq:
            self.seq = acked
            await self.rig.send([self.frame("R")])


# -- processes -------------------------------------------------------------------------------


def our_zombies() -> list[int]:
    """Children of this process that exited and were not reaped."""
    me, found = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if state == "Z" and int(ppid) == me:
            found.append(int(entry))
    return found


def gone(pids: Sequence[int]) -> bool:
    """Whether none of ``pids`` exists any more (a zombie still exists)."""
    return not any(os.path.exists(f"/proc/{pid}") for pid in pids)


# -- QMP -------------------------------------------------------------------------------------

#: The QMP rig's netdevs: a user netdev, one with IPv6 off, and one of another type.
QMP_NETDEVS: Final = ("user,id=u0", "user,id=u6,ipv6=off", "hubport,id=lone,hubid=7")
QMP_ERROR_CLASSES: Final = ("GenericError", "DeviceNotFound", "CommandNotFound")


class Qmp:
    """The daemon's command table driven in-process as a QMP client would (``call``);
    an exception out of the dispatcher (a monitor would answer ``internal error``) fails
    the test, and so does a reply that is not a proper return or error."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.ns: Netstack | None = None

    async def start(self) -> None:
        self.ns = Netstack(drivers.registry())
        for spec in QMP_NETDEVS:
            await self.ns.netdev_add(qapi.parse_netdev_cli(spec))

    async def call(self, command: str, arguments: Any = None) -> dict[str, Any]:
        assert self.ns is not None
        request: dict[str, Any] = {"execute": command, "id": 1}
        if arguments is not None:
            request["arguments"] = arguments
        reply = await dispatch(command_table(self.ns), request, False)
        assert reply.get("id") == 1 and ("return" in reply) != ("error" in reply), reply
        if "error" in reply:
            err = reply["error"]
            assert err["class"] in QMP_ERROR_CLASSES, err
            assert isinstance(err["desc"], str) and err["desc"], err
            assert not err["desc"].startswith("internal error"), err
        return reply

    def __call__(self, command: str, arguments: Any = None) -> dict[str, Any]:
        return self.box.run(self.call(command, arguments))
