"""QEMU's JSON input: values, error texts and message boundaries.

Mirrors QEMU's ``tests/unit/check-qjson.c`` (through :func:`parse_json`, QEMU's
``qobject_from_json``) and the malformed-input part of ``tests/qtest/qmp-test.c`` (through
the streaming parser). Every streaming case runs three ways: fast path, exact path, and
one byte per ``feed`` call; all three must agree.
"""

from __future__ import annotations

from typing import TypedDict, Unpack

import pytest

from netstack.qmp.jsonout import mod_utf8_decode, quote, to_json
from netstack.qmp.jsonstream import (
    MAX_NESTING,
    MAX_TOKEN_COUNT,
    MAX_TOKEN_SIZE,
    JSONParseError,
    JSONStreamParser,
    Message,
    parse_json,
)


class Limits(TypedDict, total=False):
    max_token_size: int
    max_token_count: int
    max_nesting: int


def err(detail: str) -> JSONParseError:
    return JSONParseError("JSON parse error, " + detail)


def stray(token: str) -> JSONParseError:
    return err(f"stray '{token}'")


def canon(messages: list[Message]) -> str:
    """A type-exact text of ``messages`` (1, 1.0 and True differ), safe for deep nesting."""
    parts: list[str] = []
    stack: list[object] = [messages]
    while stack:
        x = stack.pop()
        if isinstance(x, tuple):  # ("close", text) or ("key", key)
            parts.append(x[1] if x[0] == "close" else repr(x[1]) + ":")
        elif isinstance(x, list):
            parts.append("[")
            stack.append(("close", "]"))
            stack.extend(reversed(x))
        elif isinstance(x, dict):
            parts.append("{")
            stack.append(("close", "}"))
            for k, v in reversed(list(x.items())):
                stack += [v, ("key", k)]
        else:
            parts.append(f"{type(x).__name__}:{x!r},")
    return "".join(parts)


def feed(data: bytes, **limits: Unpack[Limits]) -> list[Message]:
    """Messages of ``data`` fed at once; asserts fast, exact and bytewise feeding agree."""
    fast = JSONStreamParser(**limits).feed(data)
    exact = JSONStreamParser(accelerate=False, **limits).feed(data)
    bytewise_parser = JSONStreamParser(**limits)
    bytewise = [m for b in data for m in bytewise_parser.feed(bytes([b]))]
    assert canon(fast) == canon(exact) == canon(bytewise)
    return fast


def assert_msgs(got: list[Message], want: list[Message]) -> None:
    assert canon(got) == canon(want)


def parse_error(text: bytes | str) -> JSONParseError:
    with pytest.raises(JSONParseError) as info:
        parse_json(text)
    return info.value


# -- check-qjson.c: /literals/string ---------------------------------------------------

ESCAPED = [
    # (JSON string body, parsed value or None for an error, re-encodes to the body)
    (r"\b\f\n\r\t\\\"", '\b\f\n\r\t\\"', True),
    (r"\/\'", "/'", False),
    (r"single byte utf-8 \u0020", "single byte utf-8  ", False),
    (r"double byte utf-8 \u00A2", "double byte utf-8 \u00a2", True),
    (r"triple byte utf-8 \u20AC", "triple byte utf-8 \u20ac", True),
    (r"quadruple byte utf-8 \uD834\uDD1E", "quadruple byte utf-8 \U0001d11e", True),
    (r"\u12345", "\u12345", False),
    (r"\u0000x", "\x00x", True),
]

