"""The tiny test guest boots under TCG, loads virtio-net, and networks through QEMU's own
``-netdev user`` (slirp): DHCP gives 10.0.2.15 and the gateway 10.0.2.2 answers ping. This is
the self-contained baseline that tests against netstack's daemon build on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
    GuestResult,
    run_guest_sync,
    virtio_nic_args,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(180)]

GUEST_TIMEOUT = 60.0

NET_SCRIPT = f"""
set -e
ip -o link show dev eth0
udhcpc -i eth0 -s {UDHCPC_SCRIPT_PATH} -q -n -t 5 -T 2
ip -4 -o addr show dev eth0
ip route
ping -c 1 -W 5 10.0.2.2
cat /run/udhcpc-eth0.lease
echo NET-OK
"""


def user_nic(mac: str) -> list[str]:
    return ["-netdev", "user,id=n0", *virtio_nic_args("n0", mac)]


def assert_networked(result: GuestResult, mac: str) -> None:
    result.check()
    out = result.output
    assert mac in out, out
    assert "inet 10.0.2.15/24" in out, out
    assert "default via 10.0.2.2 dev eth0" in out, out
    assert "1 packets transmitted, 1 packets received" in out, out
    assert "router=10.0.2.2" in out and "dns=10.0.2.3" in out, out
    assert out.rstrip().endswith("NET-OK"), out


def test_user_netdev_dhcp_and_ping(guest_image: GuestImage, tmp_path: Path) -> None:
    mac = "52:54:00:12:34:56"
    result = run_guest_sync(
        NET_SCRIPT,
        user_nic(mac),
        image=guest_image,
        timeout=GUEST_TIMEOUT,
        log_path=tmp_path / "console.log",
    )
    assert_networked(result, mac)
    assert result.exit_status == 0
    assert result.boot_seconds is not None and result.boot_seconds < GUEST_TIMEOUT
    print(f"boot-to-script {result.boot_seconds:.2f}s, total {result.elapsed:.2f}s")


def test_script_status_and_extra_files(guest_image: GuestImage) -> None:
    result = run_guest_sync(
        "cat /etc/greeting; sh /opt/helper.sh; exit 7",
        image=guest_image,
        files={"etc/greeting": "hello guest\n", "opt/helper.sh": "#!/bin/sh\necho helper ran\n"},
        wait_ifaces=(),
        timeout=GUEST_TIMEOUT,
    )
    assert not result.timed_out
    assert result.exit_status == 7
    assert not result.ok
    assert result.output == "hello guest\nhelper ran\n", result.console


def test_timeout_kills_guest(guest_image: GuestImage) -> None:
    result = run_guest_sync("echo waiting; sleep 600", image=guest_image, wait_ifaces=(), timeout=8)
    assert result.timed_out
    assert result.exit_status is None
    assert result.returncode is not None  # QEMU was stopped and reaped


def test_two_guests_concurrently(guest_image: GuestImage, tmp_path: Path) -> None:
    macs = {"a": "52:54:00:00:00:0a", "b": "52:54:00:00:00:0b"}

    async def one(name: str) -> tuple[GuestResult, float, float, int | None]:
        loop = asyncio.get_running_loop()
        guest = Guest(
            guest_image,
            NET_SCRIPT,
            user_nic(macs[name]),
            name=name,
            timeout=GUEST_TIMEOUT,
            log_path=tmp_path / f"console-{name}.log",
        )
        async with guest:
            started = loop.time()
            await guest.wait_for("NETSTACK-GUEST-READY", timeout=GUEST_TIMEOUT)
            result = await guest.wait()
            return result, started, loop.time(), guest.pid

    async def both() -> list[tuple[GuestResult, float, float, int | None]]:
        return list(await asyncio.gather(one("a"), one("b")))

    runs = asyncio.run(both())
    for (result, _, _, _), mac in zip(runs, macs.values(), strict=True):
        assert_networked(result, mac)
    (_, start_a, end_a, pid_a), (_, start_b, end_b, pid_b) = runs
    assert pid_a != pid_b
    assert max(start_a, start_b) < min(end_a, end_b), "the guests did not run at the same time"
