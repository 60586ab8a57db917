"""The user netdev's monitor tables as data: its forwards, its connections, ``info usernet``.

Owns the row types behind the QMP commands ``query-user-forwards`` (:class:`ForwardRow`)
and ``query-user-connections`` (:class:`ConnRow`), the builders that read them off the live
tables (hostfwd listeners, guestfwd rules, the TCP splicer's flows, the UDP NAT and ICMP
relay flows), the parsing of the addresses a client names a forward by, and
:func:`render_usernet`: HMP ``info usernet`` rendered from the very same rows, so the text
and the QMP view cannot drift.

``info usernet`` follows QEMU (libslirp's ``slirp_connection_info``):
``Hub N (NAME):`` (N = -1 off a hub), the fixed header, then the TCP rows (connections
newest first, then the ``TCP[HOST_FORWARD]`` listeners newest first), the UDP rows (flows
``UDP[S sec]``, then listeners) and the ICMP rows (``ICMP[S sec]``, no ports). A row is
``STATE`` left-aligned in 19 columns, fd, source address and port, destination address and
port, RecvQ and SendQ; connection rows put the guest side first, listener rows the bound
host address first. Rows of any address family share one layout (an IPv6 address just
overflows its 15 columns), so adding a family means adding a builder, nothing else.

A TCP connection's direction: ``hostfwd`` when the gateway opened it towards the guest
(its machine has no guest SYN), ``guestfwd`` when its host side is a socketpair (a
guestfwd command or chardev) or it targets a guestfwd address, else ``outbound``. UDP and
ICMP flows are ``outbound`` (hostfwd UDP datagrams keep no flow here).

QMP wire form: members are QEMU-style (``guest-addr``, ``recv-q``); optional members are
omitted, never null. Every row carries its netdev's name.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from netstack.errors import GenericError

from .hostfwd import Forward
from .options import GuestFwdRule, inet_aton, ip_text
from .tcp import Splice, State

USERNET_HEADER: Final = (
    "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n"
)
#: libslirp's names (``tcpstates``); a guest SYN held while the host connects shows as
#: SYN_RCVD, as in libslirp.
TCP_STATE_NAMES: Final = {State.CONNECTING: "SYN_RCVD"}
#: The state of a UDP or ICMP flow (it lives until ``expires-in`` seconds of silence).
FLOW_ACTIVE: Final = "ACTIVE"
PROTOCOLS: Final = ("tcp", "udp", "icmp")


@dataclass(frozen=True, slots=True)
class ConnRow:
    """One connection or flow of a user netdev (a ``UserConnectionInfo``)."""

    protocol: str  # "tcp", "udp" or "icmp"
    state: str  # TCP: libslirp's state name; UDP, ICMP: FLOW_ACTIVE
    family: str  # "ipv4" or "ipv6"
    guest_addr: str
    guest_port: int | None  # None for ICMP
    remote_addr: str  # the far end as the guest sees it
    remote_port: int | None
    fd: int  # the host socket, -1 when there is none
    recv_q: int  # bytes from the guest not yet written to the host socket
    send_q: int  # bytes from the host held for the guest
    direction: str  # "outbound", "hostfwd" or "guestfwd"
    expires_in: int | None = None  # UDP, ICMP: seconds until the idle flow is forgotten

    def label(self) -> str:
        if self.protocol == "tcp":
            return f"  TCP[{self.state}]"
        return f"  {self.protocol.upper()}[{self.expires_in} sec]"

    def to_qmp(self, netdev: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "netdev": netdev,
            "protocol": self.protocol,
            "state": self.state,
            "family": self.family,
            "direction": self.direction,
            "guest-addr": self.guest_addr,
        }
        if self.guest_port is not None:
            out["guest-port"] = self.guest_port
        out["remote-addr"] = self.remote_addr
        if self.remote_port is not None:
            out["remote-port"] = self.remote_port
        if self.fd >= 0:
            out["fd"] = self.fd
        out["recv-q"] = self.recv_q
        out["send-q"] = self.send_q
        if self.expires_in is not None:
            out["expires-in"] = self.expires_in
        return out


@dataclass(frozen=True, slots=True)
class ForwardRow:
    """One forwarding rule of a user netdev (a ``UserForwardInfo``)."""

    type: str  # "hostfwd" or "guestfwd"
    protocol: str  # "tcp" or "udp"
    rule: str  # the rule as given (QEMU's syntax)
    guest_addr: str  # hostfwd: where connections go; guestfwd: the address the guest uses
    guest_port: int
    host_addr: str | None = None  # hostfwd: the bound address
    host_port: int | None = None  # hostfwd: the bound port (the kernel's pick for port 0)
    target: str | None = None  # guestfwd: a chardev spec or "cmd:COMMAND"
    fd: int = -1  # hostfwd: the listening / bound socket

    def to_qmp(self, netdev: str) -> dict[str, Any]:
        out: dict[str, Any] = {"netdev": netdev, "type": self.type, "protocol": self.protocol}
        if self.host_addr is not None:
            out["host-addr"] = self.host_addr
        if self.host_port is not None:
            out["host-port"] = self.host_port
        out["guest-addr"] = self.guest_addr
        out["guest-port"] = self.guest_port
        out["rule"] = self.rule
        if self.target is not None:
            out["target"] = self.target
        return out


class _UdpFlow(Protocol):
    @property
    def dst(self) -> tuple[bytes, int]: ...
    @property
    def expires(self) -> float: ...


class _IcmpFlow(Protocol):
    @property
    def dst(self) -> bytes: ...
    @property
    def expires(self) -> float: ...


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def addr_text(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def _family(raw: bytes) -> str:
    return "ipv6" if len(raw) == 16 else "ipv4"


# -- builders ------------------------------------------------------------------------------


def tcp_rows(
    flows: Iterable[Splice], guestfwd: Collection[tuple[bytes, int]] = ()
) -> list[ConnRow]:
    """Rows for the TCP splicer's connections, newest first. ``guestfwd`` holds the
    (address, port) pairs guestfwd rules answer, so their connections are told apart."""
    rows = []
    for sp in reversed(list(flows)):
        m = sp.m
        guest, guest_port, far, far_port = m.key
        if m.syn is None:
            direction = "hostfwd"  # we opened it towards the guest
        elif sp.sock.family == socket.AF_UNIX or (far, far_port) in guestfwd:
            direction = "guestfwd"  # its "host socket" is a socketpair to a command/chardev
        else:
            direction = "outbound"
        state = TCP_STATE_NAMES.get(m.state, m.state.name)
        rows.append(
            ConnRow("tcp", state, _family(guest), addr_text(guest), guest_port, addr_text(far),
                    far_port, sp.sock.fileno(), m.host_pending, m.send_queue, direction)
        )  # fmt: skip
    return rows


def udp_rows(
    flows: Mapping[tuple[bytes, int], _UdpFlow],
    socks: Mapping[tuple[bytes, int], _HasFileno],
    now: float,
) -> list[ConnRow]:
    """Rows for the UDP NAT's flows (keyed by guest address and port), newest first."""
    rows = []
    for key, flow in reversed(list(flows.items())):
        sock = socks.get(key)
        dst, dst_port = flow.dst
        fd = sock.fileno() if sock is not None else -1
        rows.append(
            ConnRow("udp", FLOW_ACTIVE, _family(key[0]), addr_text(key[0]), key[1],
                    addr_text(dst), dst_port, fd, 0, 0, "outbound", int(flow.expires - now))
        )  # fmt: skip
    return rows


