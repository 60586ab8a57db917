"""``-object tls-creds-x509`` + ``-chardev socket,tls-creds=...``: QMP over TLS with client
certificates, against Debian's ``openssl s_client`` / ``s_server`` and GnuTLS's
``gnutls-cli``; clients without a valid certificate never reach the monitor."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.chardev_peers import chardev_port, daemon_with
from tests.interop.tls_pki import Pki, make_pki

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        any(shutil.which(p) is None for p in ("openssl", "gnutls-cli", "certtool")),
        reason="needs openssl and gnutls-bin",
    ),
]

QMP_CMDS = b'{"execute":"qmp_capabilities"}\n{"execute":"query-chardev"}\n'


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_args(pki: Pki, verify: str = "on") -> list[str]:
    return [
        "-object", f"tls-creds-x509,id=tls0,dir={pki.server},endpoint=server,verify-peer={verify}",
        "-chardev", "socket,id=t0,host=127.0.0.1,port=0,server=on,wait=off,tls-creds=tls0",
        "-mon", "chardev=t0,mode=control",
    ]  # fmt: skip


def run_client(argv: list[str], stdin: bytes, *, linger: float = 2.0) -> bytes:
    """Run a TLS client, feed it ``stdin`` once connected, collect its output."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    assert proc.stdin is not None
    try:
        time.sleep(0.7)  # the handshake: input sent earlier would race it
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin)
            proc.stdin.flush()
        time.sleep(linger)
        proc.terminate()  # s_client -quiet ignores EOF on stdin
        with contextlib.suppress(BrokenPipeError):
            out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return out


def s_client(port: int, cadir: Path, *, cert: Path | None, key: Path | None) -> list[str]:
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet",
            "-CAfile", str(cadir / "ca-cert.pem"), "-verify_return_error"]  # fmt: skip
    if cert is not None and key is not None:
        argv += ["-cert", str(cert), "-key", str(key)]
    return argv


def gnutls_cli(port: int, cadir: Path, *, cert: Path | None, key: Path | None) -> list[str]:
    argv = ["gnutls-cli", "--x509cafile", str(cadir / "ca-cert.pem"), "-p", str(port),
            "127.0.0.1"]  # fmt: skip
    if cert is not None and key is not None:
        argv[1:1] = ["--x509certfile", str(cert), "--x509keyfile", str(key)]
    return argv


@pytest.mark.parametrize("client", [s_client, gnutls_cli])
async def test_qmp_over_tls_with_client_certificate(
    tmp_path: Path, pki: Pki, client: object
) -> None:
    with daemon_with(tmp_path, server_args(pki)) as daemon:
        port = await chardev_port(daemon, "t0")
        argv = client(port, pki.client, cert=pki.client / "client-cert.pem",  # type: ignore[operator]
                      key=pki.client / "client-key.pem")  # fmt: skip
        out = await asyncio.to_thread(run_client, argv, QMP_CMDS)
        assert b'{"QMP": {"version"' in out, out
        assert b'{"return": {}}' in out
        assert f"tcp:127.0.0.1:{port},server=on <-> 127.0.0.1:".encode() in out


async def test_clients_without_a_valid_certificate_never_reach_the_monitor(
    tmp_path: Path, pki: Pki
) -> None:
    with daemon_with(tmp_path, server_args(pki)) as daemon:
        port = await chardev_port(daemon, "t0")
        rogue = (pki.rogue / "client-cert.pem", pki.rogue / "client-key.pem")
        attempts = [
            s_client(port, pki.client, cert=None, key=None),
            s_client(port, pki.client, cert=rogue[0], key=rogue[1]),
            gnutls_cli(port, pki.client, cert=None, key=None),
            gnutls_cli(port, pki.client, cert=rogue[0], key=rogue[1]),
        ]
        for argv in attempts:
            out = await asyncio.to_thread(run_client, argv, QMP_CMDS, linger=1.0)
            assert b'{"QMP"' not in out and b'{"return"' not in out, (argv, out)
        # plain TCP (no TLS at all) gets nothing either
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            plain.sendall(QMP_CMDS)
            assert b'{"QMP"' not in plain.recv(4096)
        # and a good client still gets in
        argv = s_client(port, pki.client, cert=pki.client / "client-cert.pem",
                        key=pki.client / "client-key.pem")  # fmt: skip
        assert b'{"return": {}}' in await asyncio.to_thread(run_client, argv, QMP_CMDS)
        assert daemon.proc.poll() is None
        log = daemon.output()
        assert log.count("TLS handshake failed") >= 5, log
        assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in log or "did not return" in log


async def test_verify_peer_off_lets_anonymous_clients_in(tmp_path: Path, pki: Pki) -> None:
    with daemon_with(tmp_path, server_args(pki, verify="off")) as daemon:
        port = await chardev_port(daemon, "t0")
        out = await asyncio.to_thread(
            run_client, s_client(port, pki.client, cert=None, key=None), QMP_CMDS
        )
        assert b'{"return": {}}' in out


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (/proc/net/tcp, state 0A)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(line.split()[1] == want and line.split()[3] == "0A" for line in list(table)[1:])


@contextlib.contextmanager
def s_server(pki: Pki, port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1", "-quiet",
         "-cert", str(pki.server / "server-cert.pem"), "-key", str(pki.server / "server-key.pem"),
         "-CAfile", str(pki.server / "ca-cert.pem"), "-Verify", "1", "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


async def test_netstackd_as_tls_client_to_openssl_s_server(tmp_path: Path, pki: Pki) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with s_server(pki, port) as server:
        for _ in range(200):  # until s_server listens
            if listening(port):
                break
            await asyncio.sleep(0.05)
        args = [
            "-object", f"tls-creds-x509,id=tlsc,dir={pki.client},endpoint=client",
            "-chardev", f"socket,id=c0,host=127.0.0.1,port={port},server=off,tls-creds=tlsc",
            "-mon", "chardev=c0,mode=control",
        ]  # fmt: skip
        with daemon_with(tmp_path, args) as daemon:
            assert server.stdin is not None and server.stdout is not None
            server.stdin.write(QMP_CMDS)
            server.stdin.flush()
            out = b""
            deadline = time.monotonic() + 20
            while b"tcp:127.0.0.1" not in out and time.monotonic() < deadline:
                out += await asyncio.to_thread(server.stdout.read1, 4096)  # type: ignore[attr-defined]
            assert b'{"QMP": {"version"' in out and b'{"return": {}}' in out, out
            assert f"<-> 127.0.0.1:{port}".encode() in out
            assert daemon.proc.poll() is None
