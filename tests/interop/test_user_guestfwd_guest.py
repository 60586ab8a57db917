"""guestfwd and restrict=on with a real QEMU 7.2 guest (vhost-user, joined on hub 0 with
the user netdev, in-process daemon), all in one boot of a ``restrict=on`` user netdev:

* busybox ``nc`` reaches a guestfwd whose chardev (``tcp:127.0.0.1:PORT``, opened when the
  netdev is created, as QEMU does) points at a TCP server this test runs: the server
  answers the guest's line and closes, and the guest's connection ends with our FIN;
* busybox ``nc`` and ``wget`` reach ``cmd:`` guestfwds (``cat``, and a shell HTTP
  responder): a child per connection, its stdio the connection;
* an outbound connection to 10.0.2.2 (a listening host port) is refused at once (RST),
  and the host server never sees it;
* hostfwd still works into the isolated guest: TCP (the host fetches from busybox httpd)
  and UDP (a 285-byte static UDP echo server written for this test: the guest's answers
  to a forwarded flow pass restrict=on).

And, without a boot: the error texts of bad guestfwd rules equal those of QEMU's own
``netdev_add`` (``-machine none``), with nothing left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import struct
from pathlib import Path

import pytest

import drivers
from drivers.user import control as user_control
from netstack import qapi
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.qapi import parse_chardev_cli
from tests.kit.guests import attach_user_over_vhost_user, http_get, vhost_user_qemu_args
from tests.kit.qemu import netdev_add_errors, qemu_monitor
from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(180)]
MAC = "52:54:00:12:34:56"
TCP_RE = re.compile(r"TCP.HOST_FORWARD.*127\.0\.0\.1\s+(\d+)\s+10\.")
UDP_RE = re.compile(r"UDP.HOST_FORWARD.*127\.0\.0\.1\s+(\d+)\s+10\.")
BODY = b"hello from the isolated guest\n"
HTTP_RESPONDER = (
    "while IFS= read -r l; do case \"$l\" in \"$(printf '\\r')\"|'') break;; esac; done; "
    "printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 15\\r\\n\\r\\nhello from cmd\\n'"
)

# A UDP echo server for the guest (busybox's nc has no UDP): x86-64 Linux, static, no libc.
#     socket(AF_INET, SOCK_DGRAM, 0) -> r12; bind(r12, &addr, 16) or exit(1)
#   again:
#     n = recvfrom(r12, buf, 2048, 0, &from, &fromlen=16); if n < 0: goto again
#     sendto(r12, buf, n, 0, &from, 16); goto again
#   addr: struct sockaddr_in (appended below); from, fromlen, buf follow in memory.
# Assembled with GNU as (intel syntax, rip-relative: addr = end of code).
UDP_ECHO_CODE = bytes.fromhex(
    "b829000000bf02000000be0200000031d20f054989c44c89e7488d3575000000ba10000000b831000000"
    "0f0585c075594c8d0d7e00000041c701100000004c8d05600000004531d2ba00080000488d3571000000"
    "4c89e7b82d0000000f054885c078cd4889c241b9100000004c8d05320000004531d2488d35480000004c"
    "89e7b82c0000000f05eba7bf01000000b83c0000000f05"
)


def udp_echo_elf(port: int) -> bytes:
    """A minimal ELF64 executable: one RWX segment at 0x400000 holding the code and the
    ``sockaddr_in`` for ``port``; 2096 more bytes of memory for ``from``/``buf``."""
    base, headers = 0x400000, 64 + 56
    body = UDP_ECHO_CODE + struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + bytes(12)
    filesz = headers + len(body)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, base + headers, 64, 0, 0, 64, 56,
                       1, 0, 0, 0)  # fmt: skip
    phdr = struct.pack("<IIQQQQQQ", 1, 7, 0, base, base, filesz, filesz + 48 + 2048, 0x1000)
    return ehdr + phdr + body


async def udp_echo(port: int, payload: bytes, tries: int = 20) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        for _ in range(tries):
            s.sendto(payload, ("127.0.0.1", port))
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(loop.sock_recv(s, 2048), 0.5)
        raise AssertionError("no UDP echo through the hostfwd")


def port_of(ns: Netstack, regex: re.Pattern[str]) -> int:
    match = regex.search(user_control.info_usernet(ns))
    assert match is not None, user_control.info_usernet(ns)
    return int(match.group(1))


def line(console: str, tag: str) -> str:
    match = re.search(rf"^{tag} (.*)$", console, re.M)
    assert match is not None, console
    return match.group(1).strip()


async def test_guestfwd_and_restrict_with_a_guest(image: GuestImage, tmp_path: Path) -> None:
    sock = tmp_path / "vhost.sock"
    chardev_lines: list[bytes] = []

    async def chardev_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readline()
        chardev_lines.append(data)
        writer.write(b"pong-chardev\n")
        await writer.drain()
        writer.close()  # the chardev's stream ends: the guest's connection gets our FIN

    peer = await asyncio.start_server(chardev_peer, "127.0.0.1", 0)
    peer_port = peer.sockets[0].getsockname()[1]
    outbound = socket.create_server(("127.0.0.1", 0))  # would accept, if allowed
    outbound.setblocking(False)
    out_port = outbound.getsockname()[1]
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    try:
        await ns.netdev_add(qapi.netdev_from_qmp({
            "id": "nat0", "type": "user", "restrict": True,
            "hostfwd": [{"str": "tcp:127.0.0.1:0-:8080"}, {"str": "udp:127.0.0.1:0-:5353"}],
            "guestfwd": [{"str": f"tcp:10.0.2.100:4321-tcp:127.0.0.1:{peer_port}"},
                         {"str": "tcp:10.0.2.101:7-cmd:cat"},
                         {"str": f"tcp:10.0.2.101:80-cmd:{HTTP_RESPONDER}"}],
        }))  # fmt: skip
        await attach_user_over_vhost_user(ns, sock, None, MAC)
        tcp_port, udp_port = port_of(ns, TCP_RE), port_of(ns, UDP_RE)

        script = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
mkdir -p /www && printf '{BODY.decode().rstrip()}\\n' > /www/f
httpd -p 8080 -h /www && echo HTTPD-UP
chmod +x /udpecho && /udpecho &
echo ping-chardev | nc 10.0.2.100 4321 > /tmp/c; echo "CHARDEV $? $(cat /tmp/c)"
echo ping-cmd | nc 10.0.2.101 7 > /tmp/d; echo "CMD $? $(cat /tmp/d)"
wget -q -O /tmp/w http://10.0.2.101:80/; echo "WGET $? $(cat /tmp/w)"
echo out | nc 10.0.2.2 {out_port} 2>&1; echo "OUTBOUND $?"
echo SCRIPT-DONE
sleep 120
"""
        args = vhost_user_qemu_args(sock, MAC)
        files = {"udpecho": udp_echo_elf(5353)}
        async with Guest(image, script, args, name="guestfwd", files=files, timeout=150) as g:
            await g.wait_for("SCRIPT-DONE", 120)
            out = g.console
            assert "DHCP-OK" in out and "HTTPD-UP" in out, out
            assert line(out, "CHARDEV") == "0 pong-chardev", out
            assert chardev_lines == [b"ping-chardev\n"]
            assert line(out, "CMD") == "0 ping-cmd", out
            assert line(out, "WGET") == "0 hello from cmd", out
            assert line(out, "OUTBOUND") == "1", out
            assert "Connection refused" in out, out
            with pytest.raises(BlockingIOError):
                outbound.accept()  # the refused connection never reached the host

            # hostfwd into the isolated guest: TCP and UDP (answers pass restrict=on)
            assert await http_get(tcp_port) == BODY
            assert await udp_echo(udp_port, b"udp through restrict") == b"udp through restrict"

            user = ns.find_netdev("nat0")
            assert user is not None
            counters = user.counters()  # type: ignore[attr-defined]
            assert counters["restrict-refused"] >= 1
            assert counters.get("internal-error", 0) == 0
            forwarder = user.guestfwd  # type: ignore[attr-defined]
            for _ in range(200):  # both children exited with their connections: reaped
                if not forwarder.children.live:
                    break
                await asyncio.sleep(0.01)
            counters = forwarder.counters()
            assert counters["guestfwd-connections"] == 3  # chardev, cat, the HTTP responder
            assert counters["guestfwd-children"] == 2
            assert counters["guestfwd-children-reaped"] == 2
    finally:
        outbound.close()
        peer.close()
        await ns.close()
        await peer.wait_closed()


