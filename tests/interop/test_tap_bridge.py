"""The ``bridge`` netdev and ``tap,helper=``, against a kernel bridge in a namespace.

Topology::

    ns A: ta 10.66.0.1 <- tap a -> hub 0 <- bridge b -> tapN -- br0 10.66.0.2 :ns BR

Three ways to get the bridge port: the daemon makes and attaches it itself (it runs as
root, so it has CAP_NET_ADMIN), netstack's own helper (``python -m drivers.tap.helper``,
a command with spaces, so run through ``/bin/sh -c`` with ``--br=`` appended), and QEMU's
own ``qemu-bridge-helper``. The last needs an ACL in ``/etc/qemu/bridge.conf``; the test
never touches the host's ``/etc``: a wrapper runs the helper in a private mount namespace
with an overlay on ``/etc`` that holds the ACL. Without the ACL the real helper refuses,
and the daemon reports QEMU's "bridge helper failed".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from drivers import bridge, hubport, tap
from netstack.daemon import Netstack
from netstack.errors import GenericError
from netstack.qapi import parse_netdev_cli
from tests.interop.test_tap_netns import ADDR_A, ADDR_B, ping
from tests.kit.netns import ip, netns, require_root

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

QEMU_HELPER = "/usr/lib/qemu/qemu-bridge-helper"
OUR_HELPER = f"{sys.executable} -m drivers.tap.helper"

WRAPPER = """#!/bin/sh
# qemu-bridge-helper with a private /etc/qemu/bridge.conf ("allow all")
d=$(mktemp -d)
exec unshare --mount --propagation private /bin/sh -c '
d=$0; shift
mkdir -p "$d/u/qemu" "$d/w" && echo "allow all" > "$d/u/qemu/bridge.conf" &&
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$d/u,workdir=$d/w" /etc || exit 1
exec {helper} "$@"' "$d" "$@"
"""


@contextlib.contextmanager
def bridge_ns(mtu: int = 1400) -> Iterator[str]:
    with netns("nsbr") as name:
        ip("-n", name, "link", "add", "br0", "mtu", str(mtu), "type", "bridge")
        ip("-n", name, "addr", "add", f"{ADDR_B}/24", "dev", "br0")
        ip("-n", name, "link", "set", "br0", "up")
        yield name


@contextlib.asynccontextmanager
async def rig(bridge_spec: str) -> AsyncIterator[tuple[Netstack, str, str]]:
    """Daemon with ``tap a`` in ns A and the bridge netdev ``b`` (``{ns}`` = ns BR)."""
    require_root()
    with netns("nsa") as ns_a, bridge_ns() as ns_br:
        daemon = Netstack({"tap": tap.SPEC, "bridge": bridge.SPEC, "hubport": hubport.SPEC})
        try:
            await daemon.netdev_add(
                parse_netdev_cli(f"tap,id=a,ifname=ta,script=no,downscript=no,x-netns={ns_a}")
            )
            await daemon.netdev_add(parse_netdev_cli(bridge_spec.format(ns=ns_br)))
            for name in ("a", "b"):
                await daemon.netdev_add(
                    parse_netdev_cli(f"hubport,id=p{name},hubid=0,netdev={name}")
                )
            ip("-n", ns_a, "addr", "add", f"{ADDR_A}/24", "dev", "ta")
            ip("-n", ns_a, "link", "set", "ta", "up", "mtu", "1400")
            yield daemon, ns_a, ns_br
        finally:
            await daemon.close()


def bridge_ports(ns: str) -> list[str]:
    out = ip("-n", ns, "-o", "link", "show", "master", "br0")
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]


async def ports_after_delete(ns: str) -> list[str]:
    loop = asyncio.get_running_loop()
    end = loop.time() + 3
    while bridge_ports(ns) and loop.time() < end:
        await asyncio.sleep(0.05)
    return bridge_ports(ns)


async def test_bridge_port_made_by_the_daemon() -> None:
    async with rig("bridge,id=b,x-netns={ns}") as (daemon, ns_a, ns_br):
        b = daemon.find_netdev("b")
        assert b is not None and b.type == "tap" and b.model == "bridge"
        (port,) = bridge_ports(ns_br)
        assert b.info_str == f"ifname={port},br=br0,x-netns={ns_br}"
        link = ip("-n", ns_br, "link", "show", port)
        assert "mtu 1400" in link and "state UP" in link.replace("state UNKNOWN", "state UP")
        assert "link/ether fe:" in link
        assert b.accepts_vnet  # made with IFF_VNET_HDR
        await ping(ns_a, ADDR_B)
        daemon.netdev_del("b")
        assert await ports_after_delete(ns_br) == []


async def test_tap_with_our_helper_command() -> None:
    spec = f"tap,id=b,helper={OUR_HELPER},br=br0,x-netns={{ns}}"
    async with rig(spec) as (daemon, ns_a, ns_br):
        b = daemon.find_netdev("b")
        assert b is not None and b.info_str == f"helper={OUR_HELPER}" and b.model == "bridge"
        assert len(bridge_ports(ns_br)) == 1
        await ping(ns_a, ADDR_B)
        daemon.netdev_del("b")
        assert await ports_after_delete(ns_br) == []


@pytest.mark.skipif(not os.path.exists(QEMU_HELPER), reason="qemu-bridge-helper not installed")
async def test_bridge_with_qemus_helper(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    wrapper = tmp_path / "helper.sh"
    wrapper.write_text(WRAPPER.format(helper=QEMU_HELPER))
    wrapper.chmod(0o755)
    async with rig(f"bridge,id=b,helper={wrapper},x-netns={{ns}}") as (daemon, ns_a, ns_br):
        b = daemon.find_netdev("b")
        assert b is not None and b.info_str == f"helper={wrapper},br=br0"
        (port,) = bridge_ports(ns_br)
        assert "mtu 1400" in ip("-n", ns_br, "link", "show", port)
        await ping(ns_a, ADDR_B)
        daemon.netdev_del("b")
        assert await ports_after_delete(ns_br) == []


async def test_helper_failures() -> None:
    require_root()
    with bridge_ns() as ns_br:
        daemon = Netstack({"tap": tap.SPEC, "bridge": bridge.SPEC})
        cases = [
            (f"bridge,id=b,br=nobr,x-netns={ns_br}",
             "failed to get mtu of bridge `nobr': No such device"),
            (f"bridge,id=b,helper=/nonexistent/helper,x-netns={ns_br}", "bridge helper failed"),
            (f"tap,id=b,helper=/bin/true,x-netns={ns_br}", "failed to recv file descriptor"),
            ("tap,id=b,helper=/bin/true,queues=2", "ifname=, script=, downscript=, vnet_hdr=, "
             "queues=, and vhostfds= are invalid with helper="),
        ]  # fmt: skip
        if os.path.exists(QEMU_HELPER) and not os.path.exists("/etc/qemu/bridge.conf"):
            # the real helper without an ACL file refuses
            cases.append(
                (f"bridge,id=b,helper={QEMU_HELPER},x-netns={ns_br}", "bridge helper failed")
            )
        for spec, text in cases:
            with pytest.raises(GenericError) as err:
                await daemon.netdev_add(parse_netdev_cli(spec))
            assert err.value.desc == text, spec
            assert daemon.clients == []
            assert bridge_ports(ns_br) == []
            assert "tap" not in ip("-n", ns_br, "-o", "link", "show")
        await daemon.close()


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv(1)")
async def test_without_cap_net_admin_the_daemon_uses_the_helper() -> None:
    """A daemon without CAP_NET_ADMIN cannot make the tap itself: it runs the default
    helper (QEMU's; with its capabilities bounded too, it fails: QEMU's text)."""
    require_root()
    from tests.interop.test_tap_lifecycle import REPO, RUNNER

    with bridge_ns() as ns_br:
        spec = f"bridge,id=b,x-netns={ns_br}"
        proc = await asyncio.create_subprocess_exec(
            "setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin",
            sys.executable, "-c", RUNNER, "-netdev", spec,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1, out
        assert err.decode().strip().splitlines()[-1] == (
            f"netstackd: -netdev {spec}: bridge helper failed"
        )
        assert bridge_ports(ns_br) == []
