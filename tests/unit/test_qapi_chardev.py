"""Chardevs: QMP chardev-add, -chardev and the -qmp/-monitor shorthand."""

from __future__ import annotations

import pytest

from netstack.errors import GenericError
from netstack.qapi import (
    Chardev,
    ChardevCommon,
    ChardevFile,
    ChardevHostdev,
    ChardevMux,
    ChardevRingbuf,
    ChardevSocket,
    ChardevStdio,
    ChardevUdp,
    ChardevVC,
    FdSocketAddress,
    HelpRequested,
    InetSocketAddress,
    SocketAddressLegacy,
    UnixSocketAddress,
    chardev_add_from_qmp,
    chardev_from_qmp,
    chardev_help,
    parse_chardev_cli,
    parse_qmp_shorthand,
)


def cli_err(text: str) -> str:
    with pytest.raises(GenericError) as info:
        parse_chardev_cli(text)
    return info.value.desc


def qmp_err(backend: object) -> str:
    with pytest.raises(GenericError) as info:
        chardev_from_qmp("c0", backend)
    return info.value.desc


def unix(path: str, **kw: bool) -> SocketAddressLegacy:
    return SocketAddressLegacy(type="unix", data=UnixSocketAddress(path=path, **kw))


def inet(host: str, port: str) -> SocketAddressLegacy:
    return SocketAddressLegacy(type="inet", data=InetSocketAddress(host=host, port=port))


class TestQmp:
    def test_socket_defaults_left_unset(self) -> None:
        dev = chardev_from_qmp(
            "vhost0",
            {"type": "socket", "data": {"addr": {"type": "unix", "data": {"path": "/s"}}}},
        )
        assert dev == Chardev(
            id="vhost0", backend_type="socket", options=ChardevSocket(addr=unix("/s"))
        )
        assert isinstance(dev.options, ChardevSocket)
        assert dev.options.server is None  # QMP default (server) applied by the chardev

    def test_null_and_ringbuf(self) -> None:
        assert chardev_from_qmp("n", {"type": "null", "data": {}}).options == ChardevCommon()
        dev = chardev_from_qmp("r", {"type": "ringbuf", "data": {"size": 4096}})
        assert dev.options == ChardevRingbuf(size=4096)
        assert chardev_from_qmp("m", {"type": "memory", "data": {}}).backend_type == "memory"

    def test_file_in_member(self) -> None:
        dev = chardev_from_qmp("f", {"type": "file", "data": {"out": "/o", "in": "/i"}})
        assert dev.options == ChardevFile(out="/o", in_="/i")

    def test_id_not_checked(self) -> None:
        assert chardev_from_qmp("1 bad id", {"type": "null", "data": {}}).id == "1 bad id"

    @pytest.mark.parametrize(
        ("backend", "error"),
        [
            ("x", "Invalid parameter type for 'backend', expected: object"),
            ({}, "Parameter 'backend.type' is missing"),
            ({"type": "nosuch", "data": {}}, "Parameter 'type' does not accept value 'nosuch'"),
            ({"type": "null"}, "Parameter 'backend.data' is missing"),
            ({"type": "null", "data": {}, "x": 1}, "Parameter 'backend.x' is unexpected"),
            ({"type": "null", "data": {"x": 1}}, "Parameter 'backend.data.x' is unexpected"),
            ({"type": "socket", "data": {}}, "Parameter 'backend.data.addr' is missing"),
            (
                {"type": "socket", "data": {"addr": {"type": "unix", "path": "/s"}}},
                "Parameter 'backend.data.addr.data' is missing",
            ),
            (
                {"type": "socket", "data": {"addr": {"type": "unix", "data": {}}}},
                "Parameter 'backend.data.addr.data.path' is missing",
            ),
            (
                {
                    "type": "socket",
                    "data": {"addr": {"type": "fd", "data": {"str": "3"}}, "server": "on"},
                },
                "Invalid parameter type for 'backend.data.server', expected: boolean",
            ),
            (
                {"type": "ringbuf", "data": {"size": "64k"}},
                "Invalid parameter type for 'backend.data.size', expected: integer",
            ),
        ],
    )
    def test_errors(self, backend: object, error: str) -> None:
        assert qmp_err(backend) == error

    def test_whole_arguments(self) -> None:
        dev = chardev_add_from_qmp({"id": "c", "backend": {"type": "pty", "data": {}}})
        assert dev == Chardev(id="c", backend_type="pty", options=ChardevCommon())
        with pytest.raises(GenericError) as info:
            chardev_add_from_qmp({"backend": {"type": "pty", "data": {}}})
        assert info.value.desc == "Parameter 'id' is missing"


