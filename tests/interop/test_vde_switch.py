"""The ``vde`` netdev against Debian's real ``vde_switch`` (vde2 2.3.2) and ``vde_plug``.

Every switch runs in the test's private directory and is stopped by PID. Tests:

* :func:`test_frames_byte_exact_both_ways` - our port and ``vde_plug`` (libvdeplug) on one
  switch: frames of 14..1514 bytes cross both ways unchanged; ``info network`` and the
  counters; the switch's control stream saw our request (``port/print`` lists us);
* :func:`test_frames_byte_exact_with_qemus_vde_netdev` - the same with QEMU 7.2's own
  ``-netdev vde`` (libvdeplug) as the far port, driven through a QEMU ``dgram`` netdev;
* :func:`test_port_request_and_options` - ``port=N`` gets port N, ``mode``/``group`` are
  accepted, ``vde://`` and ``[N]`` spellings work;
* :func:`test_errors_match_qemu` - a missing switch and a dead one (stale ``ctl``): our
  ``netdev_add`` error, and netstackd's exit line, are what QEMU 7.2 prints for the same
  ``-netdev vde``;
* :func:`test_odd_sock_values` - another plug module, a directory without a switch, a
  regular file naming a switch, an empty file: QEMU's texts; an over-long path, an unknown
  URL key, a NUL: clear errors;
* :func:`test_bad_switches` - a fake switch that closes, answers garbage, too little or
  too much, or nothing: clear errors within the handshake timeout, nothing left behind,
  the daemon keeps serving; the real switch refusing a port beyond ``-n`` (it never
  answers: QEMU hangs there) is a timeout error;
* :func:`test_switch_restart_recovery` - the switch is killed: link down, counted; a new
  switch on the same directory: re-plugged into the same port with backoff, link up
  again, frames flow; ``set_link off`` survives a re-plug after an orderly switch exit;
* :func:`test_data_socket_mode_and_group` - our data socket has the asked-for mode and
  group when the switch gets the request;
* :func:`test_hostile_switch_after_the_handshake` - junk on the control stream and an
  empty datagram are counted and ignored, the port keeps forwarding; when that switch goes,
  failed re-plugs are counted and ``netdev_del`` stops them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import drivers.vde as vde_driver
from drivers.vde.protocol import SOCKADDR_UN_LEN, decode_request, sockaddr_un
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.qapi import netdev_from_qmp, parse_netdev_cli
from tests.kit.polling import until
from tests.support import Recorder
from tests.vde_peers import VdePlug, VdeSwitch, have_vde, plug_ports
from tools.guest import HostUnavailable, ensure_qemu

pytestmark = [pytest.mark.timeout(120)]

if (missing := have_vde()) is not None:
    pytest.skip(missing, allow_module_level=True)


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[VdeSwitch]:
    with VdeSwitch(tmp_path / "sw") as sw:
        yield sw


async def plugged(directory: Path, count: int) -> None:
    await until(lambda: len(plug_ports(directory)) >= count)


async def vde_port(ns: Netstack, spec: str) -> tuple[NetClient, Recorder]:
    nc = (await ns.netdev_add(parse_netdev_cli(spec)))[0]
    await ns.netdev_add(parse_netdev_cli(f"hubport,id=h{nc.name},hubid=0,netdev={nc.name}"))
    inside = Recorder("inside")
    ns.hub(0).add_port("hp-inside").connect(inside)
    return nc, inside


def frames_of(sizes: list[int]) -> list[bytes]:
    out = []
    for i, size in enumerate(sizes):
        src = bytes([0x02, 0, 0, 0, 0, i])
        body = bytes(range(256)) * (size // 256 + 1)
        out.append((b"\xff" * 6 + src + b"\x88\xb5" + body)[:size])
    return out


def mgmt(switch: VdeSwitch, command: str) -> str:
    sock = switch.directory.parent / f"{switch.directory.name}.mgmt"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(sock))
        s.sendall(command.encode() + b"\n")
        data = b""
        while b"1000 Success" not in data and b"Failure" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


async def test_frames_byte_exact_both_ways(ns: Netstack, switch: VdeSwitch) -> None:
    nc, inside = await vde_port(ns, f"vde,id=v0,sock={switch.directory}")
    assert re.fullmatch(rf"sock={switch.directory},fd=\d+", nc.info_str)
    assert f"v0: index=0,type=vde,sock={switch.directory},fd=" in ns.info_network()
    plug = await VdePlug(switch.directory).start()
    try:
        await plugged(switch.directory, 2)
        sizes = [14, 15, 60, 64, 128, 577, 1000, 1513, 1514]
        out = frames_of(sizes)
        for f in out:
            await plug.send(f)
        await until(lambda: len(inside.got) >= len(out))
        assert inside.got == out
        back = [f[:7] + b"\x01" + f[8:12] + bytes(reversed(f[12:])) for f in out]
        for f in back:
            inside.send([f])
            assert await plug.recv(5) == f
    finally:
        await plug.close()
    (entry,) = ns.query_netdev("v0")
    assert entry["counters"]["connects"] == 1 and entry["counters"]["port"] >= 1
    assert entry["statistics"]["tx-frames"] == len(sizes)
    listing = mgmt(switch, "port/allprint")
    assert "netstackd:v0 user=" in listing and f"pid={os.getpid()}" in listing


async def test_port_request_and_options(ns: Netstack, switch: VdeSwitch) -> None:
    d = switch.directory
    a = (await ns.netdev_add(parse_netdev_cli(f"vde,id=a,sock={d},port=7,mode=0770")))[0]
    b = (await ns.netdev_add(parse_netdev_cli(f"vde,id=b,sock=vde://{d}[9],group=0")))[0]
    c = (await ns.netdev_add(parse_netdev_cli(f"vde,id=c,sock={d}[port=11/mode=700]")))[0]
    for nc, port in ((a, 7), (b, 9), (c, 11)):
        assert nc.counters()["port"] == port  # type: ignore[attr-defined]
    assert any(n.startswith("007.") for n in plug_ports(d))
    # No data socket of ours is left in the switch directory (unlinked once connected).
    assert not [n for n in os.listdir(d) if n.startswith(".")]
    ns.netdev_del("a")
    await until(lambda: not any(n.startswith("007.") for n in plug_ports(d)))
    assert "Port 0007 untagged_vlan=0000 INACTIVE" in mgmt(switch, "port/allprint")


def qemu_error(spec: str) -> str:
    try:
        qemu = ensure_qemu(install=False)
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")
    argv = [qemu, "-nodefaults", "-display", "none", "-S", "-netdev", spec]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    return line.split(f"-netdev {spec}: ", 1)[1]


async def ours(ns: Netstack, spec: str) -> str:
    with pytest.raises(GenericError) as err:
        await ns.netdev_add(parse_netdev_cli(spec))
    return err.value.desc


async def test_errors_match_qemu(ns: Netstack, tmp_path: Path) -> None:
    missing = f"vde,id=v,sock={tmp_path}/nosuch"
    stale = tmp_path / "stale"
    stale.mkdir()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale / "ctl"))  # bound, never listening: a dead switch's socket
    dead = f"vde,id=v,sock={stale}"
    for spec, text in ((missing, "No such file or directory"), (dead, "Connection refused")):
        expected = qemu_error(spec)
        assert expected == f"Could not open vde: {text}"
        assert await ours(ns, spec) == expected
        cli = subprocess.run(
            [sys.executable, "-m", "netstack", "-netdev", spec],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert cli.returncode == 1
        assert cli.stderr.strip().splitlines()[-1] == f"netstackd: -netdev {spec}: {expected}"
    assert ns.clients == []


class FakeSwitch:
    """A control socket that answers requests the way a test asks."""

    def __init__(self, directory: Path, answer: Callable[[bytes], bytes | None]) -> None:
        self.directory, self.answer = directory, answer
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeSwitch:
        self.directory.mkdir(exist_ok=True)
        self.server = await asyncio.start_unix_server(self._serve, str(self.directory / "ctl"))
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.read(4096)
            self.requests.append(request)
            reply = self.answer(request)
            if reply is None:
                writer.close()
                return
            writer.write(reply)
            await writer.drain()
            await reader.read()  # hold the connection until the plug goes
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def test_bad_switches(
    ns: Netstack, tmp_path: Path, switch: VdeSwitch, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vde_driver, "DEFAULT_TIMEOUT", 1.5)
    answers: dict[str, tuple[Callable[[bytes], bytes | None], str]] = {
        "close": (lambda r: None, "the switch closed the control connection without a reply"),
        "nofile": (lambda r: sockaddr_un(b"/nonexistent/001.3"), "No such file or directory"),
        "relative": (lambda r: sockaddr_un(b"sw/001.3"), "bad reply from the switch"),
        "family": (lambda r: b"\x02\x00" + bytes(SOCKADDR_UN_LEN - 2), "address family 2"),
        "short": (lambda r: b"\x01\x00/tm", "the switch did not answer within 1.5 s"),
        "long": (lambda r: sockaddr_un(b"/x") + b"junk", "bad reply from the switch (114"),
        "unterminated": (lambda r: b"\x01\x00" + b"/" * 108, "unterminated path"),
    }
    for name, (answer, text) in answers.items():
        async with FakeSwitch(tmp_path / name, answer) as fake:
            desc = await ours(ns, f"vde,id=v,sock={fake.directory},port=5")
            assert desc.startswith("Could not open vde: ") and text in desc, (name, desc)
            kind, path, descr = decode_request(fake.requests[0])
            assert kind == 5 << 8 and descr.startswith(b"netstackd:v user=")
            assert not os.path.exists(path), "our data socket was left behind"
    # The real switch never answers a port beyond its -n: a timeout, not a hang.
    desc = await ours(ns, f"vde,id=v,sock={switch.directory},port=40")
    assert desc == "Could not open vde: the switch did not answer within 1.5 s"
    assert ns.clients == []
    # The daemon still serves: a good port opens.
    await ns.netdev_add(parse_netdev_cli(f"vde,id=v,sock={switch.directory}"))
    assert [nc.name for nc in ns.clients] == ["v"]


async def test_switch_restart_recovery(ns: Netstack, switch: VdeSwitch) -> None:
    nc, inside = await vde_port(ns, f"vde,id=v0,sock={switch.directory}")
    counters = nc.counters  # type: ignore[attr-defined]
    port = counters()["port"]
    switch.stop(signal.SIGKILL)
    await until(lambda: nc.link_down)
    assert counters()["disconnects"] == 1 and counters()["port"] == -1
    assert nc.info_str.endswith("fd=-1 (disconnected)")
    (entry,) = ns.query_netdev("v0")
    assert entry["link-up"] is False
    inside.send([frames_of([64])[0]])  # into a dead port: dropped, counted, no error
    await asyncio.sleep(0.5)  # a few failed attempts against the dead control socket
    assert counters()["connect-failures"] >= 1
    switch.start()
    await until(lambda: not nc.link_down)
    assert counters()["connects"] == 2 and counters()["port"] == port
    plug = await VdePlug(switch.directory).start()
    try:
        await plugged(switch.directory, 2)
        f = frames_of([100])[0]
        await plug.send(f)
        await until(lambda: f in inside.got)
        g = b"\xff" * 6 + bytes.fromhex("020000000177") + b"\x88\xb5" + bytes(50)
        inside.send([g])
        assert await plug.recv(5) == g
    finally:
        await plug.close()
    # set_link off holds across a re-plug.
    ns.set_link("v0", False)
    switch.stop()  # an orderly exit this time: the switch removes its directory
    await until(lambda: counters()["disconnects"] == 2)
    switch.start()
    await until(lambda: counters()["connects"] == 3)
    assert nc.link_down
    ns.set_link("v0", True)
    assert not nc.link_down


async def test_frames_byte_exact_with_qemus_vde_netdev(
    ns: Netstack, switch: VdeSwitch, tmp_path: Path
) -> None:
    """QEMU's own vde netdev (libvdeplug) as the far port: QEMU joins it to a unix dgram
    netdev on its hub 0, which the test drives."""
    try:
        qemu = ensure_qemu(install=False)
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")
    nc, inside = await vde_port(ns, f"vde,id=v0,sock={switch.directory}")
    near, far = tmp_path / "near", tmp_path / "far"
    test_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    test_sock.bind(str(far))
    test_sock.setblocking(False)
    argv = [qemu, "-machine", "none", "-nodefaults", "-display", "none"]
    for spec in (
        f"vde,id=q,sock={switch.directory}",
        "hubport,id=hq,hubid=0,netdev=q",
        f"dgram,id=d,local.type=unix,local.path={near},remote.type=unix,remote.path={far}",
        "hubport,id=hd,hubid=0,netdev=d",
    ):
        argv += ["-netdev", spec]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    loop = asyncio.get_running_loop()
    try:
        await plugged(switch.directory, 2)
        await until(near.exists)
        out = frames_of([14, 60, 333, 1514])
        for f in out:
            test_sock.sendto(f, str(near))
        await until(lambda: len(inside.got) >= len(out))
        assert inside.got == out
        for f in out:
            g = f[:7] + b"\x01" + f[8:]
            inside.send([g])
            assert await asyncio.wait_for(loop.sock_recv(test_sock, 4096), 5) == g
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        test_sock.close()
    assert nc.stats.rx_frames == len(out)


async def test_hostile_switch_after_the_handshake(ns: Netstack, tmp_path: Path) -> None:
    """A fake switch that answers correctly, then sends junk on the control stream and
    an empty datagram on the data socket, then goes away: counted, logged,
    the port keeps working until the end, then re-plug attempts are counted."""
    data = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    data_path = tmp_path / "fake" / "001.9"
    writers: list[asyncio.StreamWriter] = []

    def answer(request: bytes) -> bytes:
        _kind, path, _descr = decode_request(request)
        data.connect(path)  # as the switch does, before replying
        return sockaddr_un(os.fsencode(data_path))

    fake = FakeSwitch(tmp_path / "fake", answer)
    (tmp_path / "fake").mkdir()
    data.bind(str(data_path))
    data.setblocking(False)
    original = fake._serve

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await original(reader, writer)

    fake._serve = serve  # type: ignore[method-assign]
    async with fake:
        nc, inside = await vde_port(ns, f"vde,id=v0,sock={fake.directory}")
        counters = nc.counters  # type: ignore[attr-defined]
        assert counters()["port"] == 1
        writers[0].write(b"junk on the control stream")
        await writers[0].drain()
        await until(lambda: counters()["ctl-unexpected"] == 26)
        data.send(b"")
        data.send(b"\xff" * 6 + b"\x02" * 6 + b"\x88\xb5" + bytes(50))
        await until(lambda: len(inside.got) == 1)
        assert nc.stats.malformed == 1 and not nc.link_down
        inside.send([b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x05" + b"\x88\xb5" + bytes(50)])
        got = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(data, 4096), 5)
        assert got[6:12] == b"\x02\x00\x00\x00\x00\x05"
        writers[0].close()
    data.close()
    await until(lambda: nc.link_down)
    await until(lambda: counters()["connect-failures"] >= 2)
    assert counters()["disconnects"] == 1 and counters()["connects"] == 1
    ns.netdev_del("v0")
    await asyncio.sleep(0.3)  # no re-plug timer survives the netdev
    assert ns.find_netdev("v0") is None


async def test_odd_sock_values(ns: Netstack, tmp_path: Path) -> None:
    """Odd ``sock=`` values fail as QEMU's do, or (where libvdeplug truncates or guesses)
    with a clearer text; none leaves anything behind."""
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "gfile").write_text("garbage line\n")  # a regular file names the switch
    (tmp_path / "efile").write_text("")
    for spec in (
        "vde,id=v,sock=nosuch://x",
        f"vde,id=v,sock={tmp_path}/emptydir",
        f"vde,id=v,sock={tmp_path}/gfile",
        f"vde,id=v,sock={tmp_path}/efile",
    ):
        assert await ours(ns, spec) == qemu_error(spec), spec
    long = tmp_path / ("d" * 120)
    long.mkdir()
    assert await ours(ns, f"vde,id=v,sock={long}") == "Could not open vde: File name too long"
    assert await ours(ns, f"vde,id=v,sock={tmp_path}/emptydir[colour=red]") == (
        "Could not open vde: unknown key 'colour' in the vde URL"
    )
    with pytest.raises(GenericError, match=r"^Could not open vde: Invalid argument$"):
        await ns.netdev_add(netdev_from_qmp({"id": "v", "type": "vde", "sock": "/tmp/a\0b"}))
    assert ns.clients == []
    assert sorted(os.listdir(tmp_path / "emptydir")) == []


async def test_data_socket_mode_and_group(ns: Netstack, tmp_path: Path) -> None:
    """What the switch finds at our data socket when it gets the request: the ``mode``
    asked for (default 0700) and the ``group``."""
    seen: list[tuple[int, int]] = []

    def answer(request: bytes) -> bytes | None:
        _kind, path, _descr = decode_request(request)
        st = os.stat(path)
        seen.append((st.st_mode & 0o7777, st.st_gid))
        return None

    async with FakeSwitch(tmp_path / "fake", answer) as fake:
        for opts in ("", ",mode=0750", ",mode=0777,group=4", f"[mode=0711/group={os.getegid()}]"):
            await ours(ns, f"vde,id=v,sock={fake.directory}{opts}")
    assert seen == [(0o700, os.getegid()), (0o750, os.getegid()), (0o777, 4), (0o711, os.getegid())]
