"""IPv6 options of the user netdev: QEMU's defaults, checks, texts, order and quirk."""

from __future__ import annotations

import re

import pytest

from drivers.user.v6 import addr as a6
from drivers.user.v6 import config as c6
from netstack.errors import GenericError


def ip(text: str) -> bytes:
    value = a6.parse(text)
    assert value is not None
    return value


def test_defaults() -> None:
    found = c6.parse_ipv6_options(None, None, None, None)
    assert found == c6.Ipv6Addresses(ip("fec0::"), 64, ip("fec0::2"), ip("fec0::3"))
    cfg = c6.Ipv6Config()
    assert (cfg.prefix, cfg.prefixlen, cfg.host, cfg.dns) == tuple(found)
    assert cfg.router_link_local == ip("fe80::2")
    assert cfg.managed_flag is False and cfg.autonomous_flag is True


def test_prefixlen_zero_means_64_and_range() -> None:
    assert c6.parse_ipv6_options(None, 0, None, None).prefixlen == 64
    assert c6.parse_ipv6_options(None, 126, None, None).prefixlen == 126
    for bad in (127, 128, -1):
        with pytest.raises(GenericError, match=r"^Invalid IPv6 prefix provided \(IPv6 prefix "
                           r"length must be between 0 and 126\)$"):  # fmt: skip
            c6.parse_ipv6_options(None, bad, None, None)


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("fec0::zz", None, None, None), "Failed to parse IPv6 prefix"),
        (("10.0.2.0", None, None, None), "Failed to parse IPv6 prefix"),
        ((None, None, "nonsense", None), "Failed to parse IPv6 host"),
        ((None, None, "fec1::2", None), "IPv6 Host doesn't belong to network"),
        ((None, None, None, "::g"), "Failed to parse IPv6 DNS"),
        # QEMU's order: the prefix before its length, the host before the DNS
        (("bad", 200, "bad", "bad"), "Failed to parse IPv6 prefix"),
        ((None, 200, "bad", None), "Invalid IPv6 prefix provided"),
        ((None, None, "fec1::2", "bad"), "IPv6 Host doesn't belong to network"),
    ],
)
def test_errors_in_qemus_order(args: tuple[str | None, int | None, str | None, str | None],
                               text: str) -> None:  # fmt: skip
    with pytest.raises(GenericError, match=f"^{re.escape(text)}"):
        c6.parse_ipv6_options(*args)


def test_dns_outside_prefix_only_with_restrict() -> None:
    found = c6.parse_ipv6_options(None, None, None, "2001:db8::53")
    assert found.dns == ip("2001:db8::53")
    with pytest.raises(GenericError, match=r"^IPv6 DNS doesn't belong to network$"):
        c6.parse_ipv6_options(None, None, None, "2001:db8::53", restrict=True)


def test_defaults_come_from_the_prefix_as_written() -> None:
    found = c6.parse_ipv6_options("fd00::1:0", 112, None, None)
    assert found.host == ip("fd00::1:2") and found.dns == ip("fd00::1:3")
    # the last byte is ORed (QEMU's ``s6_addr[15] |= 2``), not added
    found = c6.parse_ipv6_options("fd00::ff", 64, None, None)
    assert found.host == ip("fd00::ff") and found.dns == ip("fd00::ff")
    cfg = c6.Ipv6Config(prefix=ip("fd00::1:1234"), prefixlen=112)
    assert cfg.network == ip("fd00::1:0")


def test_host_membership_uses_the_prefix_bits_only() -> None:
    assert c6.parse_ipv6_options("fd00::", 60, "fd00:0:0:f::2", None).host
    with pytest.raises(GenericError, match="IPv6 Host doesn't belong"):
        c6.parse_ipv6_options("fd00::", 61, "fd00:0:0:f::2", None)
    assert c6.parse_ipv6_options("fd00::", 1, "feed::1", None).host  # /1: fxxx all match


@pytest.mark.parametrize(
    ("ipv4", "ipv6", "expected"),
    [
        (None, None, (True, True)),
        (True, None, (True, False)),  # QEMU's quirk
        (None, True, (False, True)),  # QEMU's quirk
        (True, True, (True, True)),
        (False, None, (False, True)),
        (None, False, (True, False)),
        (False, True, (False, True)),
        (True, False, (True, False)),
        (False, False, (False, False)),
    ],
)
def test_families_enabled_is_qemus_rule(
    ipv4: bool | None, ipv6: bool | None, expected: tuple[bool, bool]
) -> None:
    assert c6.families_enabled(ipv4, ipv6) == expected


def test_quirk_note() -> None:
    assert c6.family_quirk_note(None, True) == c6.QUIRK_NOTE_V6
    assert c6.family_quirk_note(True, None) == c6.QUIRK_NOTE_V4
    assert c6.family_quirk_note(True, True) is None
    assert c6.family_quirk_note(None, False) is None
    assert c6.family_quirk_note(None, None) is None


def test_check_families_texts_and_order() -> None:
    c6.check_families(True, True, ipv4_options_given=True, ipv6_options_given=True)
    with pytest.raises(GenericError, match=r"^IPv4 disabled but netmask/host/dns provided$"):
        c6.check_families(False, False, ipv4_options_given=True, ipv6_options_given=True)
    with pytest.raises(GenericError, match=r"^IPv6 disabled but prefix/host6/dns6 provided$"):
        c6.check_families(True, False, ipv4_options_given=False, ipv6_options_given=True)
    with pytest.raises(GenericError, match=r"^IPv4 and IPv6 disabled$"):
        c6.check_families(False, False, ipv4_options_given=False, ipv6_options_given=False)


def test_local_addresses_and_macs() -> None:
    cfg = c6.Ipv6Config()
    local = cfg.local_addresses()
    assert local == {
        ip("fe80::2"): bytes.fromhex("525600000002"),
        ip("fec0::2"): bytes.fromhex("525600000002"),
        ip("fec0::3"): bytes.fromhex("525600000003"),
        ip("fe80::3"): bytes.fromhex("525600000003"),
    }


def test_non_64_prefix_turns_to_stateful() -> None:
    cfg = c6.Ipv6Config(prefix=ip("fd00::"), prefixlen=112, host=ip("fd00::2"), dns=ip("fd00::3"))
    assert cfg.managed_flag and not cfg.autonomous_flag
    assert c6.Ipv6Config(managed=True).managed_flag
    assert c6.Ipv6Config(mtu=576).link_mtu == 1280
    with pytest.raises(ValueError):
        c6.Ipv6Config(prefix=b"short")


def test_ipv6_config_from_user_config() -> None:
    from drivers.user.options import UserConfig

    user = UserConfig(ipv6_prefix="fd00:1::", ipv6_prefixlen=64, ipv6_host="fd00:1::2",
                      ipv6_dns="fd00:1::3", domainname="example.org", mtu=9000,
                      bootfile="pxe.efi")  # fmt: skip
    cfg = c6.ipv6_config(user)
    assert cfg.host == ip("fd00:1::2") and cfg.dns == ip("fd00:1::3")
    assert cfg.dnssearch == ("example.org",) and cfg.mtu == 9000 and cfg.dns_relay
    assert cfg.bootfile == "pxe.efi"
    restricted = c6.ipv6_config(UserConfig(restrict=True, dnssearch=("a.example",)))
    assert not restricted.dns_relay and restricted.dnssearch == ("a.example",)
    assert c6.ipv6_config(UserConfig(), stateful_dhcpv6=False).stateful_dhcpv6 is False
