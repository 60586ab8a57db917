"""TLS chardevs between netstackd and QEMU 7.2, both directions, carrying Ethernet frames
(QEMU's 4-byte length framing of filter-mirror/filter-redirector): QEMU's TLS client
chardev connects to netstackd's TLS server chardev, and netstackd's TLS client chardev
connects to QEMU's TLS server chardev; each side verifies the other's certificate.

One frame makes the round trip (all loopback UDP and TCP)::

  test --udp--> QEMU n0 (socket udp, on a hub) -> filter-mirror(tx) --TLS--> netstackd fromq
  netstackd filter-redirector(rx, indev=fromq) on s0 -> filter-mirror(rx) --TLS--> QEMU in
      and s0 --udp--> test                          (seen after the first TLS hop)
  QEMU filter-redirector(rx, indev=in) on n0 --udp--> test   (seen after the second hop)
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

from tests.interop.chardev_peers import chardev_port, daemon_with
from tests.interop.tls_pki import make_pki

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [
    pytest.mark.qemu,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        QEMU is None or shutil.which("openssl") is None or shutil.which("certtool") is None,
        reason="needs qemu-system-x86_64, openssl and certtool",
    ),
]


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def frame(tag: bytes) -> bytes:
    payload = tag.ljust(46, b".")
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + payload


@contextlib.contextmanager
def qemu(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    assert QEMU is not None
    with open(log, "wb") as out:
        proc = subprocess.Popen([QEMU, "-machine", "none", "-nodefaults", "-display", "none",
                                 *args], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_frames_cross_tls_chardevs_between_qemu_and_netstackd(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    to_test_ns, to_test_q = udp(), udp()  # where each side sends the frames it gets
    with contextlib.ExitStack() as stack:
        for sock in (to_test_ns, to_test_q):
            stack.callback(sock.close)
        with udp() as probe:  # free UDP ports for the two socket netdevs
            ns_local = probe.getsockname()[1]
        with udp() as probe:
            q_local = probe.getsockname()[1]
        args = [
            "-object", f"tls-creds-x509,id=tlss,dir={pki.server},endpoint=server",
            "-object", f"tls-creds-x509,id=tlsc,dir={pki.client},endpoint=client",
            "-chardev", "socket,id=fromq,host=127.0.0.1,port=0,server=on,wait=off,tls-creds=tlss",
            "-netdev", f"socket,id=s0,udp=127.0.0.1:{to_test_ns.getsockname()[1]},"
                       f"localaddr=127.0.0.1:{ns_local}",
            "-netdev", "hubport,id=hp0,hubid=0,netdev=s0",  # injected rx needs a peer
            "-object", "filter-redirector,id=r0,netdev=s0,queue=rx,indev=fromq",
        ]  # fmt: skip
        (tmp_path / "ns").mkdir()
        daemon = stack.enter_context(daemon_with(tmp_path / "ns", args))
        fromq = await chardev_port(daemon, "fromq")
        q_in = free_tcp_port()
        qargs = [
            "-object", f"tls-creds-x509,id=qs,dir={pki.server},endpoint=server",
            "-object", f"tls-creds-x509,id=qc,dir={pki.client},endpoint=client",
            "-chardev", f"socket,id=out,host=127.0.0.1,port={fromq},tls-creds=qc",
            "-chardev", f"socket,id=in,host=127.0.0.1,port={q_in},server=on,wait=off,tls-creds=qs",
            "-netdev", f"socket,id=n0,udp=127.0.0.1:{to_test_q.getsockname()[1]},"
                       f"localaddr=127.0.0.1:{q_local}",
            "-netdev", "hubport,id=hq,hubid=0,netdev=n0",
            "-object", "filter-mirror,id=m,netdev=n0,queue=tx,outdev=out",
            "-object", "filter-redirector,id=r,netdev=n0,queue=rx,indev=in",
        ]  # fmt: skip
        proc = stack.enter_context(qemu(qargs, tmp_path / "qemu.log"))
        # netstackd's side towards QEMU's server, added once QEMU listens
        client = QMPClient("tls-test")
        await client.connect(str(daemon.qmp))
        try:
            for _ in range(300):  # until QEMU (slow to start on a loaded machine) listens
                try:
                    await client.execute("chardev-add", {"id": "toq", "backend": {
                        "type": "socket", "data": {
                            "addr": {"type": "inet",
                                     "data": {"host": "127.0.0.1", "port": str(q_in)}},
                            "server": False, "tls-creds": "tlsc"}}})  # fmt: skip
                    break
                except Exception:
                    assert proc.poll() is None, (tmp_path / "qemu.log").read_text()
                    await asyncio.sleep(0.1)
            # rx frames walk the chain backwards (net/filter.c): the mirror goes in front
            # of the redirector to see what the redirector injects
            await client.execute("object-add", {"qom-type": "filter-mirror", "id": "m0",
                                                "netdev": "s0", "queue": "rx",
                                                "position": "head", "outdev": "toq"})  # fmt: skip
            sender = udp()
            stack.callback(sender.close)
            a = frame(b"round trip over two tls chardevs")
            got_a = got_b = b""
            for _ in range(120):  # TLS handshakes finish in the background (slow under TCG)
                if not got_a:
                    sender.sendto(a, ("127.0.0.1", q_local))
                await asyncio.sleep(0.5)
                with contextlib.suppress(BlockingIOError):
                    while not got_a:
                        got_a = to_test_ns.recv(2048)
                with contextlib.suppress(BlockingIOError):
                    while not got_b:
                        got_b = to_test_q.recv(2048)
                if got_a and got_b:
                    break
            logs = (tmp_path / "qemu.log").read_text() + daemon.output()
            assert got_a == a, logs  # QEMU -> TLS -> netstackd
            assert got_b == a, logs  # ... -> netstackd -> TLS -> QEMU
            chardevs = {c["label"]: c for c in await client.execute("query-chardev")}
            assert chardevs["fromq"]["filename"].startswith(f"tcp:127.0.0.1:{fromq},server=on <-> ")
            assert chardevs["toq"]["filename"].endswith(f" <-> 127.0.0.1:{q_in}")
        finally:
            await client.disconnect()
        assert proc.poll() is None
        assert "TLS handshake failed" not in daemon.output()
