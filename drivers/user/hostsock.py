"""Host sockets of the user netdev: UDP flow sockets with ``IP_RECVERR``, and the ICMP echo
mechanisms (ping sockets, a raw ICMP socket, or none).

Owns the Linux specifics the adapter needs:

* :func:`udp_flow_socket`: a non-blocking IPv4 datagram socket with ``IP_RECVERR``, so
  ICMP errors for datagrams it sent (port unreachable when the host refuses, and the other
  unreachable/time-exceeded codes) are queued with their details;
  :func:`read_errors` drains that queue (``recvmsg(MSG_ERRQUEUE)``, ``struct
  sock_extended_err`` + the offender's ``sockaddr_in``, the original destination in
  ``msg_name`` and the start of the original payload as data);
* :func:`icmp_mode`: which echo mechanism this process can use. ``ping``: an unprivileged
  ``socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)`` (allowed when the process's group is in
  ``net.ipv4.ping_group_range``; the kernel owns the echo identifier). ``raw``: a
  ``SOCK_RAW``/``IPPROTO_ICMP`` socket (needs CAP_NET_RAW; it sees every ICMP packet of the
  host, replies are matched by identifier and source). ``none``: neither is allowed;
  echo requests beyond the gateway are dropped and counted.

The IPv6 counterparts (the user netdev's IPv6 NAT, :mod:`.v6.host`): :func:`udp6_flow_socket`
(``IPV6_RECVERR``; :func:`read_errors` reads both families' queues - ICMPv6 errors arrive
with origin ``SO_EE_ORIGIN_ICMP6`` and a ``sockaddr_in6`` offender), :func:`ping6_socket`,
:func:`raw_icmp6_socket` (an ``ICMP6_FILTER`` lets only Echo Replies through; the kernel
fills in ICMPv6 checksums on both, RFC 3542 §3.1) and :func:`icmp_mode` with
``family=AF_INET6`` (``net.ipv4.ping_group_range`` governs ICMPv6 ping sockets too).

:func:`drain` is the bounded read every datagram reader of the netdev uses (at most
:data:`RX_BATCH` datagrams per wake-up, so one busy socket cannot starve the loop);
:class:`UpstreamSockets` are the DNS relays' sockets towards their upstreams (one per
upstream address family, opened on first use), for either family's relay.

Every per-flow socket made here is checked against the descriptor reserve
(:func:`netstack.limits.check_flow_fd`: ``EMFILE`` when it would eat into it).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

from netstack.limits import check_flow_fd

IP_RECVERR: Final = 11  # <linux/in.h>; not exported by the socket module
IPV6_RECVERR: Final = 25  # <linux/in6.h>; likewise
ICMP6_FILTER: Final = 1  # <linux/icmpv6.h>
SO_EE_ORIGIN_ICMP: Final = 2
SO_EE_ORIGIN_ICMP6: Final = 3
_EXT_ERR = struct.Struct("=IBBBBII")  # errno, origin, type, code, pad, info, data
_ICMP6_ECHO_REPLY: Final = 129
_ERR_BATCH: Final = 16
_REFUSED: Final = (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT)
#: Datagrams one reader takes per wake-up.
RX_BATCH: Final = 64


class HostError(NamedTuple):
    """One queued ICMP error: the original destination, the ICMP type and code, the
    address of the node that reported it, and the start of the original payload."""

    host: str
    port: int
    icmp_type: int
    code: int
    offender: str | None
    head: bytes


def drain(sock: socket.socket) -> Iterator[tuple[bytes, Any]]:
    """Up to :data:`RX_BATCH` datagrams waiting on a non-blocking socket, as (data,
    address); receive errors (ICMP errors queued on the socket) are skipped, not fatal."""
    for _ in range(RX_BATCH):
        try:
            item = sock.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue
        yield item


def udp_flow_socket() -> socket.socket:
    sock = check_flow_fd(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except OSError:
        sock.close()
        raise
    return sock


def read_errors(sock: socket.socket) -> list[HostError]:
    """Drain (a bounded part of) the socket's error queue."""
    out: list[HostError] = []
    for _ in range(_ERR_BATCH):
        try:
            data, ancdata, _flags, addr = sock.recvmsg(512, 512, socket.MSG_ERRQUEUE)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break
        for level, kind, raw in ancdata:
            if len(raw) < _EXT_ERR.size or (level, kind) not in _RECVERR:
                continue
            _err, origin, icmp_type, code, _pad, _info, _data = _EXT_ERR.unpack_from(raw)
            if origin not in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6) or not isinstance(addr, tuple):
                continue
            offender = _offender(raw[_EXT_ERR.size :])
            out.append(HostError(str(addr[0]), int(addr[1]), icmp_type, code, offender, data))
    return out