class TestCli:
    def test_socket_unix_server(self) -> None:
        dev = parse_chardev_cli("socket,id=c0,path=/x,server=on,wait=off")
        assert dev == Chardev(
            id="c0",
            backend_type="socket",
            options=ChardevSocket(
                logappend=False,
                addr=unix("/x", tight=True, abstract=False),
                server=True,
                wait=False,
            ),
        )

    def test_socket_cli_defaults(self) -> None:
        client = parse_chardev_cli("socket,id=c,path=/x").options
        assert isinstance(client, ChardevSocket)
        assert (client.server, client.wait) == (False, None)
        server = parse_chardev_cli("socket,id=c,path=/x,server=on").options
        assert isinstance(server, ChardevSocket)
        assert (server.server, server.wait) == (True, True)

    def test_socket_inet_and_options(self) -> None:
        dev = parse_chardev_cli(
            "socket,id=c,host=::1,port=4444,ipv6=on,to=4450,nodelay=on,reconnect-ms=500,"
            "telnet=on,logfile=/l,logappend=on"
        )
        assert dev.options == ChardevSocket(
            logfile="/l",
            logappend=True,
            addr=SocketAddressLegacy(
                type="inet",
                data=InetSocketAddress(host="::1", port="4444", to=4450, ipv6=True),
            ),
            server=False,
            nodelay=True,
            telnet=True,
            reconnect_ms=500,
        )

    def test_socket_fd_and_abstract(self) -> None:
        fd = parse_chardev_cli("socket,id=c,fd=3").options
        assert isinstance(fd, ChardevSocket)
        assert fd.addr == SocketAddressLegacy(type="fd", data=FdSocketAddress(fd="3"))
        abstract = parse_chardev_cli("socket,id=c,path=name,abstract=on,tight=off").options
        assert isinstance(abstract, ChardevSocket)
        assert abstract.addr == unix("name", tight=False, abstract=True)

    def test_deprecated_delay_maps_to_nodelay(self) -> None:
        opts = parse_chardev_cli("socket,id=c,path=/x,delay=off").options
        assert isinstance(opts, ChardevSocket)
        assert opts.nodelay is True

    def test_flags_and_escape(self) -> None:
        dev = parse_chardev_cli("socket,id=c,path=/tmp/a,,b,server,nowait")
        assert isinstance(dev.options, ChardevSocket)
        assert dev.options.addr == unix("/tmp/a,b", tight=True, abstract=False)
        assert (dev.options.server, dev.options.wait) == (True, False)

    def test_other_backends(self) -> None:
        assert parse_chardev_cli("file,id=f,path=/o,input-path=/i").options == ChardevFile(
            logappend=False, out="/o", in_="/i", append=False
        )
        assert parse_chardev_cli("pipe,id=p,path=/fifo").options == ChardevHostdev(
            logappend=False, device="/fifo"
        )
        assert parse_chardev_cli("ringbuf,id=r,size=1M").options == ChardevRingbuf(
            logappend=False, size=1 << 20
        )
        assert parse_chardev_cli("ringbuf,id=r").options == ChardevRingbuf(logappend=False)
        assert parse_chardev_cli("mux,id=m,chardev=c").options == ChardevMux(
            logappend=False, chardev="c"
        )
        assert parse_chardev_cli("stdio,id=s,signal=off").options == ChardevStdio(
            logappend=False, signal=False
        )
        assert parse_chardev_cli("null,id=n,path=/ignored").options == ChardevCommon(
            logappend=False
        )
        assert parse_chardev_cli("udp,id=u,port=5555,localport=6666").options == ChardevUdp(
            logappend=False, remote=inet("localhost", "5555"), local=inet("", "6666")
        )
        assert parse_chardev_cli("vc,id=v,cols=80,rows=24").options == ChardevVC(
            logappend=False, cols=80, rows=24
        )

    def test_mux_flag(self) -> None:
        assert parse_chardev_cli("stdio,id=s,mux=on").mux is True

    @pytest.mark.parametrize(
        ("text", "error"),
        [
            ("socket,path=/x", "chardev: no id specified"),
            ("id=c,path=/x", 'chardev: "c" missing backend'),
            ("nosuch,id=c", "'nosuch' is not a valid char driver name"),
            ("socket,id=1c,path=/x", "Parameter 'id' expects an identifier"),
            ("socket,id=c,path=/x,foo=1", "Invalid parameter 'foo'"),
            ("socket,id=c,path=/x,server=maybe", "Parameter 'server' expects 'on' or 'off'"),
            ("socket,id=c,path=/x,reconnect=x", "Parameter 'reconnect' expects a number"),
            ("ringbuf,id=r,size=x", "Parameter 'size' expects a non-negative number below 2^64"),
            (
                "socket,id=c,path=/x,host=h",
                ("None or one of 'path', 'fd' or 'host' option required."),
            ),
            ("socket,id=c,host=h", "chardev: socket: no port given"),
            (
                "socket,id=c,path=/x,delay=on,nodelay=on",
                ("'delay' and 'nodelay' are mutually exclusive"),
            ),
            ("file,id=f", "chardev: file: no filename given"),
            ("pipe,id=p", "chardev: pipe: no device path given"),
            ("serial,id=p", "chardev: serial/tty: no device path given"),
            ("parallel,id=p", "chardev: parallel: no device path given"),
            ("mux,id=m", "chardev: mux: no chardev given"),
            ("udp,id=u", "chardev: udp: remote port not specified"),
            ("spicevmc,id=s", "chardev: spice channel: no name given"),
            ("spiceport,id=s", "chardev: spice port: no name given"),
            ("dbus,id=d", "chardev: dbus: no name given"),
        ],
    )
    def test_errors(self, text: str, error: str) -> None:
        assert cli_err(text) == error

    def test_help(self) -> None:
        with pytest.raises(HelpRequested) as info:
            parse_chardev_cli("help")
        assert (info.value.option, info.value.subject) == ("chardev", None)
        with pytest.raises(HelpRequested) as info:
            parse_chardev_cli("socket,id=c,help")
        assert info.value.subject == "options"
        assert chardev_help(["null", "socket"]) == (
            "Available chardev backend types: \n  null\n  socket\n"
        )


