"""A real QEMU 7.2 guest (vhost-user, joined on hub 0 with the user netdev) uses guest TCP
through the NAT: it downloads a 5 MB random file with busybox wget from an HTTP server on
the host's 127.0.0.1 (as 10.0.2.2) and gets the same MD5; a connect to a closed port is
refused at once (RST), not left to time out."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import drivers
from netstack.daemon import Netstack
from netstack.qapi import check_id, parse_chardev_cli, parse_netdev_cli
from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
    HostUnavailable,
    build,
    ensure_qemu,
    shared_memory_args,
    virtio_nic_args,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(240)]
MAC = "52:54:00:12:34:56"
SIZE = 5 << 20


@pytest.fixture(scope="module")
def image() -> GuestImage:
    try:
        ensure_qemu(install=False)
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")
    return build()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """An HTTP server on 127.0.0.1 serving ``file`` (random); yields (port, md5)."""
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "file").write_bytes(data)
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server.server_address[1], hashlib.md5(data).hexdigest()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_guest_wget_through_user_tcp(
    image: GuestImage, tmp_path: Path, http_root: tuple[int, str]
) -> None:
    port, md5 = http_root
    closed = closed_port()
    sock = tmp_path / "vhost.sock"
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    try:
        await ns.chardev_add(
            parse_chardev_cli(f"socket,id=c0,path={sock},server=on,wait=off"), from_cli=True
        )
        for spec in (
            "user,id=nat0",
            f"vhost-user,id=vm0,chardev=c0,mac={MAC}",
            "hubport,id=h0,hubid=0,netdev=nat0",
            "hubport,id=h1,hubid=0,netdev=vm0",
        ):
            netdev = parse_netdev_cli(spec)
            check_id(netdev.id)
            await ns.netdev_add(netdev)

        script = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
wget -q -O /tmp/f http://10.0.2.2:{port}/file && echo "GOT $(md5sum < /tmp/f)"
t0=$(date +%s)
wget -q -O /tmp/g http://10.0.2.2:{closed}/ 2>&1; echo "CLOSED rc=$? took=$(( $(date +%s) - t0 ))"
"""
        args = [
            *shared_memory_args(256),
            "-chardev",
            f"socket,id=vhost0,path={sock}",
            "-netdev",
            "vhost-user,id=net0,chardev=vhost0",
            *virtio_nic_args("net0", MAC, msix=False),
        ]
        async with Guest(image, script, args, name="usertcp", timeout=150) as g:
            result = await g.wait()
        result.check()
        out = result.output
        assert "DHCP-OK" in out, out
        assert f"GOT {md5}" in out, out
        closed_line = next(line for line in out.splitlines() if line.startswith("CLOSED"))
        assert "rc=0" not in closed_line, out
        assert "refused" in out.lower(), out
        took = int(closed_line.rsplit("took=", 1)[1].strip())
        assert took <= 3, out
        client = ns.find_netdev("nat0")
        assert client is not None
        counters = client.counters()  # type: ignore[attr-defined]
        assert counters["tcp-connects"] >= 2 and counters.get("tcp-event-connect-failed", 0) >= 1, (
            counters
        )
    finally:
        await ns.close()