BAD_ESCAPES = [
    ("\\", None),  # the quote is escaped: unterminated
    (r"\z", "invalid escape sequence in string"),
    (r"\ux", "\\ux{q} is not a valid Unicode character"),
    (r"\u1x", "\\u1x{q} is not a valid Unicode character"),
    (r"\u12x", "\\u12x{q} is not a valid Unicode character"),
    (r"\u123x", "\\u123x is not a valid Unicode character"),
    (r"unpaired leading surrogate \uD800", "\\uD800 is not a valid Unicode character"),
    (r"unpaired leading surrogate \uD800\uCAFE", "\\uD800 is not a valid Unicode character"),
    (r"\uD800\uD801\uDC02", "\\uD800 is not a valid Unicode character"),
    (r"unpaired trailing surrogate \uDC00", "\\uDC00 is not a valid Unicode character"),
    (r"backward surrogate pair \uDC00\uD800", "\\uDC00 is not a valid Unicode character"),
    (r"noncharacter U+FDD0 \uFDD0", "\\uFDD0 is not a valid Unicode character"),
    (r"noncharacter U+FDEF \uFDEF", "\\uFDEF is not a valid Unicode character"),
    (r"U+1FFFE \uD87F\uDFFE", "\\uD87F\\uDFFE is not a valid Unicode character"),
    (r"U+10FFFF \uDBFF\uDFFF", "\\uDBFF\\uDFFF is not a valid Unicode character"),
]


@pytest.mark.parametrize("q", ['"', "'"])
@pytest.mark.parametrize(("body", "value", "reencodes"), ESCAPED)
def test_escaped_string(q: str, body: str, value: str, reencodes: bool) -> None:
    assert parse_json(q + body + q) == value
    if reencodes:
        assert to_json(value) == '"' + body + '"'


@pytest.mark.parametrize("q", ['"', "'"])
@pytest.mark.parametrize(("body", "detail"), BAD_ESCAPES)
def test_bad_escape(q: str, body: str, detail: str | None) -> None:
    expected = stray(q + body + q) if detail is None else err(detail.format(q=q))
    assert parse_error(q + body + q) == expected


def test_string_with_other_quotes() -> None:
    assert parse_json('"the bee\'s knees"') == "the bee's knees"
    assert parse_json("'double quote \"'") == 'double quote "'


