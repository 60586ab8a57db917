"""QEMU's textual number and boolean grammars."""

from __future__ import annotations

import pytest

from netstack.qapi.scalars import ConvError, parse_bool, parse_uint, strtoi64, strtosz, strtou64


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("42", 42), ("0x10", 16), ("010", 8), (" 7", 7), ("-5", -5), ("+3", 3)],
)
def test_strtoi64(text: str, value: int) -> None:
    assert strtoi64(text) == value


@pytest.mark.parametrize("text", ["", "x", "1x", "0x", "08", "1 ", "9223372036854775808"])
def test_strtoi64_rejects(text: str) -> None:
    with pytest.raises(ConvError):
        strtoi64(text)


def test_strtou64_wraps_negative_like_strtoull() -> None:
    assert strtou64("-1") == (1 << 64) - 1
    assert strtou64("18446744073709551615") == (1 << 64) - 1
    with pytest.raises(ConvError) as info:
        strtou64("18446744073709551616")
    assert info.value.kind == "ERANGE"


def test_parse_uint_rejects_minus() -> None:
    assert parse_uint("12") == 12
    with pytest.raises(ConvError):
        parse_uint("-1")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1024", 1024),
        ("1k", 1024),
        ("1K", 1024),
        ("2M", 2 << 20),
        ("1G", 1 << 30),
        ("1.5k", 1536),
        ("1B", 1),
        ("0x20", 32),
        ("010", 10),
    ],
)
def test_strtosz(text: str, value: int) -> None:
    assert strtosz(text) == value


@pytest.mark.parametrize("text", ["", "k", "1.5", "0x1k", "-1", "1Q", "1kk", "16E"])
def test_strtosz_rejects(text: str) -> None:
    with pytest.raises(ConvError):
        strtosz(text)


def test_bools() -> None:
    for word in ("on", "yes", "true", "y"):
        assert parse_bool(word) is True
    for word in ("off", "no", "false", "n"):
        assert parse_bool(word) is False
    for word in ("ON", "1", "", "maybe"):
        with pytest.raises(ConvError):
            parse_bool(word)
