"""The user netdev's options: QEMU's defaults, classful masks, validation order and texts."""

from __future__ import annotations

import socket

import pytest

from drivers.user.options import (
    HostFwdRule,
    UserConfig,
    classful_mask,
    ip_text,
    parse_dns_upstream,
    parse_hostfwd,
    parse_hostfwd_remove,
    parse_options,
)
from netstack import qapi
from netstack.errors import GenericError


def cfg(text: str) -> UserConfig:
    netdev = qapi.parse_netdev_cli(f"user,id=u{',' if text else ''}{text}")
    assert isinstance(netdev.options, qapi.NetdevUserOptions)
    return parse_options(netdev.options)


def error(text: str) -> str:
    with pytest.raises(GenericError) as info:
        cfg(text)
    return str(info.value.desc)


def test_defaults() -> None:
    c = cfg("")
    assert (ip_text(c.net), ip_text(c.mask)) == ("10.0.2.0", "255.255.255.0")
    assert (ip_text(c.host), ip_text(c.dns), ip_text(c.dhcp_start)) == (
        "10.0.2.2",
        "10.0.2.3",
        "10.0.2.15",
    )
    assert (c.ipv4, c.ipv6, c.restrict, c.mtu) == (True, True, False, 1500)
    assert (c.ipv6_prefix, c.ipv6_prefixlen, c.ipv6_host, c.ipv6_dns) == (
        "fec0::",
        64,
        "fec0::2",
        "fec0::3",
    )
    assert c.prefixlen == 24 and ip_text(c.broadcast) == "10.0.2.255"
    assert c.dns_upstreams == () and c.dnssearch == ()


@pytest.mark.parametrize(
    ("net", "mask"),
    [
        ("10.1.2.3", "255.0.0.0"),  # class A
        ("172.20.0.0", "255.240.0.0"),  # 172.16/12
        ("150.1.0.0", "255.255.0.0"),  # class B
        ("192.168.7.0", "255.255.0.0"),  # 192.168/16
        ("198.18.0.0", "255.254.0.0"),  # 198.18/15 (QEMU tests only 198.18.x.x:
        ("198.19.0.0", "255.255.255.240"),  # 198.19 falls through to /28)
        ("200.1.2.0", "255.255.255.240"),  # QEMU's quirk: real class C gets /28
        ("230.1.2.0", "255.255.255.0"),  # ...and 224/3 gets /24
    ],
)
def test_classful_masks(net: str, mask: str) -> None:
    assert ip_text(classful_mask(int.from_bytes(socket.inet_aton(net), "big"))) == mask


def test_net_forms_and_derived_addresses() -> None:
    c = cfg("net=192.168.76.0/24")
    assert ip_text(c.host) == "192.168.76.2" and ip_text(c.dhcp_start) == "192.168.76.15"
    c = cfg("net=10.9.0.0/255.255.0.0")
    assert ip_text(c.mask) == "255.255.0.0" and ip_text(c.host) == "10.9.2.2"
    c = cfg("net=10.0.2.77/28")  # host bits are masked off; .2/.3/.15 inside the /28
    assert ip_text(c.net) == "10.0.2.64" and ip_text(c.dhcp_start) == "10.0.2.79"
    c = cfg("ip=10.5.6.7")  # legacy: ip=A is net=A/24
    assert ip_text(c.net) == "10.5.6.0" and ip_text(c.mask) == "255.255.255.0"
    c = cfg("net=10.0.2.0/24,host=0x0a.0.2.9,dns=10.0.2.10,dhcpstart=10.0.2.100")
    assert (ip_text(c.host), ip_text(c.dns), ip_text(c.dhcp_start)) == (
        "10.0.2.9",
        "10.0.2.10",
        "10.0.2.100",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("net=bogus", "Failed to parse netmask"),
        ("net=10.0.2.0/3", "Invalid netmask provided (must be in range 4-32)"),
        ("net=10.0.2.0/", "Invalid netmask provided (must be in range 4-32)"),
        ("net=10.0.2.0/33", "Invalid netmask provided (must be in range 4-32)"),
        ("net=10.0.2.0/24x", "Failed to parse netmask (trailing chars)"),
        ("host=x", "Failed to parse host"),
        ("host=10.0.3.2", "Host doesn't belong to network"),
        ("dns=x", "Failed to parse DNS"),
        ("dns=10.0.2.2", "DNS must be different from host"),
        ("restrict=on,dns=8.8.8.8", "DNS doesn't belong to network"),
        ("dhcpstart=x", "Failed to parse DHCP start address"),
        ("dhcpstart=10.0.3.1", "DHCP doesn't belong to network"),
        ("dhcpstart=10.0.2.3", "DHCP must be different from host and DNS"),
        ("smbserver=x", "Failed to parse SMB address"),
        ("ipv6-prefix=zz", "Failed to parse IPv6 prefix"),
        (
            "ipv6-prefixlen=127",
            "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)",
        ),
        ("ipv6-host=fec1::1", "IPv6 Host doesn't belong to network"),
        ("ipv6-host=x", "Failed to parse IPv6 host"),
        ("ipv6-dns=x", "Failed to parse IPv6 DNS"),
        ("restrict=on,ipv6-dns=fec1::3", "IPv6 DNS doesn't belong to network"),
        ("domainname=", "'domainname' parameter cannot be empty"),
        ("domainname=" + "d" * 256, "'domainname' parameter cannot exceed 255 bytes"),
        ("hostname=" + "h" * 256, "'vhostname' parameter cannot exceed 255 bytes"),
        ("tftp-server-name=" + "t" * 256, "'tftp-server-name' parameter cannot exceed 255 bytes"),
        ("ipv6=on,net=10.0.3.0", "IPv4 disabled but netmask/host/dns provided"),
        ("ipv4=off,dns=10.0.2.3", "IPv4 disabled but netmask/host/dns provided"),
        ("ipv6=off,ipv6-prefix=fec0::", "IPv6 disabled but prefix/host6/dns6 provided"),
        ("ipv4=off,ipv6=off", "IPv4 and IPv6 disabled"),
        ("x-mtu=67", "'x-mtu' must be between 68 and 65521"),
        ("x-dns-upstream=nope", "Invalid DNS upstream 'nope' (expected IP[:PORT])"),
        ("x-dns-upstream=1.2.3.4:0", "Invalid DNS upstream '1.2.3.4:0' (expected IP[:PORT])"),
    ],
)
def test_errors(text: str, message: str) -> None:
    assert error(text) == message


