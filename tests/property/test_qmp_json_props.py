"""Properties of QEMU-compatible JSON streaming (netstack.qmp.jsonstream / jsonout).

* totality: any bytes give JSON values or JSONParseErrors, never an exception;
* chunk invariance: any split of a stream into ``feed`` calls gives the same messages;
* the fast path equals the exact path, on valid, near-valid and random input;
* round trip: ``to_json`` output reads back to an equal value, and re-encoding is stable.
"""

from __future__ import annotations

from typing import TypedDict, Unpack

from hypothesis import given, settings
from hypothesis import strategies as st

from netstack.qmp.jsonout import to_json, valid_codepoint
from netstack.qmp.jsonstream import JSONParseError, JSONStreamParser, JSONValue, Message

FRAGMENTS = [
    *(bytes([b]) for b in b"{}[]:,\"'\\u019-.e+ \n\t\x00\x01\xfe\xff\xc3\xa9\xc0\x80\xed\xa0%/x"),
    b"true",
    b"null",
    b"false",
    b'"a"',
    b"'b'",
    b"12345678901234567890",
    b"\\u00e9",
    b"\\uD834\\uDD1E",
    b"\\ud800",
    b"\xef\xbf\xbe",
    b"\xf0\x9d\x84\x9e",
    b'{"execute": "x", "id": 1}',
    b'[1, 2.5, "s"]',
    b'{"a": 1, "a": 2}',
]

streams = st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=3), max_size=40).map(b"".join)


class Limits(TypedDict, total=False):
    max_token_size: int
    max_token_count: int
    max_nesting: int


LIMITS: list[Limits] = [
    {},
    {"max_token_size": 12, "max_token_count": 9, "max_nesting": 3},
    {"max_token_size": 40, "max_token_count": 100, "max_nesting": 1},
]


def canon(x: object) -> str:
    """Type-exact text of messages (1, 1.0 and True differ; so do -0.0 and 0.0)."""
    if isinstance(x, list):
        return "[" + ",".join(canon(v) for v in x) + "]"
    if isinstance(x, dict):
        return "{" + ",".join(f"{k!r}:{canon(v)}" for k, v in x.items()) + "}"
    return f"{type(x).__name__}:{x!r}"


def run(chunks: list[bytes], accelerate: bool = True, **limits: Unpack[Limits]) -> list[Message]:
    parser = JSONStreamParser(accelerate=accelerate, **limits)
    out: list[Message] = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def is_json_value(x: object) -> bool:
    if x is None or isinstance(x, bool | int | float | str):
        return True
    if isinstance(x, list):
        return all(is_json_value(v) for v in x)
    if isinstance(x, dict):
        return all(isinstance(k, str) and is_json_value(v) for k, v in x.items())
    return False


@settings(max_examples=400)
@given(st.binary(max_size=300) | streams, st.sampled_from(LIMITS))
def test_totality(data: bytes, limits: Limits) -> None:
    for accelerate in (True, False):
        parser = JSONStreamParser(accelerate=accelerate, **limits)
        for message in parser.feed(data) + parser.flush():
            if isinstance(message, JSONParseError):
                assert message.desc.startswith("JSON ")
            else:
                assert is_json_value(message)


@settings(max_examples=400)
@given(streams, st.lists(st.integers(0, 1000), max_size=6), st.sampled_from(LIMITS))
def test_chunk_invariance(data: bytes, cuts: list[int], limits: Limits) -> None:
    whole = canon(run([data], accelerate=False, **limits))
    chunks = split(data, cuts)
    assert canon(run(chunks, accelerate=False, **limits)) == whole
    assert canon(run(chunks, **limits)) == whole
    assert canon(run([data], **limits)) == whole


json_text = st.text(
    st.characters(exclude_categories=["Cs"]).filter(lambda c: valid_codepoint(ord(c))),
    max_size=12,
)
json_values: st.SearchStrategy[JSONValue] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(json_text, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300)
@given(json_values, st.booleans())
def test_round_trip(value: JSONValue, pretty: bool) -> None:
    text = to_json(value, pretty=pretty)
    assert text.isascii()
    messages = run([text.encode() + b"\n"])
    assert len(messages) == 1
    assert messages[0] == value  # floats printed without a point read back as equal ints
    again = to_json(messages[0], pretty=pretty, qdict_order=False)
    assert to_json(run([again.encode() + b"\n"])[0], pretty=pretty, qdict_order=False) == again


mutations = st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 3), st.sampled_from(FRAGMENTS)),
    max_size=3,
)


def mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for pos, drop, insert in edits:
        at = pos % (len(data) + 1)
        data = data[:at] + insert + data[at + drop :]
    return data


@settings(max_examples=400)
@given(
    st.lists(json_values, min_size=1, max_size=3),
    mutations,
    st.lists(st.integers(0, 1000), max_size=4),
    st.sampled_from(LIMITS),
)
def test_fast_path_equals_exact_path(
    values: list[JSONValue],
    edits: list[tuple[int, int, bytes]],
    cuts: list[int],
    limits: Limits,
) -> None:
    data = mutate(b" ".join(to_json([v]).encode() for v in values), edits)
    exact = canon(run([data], accelerate=False, **limits))
    assert canon(run([data], **limits)) == exact
    assert canon(run(split(data, cuts), **limits)) == exact
