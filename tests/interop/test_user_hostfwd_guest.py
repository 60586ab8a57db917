"""hostfwd with a real QEMU 7.2 guest (vhost-user, joined on hub 0 with the user netdev,
in-process daemon): the guest runs busybox httpd on port 8080 after udhcpc; the host
fetches a file through a creation-time rule (kernel-chosen port read from ``info usernet``
with QEMU's own regex) and through a rule added with HMP ``hostfwd_add``, which stops
working after ``hostfwd_remove``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drivers.user import control as user_control
from tests.kit.daemon import in_process
from tests.kit.guests import attach_user_over_vhost_user, http_get, vhost_user_qemu_args
from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(120)]
MAC = "52:54:00:12:34:56"
QEMU_RE = re.compile(r"TCP.HOST_FORWARD.*127\.0\.0\.1\s+(\d+)\s+10\.")
BODY = b"hello from the guest via hostfwd\n"


async def test_guest_httpd_through_hostfwd(image: GuestImage, tmp_path: Path) -> None:
    sock = tmp_path / "vhost.sock"
    async with in_process(tmp_path) as ns:
        await attach_user_over_vhost_user(
            ns, sock, "user,id=nat0,hostfwd=tcp:127.0.0.1:0-:8080", mac=MAC
        )
        match = QEMU_RE.search(user_control.info_usernet(ns))
        assert match is not None, user_control.info_usernet(ns)
        port = int(match.group(1))
        assert port > 0

        script = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
mkdir -p /www && printf '{BODY.decode().rstrip()}\\n' > /www/f
httpd -p 8080 -h /www && echo HTTPD-UP
sleep 90
"""
        args = vhost_user_qemu_args(sock, MAC)
        async with Guest(image, script, args, name="hostfwd", timeout=100) as g:
            await g.wait_for("HTTPD-UP", 60)
            assert await http_get(port) == BODY

            # a rule added at run time (kernel-chosen port), then removed
            assert (
                user_control.hmp_hostfwd(ns, "hostfwd_add", ["nat0", "tcp:127.0.0.1:0-:8080"]) == ""
            )
            ports = [int(p) for p in QEMU_RE.findall(user_control.info_usernet(ns))]
            (extra,) = [p for p in ports if p != port]
            assert await http_get(extra) == BODY
            assert user_control.hmp_hostfwd(
                ns, "hostfwd_remove", ["nat0", f"tcp:127.0.0.1:{extra}"]
            ) == (f"host forwarding rule for tcp:127.0.0.1:{extra} removed\n")
            with pytest.raises(OSError):
                await http_get(extra, timeout=3)
            assert await http_get(port) == BODY  # the creation-time rule still works