def _utf8_cases() -> list[tuple[bytes, bytes | None, str | None]]:
    """Markus Kuhn's UTF-8 decoder stress test, as check-qjson.c applies it.

    Each case: raw bytes inside a JSON string, the modified UTF-8 QEMU keeps (None: the
    string is rejected), and how QEMU's writer prints those raw bytes (None: as input).
    """
    ff = "\\uFFFD"
    cont = bytes(range(0x80, 0xC0))
    cases: list[tuple[bytes, bytes | None, str | None]] = [
        (bytes(range(1, 0x20)), None, "".join(_ctl(c) for c in range(1, 0x20))),
        (
            "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg.".encode(),
            b"",
            "Falsches \\u00DCben von Xylophonmusik qu\\u00E4lt jeden gr\\u00F6\\u00DFeren Zwerg.",
        ),
        ("\u03ba\u1f79\u03c3\u03bc\u03b5".encode(), b"", "\\u03BA\\u1F79\\u03C3\\u03BC\\u03B5"),
        (b"100%", b"", None),
        (b" ", b"", None),
        (b"\xc2\x80", b"", "\\u0080"),
        (b"\xe0\xa0\x80", b"", "\\u0800"),
        (b"\xf0\x90\x80\x80", b"", "\\uD800\\uDC00"),
        (b"\xf8\x88\x80\x80\x80", None, ff),
        (b"\xfc\x84\x80\x80\x80\x80", None, ff),
        (b"\x7f", b"", "\\u007F"),
        (b"\xdf\xbf", b"", "\\u07FF"),
        (b"\xef\xbf\xbc", b"", "\\uFFFC"),
        (b"\xf7\xbf\xbf\xbf", None, ff),
        (b"\xfb\xbf\xbf\xbf\xbf", None, ff),
        (b"\xfd\xbf\xbf\xbf\xbf\xbf", None, ff),
        (b"\xed\x9f\xbf", b"", "\\uD7FF"),
        (b"\xee\x80\x80", b"", "\\uE000"),
        (b"\xef\xbf\xbd", b"", "\\uFFFD"),
        (b"\xf4\x8f\xbf\xbd", b"", "\\uDBFF\\uDFFD"),
        (b"\xf4\x90\x80\x80", None, ff),
        (cont, None, ff * 64),
        (b"\xc0\x80", b"\xc0\x80", "\\u0000"),  # modified UTF-8 NUL
    ]
    cases += [(cont[:n], None, ff * n) for n in range(1, 8)]
    for first, last in ((0xC0, 0xDF), (0xE0, 0xEF), (0xF0, 0xF7), (0xF8, 0xFB), (0xFC, 0xFD)):
        lonely = bytes(range(first, last + 1))
        cases.append((b"".join(bytes([b]) + b" " for b in lonely), None, (ff + " ") * len(lonely)))
    truncated = [
        b"\xc0",
        b"\xe0\x80",
        b"\xf0\x80\x80",
        b"\xf8\x80\x80\x80",
        b"\xfc\x80\x80\x80\x80",
    ]
    truncated += [
        b"\xdf",
        b"\xef\xbf",
        b"\xf7\xbf\xbf",
        b"\xfb\xbf\xbf\xbf",
        b"\xfd\xbf\xbf\xbf\xbf",
    ]
    cases += [(t, None, ff) for t in truncated]
    cases.append((b"".join(truncated), None, ff * len(truncated)))
    cases += [(b"\xfe", None, ff), (b"\xff", None, ff), (b"\xfe\xfe\xff\xff", None, ff * 4)]
    overlong = [b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xf8\x80\x80\x80\xaf"]
    overlong += [b"\xfc\x80\x80\x80\x80\xaf", b"\xc1\xbf", b"\xe0\x9f\xbf", b"\xf0\x8f\xbf\xbc"]
    overlong += [b"\xf8\x87\xbf\xbf\xbf", b"\xfc\x83\xbf\xbf\xbf\xbf", b"\xe0\x80\x80"]
    overlong += [b"\xf0\x80\x80\x80", b"\xf8\x80\x80\x80\x80", b"\xfc\x80\x80\x80\x80\x80"]
    cases += [(o, None, ff) for o in overlong]
    surrogates = [b"\xed\xa0\x80", b"\xed\xad\xbf", b"\xed\xae\x80", b"\xed\xaf\xbf"]
    surrogates += [b"\xed\xb0\x80", b"\xed\xbe\x80", b"\xed\xbf\xbf"]
    cases += [(s, None, ff) for s in surrogates]
    cases += [
        (hi + lo, None, ff * 2) for hi in surrogates[:4] for lo in (surrogates[4], surrogates[6])
    ]
    nonchars = [b"\xef\xbf\xbe", b"\xef\xbf\xbf", b"\xef\xb7\x90", b"\xef\xb7\xaf"]
    nonchars += [chr(p << 16 | low).encode() for p in range(1, 17) for low in (0xFFFE, 0xFFFF)]
    cases += [(n, None, ff) for n in nonchars]
    return cases


def _ctl(c: int) -> str:
    return {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}.get(c, f"\\u{c:04X}")


@pytest.mark.parametrize("q", [b'"', b"'"])
@pytest.mark.parametrize(("raw", "kept", "printed"), _utf8_cases())
def test_utf8_string(q: bytes, raw: bytes, kept: bytes | None, printed: str | None) -> None:
    if kept is not None:
        expected = mod_utf8_decode(kept or raw, replace=False)
        assert expected is not None
        assert parse_json(q + raw + q) == expected
    else:
        with pytest.raises(JSONParseError):
            parse_json(q + raw + q)
    # QEMU's writer prints the raw bytes (as a C string) like this:
    out = quote(mod_utf8_decode(kept or raw, replace=True) or "")
    assert out == '"' + (printed if printed is not None else raw.decode()) + '"'
    if "\\uFFFD" not in out[1:-1] or raw == b"\xef\xbf\xbd":
        assert parse_json(q + out[1:-1].encode() + q) == mod_utf8_decode(kept or raw, replace=True)


def test_utf8_errors_are_string_errors() -> None:
    assert parse_error(b'"\xed\xa0\x80"') == err("invalid UTF-8 sequence in string")
    assert parse_error(b'"a\xef\xbf\xbf"') == err("invalid UTF-8 sequence in string")
    assert parse_error(b'"\xfe"') == stray('"\ufffd')  # the lexer rejects 0xFE/0xFF
    assert parse_error(b'"\x01"') == stray('"\x01')  # and control characters
    # First problem wins, in string order:
    assert parse_error(b'"\\z\xff"') == stray('"\\z\ufffd')
    assert parse_error(b'"\\z\xed\xa0\x80"') == err("invalid escape sequence in string")
    assert parse_error(b'"\xed\xa0\x80\\z"') == err("invalid UTF-8 sequence in string")


# -- check-qjson.c: /literals/number, /literals/keyword -----------------------------------


@pytest.mark.parametrize(
    ("text", "value", "printed"),
    [
        ("0", 0, "0"),
        ("1234", 1234, "1234"),
        ("-32", -32, "-32"),
        ("-0", 0, "0"),
        ("9223372036854775807", 2**63 - 1, None),
        ("-9223372036854775808", -(2**63), None),
        ("9223372036854775808", 2**63, None),
        ("18446744073709551615", 2**64 - 1, None),
        ("32.43", 32.43, None),
        ("0.222", 0.222, None),
        ("-32.12313", -32.12313, "-32.123130000000003"),
        ("-32.20e-10", -32.20e-10, "-3.22e-09"),
        ("18446744073709551616", float(2**64), "1.8446744073709552e+19"),
        ("-9223372036854775809", -float(2**63), "-9.2233720368547758e+18"),
        ("1.5e3", 1500.0, "1500"),
        ("-0.0", -0.0, "-0"),
        ("1E400", float("inf"), "inf"),
        ("1" * 5000, float("inf"), "inf"),
    ],
)
def test_numbers(text: str, value: float, printed: str | None) -> None:
    got = parse_json(text)
    assert type(got) is type(value) and repr(got) == repr(value)
    assert to_json(got) == (printed or text)


def test_keywords() -> None:
    assert parse_json("true") is True
    assert parse_json("false") is False
    assert parse_json("null") is None
    assert parse_error("nul") == err("invalid keyword 'nul'")
    assert parse_error("truer") == err("invalid keyword 'truer'")
    long = "x" * 2000  # parse_error() formats into a 1024-byte buffer
    assert parse_error(long) == err(("invalid keyword '" + long)[:1023])


# -- check-qjson.c: /dicts, /lists, /mixed ------------------------------------------------


def gen_test_json(nest_level_max: int, elem_count: int) -> str:
    if nest_level_max == 0:
        return "[" + ", ".join(str(i) for i in range(elem_count)) + "]"
    return (
        "{"
        + ",".join(f"'key{i}': {gen_test_json(i, elem_count)}" for i in range(nest_level_max))
        + "}"
    )


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"foo": 42, "bar": "hello world"}', {"foo": 42, "bar": "hello world"}),
        ("{}", {}),
        ('{"foo": 43}', {"foo": 43}),
        ("[43,42]", [43, 42]),
        ("[43]", [43]),
        ("[]", []),
        ("[{}]", [{}]),
        (" [ 43 , 42 ]", [43, 42]),
        ("\t[ 43 , { 'h' : 'b' },\r\n\t[ ], 42 ]\n", [43, {"h": "b"}, [], 42]),
        (" [ 43 , { 'h' : 'b' , 'a' : 32 }, [ ], 42 ]", [43, {"h": "b", "a": 32}, [], 42]),
    ],
)
def test_containers_round_trip(text: str, value: object) -> None:
    assert parse_json(text) == value
    assert parse_json(to_json(value)) == value


