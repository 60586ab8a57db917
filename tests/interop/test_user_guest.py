"""The user netdev end to end: real QEMU guests (busybox) behind netstack's ``user`` netdev,
and the same guest script against QEMU's own ``-netdev user`` (libslirp) as the reference.

The guest reaches the daemon through ``-netdev l2tpv3`` (UDP on loopback); in the daemon
that link and the user netdev sit on hub 0. Tests:

* :func:`test_guest_against_netstack_and_slirp`: udhcpc (router, DNS, hostname, domain
  search, bootfile), ping 10.0.2.2 and an outside address, a name resolved through 10.0.2.3
  (the DNS relay) and through 10.0.2.2:53 (UDP NAT to host loopback), a closed port on
  10.0.2.2 (ICMP port unreachable back through the NAT: netstack only, libslirp 4.7 does not
  relay it), TFTP of a small file and a 1 MB random file with blksize 1468 and 65464 (md5
  compared), traversal and missing-file errors; plus ``info usernet``, the lease table and
  the ``DHCP_LEASE_GRANTED`` event on the netstack side;
* :func:`test_restrict_against_netstack_and_slirp`: ``restrict=on`` in both;
* :func:`test_two_guests_one_nat_raw_icmp`: two guests on one user netdev (own leases,
  64 KB TFTP blocks as IP fragments at once), pings relayed through the raw-socket fallback.

The DNS server is the test's own (:data:`RESPONDER`, dpkt): it never depends on the
machine's resolver. As root, every variant runs in a network namespace the test creates:
there the responder listens on 127.0.0.1:53, ``/etc/netns/NS/resolv.conf`` points libslirp
at it (``ip netns exec`` bind-mounts it over /etc/resolv.conf), netstack is told with
``x-dns-upstream``, an "outside" address sits on the namespace's loopback, and
``ping_group_range`` allows (or forbids) ping sockets. Without root only the netstack
variants that need no namespace run.

Helpers here (:class:`Proc`, :data:`RUNNER`, :func:`user_daemon_specs`,
:func:`guest_link_args`) are reused by ``bench/bench_tftp.py`` and ``bench/bench_dhcp.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.kit.netns import unique_name
from tools.guest import Guest, GuestImage, virtio_nic_args

REPO = Path(__file__).resolve().parents[2]
MAC = "52:54:00:12:34:56"
NAME = "test.netstack.example"
NAME_ADDR = "192.0.2.77"
OUTSIDE = "192.0.2.1"  # an address on the namespace's loopback: a "remote" host

RUNNER = r'''
"""A netstack daemon with the user netdev. argv: -netdev specs. stdin: stats|usernet|leases."""
import asyncio, json, logging, signal, sys

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


async def main(specs):
    import drivers.user as user
    from drivers import hubport, l2tpv3
    from netstack import qapi
    from netstack.daemon import Netstack

    ns = Netstack({"l2tpv3": l2tpv3.SPEC, "hubport": hubport.SPEC, "user": user.SPEC})
    ns.add_listener(lambda name, data: print(
        "EVENT " + json.dumps({"event": name, "data": dict(data or {})}), flush=True))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def users():
        return [nc for nc in ns.clients if nc.type == "user"]

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
            elif cmd == "usernet":
                print("USERNET " + json.dumps(user.control.info_usernet(ns)), flush=True)
            elif cmd == "leases":
                leases = [l for u in users() for l in user.control.leases(u)]
                print("LEASES " + json.dumps(leases), flush=True)
        stop.set()

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

RESPONDER = r'''
"""A tiny DNS server for tests (dpkt). argv: host port. A records from NAME=ADDR args."""
import socket, sys
import dpkt

host, port, records = sys.argv[1], int(sys.argv[2]), dict(a.split("=") for a in sys.argv[3:])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((host, port))
print("READY", sock.getsockname()[1], flush=True)
while True:
    data, addr = sock.recvfrom(4096)
    try:
        q = dpkt.dns.DNS(data)
    except Exception:
        continue
    if q.qr != dpkt.dns.DNS_Q or not q.qd:
        continue
    r = dpkt.dns.DNS(id=q.id, qd=q.qd, an=[], ns=[], ar=[])
    r.op = dpkt.dns.DNS_RA | (q.op & dpkt.dns.DNS_RD)
    r.qr = dpkt.dns.DNS_R
    name = q.qd[0].name.lower().rstrip(".")
    if name in records and q.qd[0].type == dpkt.dns.DNS_A:
        r.an = [dpkt.dns.DNS.RR(name=q.qd[0].name, type=dpkt.dns.DNS_A, cls=1, ttl=60,
                                rdata=socket.inet_aton(records[name]))]
    elif name not in records:
        r.rcode = dpkt.dns.DNS_RCODE_NXDOMAIN
    sock.sendto(bytes(r), addr)
'''

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
    deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
        {
            echo "ip=$ip"; echo "mask=$mask"; echo "router=$router"; echo "dns=$dns"
            echo "hostname=$hostname"; echo "domain=$domain"; echo "search=$search"
            echo "boot_file=$boot_file"; echo "siaddr=$siaddr"; echo "serverid=$serverid"
            echo "lease=$lease"
        } > /run/lease.env
        ;;
esac
exit 0
"""

