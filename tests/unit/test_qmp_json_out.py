"""QEMU's JSON output: spacing, escapes, numbers, member order, pretty form, framing.

Expected texts are QEMU's (check-qjson.c, and replies captured from QEMU 7.2 over QMP).
"""

from __future__ import annotations

import pytest

from netstack.qmp.jsonout import format_float, qga_line, qmp_line, quote, to_json

GREETING_72 = {  # built in QEMU's insertion order (the QAPI visitor's field order)
    "QMP": {
        "version": {
            "qemu": {"major": 7, "minor": 2, "micro": 22},
            "package": "Debian 1:7.2+dfsg-7+deb12u18+b3",
        },
        "capabilities": ["oob"],
    }
}


def test_compact_spacing() -> None:
    assert to_json({"return": {}}) == '{"return": {}}'
    assert to_json([]) == "[]"
    assert to_json({"a": [1, 2, {"b": None}], "c": True}) == (
        '{"a": [1, 2, {"b": null}], "c": true}'
    )


def test_qemu_member_order() -> None:
    assert to_json(GREETING_72) == (
        '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, '
        '"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}'
    )
    assert to_json({"return": {}, "id": 1}) == '{"return": {}, "id": 1}'
    error = {"error": {"class": "GenericError", "desc": "x"}, "id": "a"}
    assert to_json(error) == '{"id": "a", "error": {"class": "GenericError", "desc": "x"}}'
    event = {"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}
    assert to_json(event) == '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}'


def test_insertion_order_on_request() -> None:
    assert to_json({"b": 1, "a": {"d": 2, "c": 3}}, qdict_order=False) == (
        '{"b": 1, "a": {"d": 2, "c": 3}}'
    )


def test_member_order_of_keys_with_nul() -> None:
    # Captured from QEMU 7.2: the id {"\u0000\u0000": 1, "a": 2} echoes as below.
    assert to_json({"\x00\x00": 1, "a": 2}) == '{"a": 2, "\\u0000\\u0000": 1}'


def test_pretty_matches_qemu() -> None:
    # QEMU 7.2 with -mon ...,pretty=on sent exactly this greeting (LF shown; CR LF sent).
    assert to_json(GREETING_72, pretty=True) == "\n".join(
        [
            "{",
            '    "QMP": {',
            '        "version": {',
            '            "qemu": {',
            '                "micro": 22,',
            '                "minor": 2,',
            '                "major": 7',
            "            },",
            '            "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"',
            "        },",
            '        "capabilities": [',
            '            "oob"',
            "        ]",
            "    }",
            "}",
        ]
    )


def test_pretty_empty_containers_and_scalars() -> None:
    assert to_json({"return": {}}, pretty=True) == '{\n    "return": {\n    }\n}'
    assert to_json([[], 1], pretty=True) == "[\n    [\n    ],\n    1\n]"
    assert to_json({}, pretty=True) == "{\n}"
    assert to_json("x", pretty=True) == '"x"'


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("plain / ' text", "plain / ' text"),
        ('"\\', '\\"\\\\'),
        ("\b\f\n\r\t", "\\b\\f\\n\\r\\t"),
        ("\x00\x01\x0b\x1f", "\\u0000\\u0001\\u000B\\u001F"),
        ("\x7f\x80\u00e9\u20ac", "\\u007F\\u0080\\u00E9\\u20AC"),
        ("\U0001d11e\U0010fffd", "\\uD834\\uDD1E\\uDBFF\\uDFFD"),
        ("\ufffd\ufffc", "\\uFFFD\\uFFFC"),
        # What modified UTF-8 cannot hold prints as QEMU prints invalid bytes:
        ("\ud800\udfff", "\\uFFFD\\uFFFD"),
        ("\ufdd0\ufffe\uffff\U0001ffff", "\\uFFFD\\uFFFD\\uFFFD\\uFFFD"),
    ],
)
def test_string_escapes(text: str, printed: str) -> None:
    assert quote(text) == '"' + printed + '"'
    assert to_json(text) == '"' + printed + '"'


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (0, "0"),
        (-32, "-32"),
        (2**64 - 1, "18446744073709551615"),
        (-(2**63), "-9223372036854775808"),
        (1500.0, "1500"),
        (0.1, "0.10000000000000001"),
        (32.43, "32.43"),
        (-32.12313, "-32.123130000000003"),
        (-32.20e-10, "-3.22e-09"),
        (float(2**64), "1.8446744073709552e+19"),
        (-float(2**63), "-9.2233720368547758e+18"),
        (5e-324, "4.9406564584124654e-324"),
        (1e22, "1e+22"),
        (-0.0, "-0"),
        (float("inf"), "inf"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
    ],
)
def test_scalars(value: object, printed: str) -> None:
    assert to_json(value) == printed


def test_format_float() -> None:
    assert format_float(1.5e3) == "1500"
    assert format_float(123456789.125) == "123456789.125"


def test_subclasses_print_as_their_base() -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    class Name(enum.StrEnum):
        A = "a"

    assert to_json([Color.RED, Name.A, (1, 2)]) == '[1, "a", [1, 2]]'


def test_rejects_what_qemu_cannot_hold() -> None:
    with pytest.raises(TypeError):
        to_json({1: 2})
    with pytest.raises(TypeError):
        to_json({"a": {1, 2}})
    with pytest.raises(TypeError):
        to_json(b"bytes")


def test_qmp_line() -> None:
    assert qmp_line({"return": {}}) == b'{"return": {}}\r\n'
    assert qmp_line({"return": {}}, pretty=True) == b'{\r\n    "return": {\r\n    }\r\n}\r\n'
    assert qmp_line({"s": "\n"}) == b'{"s": "\\n"}\r\n'


def test_qga_line() -> None:
    assert qga_line({"return": 5}) == b'{"return": 5}\n'
    assert qga_line({"return": 5}, delimit=True) == b'\xff{"return": 5}\n'
