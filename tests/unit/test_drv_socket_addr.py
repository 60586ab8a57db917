"""Legacy ``host:port`` parsing and SocketAddress rendering (``netstack.net.sockaddr``)."""

from __future__ import annotations

import socket

import pytest

from netstack.errors import GenericError
from netstack.net.sockaddr import (
    InetAddr,
    address_of,
    fd_param,
    parse_host_port,
    qemu_strtol,
    socket_uri,
    split_host_port,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1234", 1234),
        ("0x10", 16),
        ("0X1f", 31),
        ("010", 8),
        ("08", 0),  # octal: the 8 ends the number
        ("0x", 0),  # glibc reads the 0, the x is trailing
        ("0", 0),
        ("  42", 42),
        ("\t+7", 7),
        ("-1", -1),
        ("22:33", 22),  # trailing characters are ignored (an end pointer is passed)
        ("12abc", 12),
        (" 22", 22),
        (str(2**63 - 1), 2**63 - 1),
        ("", None),
        ("abc", None),
        ("-", None),
        (" ", None),
        (str(2**63), None),  # ERANGE
        ("99999999999999999999", None),
    ],
)
def test_qemu_strtol(text: str, value: int | None) -> None:
    assert qemu_strtol(text) == value


async def test_parse_host_port_like_qemu() -> None:
    cases = {
        "127.0.0.1:1234": ("127.0.0.1", 1234),
        ":80": ("0.0.0.0", 80),
        "127.1:010": ("127.0.0.1", 8),
        "0x7f.1:0x10": ("127.0.0.1", 16),
        "127.0.0.1:-1": ("127.0.0.1", 65535),
        "127.0.0.1:70000": ("127.0.0.1", 70000 & 0xFFFF),
        "localhost:22:33": ("127.0.0.1", 22),
        "127.0.0.1: 22": ("127.0.0.1", 22),
        "1:2:3": ("0.0.0.1", 2),  # inet_aton reads a lone number as an address
    }
    for text, (host, port) in cases.items():
        addr = await parse_host_port(text)
        assert (addr.family, addr.host, addr.port) == (socket.AF_INET, host, port), text
    assert str(await parse_host_port("127.1:5")) == "127.0.0.1:5"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("nocolon", "host address 'nocolon' doesn't contain ':' separating host from port"),
        ("", "host address '' doesn't contain ':' separating host from port"),
        ("1.2.3.4.5:80", "host address '1.2.3.4.5' is not a valid IPv4 address"),
        ("300.1.1.1:1", "host address '300.1.1.1' is not a valid IPv4 address"),
        ("127.0.0.1:abc", "port number 'abc' is invalid"),
        ("127.0.0.1:", "port number '' is invalid"),
        ("127.0.0.1:99999999999999999999", "port number '99999999999999999999' is invalid"),
        (" 127.0.0.1:22", "can't resolve host address ' 127.0.0.1'"),
        ("[::1:5000", "can't resolve host address '['"),
    ],
)
async def test_parse_host_port_errors(text: str, error: str) -> None:
    with pytest.raises(GenericError) as err:
        await parse_host_port(text)
    assert err.value.desc == error


async def test_ipv6_beyond_qemu() -> None:
    addr = await parse_host_port("[::1]:5000")
    assert (addr.family, addr.host, addr.port) == (socket.AF_INET6, "::1", 5000)
    assert str(addr) == "[::1]:5000"
    assert addr.sockaddr == ("::1", 5000)
    assert (await parse_host_port("[ff02::1:2]:7")).is_multicast
    assert split_host_port("[fe80::1]:0x10") == ("fe80::1", "0x10")


def test_multicast_and_any() -> None:
    assert InetAddr(socket.AF_INET, "230.0.0.1", 1).is_multicast
    assert InetAddr(socket.AF_INET, "239.255.255.255", 1).is_multicast
    assert not InetAddr(socket.AF_INET, "240.0.0.1", 1).is_multicast
    assert not InetAddr(socket.AF_INET, "127.0.0.1", 1).is_multicast
    assert InetAddr(socket.AF_INET, "0.0.0.0", 1).is_any


def test_address_of_and_uri() -> None:
    inet = address_of(socket.AF_INET, ("127.0.0.1", 4321))
    assert inet == {"type": "inet", "host": "127.0.0.1", "port": "4321", "ipv4": True}
    assert socket_uri(inet) == "tcp:127.0.0.1:4321"
    inet6 = address_of(socket.AF_INET6, ("::1", 7, 0, 0))
    assert inet6 == {"type": "inet", "host": "::1", "port": "7", "ipv6": True}
    assert socket_uri(inet6) == "tcp:::1:7"  # QEMU prints no brackets
    unix = address_of(socket.AF_UNIX, "/tmp/s.sock")
    assert unix == {"type": "unix", "path": "/tmp/s.sock"}
    assert socket_uri(unix) == "unix:/tmp/s.sock"
    assert address_of(socket.AF_UNIX, "") == {"type": "unix", "path": ""}
    abstract = address_of(socket.AF_UNIX, b"\0name")
    assert abstract == {"type": "unix", "path": "name", "abstract": True, "tight": True}
    loose = address_of(socket.AF_UNIX, b"\0name".ljust(108, b"\0"))
    assert loose == {"type": "unix", "path": "name", "abstract": True, "tight": False}
    assert socket_uri({"type": "fd", "str": "5"}) == "fd:5"
    assert socket_uri({"type": "vsock", "cid": "3", "port": "9"}) == "vsock:3:9"


def test_fd_param() -> None:
    assert fd_param("7") == 7
    assert fd_param("007") == 7
    for bad in ("7x", "1" * 12):
        with pytest.raises(GenericError, match=f"^Invalid file descriptor number '{bad}'$"):
            fd_param(bad)
    with pytest.raises(GenericError, match=r"^File descriptor named 'nope' has not been found$"):
        fd_param("nope")
    assert fd_param("mine", {"mine": 9}.get) == 9
