"""The user netdev's guest-facing state, moved with a live-migrated VM from one daemon to
another (QMP ``x-user-state-export`` on the source, ``x-user-state-import`` on the
destination; the sequence is in ``docs/migration.md`` and ``python -m tools.migrate``).

QEMU 7.2 has no vhost-user ``DEVICE_STATE`` channel, so the state travels over QMP as an
opaque blob (base64 of JSON, versioned). QEMU's own ``-netdev user`` migrates libslirp's state
inside the migration stream (``net/slirp.c``, ``slirp_state_save``); this is the same idea
for a back end in another process.

What moves
    * DHCP leases (bound and offered), with the time left;
    * hostfwd and guestfwd rules (re-bound on the destination host, which must allow it);
    * established guest TCP connections (IPv4): the host socket by TCP_REPAIR
      (:mod:`.tcp_repair`, needs CAP_NET_ADMIN on both sides; the connection's local address
      must exist at the destination) and the guest-side endpoint's sequence space, windows,
      options and queues. In-order guest data not yet written to the host and host data
      not yet acknowledged by the guest move along; out-of-order pieces do not (never
      acknowledged: the guest sends them again). Timers restart at the destination.

    * IPv4 UDP NAT flows: the guest source, the last destination, the time left, and the
      host port the flow's socket was bound to, bound again at the destination (the
      flow's host address must move with the VM as for TCP). The export closes them on
      the source, so the port is free.

What does not
    ICMP echo flows and IPv6 UDP flows (re-created by the guest's next packet), DHCPv6
    leases, IPv6 TCP connections, connections in other states (handshake, closing) and,
    without
    CAP_NET_ADMIN, every TCP connection: the export then lists them under
    ``tcp-not-moved`` and leaves them untouched; at the destination the guest's next
    segment gets a RST.

Export is a move for TCP: the exported sockets are closed silently (repair mode) and their
flows forgotten, so call it once the source VM is stopped (after ``migrate`` completed).

Import is all or nothing: the blob is parsed and checked whole (version, the same virtual
network, leases inside the pool and not held by another MAC, rules that parse, connection
states) before anything changes; then leases, rules and connections are applied, and a
failure on the way (a port already bound, a socket that cannot be restored) undoes every
change made so far. Refusals raise :class:`StateError` with the reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from netstack.errors import ControlError, GenericError

from . import control, hostsock, tcp_repair
from .options import GuestFwdRule, parse_guestfwd, parse_hostfwd
from .tcp import State, TcpEndpoint, ethernet_header
from .tcp_repair import RepairError, SocketState
from .udp_nat import UdpFlow
from .v4.dhcp import Slot

if TYPE_CHECKING:
    from .client import UserNetClient

VERSION = 1
#: Largest blob accepted (base64 text).
MAX_BLOB = 256 << 20
_MOVABLE = (State.ESTABLISHED, State.CLOSE_WAIT)
#: Endpoint fields carried over as they are (all integers or booleans).
_INT_FIELDS = (
    "iss", "irs", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "max_snd_wnd", "snd_wl1",
    "snd_wl2", "snd_ws", "rcv_ws", "rcv_mss", "snd_mss", "rcv_nxt", "rcv_adv", "rcv_acked",
    "cwnd", "ssthresh", "recover", "high_rxt", "max_guest_flight",
)  # fmt: skip
_BOOL_FIELDS = ("sack_ok", "fin_queued", "fin_rcvd", "host_shut_wr", "_ws_ok")
#: The fields above that the send side (:class:`~.tcp.sender.Sender`) owns.
_SENDER_FIELDS = frozenset({
    "snd_una", "snd_nxt", "snd_max", "snd_wnd", "max_snd_wnd", "snd_wl1", "snd_wl2",
    "snd_ws", "snd_mss", "cwnd", "ssthresh", "recover", "high_rxt", "sack_ok", "fin_queued",
})  # fmt: skip


#: The fields above that the receive side (:class:`~.tcp.receiver.Receiver`) owns.
_RECEIVER_FIELDS = frozenset({
    "rcv_ws", "rcv_mss", "rcv_nxt", "rcv_adv", "rcv_acked", "max_guest_flight", "fin_rcvd",
})  # fmt: skip


def _holder(m: TcpEndpoint, name: str) -> object:
    """The object that holds endpoint field ``name``: the state machine, its sender or
    its receiver."""
    if name in _SENDER_FIELDS:
        return m.tx
    return m.rx if name in _RECEIVER_FIELDS else m


class StateError(ControlError):
    """A state blob refused (nothing was changed) or an export that cannot be made."""


# -- export ------------------------------------------------------------------------------


def export_state(client: UserNetClient) -> tuple[str, dict[str, int]]:
    """The blob and a summary (``leases``, ``forwards``, ``tcp``, ``tcp-not-moved``)."""
    now = client._loop.time()
    cfg = client.cfg
    leases = [
        {
            "mac": slot.mac.hex(),
            "ip": socket.inet_ntoa(slot.addr.to_bytes(4, "big")),
            "state": slot.state,
            "expires-in": max(0.0, slot.expires - now),
            "hostname": slot.hostname,
            "client-id": slot.client_id.hex() if slot.client_id else None,
        }
        for slot in client.gw.dhcp.slots
        if slot.state in ("bound", "offered") and slot.mac is not None
    ]
    forwards = [{"type": row["type"], "rule": row["rule"]} for row in control.forwards(client)]
    conns: list[dict[str, Any]] = []
    not_moved = 0
    splicer = client.tcp
    for key, sp in list(splicer.flows.items()):
        m = sp.m
        if m.state not in _MOVABLE or m.done or len(m.b.src) != 4:
            not_moved += 1
            continue
        try:
            sock_state = tcp_repair.dump(sp.sock)
        except (RepairError, OSError):
            not_moved += 1
            continue
        conns.append(_endpoint_state(m, sock_state))
        splicer.release(key)
    udp = []
    for ukey, flow in list(client.gw.udp.flows.items()):
        bound = client.host4.udp_bound(ukey)
        if bound is None or bound[1] == 0:
            continue
        udp.append(
            {
                "guest": [socket.inet_ntoa(ukey[0]), ukey[1]],
                "dst": [socket.inet_ntoa(flow.dst[0]), flow.dst[1]],
                "bound": list(bound),
                "expires-in": max(0.0, flow.expires - now),
            }
        )
        client.host4.udp_close(ukey)  # a move: the port is free for the destination
        client.gw.udp.flows.pop(ukey, None)
    blob = {
        "version": VERSION,
        "net": [cfg.net, cfg.prefixlen, cfg.host, cfg.dhcp_start],
        "leases": leases,
        "forwards": forwards,
        "tcp": conns,
        "udp": udp,
    }
    text = base64.b64encode(json.dumps(blob, separators=(",", ":")).encode()).decode()
    summary = {
        "leases": len(leases),
        "forwards": len(forwards),
        "tcp": len(conns),
        "tcp-not-moved": not_moved,
        "udp": len(udp),
    }
    return text, summary


def _endpoint_state(m: TcpEndpoint, sock: SocketState) -> dict[str, Any]:
    b = m.b
    fields: dict[str, Any] = {
        name: getattr(_holder(m, name), name) for name in _INT_FIELDS + _BOOL_FIELDS
    }
    to_host = b"".join(bytes(c) for c in m.rx.tohost.chunks)
    return {
        "guest": [socket.inet_ntoa(b.dst), b.dport],
        "local": [socket.inet_ntoa(b.src), b.sport],
        "guest-mac": b.l2[:6].hex() if len(b.l2) >= 6 else None,
        "state": m.state.name,
        "fields": fields,
        "rto": [m.tx.rto.rto, m.tx.rto.srtt, m.tx.rto.rttvar],
        "from-host": base64.b64encode(bytes(m.tx.fromhost.buf)).decode(),
        "from-host-base": m.tx.fromhost.base,
        "to-host": base64.b64encode(to_host).decode(),
        "socket": sock.to_json(),
    }


# -- import: parse and check everything first --------------------------------------------


@dataclass
class _Lease:
    mac: bytes
    addr: int
    state: str
    expires_in: float
    hostname: str | None
    client_id: bytes | None


@dataclass
class _Conn:
    guest: tuple[bytes, int]
    local: tuple[bytes, int]
    guest_mac: bytes | None
    state: State
    fields: dict[str, Any]
    rto: tuple[float, float, float]
    from_host: bytes
    from_host_base: int
    to_host: bytes
    socket: SocketState


@dataclass
class _Udp:
    guest: tuple[bytes, int]
    dst: tuple[bytes, int]
    bound: tuple[str, int]
    expires_in: float


@dataclass
class _Parsed:
    leases: list[_Lease]
    hostfwd: list[str]
    guestfwd: list[GuestFwdRule]
    conns: list[_Conn]
    udp: list[_Udp]


def _parse(client: UserNetClient, blob: str) -> _Parsed:
    if not isinstance(blob, str) or len(blob) > MAX_BLOB:
        raise StateError("state blob is not a string of at most 256 MiB")
    try:
        data = json.loads(base64.b64decode(blob, validate=True))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise StateError(f"state blob is not base64 of JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StateError("state blob is not an object")
    if data.get("version") != VERSION:
        raise StateError(f"state version {data.get('version')!r}, this daemon reads {VERSION}")
    cfg = client.cfg
    if data.get("net") != [cfg.net, cfg.prefixlen, cfg.host, cfg.dhcp_start]:
        raise StateError("the state is of another virtual network (net=, host=, dhcpstart=)")
    try:
        leases = [_lease(client, item) for item in _list(data, "leases")]
        macs = [le.mac for le in leases]
        addrs = [le.addr for le in leases]
        if len(set(macs)) != len(macs) or len(set(addrs)) != len(addrs):
            raise ValueError("a MAC or an address appears twice in the leases")
        hostfwd: list[str] = []
        guestfwd: list[GuestFwdRule] = []
        present = {(row["type"], row["rule"]) for row in control.forwards(client)}
        for item in _list(data, "forwards"):
            kind, rule = item["type"], item["rule"]
            if not isinstance(rule, str) or (kind, rule) in present:
                continue
            if kind == "hostfwd":
                parse_hostfwd(rule)
                hostfwd.append(rule)
            elif kind == "guestfwd":
                guestfwd.append(parse_guestfwd(rule, cfg))
            else:
                raise ValueError(f"forward type {kind!r}")
        conns = [_conn(item) for item in _list(data, "tcp")]
        keys = [(c.guest, c.local) for c in conns]
        if len(set(keys)) != len(keys):
            raise ValueError("a connection appears twice")
        udp = [_udp(item) for item in _list(data, "udp")]
        if len({u.guest for u in udp}) != len(udp):
            raise ValueError("a UDP flow appears twice")
    except StateError:
        raise
    except GenericError as exc:
        raise StateError(f"malformed state: {exc.desc}") from None
    except (KeyError, TypeError, ValueError, IndexError, OSError, binascii.Error) as exc:
        raise StateError(f"malformed state: {exc!r}") from None
    return _Parsed(leases, hostfwd, guestfwd, conns, udp)


def _list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise TypeError(f"{key} is not a list")
    return value


def _number(value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{value!r} is not a number in {low}..{high}")
    return float(value)


def _lease(client: UserNetClient, item: Any) -> _Lease:
    mac = bytes.fromhex(item["mac"])
    if len(mac) != 6:
        raise ValueError(f"MAC {item['mac']!r}")
    addr = int.from_bytes(socket.inet_aton(item["ip"]), "big")
    slots = client.gw.dhcp.slots
    index = addr - client.cfg.dhcp_start
    if not 0 <= index < len(slots):
        raise ValueError(f"lease address {item['ip']} is outside the DHCP pool")
    held = slots[index]
    if held.state in ("bound", "offered") and held.mac not in (None, mac):
        raise ValueError(f"{item['ip']} is leased to another MAC here")
    if item["state"] not in ("bound", "offered"):
        raise ValueError(f"lease state {item['state']!r}")
    hostname = item.get("hostname")
    if hostname is not None and not isinstance(hostname, str):
        raise TypeError("hostname is not a string")
    cid = item.get("client-id")
    return _Lease(
        mac=mac,
        addr=addr,
        state=item["state"],
        expires_in=_number(item["expires-in"], 0, 1e9),
        hostname=hostname,
        client_id=bytes.fromhex(cid) if cid is not None else None,
    )


def _endpoint4(v: Any) -> tuple[bytes, int]:
    addr, port = v
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port {port!r}")
    if not isinstance(addr, str):
        raise TypeError("address is not a string")
    return socket.inet_aton(addr), port


def _udp(item: Any) -> _Udp:
    guest, dst, bound = _endpoint4(item["guest"]), _endpoint4(item["dst"]), item["bound"]
    addr, port = _endpoint4(bound)
    return _Udp(guest, dst, (socket.inet_ntoa(addr), port), _number(item["expires-in"], 0, 1e6))


def _conn(item: Any) -> _Conn:
    endpoint = _endpoint4

    fields = item["fields"]
    if not isinstance(fields, dict) or set(fields) != set(_INT_FIELDS + _BOOL_FIELDS):
        raise ValueError("endpoint fields missing or unknown")
    for name in _INT_FIELDS:
        if isinstance(fields[name], bool) or not isinstance(fields[name], int):
            raise TypeError(f"{name} is not an integer")
        if not 0 <= fields[name] < 1 << 64:
            raise ValueError(f"{name} out of range")
    for name in _BOOL_FIELDS:
        if not isinstance(fields[name], bool):
            raise TypeError(f"{name} is not a boolean")
    if not fields["snd_una"] <= fields["snd_nxt"] <= fields["snd_max"]:
        raise ValueError("send sequence numbers out of order")
    state = State[item["state"]]
    if state not in _MOVABLE:
        raise ValueError(f"connection state {state.name}")
    rto = item["rto"]
    if not isinstance(rto, list) or len(rto) != 3:
        raise ValueError("rto is not three numbers")
    mac_text = item.get("guest-mac")
    guest_mac = bytes.fromhex(mac_text) if mac_text is not None else None
    if guest_mac is not None and len(guest_mac) != 6:
        raise ValueError("guest MAC")
    base = item["from-host-base"]
    if isinstance(base, bool) or not isinstance(base, int) or base != fields["snd_una"]:
        raise ValueError("from-host base is not snd_una")
    from_host = base64.b64decode(item["from-host"], validate=True)
    if base + len(from_host) < fields["snd_max"] - 1:
        raise ValueError("from-host data shorter than what was sent")
    return _Conn(
        guest=endpoint(item["guest"]),
        local=endpoint(item["local"]),
        guest_mac=guest_mac,
        state=state,
        fields=dict(fields),
        rto=(_number(rto[0], 0, 600), _number(rto[1], 0, 600), _number(rto[2], 0, 600)),
        from_host=from_host,
        from_host_base=base,
        to_host=base64.b64decode(item["to-host"], validate=True),
        socket=SocketState.from_json(item["socket"]),
    )


# -- import: apply, undo on failure ------------------------------------------------------


def import_state(client: UserNetClient, blob: str) -> dict[str, int]:
    """Apply a blob from :func:`export_state` (all or nothing); a summary of what was
    applied. Raises :class:`StateError`."""
    parsed = _parse(client, blob)
    dhcp = client.gw.dhcp
    saved = [Slot(**vars(s)) for s in dhcp.slots]
    saved_wake = dhcp._wake
    added_hostfwd: list[Any] = []
    added_guestfwd: list[GuestFwdRule] = []
    restored: list[socket.socket] = []
    udp_socks: list[socket.socket] = []
    try:
        now = client._loop.time()
        for le in parsed.leases:
            for slot in dhcp.slots:  # the MAC's older slot here is given up
                if slot.mac == le.mac and slot.state in ("bound", "offered"):
                    slot.state = "free"
            slot = dhcp.slots[le.addr - client.cfg.dhcp_start]
            slot.mac, slot.state = le.mac, le.state
            slot.expires = now + le.expires_in
            slot.hostname, slot.client_id = le.hostname, le.client_id
            if dhcp._wake is None or slot.expires < dhcp._wake:
                dhcp._wake = slot.expires
        for rule in parsed.hostfwd:
            try:
                control.forward_add(client, "hostfwd", rule)
            except GenericError as exc:
                raise StateError(str(exc.desc)) from None
            added_hostfwd.append(client.fwd.forwards[-1])
        for grule in parsed.guestfwd:
            try:
                control.guestfwd_add(client, grule.text)
            except GenericError as exc:
                raise StateError(str(exc.desc)) from None
            added_guestfwd.append(grule)
        sockets = []
        for conn in parsed.conns:
            try:
                sock = tcp_repair.restore(conn.socket)
            except (RepairError, OSError) as exc:
                raise StateError(str(exc)) from None
            restored.append(sock)
            sockets.append(sock)
        for flow in parsed.udp:
            try:
                udp_socks.append(_udp_socket(flow.bound))
            except OSError as exc:
                raise StateError(f"UDP flow port {flow.bound}: {exc.strerror}") from None
    except BaseException:
        for sock in udp_socks:
            sock.close()
        for sock in restored:
            _reset_close(sock)
        for grule in added_guestfwd:
            control.guestfwd_remove(client, grule.server, grule.port)
        for fwd in added_hostfwd:
            client.fwd.remove(fwd)
        for slot, old in zip(dhcp.slots, saved, strict=True):
            vars(slot).update(vars(old))
        dhcp._wake = saved_wake
        raise
    for conn, sock in zip(parsed.conns, sockets, strict=True):
        client.tcp.install(_endpoint(client, conn, now), sock)
    nat = client.gw.udp
    for flow, sock in zip(parsed.udp, udp_socks, strict=True):
        entry = UdpFlow(flow.guest, now)
        entry.dst = flow.dst
        nat.flows[flow.guest] = entry
        nat._touch(entry, now + flow.expires_in)
        client.host4.udp_adopt(flow.guest, sock)
    client.deadlines_changed()
    return {
        "leases": len(parsed.leases),
        "forwards": len(parsed.hostfwd) + len(parsed.guestfwd),
        "tcp": len(parsed.conns),
        "udp": len(parsed.udp),
    }


def _udp_socket(bound: tuple[str, int]) -> socket.socket:
    sock = hostsock.udp_flow_socket()
    try:
        sock.bind(bound)
    except OSError:
        sock.close()
        raise
    return sock


def _reset_close(sock: socket.socket) -> None:
    """Undo a restored connection: put it back in repair mode and close it silently, so
    the peer (still talking to the source's copy) sees nothing."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, tcp_repair.TCP_REPAIR, 1)
    tcp_repair.release(sock)


def _endpoint(client: UserNetClient, conn: _Conn, now: float) -> TcpEndpoint:
    splicer = client.tcp
    mac = conn.guest_mac or client.gw.arp.get(conn.guest[0], bytes(6))
    l2 = ethernet_header(mac, client.gw.mac, False)
    local, lport = conn.local
    guest, gport = conn.guest
    m = TcpEndpoint(
        local, guest, lport, gport, now, config=splicer.cfg, l2=l2, out=splicer.out,
        iss=conn.fields["iss"],
    )  # fmt: skip
    for name, value in conn.fields.items():
        setattr(_holder(m, name), name, value)
    m.state = conn.state
    tx = m.tx
    tx.rto.rto, tx.rto.srtt, tx.rto.rttvar = conn.rto
    tx.fromhost.buf = bytearray(conn.from_host)
    tx.fromhost.base = conn.from_host_base
    if conn.to_host:
        m.rx.tohost.append(memoryview(bytearray(conn.to_host)))
    tx.dupacks = 0
    tx.in_recovery = False
    tx.retries = 0
    if tx.snd_una < tx.snd_max:  # unacknowledged data: retransmit if the guest lost it
        tx.rtx_at = now + tx.rto.rto
    return m