def icmp_rows(
    flows: Mapping[tuple[bytes, int], _IcmpFlow],
    socks: Mapping[tuple[bytes, int], _HasFileno],
    shared: _HasFileno | None,
    now: float,
) -> list[ConnRow]:
    """Rows for the echo flows (keyed by guest address and echo id), newest first; a flow
    without its own socket shows ``shared`` (the raw socket), if any."""
    rows = []
    for key, flow in reversed(list(flows.items())):
        sock = socks.get(key) or shared
        fd = sock.fileno() if sock is not None else -1
        rows.append(
            ConnRow("icmp", FLOW_ACTIVE, _family(key[0]), addr_text(key[0]), None,
                    addr_text(flow.dst), None, fd, 0, 0, "outbound", int(flow.expires - now))
        )  # fmt: skip
    return rows


def hostfwd_row(fwd: Forward) -> ForwardRow:
    addr, port = fwd.bound
    rule = fwd.rule
    return ForwardRow("hostfwd", "udp" if rule.udp else "tcp", rule.text, addr_text(fwd.guest),
                      rule.guest_port, addr, port, fd=fwd.sock.fileno())  # fmt: skip


def guestfwd_row(rule: GuestFwdRule) -> ForwardRow:
    return ForwardRow("guestfwd", "tcp", rule.text, rule.server, rule.port, target=rule.target)


