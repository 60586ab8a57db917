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
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Final, NamedTuple

IP_RECVERR: Final = 11  # <linux/in.h>; not exported by the socket module
SO_EE_ORIGIN_ICMP: Final = 2
_EXT_ERR = struct.Struct("=IBBBBII")  # errno, origin, type, code, pad, info, data
_SOCKADDR_IN = struct.Struct("!HH4s")  # family (host order, read separately), port, addr
_ERR_BATCH: Final = 16


class HostError(NamedTuple):
    """One queued ICMP error: the original destination, the ICMP type and code, the
    address of the node that reported it, and the start of the original payload."""

    host: str
    port: int
    icmp_type: int
    code: int
    offender: str | None
    head: bytes


def udp_flow_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
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
            if level != socket.IPPROTO_IP or kind != IP_RECVERR or len(raw) < _EXT_ERR.size:
                continue
            _err, origin, icmp_type, code, _pad, _info, _data = _EXT_ERR.unpack_from(raw)
            if origin != SO_EE_ORIGIN_ICMP or not isinstance(addr, tuple):
                continue
            offender = None
            rest = raw[_EXT_ERR.size :]
            if len(rest) >= 8 and int.from_bytes(rest[:2], "little") == socket.AF_INET:
                offender = socket.inet_ntoa(rest[4:8])
            out.append(HostError(str(addr[0]), int(addr[1]), icmp_type, code, offender, data))
    return out


def ping_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    return sock


def raw_icmp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.setblocking(False)
    return sock


def icmp_mode() -> str:
    """``ping``, ``raw`` or ``none``: the echo mechanism this process may use."""
    for mode, opener in (("ping", ping_socket), ("raw", raw_icmp_socket)):
        try:
            opener().close()
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT):
                raise
            continue
        return mode
    return "none"