def test_large_dict() -> None:
    value = parse_json(gen_test_json(10, 100))
    assert isinstance(value, dict) and len(value) == 10
    for key in ("key9", "key8", "key0"):
        assert isinstance(value, dict)
        value = value[key]
    assert value == list(range(100))


# -- check-qjson.c: /errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"", JSONParseError("Expecting a JSON value")),
        (b"\n ", JSONParseError("Expecting a JSON value")),
        (b"@", stray("@")),
        (b"{\x01", stray("\x01")),
        (b"[0\xff]", stray("\ufffd")),
        (b"00", stray("00")),
        (b"[1e", stray("1e")),
        (b"truer", err("invalid keyword 'truer'")),
        (b'"abc', stray('"abc')),
        (b"'abc", stray("'abc")),
        (b'"abc\\"', stray('"abc\\"')),
        (b"[32", err("premature EOI")),
        (b"[32,", err("premature EOI")),
        (b"[32,}", err("expecting value")),
        (b"{'abc':32", err("premature EOI")),
        (b"{'abc':32,", err("premature EOI")),
        (b"{'abc':32,}", err("expecting value")),
        (b"{32:'abc'}", err("key is not a string in object")),
        (b"{'abc' 32}", err("missing : in object pair")),
        (b"{'a':1 'b':2}", err("expected separator in dict")),
        (b"[1 2]", err("expected separator in list")),
        (b"{'a':1,'a':2}", err("duplicate key")),
        (b"false true", JSONParseError("Expecting at most one JSON value")),
        (b"} true", err("expecting value")),
    ],
)
def test_errors(text: bytes, expected: JSONParseError) -> None:
    assert parse_error(text) == expected


