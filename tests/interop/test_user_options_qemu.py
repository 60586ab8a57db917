"""The user netdev's option checks against QEMU 7.2's own: the same ``netdev_add`` arguments
go to a QEMU (``-machine none``, QMP) and to netstack's option parser; the error texts must
be equal, and where QEMU accepts, so must netstack (``smb=`` has its own comparison:
tests/interop/test_user_smb.py).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from drivers.user.options import parse_options
from netstack import qapi
from netstack.errors import GenericError
from tests.kit.qemu import netdev_add_errors, qemu_monitor

CASES: list[dict[str, Any]] = [
    {},
    {"net": "10.1.0.0/16"},
    {"net": "200.1.2.0", "host": "200.1.2.100"},
    {"net": "230.1.2.0", "host": "230.1.2.100"},
    {"net": "198.19.0.0", "host": "198.19.0.100"},
    {"net": "172.20.0.0", "host": "172.21.0.2"},
    {"net": "10.0.2.0/3"},
    {"net": "10.0.2.0/33"},
    {"net": "10.0.2.0/"},
    {"net": "10.0.2.0/ 24"},
    {"net": "10.0.2.0/255.255.0.0"},
    {"net": "10.0.2.0/255.255.0.0x"},
    {"net": "10.2"},
    {"net": "nonsense"},
    {"ip": "10.7.7.7", "host": "10.7.7.2"},
    {"host": "10.0.3.2"},
    {"host": "0x0a.0.2.9"},
    {"dns": "10.0.2.2"},
    {"dns": "8.8.8.8"},
    {"dns": "8.8.8.8", "restrict": True},
    {"dhcpstart": "10.0.3.1"},
    {"dhcpstart": "10.0.2.3"},
    {"dhcpstart": "bogus"},
    {"ipv6": True, "net": "10.0.3.0"},
    {"ipv4": False, "host": "10.0.2.2"},
    {"ipv6": False, "ipv6-prefix": "fec0::"},
    {"ipv4": False, "ipv6": False},
    {"ipv4": True},
    {"ipv6": False},
    {"ipv6-prefix": "zz"},
    {"ipv6-prefixlen": 127},
    {"ipv6-prefixlen": -1},
    {"ipv6-prefixlen": 0},
    {"ipv6-host": "fec1::1"},
    {"ipv6-dns": "fec1::3"},
    {"ipv6-dns": "fec1::3", "restrict": True},
    {"domainname": ""},
    {"domainname": "d" * 256},
    {"hostname": "h" * 256},
    {"tftp-server-name": "t" * 256},
    {"hostname": "vm", "domainname": "example.test", "dnssearch": [{"str": "a.test"}]},
    {"hostfwd": [{"str": "tcp:5555-:22"}]},
    {"hostfwd": [{"str": "nothing"}]},
    {"hostfwd": [{"str": "sctp::1-:2"}]},
    {"hostfwd": [{"str": "tcp::x-:22"}]},
    {"hostfwd": [{"str": "tcp::5555-22"}]},
    {"hostfwd": [{"str": "tcp::5555-:0"}]},
    {"hostfwd": [{"str": "tcp::5555-bogus:22"}]},
    {"hostfwd": [{"str": "x"}, {"str": "y"}]},
    {"guestfwd": [{"str": "tcp:10.0.2.2:80-cmd:true"}]},
    {"guestfwd": [{"str": "udp:10.0.2.100:80-cmd:true"}]},
    {"guestfwd": [{"str": "tcp:10.0.2.100:x-cmd:true"}]},
    {"guestfwd": [{"str": "tcp:10.0.2.100:80-cmd:true"}], "hostfwd": [{"str": "x"}]},
]


def ours(args: dict[str, Any]) -> str | None:
    try:
        netdev = qapi.netdev_from_qmp({"id": "u", "type": "user", **args})
        assert isinstance(netdev.options, qapi.NetdevUserOptions)
        parse_options(netdev.options)
    except GenericError as exc:
        return str(exc.desc)
    return None


async def theirs(tmp: Path) -> list[str | None]:
    async with qemu_monitor(tmp, name="options") as qmp:
        return await netdev_add_errors(qmp, [{"type": "user", **args} for args in CASES])


@pytest.mark.qemu
@pytest.mark.timeout(120)
def test_option_errors_match_qemu(tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 unavailable")
    expected = asyncio.run(asyncio.wait_for(theirs(tmp_path), 100))
    mismatches = []
    for args, want in zip(CASES, expected, strict=True):
        got = ours(args)
        if got != want:
            mismatches.append((args, want, got))
    assert not mismatches, "\n".join(f"{a}: qemu {w!r} / ours {g!r}" for a, w, g in mismatches)
