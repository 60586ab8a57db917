"""Streaming JSON input exactly as QEMU's QMP monitor and guest agent read it.

Owns the byte stream -> message sequence step of QMP and QGA: a sans-IO
:class:`JSONStreamParser` whose ``feed(bytes)`` returns the messages completed by those
bytes, each a parsed value (``dict``/``list``/``str``/``int``/``float``/``bool``/``None``)
or a :class:`JSONParseError` carrying QEMU's error text.

Spec: ``qobject/json-lexer.c``, ``json-streamer.c``, ``json-parser.c`` and ``util/unicode.c`` (QEMU
3.1 to 10.0; the code was read at 10.0-era revisions); message boundaries, error texts, limits and
echoed values were checked byte for byte against a running QEMU 7.2
(``tests/property/test_qmp_json_qemu.py``).

* Lexer: QEMU's DFA (:data:`_TABLE`), with QEMU's extensions (single-quoted strings, ``\\'``)
  and without interpolation. A byte it cannot take is a lexical error: the partial token
  plus that byte becomes ``JSON parse error, stray '<token>'`` (cut at a NUL byte), and
  bytes are then skipped until a structural character, an ASCII control character other
  than TAB, or 0xFE/0xFF. Numbers and keywords end only on the next byte.
* Streamer: a message ends with the token that leaves no ``{`` or ``[`` open, or that
  closes one more than was opened (a stray ``}`` or ``]`` is a message by itself). Limits:
  64 MiB per token and per message, 2 Mi tokens, nesting 1024; each breach is one error
  and drops the message so far.
* Parser: recursive descent in QEMU's order (iterative here), first error wins; strings are
  modified UTF-8 (``\\xC0\\x80`` is U+0000) without surrogates or noncharacters; integers
  are int64, else uint64, else ``strtod``; duplicate keys are an error.

Invariants: ``feed`` never raises on any input; the messages and the point at which each
is produced do not depend on how the stream is split into ``feed`` calls; the fast path
(Python's C ``json`` scanner for a complete ``{``/``[`` message, used only when its result
is provably the exact path's) is observably identical to the exact path
(``accelerate=False``). What is held for an unfinished message is bounded by the limits
(about twice ``max_token_size`` bytes, at most ``max_token_count`` token objects).
"""

from __future__ import annotations

import json
import json.scanner
import re
from collections.abc import Callable
from typing import Any, TypeAlias, cast

from netstack.errors import RemoteInputError
from netstack.qmp.jsonout import mod_utf8_decode, valid_codepoint

__all__ = [
    "MAX_NESTING",
    "MAX_TOKEN_COUNT",
    "MAX_TOKEN_SIZE",
    "JSONParseError",
    "JSONStreamParser",
    "JSONValue",
    "Message",
    "parse_json",
]

JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None

MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10


class JSONParseError(RemoteInputError):
    """One bad message; ``desc`` is QEMU's text, e.g. ``JSON parse error, expecting value``."""

    def __init__(self, desc: str) -> None:
        super().__init__(desc)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JSONParseError) and other.desc == self.desc

    def __hash__(self) -> int:
        return hash(self.desc)

    def __repr__(self) -> str:
        return f"JSONParseError({self.desc!r})"


Message: TypeAlias = JSONValue | JSONParseError

# Lexer states and token types, numbered as in json-lexer.c (error 0, recovery 1).
_ERROR, _RECOVERY, _DQ_ESC, _DQ, _SQ_ESC, _SQ, _ZERO, _EXP_DIGITS = range(8)
_EXP_SIGN, _EXP_E, _MANT, _MANT_DIGITS, _DIGITS, _SIGN, _KEYWORD, _START = range(8, 16)
_T_LCURLY, _T_RCURLY, _T_LSQUARE, _T_RSQUARE, _T_COLON, _T_COMMA = range(16, 22)
_T_INTEGER, _T_FLOAT, _T_KEYWORD, _T_STRING = range(22, 26)
_T_MIN = _T_LCURLY
_LOOKAHEAD = 0x80  # transition that does not consume the byte
_DIGIT_BYTES = b"0123456789"