def test_error_order_follows_qemu() -> None:
    # host is checked before dns, dns before dhcpstart, IPv4 before IPv6, names last
    assert error("host=10.0.3.2,dns=x,dhcpstart=y") == "Host doesn't belong to network"
    assert error("dns=x,ipv6-prefix=zz") == "Failed to parse DNS"
    assert error("ipv6-prefix=zz,domainname=") == "Failed to parse IPv6 prefix"


def test_ipv4_ipv6_quirk() -> None:
    c = cfg("ipv4=on")  # ipv4=on alone disables IPv6
    assert (c.ipv4, c.ipv6) == (True, False)
    c = cfg("ipv4=on,ipv6=on")
    assert (c.ipv4, c.ipv6) == (True, True)
    c = cfg("ipv6=off")
    assert (c.ipv4, c.ipv6) == (True, False)
    # ipv6=on alone disables IPv4 (an IPv6-only network), as does ipv4=off
    c = cfg("ipv6=on")
    assert (c.ipv4, c.ipv6) == (False, True)
    c = cfg("ipv4=off")
    assert (c.ipv4, c.ipv6) == (False, True)
    assert error("ipv4=off,ipv6=off") == "IPv4 and IPv6 disabled"


def test_prefixlen_zero_means_64() -> None:
    assert cfg("ipv6-prefixlen=0").ipv6_prefixlen == 64
    assert cfg("ipv6-prefix=fd00:1::,ipv6-prefixlen=48").ipv6_host == "fd00:1::2"


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("nothing", "No : separators"),
        ("sctp::1-:2", "Bad protocol name"),
        ("tcp:5555-:22", "Bad host address"),
        ("tcp:1.2.3.4", "Missing : separator"),
        ("tcp::5555", "Bad host port separator"),
        ("tcp::x-:22", "Bad host port"),
        ("tcp::70000-:22", "Bad host port"),
        ("tcp::5555-22", "Missing guest address"),
        ("tcp::5555-bogus:22", "Bad guest address"),
        ("tcp::5555-:0", "Bad guest port"),
        ("tcp::5555-:", "Bad guest port"),
        ("unix:rel-:22", "unix socket path must be absolute"),
        ("unix:-:22", "Missing unix socket path"),
    ],
)
def test_hostfwd_syntax_errors(rule: str, reason: str) -> None:
    assert error(f"hostfwd={rule}") == f"Invalid host forwarding rule '{rule}' ({reason})"


def test_hostfwd_parse() -> None:
    assert parse_hostfwd("udp:127.0.0.1:0x10-10.0.2.15:53") == HostFwdRule(
        "udp:127.0.0.1:0x10-10.0.2.15:53", True, "127.0.0.1", 16, "10.0.2.15", 53
    )
    rule = parse_hostfwd("::2222-:22")
    assert (rule.udp, rule.host_addr, rule.host_port, rule.guest_addr) == (
        False,
        "0.0.0.0",
        2222,
        None,
    )


