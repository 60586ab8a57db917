"""Netdev: QMP netdev_add and -netdev (QemuOpts, keyval and JSON forms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from netstack.errors import GenericError
from netstack.qapi import (
    NETDEV_TYPES,
    OPTIONS_CLASSES,
    Empty,
    HelpRequested,
    InetSocketAddress,
    Netdev,
    NetdevDgramOptions,
    NetdevHubPortOptions,
    NetdevL2TPv3Options,
    NetdevStreamOptions,
    NetdevTapOptions,
    NetdevUserOptions,
    SocketAddress,
    UnixSocketAddress,
    check_id,
    netdev_from_qmp,
    netdev_help,
    parse_netdev_cli,
)
from netstack.qapi.schema import opt
from netstack.qapi.visitor import Mode, visit


def cli_err(text: str) -> str:
    with pytest.raises(GenericError) as info:
        parse_netdev_cli(text)
    return info.value.desc


def qmp_err(args: dict[str, object]) -> str:
    with pytest.raises(GenericError) as info:
        netdev_from_qmp(args)
    return info.value.desc


class TestSchema:
    def test_types(self) -> None:
        assert NETDEV_TYPES[:4] == ("none", "nic", "user", "tap")
        assert set(OPTIONS_CLASSES) == set(NETDEV_TYPES)
        assert OPTIONS_CLASSES["none"] is Empty

    def test_frozen(self) -> None:
        nd = netdev_from_qmp({"id": "h", "type": "hubport", "hubid": 1})
        with pytest.raises(AttributeError):
            nd.id = "x"  # type: ignore[misc]


class TestQmp:
    def test_user_lists_are_string_structs(self) -> None:
        nd = netdev_from_qmp(
            {
                "type": "user",
                "id": "netdev1",
                "dnssearch": [{"str": "example.org"}],
                "hostfwd": [{"str": "tcp::2222-:22"}, {"str": "udp::5353-:53"}],
            }
        )
        assert nd == Netdev(
            id="netdev1",
            type="user",
            options=NetdevUserOptions(
                dnssearch=("example.org",), hostfwd=("tcp::2222-:22", "udp::5353-:53")
            ),
        )

    def test_defaults_not_filled(self) -> None:
        nd = netdev_from_qmp({"id": "t0", "type": "tap"})
        assert nd.options == NetdevTapOptions()
        assert all(v is None for v in vars(nd.options).values())

    def test_none_type_has_no_members(self) -> None:
        assert netdev_from_qmp({"id": "x", "type": "none"}).options == Empty()
        assert qmp_err({"id": "x", "type": "none", "a": 1}) == "Parameter 'a' is unexpected"

    def test_missing_in_member_order(self) -> None:
        assert qmp_err({}) == "Parameter 'id' is missing"
        assert qmp_err({"id": "x"}) == "Parameter 'type' is missing"
        assert qmp_err({"id": "x", "type": "l2tpv3"}) == "Parameter 'src' is missing"
        args: dict[str, object] = {"id": "x", "type": "l2tpv3", "src": "a", "dst": "b"}
        assert qmp_err(args) == "Parameter 'txsession' is missing"

    def test_bad_enum(self) -> None:
        assert qmp_err({"id": "x", "type": "nosuch"}) == (
            "Parameter 'type' does not accept value 'nosuch'"
        )

    def test_unexpected_after_members(self) -> None:
        args: dict[str, object] = {"id": "x", "type": "user", "foo": 1, "restrict": "yes"}
        assert qmp_err(args) == "Invalid parameter type for 'restrict', expected: boolean"
        assert qmp_err({"id": "x", "type": "user", "foo": 1}) == "Parameter 'foo' is unexpected"

    @pytest.mark.parametrize(
        ("args", "text"),
        [
            ({"id": 1, "type": "user"}, "Invalid parameter type for 'id', expected: string"),
            ({"id": "x", "type": None}, "Invalid parameter type for 'type', expected: string"),
            (
                {"id": "x", "type": "hubport", "hubid": "1"},
                "Invalid parameter type for 'hubid', expected: integer",
            ),
            (
                {"id": "x", "type": "hubport", "hubid": 1.0},
                "Invalid parameter type for 'hubid', expected: integer",
            ),
            (
                {"id": "x", "type": "hubport", "hubid": True},
                "Invalid parameter type for 'hubid', expected: integer",
            ),
            (
                {"id": "x", "type": "user", "hostfwd": "tcp::1-:2"},
                "Invalid parameter type for 'hostfwd', expected: array",
            ),
            (
                {"id": "x", "type": "user", "hostfwd": ["tcp::1-:2"]},
                "Invalid parameter type for 'hostfwd[0]', expected: object",
            ),
            (
                {"id": "x", "type": "user", "hostfwd": [{"str": "a"}, {}]},
                "Parameter 'hostfwd[1].str' is missing",
            ),
            (
                {"id": "x", "type": "user", "hostfwd": [{"str": "a", "x": 1}]},
                "Parameter 'hostfwd[0].x' is unexpected",
            ),
            (
                {"id": "x", "type": "stream", "addr": "inet"},
                "Invalid parameter type for 'addr', expected: object",
            ),
            (
                {"id": "x", "type": "tap", "sndbuf": "1M"},
                "Parameter 'sndbuf' expects uint64",
            ),
        ],
    )
    def test_type_errors(self, args: dict[str, object], text: str) -> None:
        assert qmp_err(args) == text

    def test_integer_ranges(self) -> None:
        base: dict[str, object] = {"id": "x", "type": "l2tpv3", "src": "a", "dst": "b"}
        ok = netdev_from_qmp({**base, "txsession": 4294967295, "txcookie": -1})
        assert isinstance(ok.options, NetdevL2TPv3Options)
        assert ok.options.txsession == 4294967295
        assert ok.options.txcookie == (1 << 64) - 1  # QEMU accepts negative uint64
        assert qmp_err({**base, "txsession": 4294967296}) == "Parameter 'txsession' expects uint32"
        assert qmp_err({**base, "txsession": -1}) == "Parameter 'txsession' expects uint32"
        assert qmp_err({**base, "txsession": 1, "txcookie": 1 << 64}) == (
            "Parameter 'txcookie' expects uint64"
        )
        hub: dict[str, object] = {"id": "x", "type": "hubport"}
        assert qmp_err({**hub, "hubid": 1 << 31}) == "Parameter 'hubid' expects int32"
        assert qmp_err({**hub, "hubid": -(1 << 31) - 1}) == "Parameter 'hubid' expects int32"
        assert qmp_err({**hub, "hubid": 1 << 63}) == (
            "Invalid parameter type for 'hubid', expected: integer"
        )
        vde: dict[str, object] = {"id": "x", "type": "vde", "port": 65536}
        assert qmp_err(vde) == "Parameter 'port' expects uint16"

    def test_nested_paths_and_bare_range_names(self) -> None:
        args: dict[str, object] = {"id": "x", "type": "stream", "addr": {"type": "inet"}}
        assert qmp_err(args) == "Parameter 'addr.host' is missing"
        args["addr"] = {"type": "inet", "host": "h", "port": "1", "to": 70000}
        assert qmp_err(args) == "Parameter 'to' expects uint16"
        args["addr"] = {"type": "unix", "path": "/p", "bogus": 1}
        assert qmp_err(args) == "Parameter 'addr.bogus' is unexpected"
        args["addr"] = {"type": "tcp"}
        assert qmp_err(args) == "Parameter 'type' does not accept value 'tcp'"

    def test_id_checked_separately(self) -> None:
        nd = netdev_from_qmp({"id": "1bad", "type": "user"})
        with pytest.raises(GenericError) as info:
            check_id(nd.id)
        assert info.value.desc == "Parameter 'id' expects an identifier"
        # visiting errors come first
        assert qmp_err({"id": "1bad", "type": "nosuch"}) == (
            "Parameter 'type' does not accept value 'nosuch'"
        )

    def test_number_type(self) -> None:
        @dataclass(frozen=True, kw_only=True)
        class WithNumber:
            qapi_name: ClassVar[str] = "WithNumber"
            ratio: float | None = opt("number")

        assert visit(WithNumber, {"ratio": 2}, Mode.QMP) == WithNumber(ratio=2.0)
        with pytest.raises(GenericError) as info:
            visit(WithNumber, {"ratio": "2"}, Mode.QMP)
        assert info.value.desc == "Invalid parameter type for 'ratio', expected: number"
        with pytest.raises(GenericError) as info:
            visit(WithNumber, {"ratio": "x"}, Mode.KEYVAL)
        assert info.value.desc == "Invalid parameter type for 'ratio', expected: number"


class TestCliLegacy:
    def test_user_list_building_and_escape(self) -> None:
        nd = parse_netdev_cli(
            "user,id=n0,hostfwd=tcp::2222-:22,hostfwd=udp::53-:53,dnssearch=a,,b,restrict=on"
        )
        assert nd.type == "user"
        assert isinstance(nd.options, NetdevUserOptions)
        assert nd.options.hostfwd == ("tcp::2222-:22", "udp::53-:53")
        assert nd.options.dnssearch == ("a,b",)
        assert nd.options.restrict is True

    @pytest.mark.parametrize(
        ("word", "value"),
        [
            *[(w, True) for w in ("on", "yes", "true", "y")],
            *[(w, False) for w in ("off", "no", "false", "n")],
        ],
    )
    def test_booleans(self, word: str, value: bool) -> None:
        nd = parse_netdev_cli(f"tap,id=t0,vhost={word}")
        assert isinstance(nd.options, NetdevTapOptions)
        assert nd.options.vhost is value

    def test_flag_booleans(self) -> None:
        on = parse_netdev_cli("user,id=u,restrict")
        off = parse_netdev_cli("user,id=u,norestrict")
        assert isinstance(on.options, NetdevUserOptions)
        assert isinstance(off.options, NetdevUserOptions)
        assert (on.options.restrict, off.options.restrict) == (True, False)

    def test_scalar_repeat_last_wins(self) -> None:
        nd = parse_netdev_cli("user,id=u,net=10.0.0.0/8,net=10.1.0.0/16")
        assert isinstance(nd.options, NetdevUserOptions)
        assert nd.options.net == "10.1.0.0/16"

    def test_sizes_and_numbers(self) -> None:
        nd = parse_netdev_cli("tap,id=t,sndbuf=1M,queues=0x4,poll-us=010")
        assert nd.options == NetdevTapOptions(sndbuf=1 << 20, queues=4, poll_us=8)

    @pytest.mark.parametrize(
        ("text", "error"),
        [
            ("user", "Parameter 'id' is missing"),
            ("id=x", "Parameter 'type' is missing"),
            ("nosuch,id=x", "Parameter 'type' does not accept value 'nosuch'"),
            ("user,id=1x", "Parameter 'id' expects an identifier"),
            ("user,id=x,foo=bar", "Invalid parameter 'foo'"),
            ("user,id=x,restrict=maybe", "Parameter 'restrict' expects 'on' or 'off'"),
            ("tap,id=t,queues=-1", "Parameter 'queues' expects a uint64 value"),
            ("tap,id=t,queues=4294967296", "Parameter 'queues' expects uint32"),
            ("tap,id=t,sndbuf=1Q", "Parameter 'sndbuf' expects a size value"),
            ("hubport,id=h", "Parameter 'hubid' is missing"),
            ("hubport,id=h,hubid=x", "Parameter 'hubid' expects an int64 value"),
            ("hubport,id=h,hubid=2147483648", "Parameter 'hubid' expects int32"),
            ("vde,id=v,port=65536", "Parameter 'port' expects uint16"),
            ("l2tpv3,id=l,src=a,dst=b", "Parameter 'txsession' is missing"),
            (
                "l2tpv3,id=l,src=a,dst=b,txsession=1,txcookie=-1",
                ("Parameter 'txcookie' expects a uint64 value"),
            ),
            ("user,id=u,ipv6-net=fd00::/x", "parameter 'ipv6-net' expects a number after '/'"),
            ("user,id=u,ipv6-net=", "Parameter 'ipv6-net' expects a valid IPv6 prefix"),
        ],
    )
    def test_errors(self, text: str, error: str) -> None:
        assert cli_err(text) == error

    def test_ipv6_net(self) -> None:
        nd = parse_netdev_cli("user,id=u,ipv6-net=fd00::/48")
        assert isinstance(nd.options, NetdevUserOptions)
        assert (nd.options.ipv6_prefix, nd.options.ipv6_prefixlen) == ("fd00::", 48)
        nd = parse_netdev_cli("user,id=u,ipv6-net=fd00::")
        assert isinstance(nd.options, NetdevUserOptions)
        assert (nd.options.ipv6_prefix, nd.options.ipv6_prefixlen) == ("fd00::", 64)

    def test_help(self) -> None:
        with pytest.raises(HelpRequested) as info:
            parse_netdev_cli("help")
        assert info.value.option == "netdev"
        with pytest.raises(HelpRequested):
            parse_netdev_cli("?")

    def test_help_text(self) -> None:
        text = netdev_help(["user", "tap", "none", "stream", "socket", "vhost-user", "dgram"])
        assert text == (
            "Available netdev backend types:\nsocket\nstream\ndgram\ntap\nuser\nvhost-user\n"
        )


class TestCliModern:
    def test_stream_dotted_keys(self) -> None:
        nd = parse_netdev_cli(
            "stream,id=s0,server=on,addr.type=inet,addr.host=localhost,addr.port=1234"
        )
        assert nd == Netdev(
            id="s0",
            type="stream",
            options=NetdevStreamOptions(
                addr=SocketAddress(
                    type="inet", data=InetSocketAddress(host="localhost", port="1234")
                ),
                server=True,
            ),
        )

    def test_type_key_spelled_out(self) -> None:
        nd = parse_netdev_cli("id=d,type=dgram,local.type=unix,local.path=/a")
        assert nd.options == NetdevDgramOptions(
            local=SocketAddress(type="unix", data=UnixSocketAddress(path="/a"))
        )

    def test_keyval_semantics(self) -> None:
        # keyval: last value wins, no id well-formedness check (as QEMU)
        nd = parse_netdev_cli("stream,id=1x,addr.type=unix,addr.path=/a,addr.path=/b")
        assert nd.id == "1x"
        assert isinstance(nd.options, NetdevStreamOptions)
        assert nd.options.addr.data == UnixSocketAddress(path="/b")

    @pytest.mark.parametrize(
        ("text", "error"),
        [
            ("stream,id=s", "Parameter 'addr' is missing"),
            ("stream,id=s,addr.type=inet,addr.host=h", "Parameter 'addr.port' is missing"),
            ("stream,id=s,addr=x", "Invalid parameter type for 'addr', expected: object"),
            (
                "stream,id=s,addr.type=unix,addr.path=/a,server=maybe",
                ("Parameter 'server' expects 'on' or 'off'"),
            ),
            (
                "stream,id=s,addr.type=unix,addr.path=/a,reconnect-ms=x",
                ("Parameter 'reconnect-ms' expects integer"),
            ),
            (
                "stream,id=s,addr.type=inet,addr.host=h,addr.port=1,addr.to=65536",
                ("Parameter 'to' expects uint16"),
            ),
            (
                "stream,id=s,addr.type=unix,addr.path=/a,addr.x=1",
                ("Parameter 'addr.x' is unexpected"),
            ),
            (
                "stream,id=s,addr.type=unix,addr.path.x=/a",
                "Parameters 'addr.path.*' are unexpected",
            ),
            ("stream,id=s,addr.type=vsock2", "Parameter 'type' does not accept value 'vsock2'"),
            ("stream,id=s,help", "Help is not available for this option"),
            ("stream,id=s,foo", "Expected '=' after parameter 'foo'"),
        ],
    )
    def test_errors(self, text: str, error: str) -> None:
        assert cli_err(text) == error

    def test_bool_words(self) -> None:
        nd = parse_netdev_cli("stream,id=s,server=yes,addr.type=fd,addr.str=3")
        assert isinstance(nd.options, NetdevStreamOptions)
        assert nd.options.server is True


class TestCliJson:
    def test_json_object(self) -> None:
        nd = parse_netdev_cli('{"id": "h0", "type": "hubport", "hubid": 3}')
        assert nd == Netdev(id="h0", type="hubport", options=NetdevHubPortOptions(hubid=3))

    def test_json_is_strict_like_qmp(self) -> None:
        assert cli_err('{"id": "h0", "type": "hubport", "hubid": "3"}') == (
            "Invalid parameter type for 'hubid', expected: integer"
        )
        assert cli_err('{"id": "a", "id": "b"}') == "JSON parse error, duplicate key"
        assert cli_err("{").startswith("JSON parse error, ")


class TestEquivalence:
    @pytest.mark.parametrize(
        ("cli", "qmp"),
        [
            (
                "user,id=n0,hostfwd=tcp::1-:2,hostfwd=tcp::3-:4,restrict=on,ipv6-prefixlen=64",
                {
                    "id": "n0",
                    "type": "user",
                    "hostfwd": [{"str": "tcp::1-:2"}, {"str": "tcp::3-:4"}],
                    "restrict": True,
                    "ipv6-prefixlen": 64,
                },
            ),
            (
                "tap,id=t0,ifname=tap0,script=no,vnet_hdr=off,queues=2",
                {
                    "id": "t0",
                    "type": "tap",
                    "ifname": "tap0",
                    "script": "no",
                    "vnet_hdr": False,
                    "queues": 2,
                },
            ),
            (
                "l2tpv3,id=l0,src=1.2.3.4,dst=5.6.7.8,udp=on,srcport=1,dstport=2,txsession=7",
                {
                    "id": "l0",
                    "type": "l2tpv3",
                    "src": "1.2.3.4",
                    "dst": "5.6.7.8",
                    "udp": True,
                    "srcport": "1",
                    "dstport": "2",
                    "txsession": 7,
                },
            ),
            (
                "socket,id=s0,listen=:1234",
                {"id": "s0", "type": "socket", "listen": ":1234"},
            ),
            (
                "stream,id=s0,server=off,addr.type=unix,addr.path=/tmp/s,reconnect-ms=1000",
                {
                    "id": "s0",
                    "type": "stream",
                    "server": False,
                    "addr": {"type": "unix", "path": "/tmp/s"},
                    "reconnect-ms": 1000,
                },
            ),
            (
                "dgram,id=d0,remote.type=inet,remote.host=230.0.0.1,remote.port=1234",
                {
                    "id": "d0",
                    "type": "dgram",
                    "remote": {"type": "inet", "host": "230.0.0.1", "port": "1234"},
                },
            ),
            (
                "vhost-user,id=v0,chardev=c0,queues=2",
                {"id": "v0", "type": "vhost-user", "chardev": "c0", "queues": 2},
            ),
            (
                "hubport,id=h0,hubid=1,netdev=n0",
                {"id": "h0", "type": "hubport", "hubid": 1, "netdev": "n0"},
            ),
        ],
    )
    def test_cli_equals_qmp(self, cli: str, qmp: dict[str, object]) -> None:
        assert parse_netdev_cli(cli) == netdev_from_qmp(qmp)