def forward_rows(
    forwards: Iterable[Forward], guestfwds: Iterable[GuestFwdRule]
) -> list[ForwardRow]:
    """Every rule in creation order: hostfwd rules, then guestfwd rules."""
    return [*map(hostfwd_row, forwards), *map(guestfwd_row, guestfwds)]


def guestfwd_targets(rules: Iterable[GuestFwdRule]) -> set[tuple[bytes, int]]:
    return {(socket.inet_aton(r.server), r.port) for r in rules}


# -- naming a forward ------------------------------------------------------------------------


def host_address(text: str | None) -> str:
    """A hostfwd's host address as its bound socket reports it ("" or absent: any)."""
    if not text:
        return "0.0.0.0"
    v4 = inet_aton(text)
    if v4 is not None:
        return ip_text(v4)
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.IPv6Address(text))  # refuses any bracket left
    except ValueError:
        raise GenericError("Parameter 'host-addr' expects an IP address") from None


def guest_address(text: str | None, default: int) -> str:
    """A guestfwd's server address (absent: ``default``, QEMU's net + .4)."""
    if not text:
        return ip_text(default)
    v4 = inet_aton(text)
    if v4 is None:
        raise GenericError("Parameter 'guest-addr' expects an IPv4 address")
    return ip_text(v4)


# -- info usernet ----------------------------------------------------------------------------


def _port(port: int | None) -> str:
    return " -   " if port is None else f"{port:5d}"


def _conn_line(c: ConnRow) -> str:
    return (
        f"{c.label():<19} {c.fd:3d} {c.guest_addr:>15} {_port(c.guest_port)} "
        f"{c.remote_addr:>15} {_port(c.remote_port)} {c.recv_q:5d} {c.send_q:5d}\n"
    )


def _listener_line(f: ForwardRow) -> str:
    state = f"  {f.protocol.upper()}[HOST_FORWARD]"
    return (
        f"{state:<19} {f.fd:3d} {f.host_addr or '':>15} {_port(f.host_port)} {f.guest_addr:>15} "
        f"{f.guest_port:5d} {0:5d} {0:5d}\n"
    )


def render_usernet(
    hub: int, name: str, conns: Iterable[ConnRow], forwards: Iterable[ForwardRow]
) -> str:
    """``info usernet`` for one netdev from its rows (connections newest first, forwards in
    creation order)."""
    conns = list(conns)
    listeners = [f for f in reversed(list(forwards)) if f.type == "hostfwd"]
    lines = [f"Hub {hub} ({name}):\n", USERNET_HEADER]
    for proto in PROTOCOLS:
        lines.extend(_conn_line(c) for c in conns if c.protocol == proto)
        lines.extend(_listener_line(f) for f in listeners if f.protocol == proto)
    return "".join(lines)
