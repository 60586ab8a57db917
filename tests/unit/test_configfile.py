"""Config files without a daemon: the scanner's QEMU quirks, the groups, crumpling, and
the writer's round trip (what it writes reads back to the same specs)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from netstack.configfile.reader import ConfigError, Reader, Section, crumple, scan
from netstack.configfile.writer import (
    ConfigWriteError,
    chardev_pairs,
    netdev_pairs,
    object_pairs,
    render,
    write_text,
)
from netstack.errors import GenericError
from netstack.qapi import (
    Chardev,
    ChardevSocket,
    SocketAddressLegacy,
    VsockSocketAddress,
    parse_chardev_cli,
    parse_netdev_cli,
    parse_object_cli,
)


def sections(text: str | bytes) -> list[tuple[str, tuple[tuple[str, str], ...], str | None]]:
    data = text.encode() if isinstance(text, str) else text
    return [(s.group, s.pairs, s.where) for s in scan(data, "f")]


def error(text: str | bytes) -> tuple[str | None, str]:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(ConfigError) as info:
        Reader().read(data, "f")
    return info.value.where, info.value.desc


# -- the scanner -------------------------------------------------------------------------------


def test_sections_keys_and_locations() -> None:
    text = '# c\n[netdev "n"]\n  type = "user"\n\n[chardev]\n  backend = "null"\n'
    assert sections(text) == [
        ("netdev", (("id", "n"), ("type", "user")), "f:3"),
        ("chardev", (("backend", "null"),), "f:6"),
    ]


def test_a_section_without_keys_has_the_previous_location_or_none() -> None:
    assert sections("[a]\n") == [("a", (), None)]
    assert sections('[a]\n  k = "v"\n[b]\n')[1] == ("b", (), "f:2")


def test_value_shapes() -> None:
    text = (
        '[g]\n  a = "1"\n\tb\t=\t"2"\r\n  c = ""\n  d = "x"y"\n  e = unquoted\n'
        '  f="g"\n  h = "open\n'
    )
    ((_, pairs, _),) = sections(text)
    assert pairs == (
        ("a", "1"),
        ("b", "2"),
        ("c", ""),
        ("d", "x"),
        ("e", ""),
        ('f="g"', ""),
        ("h", "open\n"),
    )


def test_long_lines_continue_as_new_lines() -> None:
    value = "v" * 1100
    ((_, pairs, where),) = sections(f'[g]\n  k = "{value}"\n')
    assert pairs[0] == ("k", "v" * (1023 - len('  k = "')))
    assert pairs[1] == ("v" * 63, "")
    assert where == "f:3"


def test_names_ids_and_keys_are_cut_at_63_characters() -> None:
    ((group, pairs, _),) = sections(f'[{"g" * 70}]\n  {"k" * 70} = "v"\n')
    assert group == "g" * 63 and pairs == (("k" * 63, ""),)
    ((_, pairs, _),) = sections(f'[netdev "{"i" * 70}"]\n')
    assert pairs == (("id", "i" * 63),)


def test_odd_section_lines() -> None:
    assert sections('[netdev ""]\n')[0][0] == 'netdev ""'
    assert sections('[netdev "n"]]\n')[0][1] == (("id", "n"),)
    assert sections('[netdev "n"\n')[0][1] == (("id", "n"),)
    assert sections("[netdev\n")[0][0] == "netdev\n"
    # "[]" is a key; its failed scan leaves "]" as the name the last section is handed with
    assert sections('[netdev "n"]\n  k = "v"\n[]\n') == [
        ("]", (("id", "n"), ("k", "v"), ("[]", "")), "f:3")
    ]


def test_nul_ends_the_line_for_the_scan() -> None:
    ((_, pairs, _),) = sections(b'[g]\n  k = "a\0b"\n')
    assert pairs == (("k", "a"),)
    assert error(b'[g]\n\0 k = "v"\n') == ("f:2", "parse error")


@pytest.mark.parametrize(
    ("text", "where", "desc"),
    [
        ('k = "v"\n', "f:1", "no group defined"),
        ("[g]\n  \n", "f:2", "parse error"),
        ("[g]\r\n\r\n", "f:2", "parse error"),
        (' [netdev "n"]\n', "f:1", "no group defined"),
        ("[foo]\n", None, "There is no option group 'foo'"),
        ('[netdev "1"]\n  type = "user"\n', "f:2", "Parameter 'id' expects an identifier"),
        ('[netdev "n"]\n[netdev "n"]\n  t = "x"\n', "f:3", "Duplicate ID 'n' for netdev"),
        ('[chardev "c"]\n  bogus = "1"\n', "f:2", "Invalid parameter 'bogus'"),
        ('[chardev "c"]\n  server = "x"\n', "f:2", "Parameter 'server' expects 'on' or 'off'"),
        ('[mon]\n  pretty = "x"\n', "f:2", "Parameter 'pretty' expects 'on' or 'off'"),
        ('[object "o"]\n', None, "Parameter 'qom-type' is missing"),
        ('[object "o"]\n  qom-type = "filter-dump"\n  x = "1"\n', "f:3", "Parameter 'netdev'"),
        ('[object]\n  0 = "a"\n', "f:2", "Lists cannot be at top level of a configuration section"),
    ],
)
def test_errors(text: str, where: str | None, desc: str) -> None:
    got_where, got_desc = error(text)
    assert got_where == where
    assert got_desc.startswith(desc), got_desc


def test_ids_are_unique_across_files_per_group() -> None:
    reader = Reader()
    reader.read(b'[netdev "n"]\n  type = "user"\n[chardev "n"]\n  backend = "null"\n', "a")
    with pytest.raises(ConfigError) as info:
        reader.read(b'[chardev "n"]\n  backend = "null"\n', "b")
    assert (info.value.where, info.value.desc) == ("b:2", "Duplicate ID 'n' for chardev")


def test_a_later_id_key_names_the_section() -> None:
    (entry,) = Reader().read(b'[netdev "n"]\n  id = "m"\n  type = "user"\n', "f")
    assert entry.netdev().id == "m"


def test_repeated_list_keys_accumulate_scalars_take_the_last() -> None:
    text = b'[netdev "u"]\n  type = "tap"\n  type = "user"\n  hostfwd = "tcp::1-:2"\n'
    text += b'  hostfwd = "udp::3-:4"\n  net = "10.1.0.0/16"\n  net = "10.2.0.0/16"\n'
    (entry,) = Reader().read(text, "f")
    netdev = entry.netdev()
    expected = parse_netdev_cli("user,id=u,hostfwd=tcp::1-:2,hostfwd=udp::3-:4,net=10.2.0.0/16")
    assert netdev == expected


def test_a_key_that_holds_an_equals_sign_is_just_an_unknown_key() -> None:
    (entry,) = Reader().read(b'[netdev "n"]\ntype="user"\n', "f")
    with pytest.raises(GenericError, match="Parameter 'type' is missing"):
        entry.netdev()


def test_stream_sections_use_dotted_keys() -> None:
    text = b'[netdev "s"]\n  type = "stream"\n  addr.type = "inet"\n  addr.host = "::1"\n'
    text += b'  addr.port = "5555"\n  server = "on"\n'
    (entry,) = Reader().read(text, "f")
    assert entry.netdev() == parse_netdev_cli("stream,id=s,addr.type=inet,addr.host=::1,"
                                              "addr.port=5555,server=on")  # fmt: skip


def test_crumple() -> None:
    assert crumple({"a.b": "1", "a.c": "2", "d": "3"}) == {"a": {"b": "1", "c": "2"}, "d": "3"}
    assert crumple({"a..b": "1"}) == {"a.b": "1"}
    assert crumple({"l.0": "x", "l.1": "y"}) == {"l": ["x", "y"]}
    with pytest.raises(GenericError, match="Cannot mix scalar and non-scalar keys"):
        crumple({"a": "1", "a.b": "2"})
    with pytest.raises(GenericError, match="Cannot mix list and non-list keys"):
        crumple({"0": "1", "a": "2"})
    with pytest.raises(GenericError, match="saw 2 elements but 2 largest index"):
        crumple({"0": "1", "2": "2"})


# -- the writer --------------------------------------------------------------------------------

NETDEVS = [
    "user,id=u,net=10.1.0.0/24,host=10.1.0.9,hostname=h,,x,restrict=on,"
    "hostfwd=tcp::1-:2,hostfwd=udp:127.0.0.1:3-:4,dnssearch=a.org,dnssearch=b.org,"
    "ipv6-net=fd00::/64,dhcpstart=10.1.0.50,tftp=/srv,bootfile=x.efi",
    "tap,id=t,ifname=tap9,script=no,downscript=no,vnet_hdr=off,queues=2",
    "socket,id=s,listen=127.0.0.1:5555",
    "socket,id=m,mcast=230.0.0.1:1234,localaddr=127.0.0.1",
    "l2tpv3,id=l,src=127.0.0.1,dst=127.0.0.1,udp=on,srcport=1,dstport=2,txsession=3,"
    "rxsession=4,cookie64=on,txcookie=5,rxcookie=6,counter=off,offset=8",
    "stream,id=st,server=off,addr.type=unix,addr.path=/tmp/x.sock,reconnect=3",
    "dgram,id=dg,remote.type=inet,remote.host=127.0.0.1,remote.port=1,local.type=inet,"
    "local.host=127.0.0.1,local.port=2",
    "vhost-user,id=v,chardev=c,queues=2",
    "hubport,id=h,hubid=3,netdev=u",
    "bridge,id=b,br=br9",
    "vde,id=vd,sock=/tmp/vde,port=2,group=g,mode=0700",
]


@pytest.mark.parametrize("text", NETDEVS, ids=[t.split(",", 1)[0] for t in NETDEVS])
def test_netdevs_read_back_the_same(text: str) -> None:
    spec = parse_netdev_cli(text)
    (entry,) = Reader().read(render(iter([("netdev", spec.id, netdev_pairs(spec))])).encode(), "f")
    assert entry.netdev() == spec


CHARDEVS = [
    "socket,id=c,path=/tmp/c.sock,server=on,wait=off,logfile=/tmp/l,logappend=on",
    "socket,id=c,host=127.0.0.1,port=4444,to=4450,ipv4=on,server=on,nodelay=on,telnet=on",
    "socket,id=c,host=localhost,port=1,reconnect=5,mux=on",
    "socket,id=c,path=/tmp/a,abstract=on,tight=off",
    "socket,id=c,fd=3",
    "udp,id=c,host=127.0.0.1,port=7,localaddr=127.0.0.1,localport=8",
    "file,id=c,path=/tmp/out,input-path=/tmp/in,append=on",
    "pipe,id=c,path=/tmp/p",
    "ringbuf,id=c,size=64K",
    "null,id=c",
    "pty,id=c",
    "stdio,id=c,signal=off",
    "mux,id=c,chardev=d",
]


@pytest.mark.parametrize("text", CHARDEVS)
def test_chardevs_read_back_the_same(text: str) -> None:
    spec = parse_chardev_cli(text)
    data = render(iter([("chardev", spec.id, chardev_pairs(spec))])).encode()
    (entry,) = Reader().read(data, "f")
    assert parse_chardev_cli(entry.text) == spec


OBJECTS = [
    "filter-dump,id=f,netdev=n,file=/tmp/d.pcap,maxlen=100,format=pcapng,queue=rx",
    "filter-mirror,id=m,netdev=n,outdev=c,vnet_hdr_support=on,position=id=f,insert=before",
    "filter-redirector,id=r,netdev=n,indev=a,outdev=b,status=off",
    "filter-buffer,id=b,netdev=n,interval=1000",
]


@pytest.mark.parametrize("text", OBJECTS)
def test_objects_read_back_the_same(text: str) -> None:
    spec = parse_object_cli(text)
    data = render(iter([("object", spec.id, object_pairs(spec))])).encode()
    (entry,) = Reader().read(data, "f")
    assert parse_object_cli(entry.text) == spec


def test_what_the_format_cannot_hold_is_refused() -> None:
    def fails(group: str, ident: str, pairs: list[tuple[str, str]]) -> str:
        with pytest.raises(ConfigWriteError) as info:
            render(iter([(group, ident, pairs)]))
        return info.value.desc

    assert "holds a '\"'" in fails("netdev", "n", [("hostname", 'a"b')])
    assert "holds a '\"', a newline" in fails("netdev", "n", [("hostname", "a\nb")])
    assert "is too long" in fails("netdev", "n", [("hostname", "x" * 1020)])
    assert "the id does not fit" in fails("netdev", "i" * 64, [])
    assert "option name" in fails("netdev", "n", [("a b", "1")])
    vsock = Chardev(
        id="v",
        backend_type="socket",
        options=ChardevSocket(
            addr=SocketAddressLegacy(type="vsock", data=VsockSocketAddress(cid="3", port="9"))
        ),
    )
    with pytest.raises(ConfigWriteError, match="'vsock' socket address has no config file"):
        chardev_pairs(vsock)


def test_files_are_replaced_whole_new_ones_private(tmp_path: Path) -> None:
    new = tmp_path / "new.cfg"
    write_text(str(new), "a\n")
    assert new.read_text() == "a\n" and stat.S_IMODE(new.stat().st_mode) == 0o600
    old = tmp_path / "old.cfg"
    old.write_text("x" * 1000)
    old.chmod(0o644)
    write_text(str(old), "b\n")
    assert old.read_text() == "b\n" and stat.S_IMODE(old.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.cfg", "old.cfg"]
    with pytest.raises(ConfigWriteError, match=r"Could not open '.*/nodir/x': No such file"):
        write_text(str(tmp_path / "nodir" / "x"), "c\n")


def test_sections_dataclass_is_plain() -> None:
    assert Section("g", (), None).group == "g"