def _build_table() -> tuple[tuple[int, ...], ...]:
    rows = [[_ERROR] * 256 for _ in range(_START + 1)]

    def put(state: int, chars: bytes | range, value: int) -> None:
        for b in chars:
            rows[state][b] = value

    def terminal(state: int, token: int) -> None:
        put(state, range(256), token | _LOOKAHEAD)

    put(_RECOVERY, range(0x20), _START | _LOOKAHEAD)
    put(_RECOVERY, range(0x20, 0xFE), _RECOVERY)
    put(_RECOVERY, b"\xfe\xff[]{}:,", _START | _LOOKAHEAD)
    put(_RECOVERY, b"\t", _RECOVERY)
    for esc, body, quote in ((_DQ_ESC, _DQ, b'"'), (_SQ_ESC, _SQ, b"'")):
        put(esc, range(0x20, 0xFE), body)
        put(body, range(0x20, 0xFE), body)
        put(body, b"\\", esc)
        put(body, quote, _T_STRING)
    terminal(_ZERO, _T_INTEGER)
    put(_ZERO, _DIGIT_BYTES, _ERROR)
    put(_ZERO, b".", _MANT)
    terminal(_EXP_DIGITS, _T_FLOAT)
    put(_EXP_DIGITS, _DIGIT_BYTES, _EXP_DIGITS)
    put(_EXP_SIGN, _DIGIT_BYTES, _EXP_DIGITS)
    put(_EXP_E, b"-+", _EXP_SIGN)
    put(_EXP_E, _DIGIT_BYTES, _EXP_DIGITS)
    terminal(_MANT_DIGITS, _T_FLOAT)
    put(_MANT_DIGITS, _DIGIT_BYTES, _MANT_DIGITS)
    put(_MANT_DIGITS, b"eE", _EXP_E)
    put(_MANT, _DIGIT_BYTES, _MANT_DIGITS)
    terminal(_DIGITS, _T_INTEGER)
    put(_DIGITS, _DIGIT_BYTES, _DIGITS)
    put(_DIGITS, b"eE", _EXP_E)
    put(_DIGITS, b".", _MANT)
    put(_SIGN, b"0", _ZERO)
    put(_SIGN, b"123456789", _DIGITS)
    terminal(_KEYWORD, _T_KEYWORD)
    put(_KEYWORD, range(0x61, 0x7B), _KEYWORD)
    put(_START, b'"', _DQ)
    put(_START, b"'", _SQ)
    put(_START, b"0", _ZERO)
    put(_START, b"123456789", _DIGITS)
    put(_START, b"-", _SIGN)
    for ch, tok in zip(b"{}[]:,", range(_T_LCURLY, _T_COMMA + 1), strict=True):
        rows[_START][ch] = tok
    put(_START, range(0x61, 0x7B), _KEYWORD)
    put(_START, b" \t\r\n", _START)
    return tuple(tuple(row) for row in rows)


_TABLE = _build_table()


def _self_loop(state: int) -> re.Pattern[bytes] | None:
    """A regex for a run of bytes that keep ``state`` (an optimisation of the DFA)."""
    loop = bytes(b for b in range(256) if _TABLE[state][b] == state)
    if not loop:
        return None
    return re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in loop) + b"]+")


_RUNS = tuple(_self_loop(s) for s in range(_START + 1))
_ACCUMULATING = frozenset(range(_DQ_ESC, _START))  # states whose bytes form the token
_WS = re.compile(rb"[ \t\r\n]+")
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")
_NONCHAR = re.compile(
    "[\ufdd0-\ufdef\ufffe\uffff"
    + "".join(chr(p << 16 | 0xFFFE) + chr(p << 16 | 0xFFFF) for p in range(1, 17))
    + "]"
)
_SIMPLE_ESCAPES = dict(zip(b"\"'\\/bfnrt", "\"'\\/\b\f\n\r\t", strict=True))
_KEYWORDS: dict[bytes, JSONValue] = {b"true": True, b"false": False, b"null": None}


