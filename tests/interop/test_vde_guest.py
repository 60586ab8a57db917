"""A QEMU 7.2 guest on its own ``-netdev vde`` reaches netstackd's user NAT through a real
``vde_switch``.

netstackd (a real daemon process: ``-netdev user`` and ``-netdev vde`` joined on hub 0)
and the guest (Debian's QEMU, whose ``-netdev vde`` is libvdeplug) are two ports of one
switch in the test's private directory. The guest takes a DHCP lease from the NAT
(10.0.2.15) and pings 10.0.2.2; over QMP the daemon shows the lease, the vde port's
counters and ``info network``. The switch and the daemon are stopped by PID.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qemu.qmp import QMPClient

from tests.daemon_proc import running_daemon
from tests.vde_peers import VdeSwitch, have_vde
from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
    virtio_nic_args,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(300)]

MAC = "52:54:00:16:00:01"

if (missing := have_vde()) is not None:
    pytest.skip(missing, allow_module_level=True)


async def test_guest_lease_and_ping_through_vde_switch(image: GuestImage, tmp_path: Path) -> None:
    with VdeSwitch(tmp_path / "sw") as switch:
        args = [
            "-netdev",
            "user,id=nat0",
            "-netdev",
            "hubport,id=h0,hubid=0,netdev=nat0",
            "-netdev",
            f"vde,id=sw0,sock={switch.directory}",
            "-netdev",
            "hubport,id=h1,hubid=0,netdev=sw0",
        ]
        with running_daemon(tmp_path, args) as daemon:
            script = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
ip -4 addr show dev eth0 | grep -q 'inet 10.0.2.15/24' && echo ADDR-OK
ping -c 3 -W 3 10.0.2.2 && echo PING-OK
"""
            netdev = f"vde,id=n0,sock={switch.directory}"
            qemu_args = ["-netdev", netdev, *virtio_nic_args("n0", MAC)]
            async with Guest(
                image, script, qemu_args, name="vde", timeout=200, log_path=tmp_path / "console.log"
            ) as guest:
                result = await guest.wait()
            result.check()
            out = result.output
            assert "DHCP-OK" in out and "ADDR-OK" in out and "PING-OK" in out, out
            assert " 0% packet loss" in out, out

            client = QMPClient("t")
            await client.connect(str(daemon.qmp))
            try:
                leases = await client.execute("query-dhcp-leases")
                assert any(
                    le["mac-address"] == MAC and le["ip-address"] == "10.0.2.15"
                    for le in leases  # type: ignore[union-attr]
                ), leases
                (entry,) = await client.execute("query-netdev", {"name": "sw0"})  # type: ignore[misc]
                assert entry["type"] == "vde" and entry["link-up"] is True
                assert entry["counters"]["connects"] == 1
                assert entry["statistics"]["rx-frames"] > 3 and entry["statistics"]["tx-frames"] > 3
                info = await client.execute(
                    "human-monitor-command", {"command-line": "info network"}
                )
                assert f"sw0: index=0,type=vde,sock={switch.directory},fd=" in str(info)
            finally:
                await client.disconnect()
        assert daemon.proc.returncode == 0, daemon.output()
