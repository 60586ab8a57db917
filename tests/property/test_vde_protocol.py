"""Property tests of the vde_plug protocol machine: totality on garbage, chunk invariance,
request round trip, URL parsing never crashes."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.vde.protocol import (
    SOCKADDR_UN_LEN,
    PlugError,
    ReplyReader,
    decode_request,
    encode_request,
    sockaddr_un,
    split_url,
    target,
)

paths = st.binary(min_size=1, max_size=100).map(lambda b: b"/" + b.replace(b"\0", b"x"))


def feed_all(chunks: list[bytes]) -> bytes | None:
    reader = ReplyReader()
    for chunk in chunks:
        got = reader.feed(chunk)
        if got is not None:
            return got
    return None


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=6))
def test_reply_reader_is_total(chunks: list[bytes]) -> None:
    try:
        got = feed_all(chunks)
    except PlugError as exc:
        assert exc.reason  # a clear text, never another exception
        return
    if got is not None:
        assert got.startswith(b"/") and b"\0" not in got


@settings(max_examples=200)
@given(paths, st.lists(st.integers(min_value=1, max_value=SOCKADDR_UN_LEN - 1), max_size=5))
def test_reply_chunking_does_not_matter(path: bytes, cuts: list[int]) -> None:
    whole = sockaddr_un(path)
    points = sorted(set(cuts))
    chunks = [whole[a:b] for a, b in zip([0, *points], [*points, len(whole)], strict=True)]
    assert feed_all([c for c in chunks if c]) == path


@given(st.integers(min_value=0, max_value=0xFFFFFFFF), paths, st.binary(max_size=300))
def test_request_round_trip(kind: int, path: bytes, descr: bytes) -> None:
    kind_out, path_out, descr_out = decode_request(encode_request(kind, path, descr))
    assert (kind_out, path_out) == (kind, path)
    assert descr_out == descr.split(b"\0", 1)[0][:127]


@settings(max_examples=300)
@given(
    st.one_of(st.text(max_size=80), st.from_regex(r"/tmp/x\[(po|port|g|mode)=[0-9]{0,24}\]")),
    st.integers(min_value=0, max_value=65535),
)
def test_url_parsing_is_total(url: str, port: int) -> None:
    if "\0" in url or os.path.isfile(url.split("[")[0] or "/nonexistent"):
        return
    try:
        split_url(url)
        t = target(url, port, None, None, read_indirect=False)
    except PlugError as exc:
        assert exc.reason
        return
    assert t.dirs and -1 <= t.port <= 0xFFFFFF and 0 <= t.mode <= 0o7777