class _Fail(Exception):
    """A parse error; ``args[0]`` is the detail after ``JSON parse error, `` (bytes)."""


def _error(detail: bytes) -> JSONParseError:
    # parse_error() formats into char[1024]; the writer shows bytes as mod_utf8 does.
    text = mod_utf8_decode(detail[:1023].split(b"\0", 1)[0], replace=True)
    return JSONParseError("JSON parse error, " + (text or ""))


def _decode_text(seg: bytes) -> str:
    """A run of a string token without escapes, validated like parse_string()."""
    if seg.isascii():
        return seg.decode("ascii")
    try:
        text = seg.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if _NONCHAR.search(text) is None:
            return text
    exact = mod_utf8_decode(seg, replace=False)
    if exact is None:
        raise _Fail(b"invalid UTF-8 sequence in string")
    return exact


def _hex4(tok: bytes, p: int) -> int:
    digits = tok[p : p + 4]
    return int(digits, 16) if _HEX4.fullmatch(digits) else -1


def _parse_string(tok: bytes) -> str:
    end = len(tok) - 1  # the closing quote
    pos = 1
    parts: list[str] = []
    while True:
        k = tok.find(b"\\", pos, end)
        if k < 0:
            parts.append(_decode_text(tok[pos:end]))
            return "".join(parts)
        if k > pos:
            parts.append(_decode_text(tok[pos:k]))
        c = tok[k + 1]
        simple = _SIMPLE_ESCAPES.get(c)
        if simple is not None:
            parts.append(simple)
            pos = k + 2
            continue
        if c != 0x75:  # 'u'
            raise _Fail(b"invalid escape sequence in string")
        cp, pos = _hex4(tok, k + 2), k + 6
        if 0xD800 <= cp <= 0xDBFF and tok[pos : pos + 2] == b"\\u":
            trailing = _hex4(tok, pos + 2)
            if 0xDC00 <= trailing <= 0xDFFF:
                cp, pos = 0x10000 + ((cp & 0x3FF) << 10 | trailing & 0x3FF), pos + 6
            else:
                cp = -1
        if not valid_codepoint(cp):
            raise _Fail(tok[k:pos] + b" is not a valid Unicode character")
        parts.append(chr(cp))


def _parse_number(tok: bytes) -> int | float:
    if b"." in tok or b"e" in tok or b"E" in tok:
        return float(tok)
    if len(tok) <= 20:  # else certainly beyond uint64 (and int() might refuse it)
        value = int(tok)
        if -(1 << 63) <= value < 1 << 63 or (tok[0] != 0x2D and value < 1 << 64):
            return value
    return float(tok)


def _parse_keyword(tok: bytes) -> JSONValue:
    if tok in _KEYWORDS:
        return _KEYWORDS[tok]
    raise _Fail(b"invalid keyword '" + tok + b"'")


class _Frame:
    __slots__ = ("container", "key", "mode")

    def __init__(self, container: Any, mode: int) -> None:
        self.container = container
        self.mode = mode
        self.key = ""


_ELEM, _KEY, _VALUE = range(3)