def make_nest(count: int) -> bytes:
    return b"[" * (count - 1) + b"{}" + b"]" * (count - 1)


def test_limits_nesting() -> None:
    assert MAX_NESTING == 1024
    value = parse_json(make_nest(MAX_NESTING))
    for _ in range(MAX_NESTING - 1):
        assert isinstance(value, list)
        value = value[0]
    assert value == {}
    assert parse_error(make_nest(MAX_NESTING + 1)) == JSONParseError(
        "JSON nesting depth limit exceeded"
    )


def test_first_error_order_in_objects() -> None:
    # A key is parsed as a whole value before its type is checked.
    assert parse_error(b"{{'a':1,'a':2}:1}") == err("duplicate key")
    assert parse_error(b"{foo:1}") == err("invalid keyword 'foo'")
    assert parse_error(b"{true:1}") == err("key is not a string in object")
    assert parse_error(b"{:1}") == err("expecting value")
    # The duplicate check comes after the value.
    assert parse_error(b"{'a':1,'a':}") == err("expecting value")
    assert parse_error(b"{'a':1,'a':[1 2]}") == err("expected separator in list")


# -- qmp-test.c: malformed input, one error each, then recovery --------------------------

NEXT = b"{ 'execute': 'no-such-cmd' }"


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (b"{]\n", err("expecting value")),
        (b"{\xff", stray("\ufffd")),
        (b"{\x01", stray("\x01")),
        (b"{'bad \xff", stray("'bad \ufffd")),
        (b"{'execute': 'nonexistent', 'id':'\n", stray("'\n")),
        (b"%p", stray("%")),
    ],
)
def test_qmp_malformed_then_recovered(bad: bytes, error: JSONParseError) -> None:
    assert_msgs(feed(bad + NEXT), [error, {"execute": "no-such-cmd"}])
    parser = JSONStreamParser()
    assert_msgs(parser.feed(bad), [error])
    assert_msgs(parser.feed(NEXT), [{"execute": "no-such-cmd"}])


def test_qmp_non_objects_are_messages() -> None:
    assert_msgs(
        feed(b"null {} { 'execute': true } [1]"),
        [None, {}, {"execute": True}, [1]],
    )


# -- streaming semantics -------------------------------------------------


def test_several_messages_per_line_and_per_feed() -> None:
    assert_msgs(
        feed(b'{"execute":"a"}{"execute":"b"} [1,2]\n"s"'),
        [{"execute": "a"}, {"execute": "b"}, [1, 2], "s"],
    )