class TestShorthand:
    def test_unix(self) -> None:
        dev = parse_qmp_shorthand("unix:/tmp/qmp.sock,server=on,wait=off", "compat_monitor0")
        assert dev == parse_chardev_cli(
            "socket,id=compat_monitor0,path=/tmp/qmp.sock,server=on,wait=off"
        )

    def test_tcp(self) -> None:
        dev = parse_qmp_shorthand("tcp:127.0.0.1:4444,server=on,wait=off", "m")
        assert dev == parse_chardev_cli("socket,id=m,host=127.0.0.1,port=4444,server=on,wait=off")
        dev = parse_qmp_shorthand("tcp::4444,server,nowait", "m")
        assert isinstance(dev.options, ChardevSocket)
        assert dev.options.addr == inet("", "4444")

    def test_telnet_sets_flag(self) -> None:
        dev = parse_qmp_shorthand("telnet:localhost:4444,server=on", "m")
        assert isinstance(dev.options, ChardevSocket)
        assert dev.options.telnet is True

    def test_stdio_and_mon(self) -> None:
        assert parse_qmp_shorthand("stdio", "m") == Chardev(
            id="m", backend_type="stdio", options=ChardevStdio(logappend=False, signal=True)
        )
        assert parse_qmp_shorthand("mon:stdio", "m") == Chardev(
            id="m",
            backend_type="stdio",
            options=ChardevStdio(logappend=False, signal=False),
            mux=True,
        )

    def test_misc_forms(self) -> None:
        assert parse_qmp_shorthand("null", "m").backend_type == "null"
        assert parse_qmp_shorthand("file:/tmp/out", "m").options == ChardevFile(
            logappend=False, out="/tmp/out", append=False
        )
        assert parse_qmp_shorthand("/dev/ttyS0", "m").options == ChardevHostdev(
            logappend=False, device="/dev/ttyS0"
        )
        assert parse_qmp_shorthand("/dev/parport0", "m").backend_type == "parallel"
        assert parse_qmp_shorthand("vc:800x600", "m").options == ChardevVC(
            logappend=False, width=800, height=600
        )
        assert parse_qmp_shorthand("vc:80Cx24C", "m").options == ChardevVC(
            logappend=False, cols=80, rows=24
        )
        assert parse_qmp_shorthand("udp:1.2.3.4:5@:6", "m").options == ChardevUdp(
            logappend=False, remote=inet("1.2.3.4", "5"), local=inet("", "6")
        )

    @pytest.mark.parametrize(
        ("text", "error"),
        [
            ("bogus", "'bogus' is not a valid char driver"),
            ("tcp:nocolon", "parse error: tcp:nocolon"),
            ("vc:axb", "parse error: vc:axb"),
            ("unix:/x,foo=1", "Invalid parameter 'foo'"),
            ("tcp:h:1,server=maybe", "Parameter 'server' expects 'on' or 'off'"),
        ],
    )
    def test_errors(self, text: str, error: str) -> None:
        with pytest.raises(GenericError) as info:
            parse_qmp_shorthand(text, "m")
        assert info.value.desc == error