def _parse_tokens(tokens: list[bytes]) -> JSONValue:
    """json_parser_parse(): one value from ``tokens``; raises :class:`_Fail`."""
    n, pos = len(tokens), 0
    stack: list[_Frame] = []
    value: JSONValue
    while True:  # parse_value() at tokens[pos]
        if pos >= n:
            raise _Fail(b"premature EOI")
        tok = tokens[pos]
        c = tok[0]
        pos += 1
        if c == 0x7B or c == 0x5B:  # { [
            if pos >= n:
                raise _Fail(b"premature EOI")
            if tokens[pos] == (b"}" if c == 0x7B else b"]"):
                pos += 1
                value = {} if c == 0x7B else []
            else:
                stack.append(_Frame({} if c == 0x7B else [], _KEY if c == 0x7B else _ELEM))
                continue
        elif c == 0x22 or c == 0x27:
            value = _parse_string(tok)
        elif c == 0x2D or 0x30 <= c <= 0x39:
            value = _parse_number(tok)
        elif 0x61 <= c <= 0x7A:
            value = _parse_keyword(tok)
        else:
            raise _Fail(b"expecting value")
        while stack:  # hand the finished value to the enclosing containers
            frame = stack[-1]
            if frame.mode == _KEY:
                if not isinstance(value, str):
                    raise _Fail(b"key is not a string in object")
                frame.key = value
            elif frame.mode == _VALUE:
                if frame.key in frame.container:
                    raise _Fail(b"duplicate key")
                frame.container[frame.key] = value
            else:
                frame.container.append(value)
            if pos >= n:
                raise _Fail(b"premature EOI")
            tok = tokens[pos]
            pos += 1
            if frame.mode == _KEY:
                if tok != b":":
                    raise _Fail(b"missing : in object pair")
                frame.mode = _VALUE
                break
            if tok == (b"]" if frame.mode == _ELEM else b"}"):
                value = frame.container
                stack.pop()
                continue
            if tok != b",":
                raise _Fail(
                    b"expected separator in list"
                    if frame.mode == _ELEM
                    else b"expected separator in dict"
                )
            if frame.mode == _VALUE:
                frame.mode = _KEY
            break
        else:
            return value


class _NotExact(Exception):
    """The C scanner met something it would decode differently from QEMU."""


