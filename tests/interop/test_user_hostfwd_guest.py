"""hostfwd with a real QEMU 7.2 guest (vhost-user, joined on hub 0 with the user netdev,
in-process daemon): the guest runs busybox httpd on port 8080 after udhcpc; the host
fetches a file through a creation-time rule (kernel-chosen port read from ``info usernet``
with QEMU's own regex) and through a rule added with HMP ``hostfwd_add``, which stops
working after ``hostfwd_remove``."""

from __future__ import annotations

import asyncio
import re
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

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(120)]
MAC = "52:54:00:12:34:56"
QEMU_RE = re.compile(r"TCP.HOST_FORWARD.*127\.0\.0\.1\s+(\d+)\s+10\.")
BODY = b"hello from the guest via hostfwd\n"


@pytest.fixture(scope="module")
def image() -> GuestImage:
    try:
        ensure_qemu(install=False)
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")
    return build()


async def http_get(port: int, timeout: float = 10.0) -> bytes:
    """GET /f from 127.0.0.1:port; the response body."""

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /f HTTP/1.0\r\nHost: x\r\n\r\n")
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], data
        return body

    return await asyncio.wait_for(get(), timeout)


async def test_guest_httpd_through_hostfwd(image: GuestImage, tmp_path: Path) -> None:
    sock = tmp_path / "vhost.sock"
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    try:
        await ns.chardev_add(
            parse_chardev_cli(f"socket,id=c0,path={sock},server=on,wait=off"), from_cli=True
        )
        for spec in (
            "user,id=nat0,hostfwd=tcp:127.0.0.1:0-:8080",
            f"vhost-user,id=vm0,chardev=c0,mac={MAC}",
            "hubport,id=h0,hubid=0,netdev=nat0",
            "hubport,id=h1,hubid=0,netdev=vm0",
        ):
            netdev = parse_netdev_cli(spec)
            check_id(netdev.id)
            await ns.netdev_add(netdev)
        match = QEMU_RE.search(ns.info_usernet())
        assert match is not None, ns.info_usernet()
        port = int(match.group(1))
        assert port > 0

        script = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
mkdir -p /www && printf '{BODY.decode().rstrip()}\\n' > /www/f
httpd -p 8080 -h /www && echo HTTPD-UP
sleep 90
"""
        args = [
            *shared_memory_args(256),
            "-chardev",
            f"socket,id=vhost0,path={sock}",
            "-netdev",
            "vhost-user,id=net0,chardev=vhost0",
            *virtio_nic_args("net0", MAC, msix=False),
        ]
        async with Guest(image, script, args, name="hostfwd", timeout=100) as g:
            await g.wait_for("HTTPD-UP", 60)
            assert await http_get(port) == BODY

            # a rule added at run time (kernel-chosen port), then removed
            assert ns.hmp_hostfwd("hostfwd_add", ["nat0", "tcp:127.0.0.1:0-:8080"]) == ""
            ports = [int(p) for p in QEMU_RE.findall(ns.info_usernet())]
            (extra,) = [p for p in ports if p != port]
            assert await http_get(extra) == BODY
            assert ns.hmp_hostfwd("hostfwd_remove", ["nat0", f"tcp:127.0.0.1:{extra}"]) == (
                f"host forwarding rule for tcp:127.0.0.1:{extra} removed\n"
            )
            with pytest.raises(OSError):
                await http_get(extra, timeout=3)
            assert await http_get(port) == BODY  # the creation-time rule still works
    finally:
        await ns.close()
