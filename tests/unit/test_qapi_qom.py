"""QOM net filters: object-add and -object."""

from __future__ import annotations

import pytest

from netstack.errors import GenericError
from netstack.qapi import (
    FilterBufferProperties,
    FilterDumpProperties,
    FilterMirrorProperties,
    FilterRedirectorProperties,
    HelpRequested,
    ObjectSpec,
    object_from_qmp,
    object_help,
    parse_object_cli,
)


def qmp_err(args: dict[str, object]) -> str:
    with pytest.raises(GenericError) as info:
        object_from_qmp(args)
    return info.value.desc


def cli_err(text: str) -> str:
    with pytest.raises(GenericError) as info:
        parse_object_cli(text)
    return info.value.desc


def test_filter_dump_qmp() -> None:
    spec = object_from_qmp(
        {"qom-type": "filter-dump", "id": "f0", "netdev": "n0", "file": "out.pcap"}
    )
    assert spec == ObjectSpec(
        qom_type="filter-dump",
        id="f0",
        props=FilterDumpProperties(netdev="n0", file="out.pcap"),
    )


def test_cli_equals_qmp() -> None:
    cli = parse_object_cli("filter-buffer,id=f1,netdev=n0,queue=rx,interval=1000,status=off")
    qmp = object_from_qmp(
        {
            "qom-type": "filter-buffer",
            "id": "f1",
            "netdev": "n0",
            "queue": "rx",
            "interval": 1000,
            "status": "off",
        }
    )
    assert cli == qmp
    assert cli.props == FilterBufferProperties(netdev="n0", queue="rx", status="off", interval=1000)


def test_mirror_and_redirector() -> None:
    mirror = parse_object_cli("filter-mirror,id=m,netdev=n,outdev=c,vnet_hdr_support=on")
    assert mirror.props == FilterMirrorProperties(netdev="n", outdev="c", vnet_hdr_support=True)
    redir = object_from_qmp(
        {
            "qom-type": "filter-redirector",
            "id": "r",
            "netdev": "n",
            "indev": "c1",
            "position": "id=m",
            "insert": "before",
        }
    )
    assert redir.props == FilterRedirectorProperties(
        netdev="n", indev="c1", position="id=m", insert="before"
    )


def test_json_cli() -> None:
    spec = parse_object_cli('{"qom-type": "filter-dump", "id": "d", "netdev": "n", "file": "f"}')
    assert spec.props == FilterDumpProperties(netdev="n", file="f")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"id": "f"}, "Parameter 'qom-type' is missing"),
        ({"qom-type": "filter-dump"}, "Parameter 'id' is missing"),
        (
            {"qom-type": "iothread", "id": "f"},
            "Parameter 'qom-type' does not accept value 'iothread'",
        ),
        ({"qom-type": "filter-dump", "id": "f", "file": "x"}, "Parameter 'netdev' is missing"),
        ({"qom-type": "filter-dump", "id": "f", "netdev": "n"}, "Parameter 'file' is missing"),
        ({"qom-type": "filter-mirror", "id": "f", "netdev": "n"}, "Parameter 'outdev' is missing"),
        (
            {"qom-type": "filter-buffer", "id": "f", "netdev": "n"},
            "Parameter 'interval' is missing",
        ),
        (
            {"qom-type": "filter-dump", "id": "f", "netdev": "n", "file": "x", "maxlen": 0},
            "Property 'filter-dump.maxlen' doesn't take value '0'",
        ),
        (
            {"qom-type": "filter-dump", "id": "f", "netdev": "n", "file": "x", "maxlen": -1},
            "Parameter 'maxlen' expects uint32",
        ),
        (
            {"qom-type": "filter-buffer", "id": "f", "netdev": "n", "interval": 0},
            "Property 'filter-buffer.interval' requires a positive value",
        ),
        (
            {"qom-type": "filter-buffer", "id": "f", "netdev": "n", "interval": 1, "queue": "up"},
            "Parameter 'queue' does not accept value 'up'",
        ),
        (
            {"qom-type": "filter-buffer", "id": "f", "netdev": "n", "interval": 1, "insert": "x"},
            "Parameter 'insert' does not accept value 'x'",
        ),
        (
            {
                "qom-type": "filter-buffer",
                "id": "f",
                "netdev": "n",
                "interval": 1,
                "status": "maybe",
            },
            "Invalid value for netfilter status, should be 'on' or 'off'",
        ),
        (
            {"qom-type": "filter-buffer", "id": "f", "netdev": "n", "interval": 1, "x": 1},
            "Parameter 'x' is unexpected",
        ),
        (
            {"qom-type": "filter-buffer", "id": "1f", "netdev": "n", "interval": 0},
            "Parameter 'id' expects an identifier",
        ),
    ],
)
def test_qmp_errors(args: dict[str, object], error: str) -> None:
    assert qmp_err(args) == error


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("id=f,netdev=n", "Parameter 'qom-type' is missing"),
        ("filter-dump,netdev=n,file=x", "Parameter 'id' is missing"),
        ("filter-dump,id=1f,netdev=n", "Parameter 'id' expects an identifier"),
        ("filter-dump,id=f,netdev=n", "Parameter 'file' is missing"),
        (
            "filter-dump,id=f,netdev=n,file=x,maxlen=0",
            ("Property 'filter-dump.maxlen' doesn't take value '0'"),
        ),
        ("filter-dump,id=f,netdev=n,file=x,maxlen=x", "Parameter 'maxlen' expects a uint64 value"),
        (
            "filter-buffer,id=f,netdev=n,interval=0",
            ("Property 'filter-buffer.interval' requires a positive value"),
        ),
        ("filter-buffer,id=f,netdev=n,interval=1,bogus=1", "Invalid parameter 'bogus'"),
        (
            "filter-mirror,id=f,netdev=n,outdev=c,vnet_hdr_support=2",
            ("Parameter 'vnet_hdr_support' expects 'on' or 'off'"),
        ),
    ],
)
def test_cli_errors(text: str, error: str) -> None:
    assert cli_err(text) == error


def test_help() -> None:
    with pytest.raises(HelpRequested) as info:
        parse_object_cli("help")
    assert (info.value.option, info.value.subject) == ("object", None)
    with pytest.raises(HelpRequested) as info:
        parse_object_cli("filter-dump,help")
    assert info.value.subject == "filter-dump"
    assert object_help(["filter-dump", "filter-buffer"]) == (
        "List of user creatable objects:\n  filter-buffer\n  filter-dump\n"
    )