def _pairs_to_dict(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _NotExact
    return result


def _refuse_constant(name: str) -> Any:
    raise _NotExact(name)  # NaN / Infinity are not JSON to QEMU


def _qemu_int(text: str) -> int | float:
    return _parse_number(text.encode("ascii"))


_FAST = json.JSONDecoder(object_pairs_hook=_pairs_to_dict, parse_constant=_refuse_constant)
_FAST_BIGINT = json.JSONDecoder(
    object_pairs_hook=_pairs_to_dict, parse_constant=_refuse_constant, parse_int=_qemu_int
)
_scan_once: Callable[[str, int], tuple[Any, int]] = json.scanner.make_scanner(cast(Any, _FAST))
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_SCAN = re.compile(rb"""[{}\[\]']|"[^"\\]*(?:\\.[^"\\]*)*(")?""", re.S)


class JSONStreamParser:
    """QEMU's ``JSONMessageParser``: feed bytes, get the messages they complete.

    ``max_token_size``, ``max_token_count`` and ``max_nesting`` default to QEMU's limits;
    lowering them bounds memory (errors then read as QEMU's, at the lower limit).
    ``accelerate=False`` disables the fast path (for differential testing).
    """

    def __init__(
        self,
        *,
        max_token_size: int = MAX_TOKEN_SIZE,
        max_token_count: int = MAX_TOKEN_COUNT,
        max_nesting: int = MAX_NESTING,
        accelerate: bool = True,
    ) -> None:
        self._max_size = max_token_size
        self._max_count = max_token_count
        self._max_nesting = max_nesting
        self._accelerate = accelerate
        self._fast_max = min(max_token_count, max_token_size - 1, 1 << 21)
        self._state = _START
        self._tok = bytearray()
        self._tokens: list[bytes] = []
        self._token_size = 0
        self._brace = 0
        self._bracket = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished message (partial token plus queued tokens)."""
        return len(self._tok) + self._token_size

    def reset(self) -> None:
        """Forget all state, as QEMU does when a monitor's connection closes."""
        self._state = _START
        self._tok.clear()
        self._drop_message()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Consume ``data``; return the messages it completed, in stream order."""
        if type(data) is not bytes:
            data = bytes(data)
        out: list[Message] = []
        i, n = 0, len(data)
        if not self._accelerate:
            self._lex(data, 0, n, out, stop=False)
            return out
        if self._state != _START or self._tokens:
            i = self._lex(data, 0, n, out, stop=True)
        text = data.decode("latin-1") if data.isascii() else None
        while i < n:
            c = data[i]
            if c == 0x7B or c == 0x5B:
                end = self._try_fast(data, text, i, out)
                if end > 0:
                    i = end
                    continue
            elif c in b" \t\r\n":
                ws = _WS.match(data, i)
                i = ws.end() if ws is not None else i + 1
                continue
            i = self._lex(data, i, n, out, stop=True)
        return out

    def flush(self) -> list[Message]:
        """End of input (``json_message_parser_flush``): finish or fail what is pending."""
        out: list[Message] = []
        state, tok = self._state, self._tok
        while state != _START:
            nxt = _TABLE[state][0] & ~_LOOKAHEAD
            if nxt >= _T_MIN:
                self._token(bytes(tok), out)
            elif nxt == _ERROR:
                self._stray(bytes(tok), out)
                nxt = _RECOVERY
            tok.clear()
            state = nxt if nxt < _T_MIN else _START
        self._state = _START
        if self._tokens:
            out.append(self._parse())
        return out

    # -- exact path: lexer -------------------------------------------------------------

    def _lex(self, data: bytes, i: int, end: int, out: list[Message], stop: bool) -> int:
        """Run QEMU's lexer over ``data[i:end]``; with ``stop``, return once idle."""
        table, runs, tok, limit = _TABLE, _RUNS, self._tok, self._max_size
        state = self._state
        while i < end:
            run = runs[state]
            if run is not None and (m := run.match(data, i, end)) is not None:
                j = m.end()
                if state in _ACCUMULATING:
                    j = min(j, i + limit + 1 - len(tok))
                    tok += data[i:j]
                i = j
                if len(tok) > limit:
                    tok.clear()
                    state = _START
                    self._fail("JSON token size limit exceeded", out)
                    continue
                if i >= end:
                    break
            b = data[i]
            nxt = table[state][b]
            if nxt & _LOOKAHEAD:
                nxt ^= _LOOKAHEAD
            else:
                tok.append(b)
                i += 1
            if nxt >= _T_MIN:
                self._token(bytes(tok), out)
                tok.clear()
                state = _START
            elif nxt == _ERROR:
                self._stray(bytes(tok), out)
                tok.clear()
                state = _RECOVERY
            elif nxt in (_START, _RECOVERY):
                tok.clear()
                state = nxt
            else:
                state = nxt
                if len(tok) > limit:
                    tok.clear()
                    state = _START
                    self._fail("JSON token size limit exceeded", out)
            if stop and state == _START and not self._tokens:
                break
        self._state = state
        return i

    # -- exact path: streamer ----------------------------------------------------------

    def _drop_message(self) -> None:
        self._tokens = []
        self._token_size = self._brace = self._bracket = 0

    def _fail(self, desc: str, out: list[Message]) -> None:
        self._drop_message()
        out.append(JSONParseError(desc))

    def _stray(self, tok: bytes, out: list[Message]) -> None:
        text = mod_utf8_decode(tok.split(b"\0", 1)[0], replace=True)
        self._fail(f"JSON parse error, stray '{text}'", out)

    def _token(self, tok: bytes, out: list[Message]) -> None:
        """json_message_process_token() for a token the lexer completed."""
        c = tok[0]
        if c == 0x7B:
            self._brace += 1
        elif c == 0x7D:
            self._brace -= 1
        elif c == 0x5B:
            self._bracket += 1
        elif c == 0x5D:
            self._bracket -= 1
        size = self._token_size + len(tok)
        if size + 1 > self._max_size:
            return self._fail("JSON token size limit exceeded", out)
        if len(self._tokens) + 1 > self._max_count:
            return self._fail("JSON token count limit exceeded", out)
        if self._brace + self._bracket > self._max_nesting:
            return self._fail("JSON nesting depth limit exceeded", out)
        self._tokens.append(tok)
        self._token_size = size
        if (self._brace > 0 or self._bracket > 0) and self._brace >= 0 and self._bracket >= 0:
            return None
        out.append(self._parse())
        return None

    def _parse(self) -> Message:
        tokens = self._tokens
        self._drop_message()
        try:
            return _parse_tokens(tokens)
        except _Fail as exc:
            return _error(exc.args[0])

    # -- fast path ---------------------------------------------------------------------

    def _try_fast(self, data: bytes, text: str | None, i: int, out: list[Message]) -> int:
        """Decode the ``{``/``[`` message at ``data[i]`` with the C scanner if that is exact.

        Returns the end offset, or -1 to leave the message to the exact path: when it is
        incomplete or invalid, or could meet a limit, a ``\\u`` escape, an integer beyond
        64 bits, a noncharacter, C0 80, or invalid UTF-8 (the cases where Python differs).
        """
        if text is None:  # not ASCII: find QEMU's message end, then decode just that
            end, depth = self._scan_message(data, i)
            if end < 0 or depth > self._max_nesting or end - i > self._fast_max:
                return -1
            try:
                doc = data[i:end].decode("utf-8")
            except UnicodeDecodeError:
                return -1
            if _NONCHAR.search(doc) is not None:
                return -1
            start = 0
        else:  # ASCII: str offsets are byte offsets
            doc, start = text, i
        try:
            value, stop = _scan_once(doc, start)
        except (StopIteration, ValueError, _NotExact, RecursionError):
            return -1
        if text is None:
            if stop != len(doc):
                return -1
        else:
            end = stop
            if end - i > self._fast_max:
                return -1
        seg = data[i:end]
        if b"\\u" in seg:
            return -1
        limit = self._max_nesting
        brackets = seg.count(b"[") + seg.count(b"{") if len(seg) > limit else 0
        if brackets > limit and self._scan_message(data, i)[1] > limit:
            return -1
        if len(seg) - len(seg.translate(None, _DIGIT_BYTES)) >= 19 and _LONG_DIGITS.search(seg):
            value = _FAST_BIGINT.raw_decode(doc, start)[0]
        out.append(value)
        return end

    @staticmethod
    def _scan_message(data: bytes, i: int) -> tuple[int, int]:
        """Where QEMU's streamer would end the message starting at ``data[i]``.

        Returns ``(end, deepest nesting)``, or ``(-1, 0)`` if the message is incomplete
        or holds a single-quoted string (for the exact path).
        """
        brace = bracket = deepest = 0
        for m in _SCAN.finditer(data, i):
            c = data[m.start()]
            if c == 0x22:
                if m.group(1) is None:
                    return -1, 0
                continue
            if c == 0x27:
                return -1, 0
            if c == 0x7B:
                brace += 1
            elif c == 0x7D:
                brace -= 1
            elif c == 0x5B:
                bracket += 1
            else:
                bracket -= 1
            deepest = max(deepest, brace + bracket)
            if not ((brace > 0 or bracket > 0) and brace >= 0 and bracket >= 0):
                return m.end(), deepest
        return -1, 0


def parse_json(data: bytes | str) -> JSONValue:
    """QEMU's ``qobject_from_json``: exactly one value from a C string, else raise.

    Raises :class:`JSONParseError` with the first error, ``Expecting a JSON value`` for
    blank input, or ``Expecting at most one JSON value``.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    parser = JSONStreamParser()
    messages = parser.feed(raw.split(b"\0", 1)[0]) + parser.flush()
    if not messages:
        raise JSONParseError("Expecting a JSON value")
    first = messages[0]
    if isinstance(first, JSONParseError):
        raise first
    if len(messages) > 1:
        raise JSONParseError("Expecting at most one JSON value")
    return first
