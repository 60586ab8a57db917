"""keyval (modern CLI syntax) and QemuOpts (traditional syntax) parsers."""

from __future__ import annotations

import pytest

from netstack.errors import GenericError
from netstack.qapi import keyval
from netstack.qapi.qemuopts import OptType, parse


def err(fn: object, *args: object) -> str:
    with pytest.raises(GenericError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.desc


class TestKeyval:
    def test_flat_and_dotted(self) -> None:
        assert keyval.parse("a=1,b.c=2,b.d=3") == {"a": "1", "b": {"c": "2", "d": "3"}}

    def test_lists_from_numeric_fragments(self) -> None:
        assert keyval.parse("a.1=y,a.0=x") == {"a": ["x", "y"]}
        assert keyval.parse("a.0.b=1,a.0.c=2") == {"a": [{"b": "1", "c": "2"}]}

    def test_comma_escape_and_trailing_comma(self) -> None:
        assert keyval.parse("a=1,,2,b=x,") == {"a": "1,2", "b": "x"}
        assert keyval.parse("path=/tmp/a,,,,b") == {"path": "/tmp/a,,b"}

    def test_last_value_wins(self) -> None:
        assert keyval.parse("a=1,a=2") == {"a": "2"}

    def test_implied_key(self) -> None:
        assert keyval.parse("stream,id=s0", "type") == {"type": "stream", "id": "s0"}
        assert keyval.parse("foo", "guest") == {"guest": "foo"}
        assert keyval.parse("chardev=c,mode=control", "chardev") == {
            "chardev": "c",
            "mode": "control",
        }

    def test_implied_key_only_first(self) -> None:
        assert err(keyval.parse, "a,b", "type") == "Expected '=' after parameter 'b'"

    def test_errors(self) -> None:
        assert err(keyval.parse, "foo") == "Expected '=' after parameter 'foo'"
        assert err(keyval.parse, ",a=1") == "Invalid parameter ''"
        assert err(keyval.parse, "=1") == "Invalid parameter ''"
        assert err(keyval.parse, "1a=2") == "Invalid parameter '1a'"
        assert err(keyval.parse, "a..b=1") == "Invalid parameter 'a..b'"
        assert err(keyval.parse, "a.=1") == "Invalid parameter 'a.'"
        assert err(keyval.parse, "a b=1") == "Invalid parameter 'a b'"

    def test_inconsistent_use(self) -> None:
        assert err(keyval.parse, "a=1,a.b=2") == "Parameters 'a.*' used inconsistently"
        assert err(keyval.parse, "a.b=2,a=1") == "Parameters 'a.*' used inconsistently"
        assert err(keyval.parse, "a.0=x,a.b=y") == "Parameters 'a.*' used inconsistently"
        assert err(keyval.parse, "x.a.0=x,x.a.b=y") == "Parameters 'x.a.*' used inconsistently"

    def test_missing_list_element(self) -> None:
        assert err(keyval.parse, "a.1=y") == "Parameter 'a.0' missing"
        assert err(keyval.parse, "a.0=x,a.2=z") == "Parameter 'a.1' missing"

    def test_too_long(self) -> None:
        name = "x" * 128
        assert err(keyval.parse, f"{name}=1") == f"Parameter '{name}' is too long"
        assert err(keyval.parse, f"a.{name}=1") == f"Parameter fragment '{name}' is too long"
        assert keyval.parse("y" * 127 + "=1") == {"y" * 127: "1"}

    def test_help(self) -> None:
        assert keyval.parse_with_help("help") == ({}, True)
        assert keyval.parse_with_help("a=1,?") == ({"a": "1"}, True)
        assert keyval.parse_with_help("help", "type") == ({}, True)
        assert err(keyval.parse, "a=1,help") == "Help is not available for this option"

    def test_downstream_names(self) -> None:
        assert keyval.parse("__org.qemu_x=1") == {"__org.qemu_x": "1"}


class TestQemuOpts:
    def test_repeats_kept_last_wins(self) -> None:
        opts = parse("user,id=n0,hostfwd=a,hostfwd=b", "type")
        assert opts.id == "n0"
        assert opts.opts == [("type", "user"), ("hostfwd", "a"), ("hostfwd", "b")]
        assert opts.get("hostfwd") == "b"
        assert opts.multimap() == {"type": ["user"], "hostfwd": ["a", "b"]}

    def test_flags(self) -> None:
        opts = parse("socket,server,nowait,id=c", "backend")
        assert opts.opts == [("backend", "socket"), ("server", "on"), ("wait", "off")]

    def test_implied_value_honours_comma_escape(self) -> None:
        assert parse("a,,b,x=1", "path").opts == [("path", "a,b"), ("x", "1")]

    def test_value_escape(self) -> None:
        assert parse("x,path=/a,,b,id=i", "type").get("path") == "/a,b"

    def test_id_checked_first(self) -> None:
        desc = {"backend": OptType.STRING}
        assert err(parse, "socket,foo=1,id=1bad", "backend", desc) == (
            "Parameter 'id' expects an identifier"
        )
        assert err(parse, "x,id=", "type") == "Parameter 'id' expects an identifier"

    def test_first_id_wins(self) -> None:
        assert parse("x,id=a,id=b", "type").id == "a"

    def test_descriptor_validation(self) -> None:
        desc = {"backend": OptType.STRING, "to": OptType.NUMBER, "wait": OptType.BOOL}
        desc |= {"size": OptType.SIZE}
        assert err(parse, "s,foo=1", "backend", desc) == "Invalid parameter 'foo'"
        assert err(parse, "s,to=x", "backend", desc) == "Parameter 'to' expects a number"
        big = "99999999999999999999"
        assert err(parse, f"s,to={big}", "backend", desc) == (
            f"Value '{big}' is too large for parameter 'to'"
        )
        assert err(parse, "s,wait=maybe", "backend", desc) == (
            "Parameter 'wait' expects 'on' or 'off'"
        )
        assert err(parse, "s,size=1Q", "backend", desc) == (
            "Parameter 'size' expects a non-negative number below 2^64"
        )
        assert err(parse, "s,size=16E", "backend", desc) == (
            "Value '16E' is out of range for parameter 'size'"
        )

    def test_help_flag_with_descriptor(self) -> None:
        desc = {"backend": OptType.STRING}
        assert parse("socket,help", "backend", desc).help_wanted
        assert not parse("socket,help", "backend", None).help_wanted