GUEST_SCRIPT = """
timeout 60 udhcpc -i eth0 -f -q -n -t 6 -T 2 -O search -s /etc/lease.sh >/dev/null 2>&1
echo "== lease"; sed 's/^/LEASE /' /run/lease.env
echo "== ping"; ping -c 3 -W 5 10.0.2.2 | grep -E 'packets transmitted'
echo "== outside"; ping -c 2 -W 5 {outside} | grep -E 'packets transmitted'
echo "== dns-relay"; nslookup {name} 10.0.2.3 2>&1 | grep -A1 '^Name' | sed 's/^/R /'
echo "== dns-nat"; nslookup {name} 10.0.2.2:{dns_port} 2>&1 | grep -A1 '^Name' | sed 's/^/N /'
echo "== refused"; nslookup {name} 10.0.2.2:{closed_port} 2>&1 | head -3 | sed 's/^/X /'
echo "== tftp"
tftp -g -r small.txt -l /tmp/small.txt 10.0.2.2 && echo "SMALL $(md5sum < /tmp/small.txt)"
tftp -g -b 1468 -r random.bin -l /tmp/random.bin 10.0.2.2 && echo "BIG $(md5sum < /tmp/random.bin)"
rm -f /tmp/random.bin
tftp -g -b 65464 -r random.bin -l /tmp/random.bin 10.0.2.2 && echo "BIG $(md5sum < /tmp/random.bin)"
tftp -g -r ../etc/passwd -l /tmp/p 10.0.2.2 2>&1 | sed 's/^/T /'
tftp -g -r missing.bin -l /tmp/m 10.0.2.2 2>&1 | sed 's/^/T /'
echo "== done"
"""

