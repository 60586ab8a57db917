"""Parser totality: any input yields a value or a defined error, never a crash."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.errors import GenericError
from netstack.qapi import (
    HelpRequested,
    chardev_from_qmp,
    keyval,
    netdev_from_qmp,
    object_from_qmp,
    parse_chardev_cli,
    parse_netdev_cli,
    parse_object_cli,
    parse_qmp_shorthand,
)

_WORDS = [
    "user",
    "tap",
    "stream",
    "dgram",
    "socket",
    "l2tpv3",
    "hubport",
    "none",
    "nic",
    "vhost-user",
    "filter-dump",
    "filter-buffer",
    "ringbuf",
    "unix:",
    "tcp:",
    "mon:",
    "help",
    "?",
    "id=",
    "id=x",
    "type=",
    "addr.",
    "addr.type=inet",
    "addr.type=unix",
    "local.",
    "remote.",
    "host=",
    "port=",
    "path=",
    "hostfwd=",
    "server",
    "no",
    "on",
    "off",
    "0",
    "1",
    "0x",
    "-1",
    "65536",
    "4294967296",
    "1M",
    "size=",
    ".0",
    ".1",
    "hubid=",
    "txsession=",
    "src=",
    "dst=",
    "ipv6-net=",
    "interval=",
    "maxlen=",
    "netdev=",
    "file=",
    "queue=",
    "insert=",
    "status=",
    "{",
    "}",
]

keyvalish = st.lists(
    st.one_of(st.sampled_from(_WORDS), st.sampled_from(list(",,=.:/@x")), st.text(max_size=3)),
    max_size=14,
).map("".join)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(["user", "stream", "inet", "unix", "socket", "filter-dump"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "id",
                    "type",
                    "addr",
                    "host",
                    "port",
                    "path",
                    "str",
                    "data",
                    "hostfwd",
                    "hubid",
                    "qom-type",
                    "netdev",
                    "file",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=12,
)
json_object = st.dictionaries(
    st.sampled_from(
        [
            "id",
            "type",
            "addr",
            "hostfwd",
            "hubid",
            "txsession",
            "src",
            "dst",
            "qom-type",
            "netdev",
            "file",
            "interval",
            "data",
            "local",
            "remote",
        ]
    ),
    json_value,
    max_size=6,
)

CLI_PARSERS: list[Callable[[str], object]] = [
    parse_netdev_cli,
    parse_chardev_cli,
    parse_object_cli,
    keyval.parse,
    lambda text: keyval.parse(text, "type"),
    lambda text: parse_qmp_shorthand(text, "compat_monitor0"),
]


def _total(fn: Callable[[object], object], value: object) -> None:
    with contextlib.suppress(GenericError, HelpRequested):
        fn(value)


@settings(max_examples=400, deadline=None)
@given(text=keyvalish)
def test_cli_parsers_are_total(text: str) -> None:
    for parse in CLI_PARSERS:
        _total(parse, text)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=40))
def test_cli_parsers_are_total_on_any_text(text: str) -> None:
    for parse in CLI_PARSERS:
        _total(parse, text)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(args=json_object)
def test_qmp_visitors_are_total(args: dict[str, object]) -> None:
    _total(netdev_from_qmp, args)  # type: ignore[arg-type]
    _total(object_from_qmp, args)  # type: ignore[arg-type]
    _total(lambda backend: chardev_from_qmp("c", backend), args)


@settings(max_examples=200, deadline=None)
@given(args=json_object)
def test_netdev_roundtrip_through_json_cli(args: dict[str, object]) -> None:
    """-netdev '{...}' and netdev_add agree on every input."""
    import json

    try:
        text = json.dumps(args, allow_nan=False)
    except ValueError:
        return
    try:
        expected: object = netdev_from_qmp(args)
    except GenericError as exc:
        expected = exc.desc
    try:
        got: object = parse_netdev_cli(text)
    except GenericError as exc:
        got = exc.desc
    assert got == expected