# -- error texts against QEMU's own netdev_add ------------------------------------------------


def error_cases(closed: int) -> list[list[str]]:
    """Rule sets on which netstack and QEMU must agree."""
    return [
        [f"tcp:10.0.2.100:80-tcp:127.0.0.1:{closed}"],
        ["tcp:10.0.2.100:80-bogus"],
        ["tcp:10.0.2.100:80-chardev:nope"],
        ["tcp:10.0.2.100:80-chardev:c0", "tcp:10.0.2.100:81-chardev:c0"],
        ["tcp:10.0.2.100:80-cmd:true", "tcp:10.0.2.100:81-null"],
        ["tcp:10.0.2.3:80-cmd:true"],
        ["tcp:10.0.2.100:0-cmd:true"],
        ["udp:10.0.2.100:80-cmd:true"],
    ]


CONFLICT = "Conflicting/invalid host:port in guest forwarding rule '{}'"
OPEN = "Could not open guest forwarding device 'guestfwd.tcp.80'"
#: Where netstack deliberately differs (rules, QEMU's answer, ours). libslirp's duplicate
#: check compares a host-order port with a network-order one, so QEMU accepts a second
#: cmd: rule for the same server:port (the one added last, i.e. given first, wins), and a
#: second chardev rule fails on the chardev id; netstack refuses both as conflicts, and
#: (its guestfwd chardevs being private) accepts chardev rules on one port and two servers.
DEVIATIONS = [
    (["tcp:10.0.2.100:80-cmd:true", "tcp:10.0.2.100:80-cmd:false"], None,
     CONFLICT.format("tcp:10.0.2.100:80-cmd:true")),
    (["tcp:10.0.2.100:80-null", "tcp:10.0.2.100:80-null"], OPEN,
     CONFLICT.format("tcp:10.0.2.100:80-null")),
    (["tcp:10.0.2.100:80-null", "tcp:10.0.2.101:80-null"], OPEN, None),
]  # fmt: skip


