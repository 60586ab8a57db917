"""QMP commands of the user netdev beyond QEMU, in-process (a Netstack and its QMP
dispatcher; a NicClient plays the guest with scapy frames, loopback sockets the host):
``user-forward-add`` / ``user-forward-remove`` / ``query-user-forwards`` (hostfwd and
guestfwd), ``query-user-connections`` (and ``info usernet`` rendered from the same rows),
``query-netdev``'s driver ``counters``, and their introspection in ``query-qmp-schema``."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

import drivers
from drivers.user import control as user_control
from drivers.user.conntable import ConnRow, ForwardRow, render_usernet
from netstack import qapi
from netstack.daemon import Netstack
from netstack.net.client import Counters
from netstack.net.nic import NicClient
from netstack.qmp.dispatch import dispatch
from netstack.qmp.server import command_table

MAC = bytes.fromhex("525400123456")
MAC_TEXT = "52:54:00:12:34:56"
ROUTER_MAC = "52:55:0a:00:02:02"
GUEST = "10.0.2.15"
QEMU_RE = re.compile(r"TCP.HOST_FORWARD.*127\.0\.0\.1\s+(\d+)\s+10\.")


class Qmp:
    """The daemon's command table, driven like a QMP client (errors as (class, desc))."""

    def __init__(self, ns: Netstack) -> None:
        self.ns = ns

    async def __call__(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = {k.replace("_", "-"): v for k, v in arguments.items()}
        reply = await dispatch(command_table(self.ns), request, False)
        if "error" in reply:
            raise QmpError(reply["error"]["class"], reply["error"]["desc"])
        return reply["return"]


class QmpError(Exception):
    def __init__(self, cls: str, desc: str) -> None:
        super().__init__(cls, desc)
        self.cls, self.desc = cls, desc


async def fails(call: Any, desc: str, cls: str = "GenericError") -> None:
    with pytest.raises(QmpError) as err:
        await call
    assert (err.value.cls, err.value.desc) == (cls, desc)


@pytest.fixture
async def rig() -> AsyncIterator[tuple[Netstack, Qmp, NicClient]]:
    ns = Netstack(drivers.registry())
    for spec in (
        "user,id=u0,x-dns-upstream=127.0.0.1:9",
        "hubport,id=hu,hubid=0,netdev=u0",
        "user,id=u1,net=10.0.3.0/24",
        "hubport,id=lone,hubid=7",
    ):
        await ns.netdev_add(qapi.parse_netdev_cli(spec))
    nic = NicClient("nic0", MAC)
    ns.add_client(nic)
    ns.hub(0).add_port("hn").connect(nic)
    try:
        yield ns, Qmp(ns), nic
    finally:
        await ns.close()


def refused(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


async def wait_frame(nic: NicClient, want: Callable[[Ether], bool], timeout: float = 3.0) -> Ether:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for raw in nic.drain():
            pkt = Ether(raw)
            if want(pkt):
                return pkt
        await asyncio.sleep(0.005)
    raise AssertionError("no matching frame")


def guest_frame(l4: Any, dst: str = "10.0.2.2") -> bytes:
    return bytes(Ether(dst=ROUTER_MAC, src=MAC_TEXT) / IP(src=GUEST, dst=dst) / l4)


# -- introspection ---------------------------------------------------------------------------


async def test_commands_and_types_in_the_schema(rig: Any) -> None:
    _, qmp, _ = rig
    schema = {e["name"]: e for e in await qmp("query-qmp-schema")}
    expect = {
        "user-forward-add": ("q_obj_user-forward-add-arg", "UserForwardInfo"),
        "user-forward-remove": ("UserForwardSelector", "any"),
        "query-user-forwards": ("q_obj_query-dhcp-leases-arg", "[UserForwardInfo]"),
        "query-user-connections": ("q_obj_query-dhcp-leases-arg", "[UserConnectionInfo]"),
        "query-netdev": ("q_obj_query-rx-filter-arg", "[NetdevInfo]"),
        "query-rx-filter": ("q_obj_query-rx-filter-arg", "[RxFilterInfo]"),
        "query-dhcp-leases": ("q_obj_query-dhcp-leases-arg", "[DhcpLeaseInfo]"),
    }
    for name, (arg, ret) in expect.items():
        assert schema[name]["meta-type"] == "command"
        assert (schema[name]["arg-type"], schema[name]["ret-type"]) == (arg, ret)
    for entry in schema.values():  # every reference resolves
        refs = [entry.get(k) for k in ("arg-type", "ret-type", "element-type")]
        refs += [m["type"] for m in entry.get("members", []) if "type" in m]
        refs += [v["type"] for v in entry.get("variants", [])]
        assert all(r in schema for r in refs if r is not None), entry
    # QEMU's RxFilterInfo, member for member (qapi/net.json)
    assert [(m["name"], m["type"]) for m in schema["RxFilterInfo"]["members"]] == [
        ("name", "str"), ("promiscuous", "bool"), ("multicast", "RxState"),
        ("unicast", "RxState"), ("vlan", "RxState"), ("broadcast-allowed", "bool"),
        ("multicast-overflow", "bool"), ("unicast-overflow", "bool"), ("main-mac", "str"),
        ("vlan-table", "[int]"), ("unicast-table", "[str]"), ("multicast-table", "[str]"),
    ]  # fmt: skip
    assert schema["RxState"]["values"] == ["normal", "none", "all"]
    assert [m["name"] for m in schema["DhcpLeaseInfo"]["members"]] == [
        "netdev", "mac-address", "ip-address", "state", "expires-in", "hostname",
        "client-id", "iaid",
    ]  # fmt: skip
    selector = schema["UserForwardSelector"]
    assert selector["tag"] == "type" and selector["variants"] == [
        {"case": "hostfwd", "type": "UserHostForwardSelector"},
        {"case": "guestfwd", "type": "UserGuestForwardSelector"},
    ]
    assert schema["UserHostForwardSelector"]["members"] == [
        {"name": "protocol", "type": "UserForwardProtocol", "default": None},
        {"name": "host-addr", "type": "str", "default": None},
        {"name": "host-port", "type": "uint16"},
    ]
    assert schema["UserForwardType"]["values"] == ["hostfwd", "guestfwd"]
    assert schema["UserConnectionDirection"]["values"] == ["outbound", "hostfwd", "guestfwd"]
    conn = [m["name"] for m in schema["UserConnectionInfo"]["members"]]
    assert conn == [
        "netdev",
        "protocol",
        "state",
        "family",
        "direction",
        "guest-addr",
        "guest-port",
        "remote-addr",
        "remote-port",
        "fd",
        "recv-q",
        "send-q",
        "expires-in",
    ]
    stats = [m["name"] for m in schema["NetClientStatistics"]["members"]]
    assert stats == list(Counters().as_dict())  # the schema follows the core's counters
    counters = next(m for m in schema["NetdevInfo"]["members"] if m["name"] == "counters")
    assert counters == {"name": "counters", "type": "any", "default": None}
    assert schema["any"] == {"name": "any", "meta-type": "builtin", "json-type": "value"}
    names = {c["name"] for c in await qmp("query-commands")}
    assert set(expect) <= names


# -- hostfwd ---------------------------------------------------------------------------------


async def test_hostfwd_add_list_remove(rig: Any) -> None:
    ns, qmp, _ = rig
    added = await qmp("user-forward-add", netdev="u0", rule="tcp:127.0.0.1:0-:22")
    port = added["host-port"]
    assert port > 0 and not refused(port)
    assert added == {
        "netdev": "u0",
        "type": "hostfwd",
        "protocol": "tcp",
        "host-addr": "127.0.0.1",
        "host-port": port,
        "guest-addr": GUEST,
        "guest-port": 22,
        "rule": "tcp:127.0.0.1:0-:22",
    }
    udp = await qmp(
        "user-forward-add", netdev="u0", rule="udp:127.0.0.1:0-10.0.2.16:53", type="hostfwd"
    )
    assert udp["protocol"] == "udp" and udp["guest-addr"] == "10.0.2.16"
    other = await qmp("user-forward-add", netdev="u1", rule="tcp:127.0.0.1:0-:80")
    assert other["guest-addr"] == "10.0.3.15"  # that netdev's first DHCP address
    assert await qmp("query-user-forwards", netdev="u0") == [added, udp]
    assert await qmp("query-user-forwards") == [added, udp, other]
    # info usernet shows the very same listener (QEMU's test regex finds the port)
    assert [int(p) for p in QEMU_RE.findall(user_control.info_usernet(ns))] == [
        port,
        other["host-port"],
    ]

    await fails(
        qmp(
            "user-forward-remove",
            netdev="u0",
            type="hostfwd",
            protocol="udp",
            host_addr="127.0.0.1",
            host_port=port,
        ),
        f"host forwarding rule for udp:127.0.0.1:{port} not found",
    )
    await fails(
        qmp("user-forward-remove", netdev="u0", type="hostfwd", host_port=port),
        f"host forwarding rule for tcp::{port} not found",
    )  # bound to 127.0.0.1 only
    assert (
        await qmp(
            "user-forward-remove",
            netdev="u0",
            type="hostfwd",
            host_addr="127.0.0.1",
            host_port=port,
        )
        == {}
    )
    assert refused(port)
    assert await qmp("query-user-forwards", netdev="u0") == [udp]
    await fails(
        qmp(
            "user-forward-remove",
            netdev="u0",
            type="hostfwd",
            host_addr="127.0.0.1",
            host_port=port,
        ),
        f"host forwarding rule for tcp:127.0.0.1:{port} not found",
    )
    assert (
        await qmp(
            "user-forward-remove",
            netdev="u0",
            type="hostfwd",
            protocol="udp",
            host_addr="0x7f.1",
            host_port=udp["host-port"],
        )
        == {}
    )  # inet_aton form
    assert await qmp("query-user-forwards", netdev="u0") == []
    assert QEMU_RE.findall(user_control.info_usernet(ns)) == [str(other["host-port"])]


async def test_hostfwd_errors(rig: Any) -> None:
    _, qmp, _ = rig
    await fails(
        qmp("user-forward-add", netdev="u0", rule="tcp:5555-:22"),
        "Invalid host forwarding rule 'tcp:5555-:22' (Bad host address)",
    )
    await fails(
        qmp("user-forward-add", netdev="u0", rule="tcp:127.0.0.1:1-:0"),
        "Invalid host forwarding rule 'tcp:127.0.0.1:1-:0' (Bad guest port)",
    )
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rule = f"tcp:127.0.0.1:{busy.getsockname()[1]}-:22"
        await fails(
            qmp("user-forward-add", netdev="u0", rule=rule),
            f"Could not set up host forwarding rule '{rule}'",
        )
    await fails(
        qmp("user-forward-add", netdev="nope", rule="tcp::0-:22"),
        "Device 'nope' not found",
        "DeviceNotFound",
    )
    await fails(
        qmp("user-forward-add", netdev="nic0", rule="tcp::0-:22"),
        "Device 'nic0' not found",
        "DeviceNotFound",
    )  # NICs are not netdevs
    await fails(
        qmp("user-forward-add", netdev="lone", rule="tcp::0-:22"),
        "Device 'lone' is not a user netdev",
    )
    await fails(
        qmp("user-forward-add", netdev="u0", rule="tcp::0-:22", type="smb"),
        "Parameter 'type' does not accept value 'smb'",
    )
    await fails(qmp("user-forward-add", netdev="u0"), "Parameter 'rule' is missing")
    await fails(qmp("user-forward-remove", netdev="u0", host_port=1), "Parameter 'type' is missing")
    await fails(
        qmp("user-forward-remove", netdev="u0", type="hostfwd"), "Parameter 'host-port' is missing"
    )
    await fails(
        qmp("user-forward-remove", netdev="u0", type="hostfwd", host_port=70000),
        "Parameter 'host-port' expects uint16",
    )
    await fails(
        qmp("user-forward-remove", netdev="u0", type="hostfwd", host_port=1, guest_port=2),
        "Parameter 'guest-port' is unexpected",
    )
    await fails(
        qmp("user-forward-remove", netdev="u0", type="hostfwd", host_port=1, host_addr="nowhere"),
        "Parameter 'host-addr' expects an IP address",
    )
    await fails(
        qmp("user-forward-remove", netdev="lone", type="hostfwd", host_port=1),
        "Device 'lone' is not a user netdev",
    )
    await fails(
        qmp("query-user-forwards", netdev="nope"), "Device 'nope' not found", "DeviceNotFound"
    )
    await fails(qmp("query-user-connections", netdev="lone"), "Device 'lone' is not a user netdev")


async def test_hmp_and_qmp_share_the_rules(rig: Any) -> None:
    ns, qmp, _ = rig
    from netstack.qmp.hmp import run_hmp

    assert await run_hmp(ns, "hostfwd_add u0 tcp:127.0.0.1:0-:8080") == ""
    (fwd,) = await qmp("query-user-forwards", netdev="u0")
    assert fwd["rule"] == "tcp:127.0.0.1:0-:8080" and fwd["guest-port"] == 8080
    port = fwd["host-port"]
    await qmp(
        "user-forward-remove", netdev="u0", type="hostfwd", host_addr="127.0.0.1", host_port=port
    )
    assert await run_hmp(ns, f"hostfwd_remove u0 tcp:127.0.0.1:{port}") == (
        f"host forwarding rule for tcp:127.0.0.1:{port} not found\n"
    )


# -- guestfwd --------------------------------------------------------------------------------


async def test_guestfwd_add_list_remove(rig: Any) -> None:
    _, qmp, nic = rig
    rule = "tcp:10.0.2.100:1234-cmd:cat"
    added = await qmp("user-forward-add", netdev="u0", rule=rule, type="guestfwd")
    # a guest connection to it is a "guestfwd" row (its host side: a socketpair to cat)
    nic.send([guest_frame(TCP(sport=41000, dport=1234, flags="S", seq=1000, window=65535),
                          dst="10.0.2.100")])  # fmt: skip
    synack = await wait_frame(nic, lambda p: TCP in p and p[TCP].flags == "SA")
    assert synack[IP].src == "10.0.2.100"
    (conn,) = await qmp("query-user-connections", netdev="u0")
    assert conn["direction"] == "guestfwd" and conn["guest-port"] == 41000
    assert (conn["remote-addr"], conn["remote-port"]) == ("10.0.2.100", 1234)
    assert added == {
        "netdev": "u0",
        "type": "guestfwd",
        "protocol": "tcp",
        "guest-addr": "10.0.2.100",
        "guest-port": 1234,
        "rule": rule,
        "target": "cmd:cat",
    }
    dflt = await qmp("user-forward-add", netdev="u0", rule="tcp::77-cmd:cat", type="guestfwd")
    assert dflt["guest-addr"] == "10.0.2.4"  # QEMU's default server address
    assert await qmp("query-user-forwards", netdev="u0") == [added, dflt]
    await fails(
        qmp("user-forward-add", netdev="u0", rule="udp::5-cmd:cat", type="guestfwd"),
        "Invalid guest forwarding rule 'udp::5-cmd:cat'",
    )
    await fails(
        qmp("user-forward-add", netdev="u0", rule="tcp:10.0.2.2:5-cmd:cat", type="guestfwd"),
        "Conflicting/invalid host:port in guest forwarding rule 'tcp:10.0.2.2:5-cmd:cat'",
    )
    await fails(
        qmp("user-forward-remove", netdev="u0", type="guestfwd", guest_port=1234),
        "guest forwarding rule for tcp::1234 not found",
    )  # the default is 10.0.2.4
    assert (
        await qmp(
            "user-forward-remove",
            netdev="u0",
            type="guestfwd",
            guest_addr="10.0.2.100",
            guest_port=1234,
        )
        == {}
    )
    assert await qmp("user-forward-remove", netdev="u0", type="guestfwd", guest_port=77) == {}
    assert await qmp("query-user-forwards", netdev="u0") == []
    await fails(
        qmp(
            "user-forward-remove",
            netdev="u0",
            type="guestfwd",
            guest_addr="10.0.2.100",
            guest_port=1234,
        ),
        "guest forwarding rule for tcp:10.0.2.100:1234 not found",
    )
    await fails(
        qmp("user-forward-remove", netdev="u0", type="guestfwd", guest_port=1, guest_addr="x"),
        "Parameter 'guest-addr' expects an IPv4 address",
    )


# -- connections -----------------------------------------------------------------------------


def usernet_rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()[2:]]


def as_row(c: dict[str, Any]) -> list[str]:
    """The ``info usernet`` row a QMP connection entry must have."""
    state = (
        f"{c['protocol'].upper()}[{c['state']}]"
        if c["protocol"] == "tcp"
        else f"{c['protocol'].upper()}[{c['expires-in']}"
    )
    row = [state] if c["protocol"] == "tcp" else [state, "sec]"]
    row += [
        str(c.get("fd", -1)),
        c["guest-addr"],
        str(c.get("guest-port", "-")),
        c["remote-addr"],
        str(c.get("remote-port", "-")),
        str(c["recv-q"]),
        str(c["send-q"]),
    ]
    return row


async def test_connection_table_matches_info_usernet(rig: Any) -> None:
    ns, qmp, nic = rig
    assert await qmp("query-user-connections") == []
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    sport = server.sockets[0].getsockname()[1]
    udp_host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_host.bind(("127.0.0.1", 0))
    try:
        # an outbound guest connection to the host's loopback through 10.0.2.2
        nic.send([guest_frame(TCP(sport=40000, dport=sport, flags="S", seq=1000, window=65535))])
        synack = await wait_frame(nic, lambda p: TCP in p and p[TCP].flags == "SA")
        nic.send(
            [
                guest_frame(
                    TCP(
                        sport=40000,
                        dport=sport,
                        flags="A",
                        seq=1001,
                        ack=synack[TCP].seq + 1,
                        window=65535,
                    )
                )
            ]
        )
        # a UDP flow
        nic.send([guest_frame(UDP(sport=5555, dport=udp_host.getsockname()[1]) / b"x")])
        await asyncio.sleep(0.05)
        conns = await qmp("query-user-connections", netdev="u0")
        tcp, udp = conns
        assert {k: v for k, v in tcp.items() if k != "fd"} == {
            "netdev": "u0",
            "protocol": "tcp",
            "state": "ESTABLISHED",
            "family": "ipv4",
            "direction": "outbound",
            "guest-addr": GUEST,
            "guest-port": 40000,
            "remote-addr": "10.0.2.2",
            "remote-port": sport,
            "recv-q": 0,
            "send-q": 0,
        }
        assert isinstance(tcp["fd"], int) and tcp["fd"] >= 0
        assert udp["protocol"] == "udp" and udp["state"] == "ACTIVE"
        assert udp["guest-port"] == 5555 and udp["remote-port"] == udp_host.getsockname()[1]
        assert 200 < udp["expires-in"] <= 240 and udp["direction"] == "outbound"
        assert await qmp("query-user-connections") == conns  # u1 has none
        assert usernet_rows(user_control.usernet_info(user_control.user_netdevs(ns, "u0")[0])) == [
            as_row(c) for c in conns
        ]

        # a hostfwd connection: the gateway opens it towards the guest
        fwd = await qmp("user-forward-add", netdev="u0", rule="tcp:127.0.0.1:0-:22")
        _r, writer = await asyncio.open_connection("127.0.0.1", fwd["host-port"])
        try:
            syn = await wait_frame(nic, lambda p: TCP in p and p[TCP].flags == "S")
            nic.send(
                [
                    guest_frame(
                        TCP(
                            sport=22,
                            dport=syn[TCP].sport,
                            flags="SA",
                            seq=7,
                            ack=syn[TCP].seq + 1,
                            window=65535,
                        )
                    )
                ]
            )
            await asyncio.sleep(0.05)
            conns = await qmp("query-user-connections", netdev="u0")
            newest = conns[0]
            assert newest["direction"] == "hostfwd" and newest["state"] == "ESTABLISHED"
            assert (newest["guest-addr"], newest["guest-port"]) == (GUEST, 22)
            assert (newest["remote-addr"], newest["remote-port"]) == ("10.0.2.2", syn[TCP].sport)
            # TCP connections newest first, then the TCP listener, then the UDP flow
            listener = [
                "TCP[HOST_FORWARD]",
                "127.0.0.1",
                str(fwd["host-port"]),
                GUEST,
                "22",
                "0",
                "0",
            ]
            rows = usernet_rows(user_control.usernet_info(user_control.user_netdevs(ns, "u0")[0]))
            assert (
                [r[:1] + r[2:] for r in rows]
                == [  # fd column aside
                    *([r[0], *r[2:]] for r in map(as_row, conns[:2])),
                    listener,
                    [as_row(conns[2])[0], *as_row(conns[2])[2:]],
                ]
            )
        finally:
            writer.close()
    finally:
        udp_host.close()
        server.close()


def test_info_usernet_layout_is_qemus() -> None:
    """Rows rendered from data, byte for byte in libslirp's layout (every protocol)."""
    conns = [
        ConnRow("udp", "ACTIVE", "ipv4", GUEST, 6666, "10.0.2.2", 53, 12, 0, 0, "outbound", 239),
        ConnRow(
            "tcp", "SYN_RCVD", "ipv4", GUEST, 40000, "93.184.216.34", 80, 11, 5, 70000, "outbound"
        ),
        ConnRow("icmp", "ACTIVE", "ipv4", GUEST, None, "10.0.2.2", None, -1, 0, 0, "outbound", 5),
    ]
    forwards = [
        ForwardRow("hostfwd", "tcp", "tcp::0-:22", GUEST, 22, "0.0.0.0", 41234, fd=9),
        ForwardRow("hostfwd", "udp", "udp:127.0.0.1:53-:53", GUEST, 53, "127.0.0.1", 53, fd=10),
        ForwardRow("guestfwd", "tcp", "tcp::1-cmd:cat", "10.0.2.4", 1, target="cmd:cat"),
    ]
    assert render_usernet(-1, "u9", conns, forwards) == (
        "Hub -1 (u9):\n"
        "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n"
        "  TCP[SYN_RCVD]      11       10.0.2.15 40000   93.184.216.34    80     5 70000\n"
        "  TCP[HOST_FORWARD]   9         0.0.0.0 41234       10.0.2.15    22     0     0\n"
        "  UDP[239 sec]       12       10.0.2.15  6666        10.0.2.2    53     0     0\n"
        "  UDP[HOST_FORWARD]  10       127.0.0.1    53       10.0.2.15    53     0     0\n"
        "  ICMP[5 sec]        -1       10.0.2.15  -           10.0.2.2  -        0     0\n"
    )


# -- query-netdev counters -------------------------------------------------------------------


async def test_query_netdev_has_driver_counters(rig: Any) -> None:
    _, qmp, nic = rig
    nic.send([guest_frame(b"\x00", dst="10.0.2.2")[:20]])  # a runt: counted by the driver
    (u0,) = await qmp("query-netdev", name="u0")
    assert isinstance(u0["counters"], dict) and u0["counters"]["tcp-flows"] == 0
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in u0["counters"].items())
    assert u0["statistics"]["rx-frames"] >= 1
    (hub,) = await qmp("query-netdev", name="hu")
    assert "counters" not in hub  # hub ports have none
