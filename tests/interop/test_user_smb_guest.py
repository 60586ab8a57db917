"""``smb=`` with a real QEMU 7.2 guest: Linux's cifs client mounts ``//10.0.2.4/qemu``.

Two guests boot at once, the same script each: one on netstackd (vhost-user, on hub 0 with
``user,smb=DIR``, in-process daemon), one on QEMU's own ``-netdev user,smb=DIR`` - the
reference. Each mounts the share (SMB 3.0, guest), reads a small file and a 4 MiB one
(md5 checked against the host), writes a file (checked on the host), unmounts. Both must
give the same answers; the console lines carry the read time of the big file, which the
test prints (a figure, not asserted: under TCG it measures the guest as much as the NAT).

The guest's kernel (Debian's cloud kernel) has cifs as a module; the crypto modules it
asks for by name at mount time (sha512, cmac, gcm/ccm with ctr and ghash) are loaded up
front, as the initramfs has no modprobe.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

import pytest

from tests.kit.daemon import in_process
from tests.kit.guests import attach_user_over_vhost_user, guest_image_or_skip, vhost_user_qemu_args
from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
    virtio_nic_args,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(300)]
MAC = "52:54:00:12:34:56"
CIFS_MODULES = ("sha512_generic", "cmac", "ctr", "ghash-generic", "ccm", "gcm", "ecb", "cifs")
HELLO = "hello from the host"
BIG = 4 << 20

SCRIPT = f"""
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} >/dev/null 2>&1 && echo DHCP-OK
mkdir -p /mnt/s
mount -t cifs //10.0.2.4/qemu /mnt/s -o username=guest,password=,vers=3.0
echo "MOUNT $?"
echo "HELLO $(cat /mnt/s/hello.txt)"
t0=$(cut -d' ' -f1 /proc/uptime)
sum=$(md5sum /mnt/s/big.bin | cut -d' ' -f1)
t1=$(cut -d' ' -f1 /proc/uptime)
echo "BIG $sum $t0 $t1"
echo from-the-guest > /mnt/s/up.txt
echo "WRITE $?"
umount /mnt/s
echo "UMOUNT $?"
echo SCRIPT-DONE
"""


@pytest.fixture(scope="module")
def image() -> GuestImage:
    if not os.path.exists("/usr/sbin/smbd"):
        pytest.skip("smbd not installed (tools/setup-deps.sh: samba)")
    return guest_image_or_skip(CIFS_MODULES)


def make_share(path: Path) -> str:
    path.mkdir()
    (path / "hello.txt").write_text(HELLO + "\n")
    data = os.urandom(BIG)
    (path / "big.bin").write_bytes(data)
    return hashlib.md5(data).hexdigest()


def results(console: str) -> dict[str, str]:
    out = {}
    for tag in ("MOUNT", "HELLO", "BIG", "WRITE", "UMOUNT"):
        match = re.search(rf"^{tag} (.*)$", console, re.M)
        assert match is not None, console
        out[tag] = match.group(1).strip()
    return out


async def test_guest_mounts_the_share(image: GuestImage, tmp_path: Path) -> None:
    ours_dir, qemu_dir = tmp_path / "ours", tmp_path / "qemu"
    digests = {"ours": make_share(ours_dir), "qemu": make_share(qemu_dir)}
    sock = tmp_path / "vhost.sock"
    async with in_process(tmp_path) as ns:
        await attach_user_over_vhost_user(ns, sock, f"user,id=nat0,smb={ours_dir}", mac=MAC)
        ours_args = vhost_user_qemu_args(sock, MAC)
        qemu_args = ["-netdev", f"user,id=net0,smb={qemu_dir}", *virtio_nic_args("net0", MAC)]
        async with (
            Guest(image, SCRIPT, ours_args, name="smb-ours", timeout=240) as ours,
            Guest(image, SCRIPT, qemu_args, name="smb-qemu", timeout=240) as qemu,
        ):
            await asyncio.gather(
                ours.wait_for("SCRIPT-DONE", 220), qemu.wait_for("SCRIPT-DONE", 220)
            )
            got = {"ours": results(ours.console), "qemu": results(qemu.console)}
        for name, res in got.items():
            assert res["MOUNT"] == "0" and res["WRITE"] == "0" and res["UMOUNT"] == "0", got
            assert res["HELLO"] == HELLO, got
            digest, t0, t1 = res["BIG"].split()
            assert digest == digests[name], got
            seconds = max(float(t1) - float(t0), 0.01)
            print(f"{name}: {BIG >> 20} MiB read over cifs in {seconds:.2f} s "
                  f"({BIG / seconds / 1e6:.1f} MB/s, TCG guest)")  # fmt: skip
        assert (ours_dir / "up.txt").read_text() == "from-the-guest\n"
        assert (qemu_dir / "up.txt").read_text() == "from-the-guest\n"
        user = ns.find_netdev("nat0")
        assert user is not None
        counters = user.counters()  # type: ignore[attr-defined]
        assert counters["guestfwd-children"] >= 1 and counters.get("internal-error", 0) == 0
        private = user.smb.private  # type: ignore[attr-defined]
    assert not os.path.exists(private)
