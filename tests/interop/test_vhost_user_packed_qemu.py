"""Packed virtqueues against a real QEMU 7.2 guest: ``-device virtio-net-pci,packed=on`` over
vhost-user to netstackd's user NAT. The guest proves from ``/sys/bus/virtio/devices/*/
features`` that VIRTIO_F_RING_PACKED (bit 34) was negotiated, then gets a lease, pings the
gateway and fetches a 1 MiB file over TFTP (md5 checked) through the packed rings. A
second guest unbinds and rebinds its virtio-net driver (device reset: QEMU stops and
restarts the packed rings) and gets traffic through before and after.

The scenario is first run with QEMU's own ``-netdev user`` (the reference: its virtio-net
model negotiates packed rings by itself), so a failure with netstackd is netstackd's.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

import drivers
import drivers.vhost_user
from netstack.daemon import Netstack
from netstack.qapi import parse_chardev_cli, parse_netdev_cli
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

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(400)]
MAC = "52:54:00:12:34:58"
RING_PACKED = 34
SCRIPT = f"""
for d in /sys/bus/virtio/devices/*; do echo "VIRTIO $(cat $d/device) $(cat $d/features)"; done
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
ping -c 3 -W 3 10.0.2.2 && echo PING-OK
tftp -g -b 1468 -r random.bin -l /tmp/r 10.0.2.2 && echo "BIG $(md5sum < /tmp/r)"
"""


@pytest.fixture(scope="module")
def image() -> GuestImage:
    try:
        ensure_qemu(install=False)
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")
    return build()


def net_features(console: str) -> str:
    """The features string of the guest's virtio-net device (device id 0x0001)."""
    found = re.findall(r"VIRTIO 0x0001 ([01]{64})", console)
    assert found, console
    return str(found[0])


@pytest.fixture
def tftp_root(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "tftp"
    root.mkdir()
    data = os.urandom(1 << 20)
    (root / "random.bin").write_bytes(data)
    return root, hashlib.md5(data).hexdigest()


def check(out: str, md5: str) -> None:
    assert net_features(out)[RING_PACKED] == "1", "packed rings were not negotiated"
    assert "DHCP-OK" in out and "PING-OK" in out, out
    assert f"BIG {md5}" in out, out


async def test_reference_qemu_user_negotiates_packed(
    image: GuestImage, tftp_root: tuple[Path, str]
) -> None:
    root, md5 = tftp_root
    args = [
        "-netdev",
        f"user,id=net0,tftp={root}",
        *virtio_nic_args("net0", MAC, extra="packed=on"),
    ]
    async with Guest(image, SCRIPT, args, name="pkref", timeout=200) as g:
        result = await g.wait()
    result.check()
    check(result.output, md5)


async def test_packed_guest_over_vhost_user_uses_the_nat(
    image: GuestImage, tftp_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, md5 = tftp_root
    sock = tmp_path / "vhost.sock"
    ns = Netstack(drivers.registry(), runtime_dir=tmp_path)
    try:
        await ns.chardev_add(
            parse_chardev_cli(f"socket,id=c0,path={sock},server=on,wait=off"), from_cli=True
        )
        for spec in (
            f"user,id=nat0,tftp={root}",
            f"vhost-user,id=vm0,chardev=c0,mac={MAC}",
            "hubport,id=h0,hubid=0,netdev=nat0",
            "hubport,id=h1,hubid=0,netdev=vm0",
        ):
            await ns.netdev_add(parse_netdev_cli(spec))
        args = [
            *shared_memory_args(256),
            "-chardev",
            f"socket,id=vhost0,path={sock}",
            "-netdev",
            "vhost-user,id=net0,chardev=vhost0",
            *virtio_nic_args("net0", MAC, msix=False, extra="packed=on"),
        ]
        async with Guest(image, SCRIPT, args, name="pkvu", timeout=200) as g:
            result = await g.wait()
        result.check()
        check(result.output, md5)
        vm = ns.find_netdev("vm0")
        assert isinstance(vm, drivers.vhost_user.VhostUserClient)
        assert vm.counters()["rings-broken"] == 0
    finally:
        await ns.close()


REBIND = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP1-OK
ping -c 2 -W 3 10.0.2.2 && echo PING1-OK
dev=$(basename $(readlink /sys/class/net/eth0/device))
echo $dev > /sys/bus/virtio/drivers/virtio_net/unbind && echo UNBOUND
echo $dev > /sys/bus/virtio/drivers/virtio_net/bind && echo BOUND
sleep 1
ip link set eth0 up
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP2-OK
ping -c 2 -W 3 10.0.2.2 && echo PING2-OK
"""


async def test_packed_rings_restart_after_driver_rebind(image: GuestImage, tmp_path: Path) -> None:
    """Unbinding and rebinding the guest's virtio-net driver resets the device: QEMU stops
    the rings (GET_VRING_BASE) and starts them again (SET_FEATURES, SET_VRING_BASE with
    the wrap counter); traffic flows before and after."""
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
            await ns.netdev_add(parse_netdev_cli(spec))
        args = [
            *shared_memory_args(256),
            "-chardev",
            f"socket,id=vhost0,path={sock}",
            "-netdev",
            "vhost-user,id=net0,chardev=vhost0",
            *virtio_nic_args("net0", MAC, msix=False, extra="packed=on"),
        ]
        async with Guest(image, REBIND, args, name="pkrb", timeout=200) as g:
            result = await g.wait()
        result.check()
        out = result.output
        for mark in ("DHCP1-OK", "PING1-OK", "UNBOUND", "BOUND", "DHCP2-OK", "PING2-OK"):
            assert mark in out, out
        vm = ns.find_netdev("vm0")
        assert isinstance(vm, drivers.vhost_user.VhostUserClient)
        assert vm.counters()["rings-broken"] == 0
    finally:
        await ns.close()