_RECVERR: Final = frozenset({(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)})


def _offender(rest: bytes) -> str | None:
    """The address of the node that sent the ICMP error (the ``sockaddr`` after the
    extended error), or None."""
    family = int.from_bytes(rest[:2], "little") if len(rest) >= 2 else 0
    if family == socket.AF_INET and len(rest) >= 8:
        return socket.inet_ntoa(rest[4:8])
    if family == socket.AF_INET6 and len(rest) >= 24:
        return socket.inet_ntop(socket.AF_INET6, rest[8:24])
    return None


def ping_socket() -> socket.socket:
    sock = check_flow_fd(socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP))
    sock.setblocking(False)
    return sock


def raw_icmp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    return sock


def udp6_flow_socket() -> socket.socket:
    sock = check_flow_fd(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    except OSError:
        sock.close()
        raise
    return sock


def ping6_socket() -> socket.socket:
    sock = check_flow_fd(socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6))
    sock.setblocking(False)
    return sock


def raw_icmp6_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        sock.setblocking(False)
        # a set bit blocks that type (Linux's icmp6_filter): only Echo Replies pass
        words = [0xFFFFFFFF] * 8
        words[_ICMP6_ECHO_REPLY >> 5] &= ~(1 << (_ICMP6_ECHO_REPLY & 31)) & 0xFFFFFFFF
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words))
    except OSError:
        sock.close()
        raise
    return sock


def icmp_mode(family: int = socket.AF_INET) -> str:
    """``ping``, ``raw`` or ``none``: the echo mechanism this process may use."""
    openers = (
        (("ping", ping6_socket), ("raw", raw_icmp6_socket))
        if family == socket.AF_INET6
        else (("ping", ping_socket), ("raw", raw_icmp_socket))
    )
    for mode, opener in openers:
        try:
            opener().close()
        except OSError as exc:
            if exc.errno not in _REFUSED:
                raise
            continue
        return mode
    return "none"


class UpstreamSockets:
    """Datagram sockets towards DNS upstreams, one per address family, opened on first
    use; each answer goes to ``deliver((host, port), data)``. Failures are reported to
    ``error(what, exc)`` and :meth:`send` says whether the query left."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop,
        deliver: Callable[[tuple[str, int], bytes], None],
        error: Callable[[str, OSError], None],
    ) -> None:  # fmt: skip
        self._loop = loop
        self._deliver = deliver
        self._error = error
        self._socks: dict[int, socket.socket] = {}

    def send(self, family: int, payload: bytes, host: str, port: int) -> bool:
        sock = self._socks.get(family)
        if sock is None:
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
            except OSError as exc:
                self._error("DNS socket", exc)
                return False
            self._socks[family] = sock
            self._loop.add_reader(sock.fileno(), self._readable, sock)
        try:
            sock.sendto(payload, (host, port))
        except OSError as exc:
            self._error("DNS send", exc)
            return False
        return True

    def _readable(self, sock: socket.socket) -> None:
        for data, addr in drain(sock):
            self._deliver((str(addr[0]), int(addr[1])), data)

    def close(self) -> None:
        for sock in self._socks.values():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._socks.clear()