async def qemu_errors(tmp: Path, cases: list[list[str]]) -> list[str | None]:
    async with qemu_monitor(tmp, "-chardev", "null,id=c0", name="guestfwd") as qmp:
        return await netdev_add_errors(
            qmp, [{"type": "user", "guestfwd": [{"str": r} for r in rules]} for rules in cases]
        )


async def our_errors(cases: list[list[str]]) -> list[str | None]:
    ns = Netstack(drivers.registry())
    out: list[str | None] = []
    try:
        await ns.chardev_add(parse_chardev_cli("null,id=c0"), from_cli=True)
        for n, rules in enumerate(cases):
            args: dict[str, object] = {"id": f"u{n}", "type": "user",
                                       "guestfwd": [{"str": r} for r in rules]}  # fmt: skip
            try:
                await ns.netdev_add(qapi.netdev_from_qmp(args))
            except GenericError as exc:
                out.append(str(exc.desc))
                assert ns.find_netdev(f"u{n}") is None
                continue
            out.append(None)
            ns.netdev_del(f"u{n}")
        assert ns.chardevs.get("c0") is not None  # detached, never deleted
    finally:
        await ns.close()
    return out


@pytest.mark.timeout(60)
async def test_guestfwd_errors_match_qemu(tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 unavailable")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cases = error_cases(closed) + [rules for rules, _qemu, _ours in DEVIATIONS]
    theirs = await asyncio.wait_for(qemu_errors(tmp_path, cases), 50)
    ours = await our_errors(cases)
    n = len(cases) - len(DEVIATIONS)
    assert ours[:n] == theirs[:n]
    assert theirs[n:] == [qemu for _rules, qemu, _ours in DEVIATIONS]
    assert ours[n:] == [mine for _rules, _qemu, mine in DEVIATIONS]