USER_OPTS = (
    "hostname=guest-one,domainname=example.test,dnssearch=example.test,"
    "dnssearch=lab.example.test,bootfile=pxelinux.0"
)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Netns:
    """A network namespace (loopback up, ping sockets allowed, an extra address on lo)
    with its own resolv.conf for ``ip netns exec``; removed on exit."""

    def __init__(self, resolv: str = "nameserver 127.0.0.1\n", ping: bool = True) -> None:
        self.name = unique_name("nsuser-")
        self.etc = Path("/etc/netns") / self.name
        self.resolv = resolv
        self.ping = ping

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            self.etc.mkdir(parents=True, exist_ok=True)
            (self.etc / "resolv.conf").write_text(self.resolv)
            self.run("ip", "link", "set", "lo", "up")
            self.run("ip", "addr", "add", f"{OUTSIDE}/32", "dev", "lo")
            span = "0 2147483647" if self.ping else "1 0"
            self.run("sysctl", "-qw", f"net.ipv4.ping_group_range={span}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def run(self, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.name, *argv], check=True)

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(self.etc, ignore_errors=True)


class Proc:
    """A helper process that prints lines; killed by PID at the end."""

    def __init__(self, argv: Sequence[str], name: str) -> None:
        self.argv = list(argv)
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.stderr = bytearray()
        self.events: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, timeout: float = 20.0) -> str:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._tasks = [
            asyncio.create_task(self._out(self.proc.stdout)),
            asyncio.create_task(self._err(self.proc.stderr)),
        ]
        line = await asyncio.wait_for(self.lines.get(), timeout)
        if not line.startswith("READY"):
            await self.stop()
            raise AssertionError(f"{self.name}: {line!r}\n{self.stderr.decode()}")
        return line

    async def _out(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("EVENT "):
                self.events.append(json.loads(line[6:]))
            else:
                await self.lines.put(line)
        await self.lines.put("<EOF>")

    async def _err(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.stderr.extend(chunk)

    async def ask(self, command: str, timeout: float = 5.0) -> Any:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        tag = command.upper() + " "
        while True:
            line = await asyncio.wait_for(self.lines.get(), timeout)
            if line == "<EOF>":
                raise AssertionError(f"{self.name} ended: {self.stderr.decode()}")
            if line.startswith(tag):
                return json.loads(line[len(tag) :])

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        self._tasks = []


def user_daemon_specs(user_opts: str, qemu_port: int, daemon_port: int) -> list[str]:
    """The daemon's netdevs: ``user`` and an l2tpv3 link to the guest's QEMU, on hub 0."""
    return [
        f"user,id=u0,{user_opts}",
        "hubport,id=hu,hubid=0,netdev=u0",
        f"l2tpv3,id=t0,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={daemon_port},"
        f"dstport={qemu_port},txsession=1,rxsession=2",
        "hubport,id=ht,hubid=0,netdev=t0",
    ]


def guest_link_args(qemu_port: int, daemon_port: int, mac: str = MAC) -> list[str]:
    return [
        "-netdev",
        f"l2tpv3,id=n0,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={qemu_port},"
        f"dstport={daemon_port},txsession=2,rxsession=1",
        *virtio_nic_args("n0", mac),
    ]


def make_tftp_root(path: Path) -> dict[str, str]:
    """The TFTP root: a small text file, 1 MB of random bytes; returns name -> md5."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "small.txt").write_bytes(b"netstack tftp says hello\n" * 3)
    (path / "random.bin").write_bytes(os.urandom(1 << 20))
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in path.iterdir()}


@dataclass
class Outcome:
    """What one variant's guest observed (parsed from its console)."""

    lease: dict[str, str] = field(default_factory=dict)
    sections: dict[str, list[str]] = field(default_factory=dict)
    console: str = ""


def parse_console(text: str) -> Outcome:
    out = Outcome(console=text)
    current = ""
    for line in text.splitlines():
        if line.startswith("== "):
            current = line[3:].strip()
            out.sections.setdefault(current, [])
        elif line.startswith("LEASE "):
            key, _, value = line[6:].partition("=")
            out.lease[key] = value
        elif current:
            out.sections[current].append(line.strip())
    return out


async def run_variant(
    kind: str,
    image: GuestImage,
    tmp: Path,
    netns: Netns | None,
    *,
    template: str = "",
    user_opts: str = USER_OPTS,
    guests: int = 1,
) -> tuple[list[Outcome], dict[str, Any]]:
    """Run ``template`` (default :data:`GUEST_SCRIPT`) in ``guests`` guests against
    ``netstack`` (one l2tpv3 link per guest, all on hub 0 with one user netdev) or ``slirp``
    (one guest); returns each guest's outcome and, for netstack, the daemon's stats, usernet
    text, leases, events and stderr."""
    prefix = netns.prefix if netns is not None else []
    dns_port = 53 if netns is not None else free_port()
    responder = Proc(
        [
            *prefix,
            sys.executable,
            "-c",
            RESPONDER,
            "127.0.0.1",
            str(dns_port),
            f"{NAME}={NAME_ADDR}",
        ],
        "responder",
    )
    tftp_dir = tmp / "tftp"
    script = (template or GUEST_SCRIPT).format(
        name=NAME,
        dns_port=dns_port,
        closed_port=free_port(),
        outside=OUTSIDE if netns is not None else "10.0.2.3",
    )
    files = {"etc/lease.sh": UDHCPC_SCRIPT}
    daemon: Proc | None = None
    extra: dict[str, Any] = {}
    links = [(free_port(), free_port()) for _ in range(guests)]
    if kind == "netstack":
        opts = f"{user_opts},tftp={tftp_dir},x-dns-upstream=127.0.0.1:{dns_port}"
        specs = user_daemon_specs(opts, *links[0])
        for n, (qport, dport) in enumerate(links[1:], 1):
            specs += [
                f"l2tpv3,id=t{n},src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={dport},"
                f"dstport={qport},txsession=1,rxsession=2",
                f"hubport,id=ht{n},hubid=0,netdev=t{n}",
            ]
        daemon = Proc([*prefix, sys.executable, "-c", RUNNER, *specs], "daemon")
        qemu_args = [
            guest_link_args(q, d, mac=f"52:54:00:12:34:{0x56 + n:02x}")
            for n, (q, d) in enumerate(links)
        ]
    else:
        assert guests == 1
        qemu_args = [
            ["-netdev", f"user,id=n0,{user_opts},tftp={tftp_dir}", *virtio_nic_args("n0", MAC)]
        ]
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    wrapper = tmp / f"qemu-{kind}.sh"
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(prefix)} {qemu} "$@"\n')
    wrapper.chmod(0o755)
    vms = [
        Guest(
            image,
            script,
            args,
            name=f"user-{kind}-{n}",
            files=files,
            timeout=300,
            qemu=str(wrapper),
            log_path=tmp / f"{kind}-{n}.log",
        )
        for n, args in enumerate(qemu_args)
    ]
    try:
        await responder.start()
        if daemon is not None:
            await daemon.start()
        for vm in vms:
            await vm.start()
        for vm in vms:
            await vm.wait_for("== done", timeout=280)
        if daemon is not None:
            extra["usernet"] = await daemon.ask("usernet")
            extra["leases"] = await daemon.ask("leases")
            extra["stats"] = await daemon.ask("stats")
            extra["events"] = list(daemon.events)
            extra["stderr"] = daemon.stderr.decode(errors="replace")
    finally:
        for vm in vms:
            await vm.stop()
        if daemon is not None:
            await daemon.stop()
        await responder.stop()
    return [parse_console(vm.console) for vm in vms], extra


def check_outcome(out: Outcome, md5: dict[str, str], *, outside: bool, refused: bool) -> None:
    lease = out.lease
    assert lease.get("ip") == "10.0.2.15", out.console[-3000:]
    assert lease["router"] == "10.0.2.2" and lease["dns"] == "10.0.2.3", lease
    assert lease["hostname"] == "guest-one" and lease["domain"] == "example.test", lease
    assert lease["search"] == "example.test lab.example.test", lease
    assert lease["boot_file"] == "pxelinux.0" and lease["siaddr"] == "10.0.2.2", lease
    assert lease["serverid"] == "10.0.2.2" and lease["lease"] == "86400", lease
    assert out.sections["ping"] == ["3 packets transmitted, 3 packets received, 0% packet loss"]
    if outside:
        assert out.sections["outside"] == [
            "2 packets transmitted, 2 packets received, 0% packet loss"
        ]
    for tag in ("R", "N"):
        section = out.sections["dns-relay" if tag == "R" else "dns-nat"]
        assert any(NAME in line for line in section), out.sections
        assert any(NAME_ADDR in line for line in section), out.sections
    if refused:  # ICMP port unreachable reached the guest: nslookup fails at once
        assert any("refused" in line.lower() for line in out.sections["refused"]), out.sections
    tftp = out.sections["tftp"]
    assert f"SMALL {md5['small.txt']}  -" in tftp, tftp
    assert tftp.count(f"BIG {md5['random.bin']}  -") == 2, tftp
    assert any("Access violation" in line for line in tftp), tftp
    assert any("File not found" in line for line in tftp), tftp


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    from tools.guest import HostUnavailable, build, ensure_qemu

    try:
        ensure_qemu(install=os.environ.get("NETSTACK_NO_INSTALL") != "1")
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")
    return build()


def _root() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def netns_or_none() -> contextlib.AbstractContextManager[Netns | None]:
    return Netns() if _root() else contextlib.nullcontext()


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_guest_against_netstack_and_slirp(guest_image: GuestImage, tmp_path: Path) -> None:
    """The same guest script through netstack and through QEMU's slirp: same results."""
    md5 = make_tftp_root(tmp_path / "tftp")
    kinds = ["netstack", "slirp"] if _root() else ["netstack"]
    outcomes: dict[str, Outcome] = {}
    extras: dict[str, dict[str, Any]] = {}

    async def scenario() -> None:
        for kind in kinds:
            with netns_or_none() as ns:
                (outcomes[kind],), extras[kind] = await run_variant(kind, guest_image, tmp_path, ns)

    asyncio.run(asyncio.wait_for(scenario(), 560))
    ours = outcomes["netstack"]
    print(json.dumps(extras["netstack"].get("stats", {}).get("u0", {}), indent=1))
    check_outcome(ours, md5, outside=_root(), refused=True)
    extra = extras["netstack"]
    # info usernet: QEMU's header, the hub line, the guest's UDP flow to 10.0.2.2:53
    usernet = extra["usernet"]
    assert usernet.startswith("Hub 0 (u0):\n  Protocol[State]    FD  Source Address"), usernet
    assert re.search(r"UDP\[\d+ sec\]\s+\d+\s+10\.0\.2\.15\s+\d+\s+10\.0\.2\.2\s+", usernet), (
        usernet
    )
    # the lease table and the QMP events
    leases = extra["leases"]
    assert [(le["mac-address"], le["ip-address"], le["state"]) for le in leases] == [
        (MAC, "10.0.2.15", "bound")
    ], leases
    granted = [e for e in extra["events"] if e["event"] == "DHCP_LEASE_GRANTED"]
    assert granted and granted[0]["data"]["ip-address"] == "10.0.2.15", extra["events"]
    assert granted[0]["data"]["netdev"] == "u0"
    stats = extra["stats"]["u0"]
    assert stats["tftp-completed"] >= 3 and stats.get("internal-error", 0) == 0, stats
    assert stats["icmp-error-sent-3-3"] >= 1, stats
    assert "Traceback" not in extra["stderr"], extra["stderr"]
    if "slirp" in outcomes:
        ref = outcomes["slirp"]
        # libslirp 4.7 (Debian 12's QEMU 7.2) does not turn the host's ICMP errors into
        # ICMP for the guest: its nslookup to a closed port just times out
        check_outcome(ref, md5, outside=True, refused=False)
        assert ref.lease == ours.lease
        for section in ("ping", "outside", "dns-relay", "dns-nat", "tftp"):
            assert ref.sections[section] == ours.sections[section], (section, ref, ours)


RESTRICT_SCRIPT = """
timeout 60 udhcpc -i eth0 -f -q -n -t 6 -T 2 -O search -s /etc/lease.sh >/dev/null 2>&1
echo "== lease"; sed 's/^/LEASE /' /run/lease.env
ip route replace default via 10.0.2.2 dev eth0
echo "== ping"; ping -c 2 -W 3 10.0.2.2 | grep -E 'packets transmitted'
echo "== outside"; ping -c 2 -W 2 {outside} | grep -E 'packets transmitted'
echo "== dns-relay"; nslookup {name} 10.0.2.3 2>&1 | grep -A1 '^Name' | sed 's/^/R /'
echo "== tftp"
tftp -g -r small.txt -l /tmp/small.txt 10.0.2.2 && echo "SMALL $(md5sum < /tmp/small.txt)"
echo "== done"
"""


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_restrict_against_netstack_and_slirp(guest_image: GuestImage, tmp_path: Path) -> None:
    """``restrict=on``: DHCP without router and DNS, local echo and TFTP only."""
    md5 = make_tftp_root(tmp_path / "tftp")
    kinds = ["netstack", "slirp"] if _root() else ["netstack"]
    outcomes: dict[str, Outcome] = {}

    async def scenario() -> None:
        for kind in kinds:
            with netns_or_none() as ns:
                (outcomes[kind],), _ = await run_variant(
                    kind,
                    guest_image,
                    tmp_path,
                    ns,
                    template=RESTRICT_SCRIPT,
                    user_opts=USER_OPTS + ",restrict=on",
                )

    asyncio.run(asyncio.wait_for(scenario(), 560))
    for kind, out in outcomes.items():
        assert out.lease.get("ip") == "10.0.2.15", (kind, out.console[-2000:])
        assert out.lease["router"] == "" and out.lease["dns"] == "", (kind, out.lease)
        assert out.sections["ping"] == ["2 packets transmitted, 2 packets received, 0% packet loss"]
        if _root():  # the outside address exists only in the namespace
            assert out.sections["outside"] == [
                "2 packets transmitted, 0 packets received, 100% packet loss"
            ]
        assert out.sections["dns-relay"] == [], (kind, out.sections)
        assert out.sections["tftp"] == [f"SMALL {md5['small.txt']}  -"], (kind, out.sections)
    if "slirp" in outcomes:
        assert outcomes["slirp"].lease == outcomes["netstack"].lease


MULTI_SCRIPT = """
timeout 60 udhcpc -i eth0 -f -q -n -t 6 -T 2 -s /etc/lease.sh >/dev/null 2>&1
echo "== lease"; sed 's/^/LEASE /' /run/lease.env
echo "== outside"; ping -c 3 -W 5 {outside} | grep -E 'packets transmitted'
echo "== tftp"
tftp -g -b 65464 -r random.bin -l /tmp/random.bin 10.0.2.2 && echo "BIG $(md5sum < /tmp/random.bin)"
echo "== done"
"""


@pytest.mark.qemu
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_guests_one_nat_raw_icmp(guest_image: GuestImage, tmp_path: Path) -> None:
    """Two guests on one user netdev: each gets its own lease; both fetch 1 MB with blksize
    65464 (64 KB datagrams as 1500-byte fragments) at once; with ping sockets forbidden
    (``ping_group_range`` "1 0") their pings beyond the gateway go through a raw socket."""
    if not _root():
        pytest.skip("needs root (network namespace, raw ICMP socket)")
    md5 = make_tftp_root(tmp_path / "tftp")

    async def scenario() -> tuple[list[Outcome], dict[str, Any]]:
        with Netns(ping=False) as ns:
            return await run_variant(
                "netstack", guest_image, tmp_path, ns, template=MULTI_SCRIPT, guests=2
            )

    outcomes, extra = asyncio.run(asyncio.wait_for(scenario(), 560))
    addrs = sorted(out.lease.get("ip", "") for out in outcomes)
    assert addrs == ["10.0.2.15", "10.0.2.16"], [o.console[-1500:] for o in outcomes]
    for out in outcomes:
        assert out.sections["outside"] == [
            "3 packets transmitted, 3 packets received, 0% packet loss"
        ]
        assert out.sections["tftp"] == [f"BIG {md5['random.bin']}  -"], out.sections
    leases = sorted((le["mac-address"], le["ip-address"]) for le in extra["leases"])
    assert sorted(ip for _, ip in leases) == ["10.0.2.15", "10.0.2.16"]
    assert {mac for mac, _ in leases} == {"52:54:00:12:34:56", "52:54:00:12:34:57"}
    stats = extra["stats"]["u0"]
    assert stats["icmp-echo-replies"] == 6 and stats.get("internal-error", 0) == 0, stats
    usernet = extra["usernet"]
    assert usernet.count("ICMP[") == 2, usernet