def test_scalars_wait_for_a_delimiter() -> None:
    for accelerate in (True, False):
        parser = JSONStreamParser(accelerate=accelerate)
        assert parser.feed(b"null") == []
        assert_msgs(parser.feed(b"1"), [None])  # '1' cannot continue a keyword
        assert_msgs(parser.feed(b"\n"), [1])
        assert parser.feed(b"nul") == []
        assert parser.feed(b"lx") == []  # still one keyword
        assert_msgs(parser.feed(b" "), [err("invalid keyword 'nullx'")])
        assert parser.feed(b"-12.5e3") == []
        assert_msgs(parser.feed(b"}"), [-12500.0, err("expecting value")])
        assert_msgs(parser.feed(b'"x"'), ["x"])  # a string ends on its quote


def test_messages_end_when_brackets_balance_or_underflow() -> None:
    assert_msgs(feed(b"]"), [err("expecting value")])
    assert_msgs(feed(b"[}"), [err("expecting value")])
    assert_msgs(feed(b"[{]"), [])  # still open
    assert_msgs(feed(b"[{]}"), [err("expecting value")])
    assert_msgs(feed(b'{"a": [1, {"b": "]}"}]}'), [{"a": [1, {"b": "]}"}]}])


def test_recovery_skips_to_structural_or_control_bytes() -> None:
    # TAB and printable bytes (quotes included) are skipped; newline, '{' and 0xFF stop it.
    assert_msgs(feed(b'@ "x"\ttrue\n true '), [stray("@"), True])
    assert_msgs(feed(b'@abc{"a":1}'), [stray("@"), {"a": 1}])
    assert_msgs(feed(b'@abc\xfe{"a":1}'), [stray("@"), stray("\ufffd"), {"a": 1}])
    assert_msgs(feed(b"@abc\x01[]"), [stray("@"), stray("\x01"), []])
    assert_msgs(feed(b"@ x, 2 "), [stray("@"), err("expecting value"), 2])
    assert_msgs(feed(b'@ x, "2 '), [stray("@"), err("expecting value")])  # string pending


def test_stray_token_includes_partial_token_and_stops_at_nul() -> None:
    assert_msgs(feed(b"-x "), [stray("-x")])
    assert_msgs(feed(b"1.x "), [stray("1.x")])
    assert_msgs(feed(b"1e+x "), [stray("1e+x")])
    assert_msgs(feed(b"\x00"), [stray("")])
    assert_msgs(feed(b'"ab\x00cd"'), [stray('"ab')])
    # The continuation byte after the bad lead byte is skipped by recovery.
    assert_msgs(feed(b"[1,\xc3\xa9]"), [stray("\ufffd"), err("expecting value")])


def test_error_drops_the_pending_message() -> None:
    assert_msgs(feed(b'{"a": [1, 2 @ {"b": 1}'), [stray("@"), {"b": 1}])


def test_chunk_boundaries_anywhere() -> None:
    data = b"{'k\\u00e9': [\"\xe2\x82\xac\\ud834\\udd1e\", -1.5e-3, 18446744073709551616]}"
    want: list[Message] = [{"k\u00e9": ["\u20ac\U0001d11e", -1.5e-3, float(2**64)]}]
    assert_msgs(feed(data), want)
    for cut in range(len(data) + 1):
        parser = JSONStreamParser()
        assert_msgs(parser.feed(data[:cut]) + parser.feed(data[cut:]), want)


def test_reset_and_flush() -> None:
    parser = JSONStreamParser()
    assert parser.feed(b'{"execute": "a", "arguments": {"x": "unfini') == []
    assert parser.buffered > 0
    parser.reset()
    assert parser.buffered == 0
    assert_msgs(parser.feed(b'{"execute": "b"}'), [{"execute": "b"}])
    assert parser.feed(b"42") == []
    assert_msgs(parser.flush(), [42])
    assert parser.feed(b"[1, 'ab") == []
    assert_msgs(parser.flush(), [stray("'ab")])
    assert parser.feed(b"[1, 2") == []
    assert_msgs(parser.flush(), [err("premature EOI")])
    assert parser.flush() == []