def test_hostfwd_ipv6_extension() -> None:
    # netstack's extension: bracketed IPv6 host and guest addresses, in any mix
    rule = parse_hostfwd("tcp:[::1]:2222-[FEC0::15]:22")
    assert (rule.host_addr, rule.host_port, rule.guest_addr, rule.guest_port) == (
        "::1", 2222, "fec0::15", 22)  # fmt: skip
    assert rule.host_v6 and rule.guest_v6
    rule = parse_hostfwd("udp:[::]:0-:53")
    assert rule.host_v6 and not rule.guest_v6 and rule.guest_addr is None
    rule = parse_hostfwd(":127.0.0.1:80-[fec0::15]:8080")
    assert not rule.host_v6 and rule.guest_v6
    assert not parse_hostfwd("unix:/tmp/a:b-:22").host_v6
    # malformed brackets get QEMU's reasons (QEMU rejects every bracketed rule with them)
    for bad, reason in (
        ("tcp:[::1:2222-:22", "Bad host address"),
        ("tcp:[::1]2222-:22", "Bad host address"),
        ("tcp:[]:2222-:22", "Bad host address"),
        ("tcp:[10.0.0.1]:2222-:22", "Bad host address"),
        ("tcp:[::1]:2222-[fec0::15]22", "Bad guest address"),
        ("tcp:[::1]:2222-[fec0::zz]:22", "Bad guest address"),
        ("tcp:[::1]:x-:22", "Bad host port"),
        ("tcp:[::1]:1-[fec0::15]:0", "Bad guest port"),
    ):
        assert error(f"hostfwd={bad}") == f"Invalid host forwarding rule '{bad}' ({reason})"
    assert parse_hostfwd_remove("tcp:[::1]:2222") == (False, "::1", 2222)
    assert parse_hostfwd_remove("udp::53") == (True, "0.0.0.0", 53)
    assert parse_hostfwd_remove(":10.2:7") == (False, "10.0.0.2", 7)
    for bad in ("tcp:[::1]2222", "tcp:[::1]:x", "sctp::1", "tcp:1.2.3.4", "tcp:bogus:1"):
        assert parse_hostfwd_remove(bad) is None


def test_hostfwd_kept_guestfwd_not_yet() -> None:
    # hostfwd rules are kept (bound by the client), in QEMU's order (last to first)
    rules = cfg("hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:0-:53").hostfwd
    assert [r.text for r in rules] == ["udp:127.0.0.1:0-:53", "tcp::2222-:22"]
    # guestfwd rules are kept too, in QEMU's order (the client sets them up)
    grules = cfg("guestfwd=tcp:10.0.2.100:80-cmd:true,guestfwd=::1234-null").guestfwd
    assert [(r.server, r.port, r.target) for r in grules] == [
        ("10.0.2.4", 1234, "null"),
        ("10.0.2.100", 80, "cmd:true"),
    ]
    # syntax errors of every rule come first, guestfwd before hostfwd (QEMU's list order)
    assert (
        error("hostfwd=tcp::2222-:22,hostfwd=x")
        == "Invalid host forwarding rule 'x' (No : separators)"
    )
    assert error("hostfwd=x,guestfwd=y") == "Invalid guest forwarding rule 'y'"
    assert error("guestfwd=tcp:10.0.2.2:80-cmd:true") == (
        "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.2:80-cmd:true'"
    )
    # smb= is kept for the client (its checks run when the netdev is made: .smb)
    smb = cfg("smb=/tmp,smbserver=10.0.2.9,x-smbd=/opt/smbd")
    assert (smb.smb, ip_text(smb.smbserver), smb.smbd) == ("/tmp", "10.0.2.9", "/opt/smbd")
    assert cfg("smb=/tmp").smbserver == 0


def test_extensions() -> None:
    c = cfg("x-dns-upstream=127.0.0.1:5353,x-dns-upstream=[::1]:53,x-dns-upstream=::1,x-mtu=9000")
    assert c.dns_upstreams == (
        (socket.AF_INET, "127.0.0.1", 5353),
        (socket.AF_INET6, "::1", 53),
        (socket.AF_INET6, "::1", 53),
    )
    assert c.mtu == 9000
    assert parse_dns_upstream("8.8.8.8") == (socket.AF_INET, "8.8.8.8", 53)


def test_names_and_lists() -> None:
    c = cfg(
        "hostname=vm1,domainname=example.test,dnssearch=a.test,dnssearch=b.test,"
        "tftp=/srv/tftp,bootfile=pxelinux.0,tftp-server-name=boot,restrict=on"
    )
    assert (c.hostname, c.domainname, c.tftp, c.bootfile, c.tftp_server_name) == (
        "vm1",
        "example.test",
        "/srv/tftp",
        "pxelinux.0",
        "boot",
    )
    assert c.dnssearch == ("a.test", "b.test") and c.restrict
