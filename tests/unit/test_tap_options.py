"""tap option validation (QEMU's ``net_init_tap`` order and texts), without I/O."""

from __future__ import annotations

import pytest

from drivers.tap import tun
from drivers.tap.helper import helper_argv
from drivers.tap.netns import netns_path
from drivers.tap.options import TapPlan, plan_tap, split_fds
from drivers.tap.scripts import script_argv, wait_status
from netstack.errors import GenericError
from netstack.qapi import NetdevTapOptions, parse_netdev_cli


def plan(spec: str) -> TapPlan:
    opts = parse_netdev_cli(f"tap,id=t0{',' if spec else ''}{spec}").options
    assert isinstance(opts, NetdevTapOptions)
    return plan_tap(opts)


FD_EXCL = (
    "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= are "
    "invalid with fd="
)
FDS_EXCL = (
    "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are invalid with fds="
)
HELPER_EXCL = (
    "ifname=, script=, downscript=, vnet_hdr=, queues=, and vhostfds= are invalid with helper="
)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("fd=3,ifname=x", FD_EXCL),
        ("fd=3,script=no", FD_EXCL),
        ("fd=3,downscript=no", FD_EXCL),
        ("fd=3,vnet_hdr=off", FD_EXCL),
        ("fd=3,helper=h", FD_EXCL),
        ("fd=3,queues=1", FD_EXCL),
        ("fd=3,fds=4", FD_EXCL),
        ("fd=3,vhostfds=4", FD_EXCL),
        ("fd=3,x-netns=n", "x-netns= is invalid with fd="),
        ("fds=3:4,ifname=x", FDS_EXCL),
        ("fds=3:4,queues=2", FDS_EXCL),
        ("fds=3:4,vhostfd=5", FDS_EXCL),
        ("fds=3:4,vhostfds=5",
         "The number of fds passed does not match the number of vhostfds passed"),
        ("fds=3,x-netns=n", "x-netns= is invalid with fds="),
        ("helper=h,ifname=x", HELPER_EXCL),
        ("helper=h,vnet_hdr=on", HELPER_EXCL),
        ("helper=h,vhostfds=3", HELPER_EXCL),
        ("vhostfds=3", "vhostfds= is invalid if fds= wasn't specified"),
        ("queues=0", "queues must be between 1 and 1024"),
        ("queues=1025", "queues must be between 1 and 1024"),
        ("vhost=off,vhostfd=3", "vhostfd(s)= is not valid without vhost"),
        ("vhostforce=on", "vhost-net is not available in netstackd (frames always pass "
         "through the daemon); remove vhostforce=on"),
    ],
)  # fmt: skip
def test_validation_texts(spec: str, text: str) -> None:
    with pytest.raises(GenericError) as err:
        plan(spec)
    assert err.value.desc == text


def test_fd_takes_precedence_like_qemu() -> None:
    # QEMU checks fd= first, so fd= with helper= reports the fd= list
    with pytest.raises(GenericError, match="invalid with fd="):
        plan("fd=3,helper=h")


def test_defaults_when_the_daemon_opens_the_tap() -> None:
    p = plan("")
    assert p == TapPlan(
        "open",
        ifname="",
        script="/etc/qemu-ifup",
        downscript="/etc/qemu-ifdown",
        queues=1,
        vnet_hdr=True,
        vnet_required=False,
    )
    assert plan("vnet_hdr=on").vnet_required
    off = plan("vnet_hdr=off")
    assert not off.vnet_hdr and not off.vnet_required
    assert plan("ifname=t%d,queues=4,sndbuf=1M,poll-us=10,x-netns=/run/x").queues == 4
    q = plan("ifname=t%d,queues=4,sndbuf=1M,poll-us=10,x-netns=/run/x")
    assert (q.ifname, q.sndbuf, q.netns) == ("t%d", 1 << 20, "/run/x")


def test_other_modes() -> None:
    assert plan("fd=7") == TapPlan("fd", fds=("7",))
    assert plan("fds=7:8:name").fds == ("7", "8", "name")
    h = plan("helper=/x/helper")
    assert (h.mode, h.helper, h.bridge) == ("helper", "/x/helper", "br0")
    assert plan("helper=/x/helper,br=virbr0").bridge == "virbr0"


def test_vhost_requests_are_warnings() -> None:
    assert plan("vhost=on").vhost_warning is not None
    assert plan("fd=3,vhostfd=4").vhost_warning is not None  # vhostfd implies vhost
    assert plan("vhost=off").vhost_warning is None


def test_split_fds_is_qemus_get_fds() -> None:
    assert split_fds("3") == ("3",)
    assert split_fds("3:4") == ("3", "4")
    assert split_fds("3::4") == ("3", "", "4")
    assert split_fds("3:") == ("3",)
    assert split_fds("") == ()
    assert len(split_fds(":".join(["1"] * 2000))) == 1024


def test_wait_status_is_raw() -> None:
    assert wait_status(0) == 0
    assert wait_status(1) == 256
    assert wait_status(3) == 768
    assert wait_status(-9) == 9


def test_helper_command_lines() -> None:
    assert helper_argv("/usr/lib/qemu/qemu-bridge-helper", "br0", 5) == [
        "/usr/lib/qemu/qemu-bridge-helper",
        "--use-vnet",
        "--fd=5",
        "--br=br0",
    ]
    assert helper_argv("sudo helper", "br1", 5) == [
        "/bin/sh",
        "-c",
        "sudo helper --use-vnet --fd=5 --br=br1",
    ]
    assert helper_argv("helper --br=x", "br1", 5)[2] == "helper --br=x --use-vnet --fd=5 "
    assert helper_argv("helper\t-v", "b", 3)[0] == "/bin/sh"


def test_scripts_in_a_namespace_start_through_the_trampoline() -> None:
    assert script_argv("/etc/qemu-ifup", ["tap0"], None) == ["/etc/qemu-ifup", "tap0"]
    argv = script_argv("/etc/qemu-ifup", ["tap0"], 9)
    assert argv[-3:] == ["9", "/etc/qemu-ifup", "tap0"] and argv[1:4] == ["-I", "-S", "-c"]


def test_netns_names_and_paths() -> None:
    assert netns_path("blue") == "/var/run/netns/blue"
    assert netns_path("/proc/1/ns/net") == "/proc/1/ns/net"
    assert netns_path("./x") == "./x"


def test_ioctl_numbers_and_ifreq() -> None:
    assert tun.TUNSETIFF == 0x400454CA
    assert tun.TUNGETFEATURES == 0x800454CF
    assert tun.TUNSETOFFLOAD == 0x400454D0
    assert tun.TUNGETIFF == 0x800454D2
    assert tun.TUNSETSNDBUF == 0x400454D4
    assert tun.TUNSETVNETHDRSZ == 0x400454D8
    assert tun.TUNSETQUEUE == 0x400454D9
    assert tun.TUNGETDEVNETNS == 0x54E3
    req = tun.ifreq("tap0", tun.IFF_TAP | tun.IFF_NO_PI)
    assert len(req) == 40 and req[:5] == b"tap0\0" and req[16:18] == b"\x02\x10"
    assert tun.clip_ifname("a" * 20) == "a" * 15