def test_feed_accepts_bytes_likes() -> None:
    parser = JSONStreamParser()
    assert_msgs(parser.feed(bytearray(b"[1]")) + parser.feed(memoryview(b"[2]")), [[1], [2]])


# -- limits --------------------------------------------------------------------------------


def test_limit_constants_are_qemus() -> None:
    assert (MAX_TOKEN_SIZE, MAX_TOKEN_COUNT, MAX_NESTING) == (64 << 20, 2 << 20, 1024)


def test_token_count_limit() -> None:
    assert_msgs(feed(b"[1,2]", max_token_count=5), [[1, 2]])
    # The 6th token ('3') fails and is dropped with the message; then ']' stands alone.
    assert_msgs(
        feed(b"[1,2,3] [4]", max_token_count=5),
        [JSONParseError("JSON token count limit exceeded"), err("expecting value"), [4]],
    )


def test_message_size_limit() -> None:
    # Sum of token lengths + 1 must not pass the limit: 1 + 7 + 1 (+ 1) = 10.
    assert_msgs(feed(b'["abcde"]', max_token_size=10), [["abcde"]])
    assert_msgs(
        feed(b'["abcdef"] []', max_token_size=10),
        [JSONParseError("JSON token size limit exceeded"), []],
    )


def test_token_size_limit_restarts_the_lexer() -> None:
    # The token is cut after limit + 1 bytes; what follows is lexed from scratch.
    assert_msgs(
        feed(b'"abcdefghxyz [1]', max_token_size=8),
        [JSONParseError("JSON token size limit exceeded"), err("invalid keyword 'xyz'"), [1]],
    )


@pytest.mark.slow
def test_token_size_limit_at_qemus_size() -> None:
    ok = b'["' + b"a" * (MAX_TOKEN_SIZE - 5) + b'"]'
    assert feed_once(ok) == [["a" * (MAX_TOKEN_SIZE - 5)]]
    too_big = b'["' + b"a" * (MAX_TOKEN_SIZE - 4) + b'"]'
    assert feed_once(too_big) == [JSONParseError("JSON token size limit exceeded")]


def feed_once(data: bytes) -> list[Message]:
    fast = JSONStreamParser().feed(data)
    assert fast == JSONStreamParser(accelerate=False).feed(data)
    return fast


# -- fast path: every case it must hand to the exact path ---------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1, "a": 2}',
        b'{"a": NaN}',
        b"[Infinity, -Infinity]",
        b'["\\u00e9", "\\ud800"]',
        b'["\\uFFFF"]',
        b"[12345678901234567890123, -9223372036854775809, 18446744073709551615]",
        b"[" + b"1" * 5000 + b"]",
        b'["\xef\xbf\xbe"]',
        b'["\xc0\x80"]',
        b'["\xed\xa0\x80"]',
        b'["\xc3\xa9", "\xf0\x9d\x84\x9e"] {"\xc3\xa9": 1}',
        b"{'a': \"b\", \"c\": 'd'}",
        b'["[[[[", ' + b"[" * 1000 + b"]" * 1000 + b"]",
        b"[" * 1025 + b"]" * 1025,
        b"[" * 900 + b"]" * 900,
        b'{"a": [1, 2, {"b": null}], "c": "' + b"x" * 5000 + b'"}',
        b'{"execute": "x"} {"execute": "y", "id": [1.5, -0, -0.0, true]}\n\n',
        b'{"a": 1}\xff{"b": 2}',
        b'{"a": "\x7f"} [1, 2',
    ],
)
def test_fast_path_agrees_with_exact_path(data: bytes) -> None:
    feed(data)
    feed(data, max_token_size=64, max_token_count=16, max_nesting=3)
