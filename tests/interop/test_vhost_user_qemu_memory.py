"""QEMU 7.2 guests attach over vhost-user with each memory backend users choose, and pass
traffic through the user NAT: ``memory-backend-memfd`` as QEMU makes it by default (sealed
against shrinking: the back end sees a pinned ``sealed-memfd``), with ``seal=off`` (an
unsealed memfd: guarded), and ``memory-backend-file`` on ``/dev/shm`` (a tmpfs file:
guarded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import drivers.vhost_user as vu
from tests.kit.daemon import in_process
from tests.kit.guests import attach_user_over_vhost_user
from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
    shared_memory_args,
    virtio_nic_args,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(300)]
MAC = "52:54:00:12:34:57"
MEMORY_MB = 256

BACKENDS = {
    "memfd": (shared_memory_args(MEMORY_MB), "sealed-memfd"),
    "memfd-seal-off": (
        [
            "-object",
            f"memory-backend-memfd,id=mem,size={MEMORY_MB}M,share=on,seal=off",
            "-machine",
            "memory-backend=mem",
        ],
        "memfd",
    ),
    "file-dev-shm": (
        [
            "-object",
            f"memory-backend-file,id=mem,size={MEMORY_MB}M,mem-path=/dev/shm,share=on",
            "-machine",
            "memory-backend=mem",
        ],
        "tmpfs",
    ),
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_memory_backend_attaches_and_passes_traffic(
    image: GuestImage, tmp_path: Path, backend: str
) -> None:
    memory_args, kind = BACKENDS[backend]
    if "/dev/shm" in " ".join(memory_args) and not os.access("/dev/shm", os.W_OK):
        pytest.skip("no writable /dev/shm")
    sock = tmp_path / "vhost.sock"
    async with in_process(tmp_path) as ns:
        await attach_user_over_vhost_user(ns, sock, mac=MAC)
        script = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
ping -c 3 -W 3 10.0.2.2 && echo PING-OK
"""
        args = [
            *memory_args,
            "-chardev",
            f"socket,id=vhost0,path={sock}",
            "-netdev",
            "vhost-user,id=net0,chardev=vhost0",
            *virtio_nic_args("net0", MAC, msix=False),
        ]
        vm = ns.find_netdev("vm0")
        assert isinstance(vm, vu.VhostUserClient)
        kinds: set[str] = set()
        async with Guest(
            image,
            script,
            args,
            name=f"vumem-{backend}",
            memory_mb=MEMORY_MB,
            timeout=200,
            log_path=tmp_path / "console.log",
        ) as guest:
            await guest.wait_for("PING-OK", timeout=200)
            kinds = {r.backing.kind for r in vm.netdev.device.mem.regions}
            result = await guest.wait()
        result.check()
        assert "DHCP-OK" in result.output and "PING-OK" in result.output, result.output
        assert kinds == {kind}, kinds
        counters = vm.counters()
        assert counters["memory-faults"] == 0 and counters["rings-broken"] == 0, counters
