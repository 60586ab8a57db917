"""JSON output byte-identical to QEMU's QMP monitor and guest agent.

Owns turning a Python JSON value into the text QEMU's ``qobject_to_json_pretty()`` prints
(``qobject/qjson.c`` ``to_json`` over ``qobject/json-writer.c``, QEMU 7.2-10.0), and the
QMP/QGA line framing around it (``monitor/qmp.c`` ``qmp_send_response``, ``qga/main.c``
``send_response``).

* Compact form: ``{"a": 1, "b": [1, 2]}`` (``": "`` after a key, ``", "`` between members).
* Pretty form: a newline and four spaces per level before every member, the closing
  bracket on its own line; an empty container prints as ``{`` newline ``}``.
* Strings: pure ASCII; ``\\"`` ``\\\\`` ``\\b`` ``\\f`` ``\\n`` ``\\r`` ``\\t``; other
  characters below 0x20 or from 0x7F as ``\\uXXXX`` with upper-case hex, surrogate pairs
  beyond the BMP; ``/`` and ``'`` are not escaped. What QEMU's modified UTF-8 cannot hold
  (lone surrogates, the 66 noncharacters) prints as ``\\uFFFD``, as QEMU prints bad bytes.
* :func:`mod_utf8_decode` reads C-string bytes the way the writer does (U+FFFD for each
  invalid sequence); the input side uses its strict form to validate strings.
* Numbers: integers in decimal; floats as ``%.17g`` (``1500.0`` prints ``1500``; infinities
  print ``inf`` as QEMU does, which is not JSON).
* Object members in QEMU's ``QDict`` iteration order (hash bucket, newest first within a
  bucket; see :mod:`netstack.qmp.qdict_order`), the dict's insertion order being taken as
  QEMU's insertion order. Pass dicts in insertion order, not already reordered.

Invariant: the output is ASCII and reads back (:mod:`netstack.qmp.jsonstream`) to an equal
value for every finite JSON value whose strings QEMU can hold.
"""

from __future__ import annotations

import re

from netstack.qmp.qdict_order import ordered_keys

__all__ = [
    "format_float",
    "mod_utf8_decode",
    "qga_line",
    "qmp_line",
    "quote",
    "to_json",
    "valid_codepoint",
]

_PLAIN = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
_ESCAPES["\t"] = "\\t"


_MIN_CP = (0, 0, 0x80, 0x800, 0x10000, 0x200000, 0x4000000)


def valid_codepoint(cp: int) -> bool:
    """``is_valid_codepoint``: in range, not a surrogate, not one of the 66 noncharacters."""
    return (
        0 <= cp <= 0x10FFFF
        and not 0xD800 <= cp <= 0xDFFF
        and not 0xFDD0 <= cp <= 0xFDEF
        and cp & 0xFFFE != 0xFFFE
    )


def mod_utf8_decode(data: bytes, *, replace: bool) -> str | None:
    """Decode modified UTF-8 sequence by sequence as QEMU's ``mod_utf8_codepoint`` does.

    With ``replace`` every invalid sequence becomes U+FFFD (how QEMU's JSON writer prints
    a C string), else the first invalid sequence makes the result ``None``. ``data`` must
    not contain NUL bytes (C strings end there).
    """
    out: list[str] = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        i += 1
        if b < 0x80:
            out.append(chr(b))
            continue
        cp = -1
        if b < 0xFE and b & 0x40:
            length = 2 if b < 0xE0 else 3 if b < 0xF0 else 4 if b < 0xF8 else 5 if b < 0xFC else 6
            cp = b & ((0x80 >> length) - 1)
            for _ in range(length - 1):
                c = data[i] if i < n else 0
                if c & 0xC0 != 0x80:
                    cp = -1
                    break
                cp = cp << 6 | c & 0x3F
                i += 1
            else:
                if not valid_codepoint(cp) or (cp < _MIN_CP[length] and (cp or length != 2)):
                    cp = -1
        if cp >= 0:
            out.append(chr(cp))
        elif replace:
            out.append("\ufffd")
        else:
            return None
    return "".join(out)


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    esc = _ESCAPES.get(ch)
    if esc is not None:
        return esc
    cp = ord(ch)
    if not valid_codepoint(cp):
        return "\\uFFFD"
    if cp > 0xFFFF:
        cp -= 0x10000
        return f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}"
    return f"\\u{cp:04X}"


def quote(s: str) -> str:
    """``s`` as a JSON string literal, escaped as QEMU's JSON writer does."""
    if _PLAIN.search(s) is None:
        return '"' + s + '"'
    return '"' + _PLAIN.sub(_escape, s) + '"'


def format_float(x: float) -> str:
    """A double as QEMU prints it (``%.17g``)."""
    return f"{x:.17g}"


def _keys(d: dict[str, object], qdict_order: bool) -> list[str]:
    for k in d:
        if not isinstance(k, str):
            raise TypeError(f"JSON object keys must be str, not {type(k).__name__}")
    return ordered_keys(d) if qdict_order else list(d)


def _scalar(v: object) -> str | None:
    """The text of a non-container value, or None for a container."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return quote(v)
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        return f"{v:.17g}"
    if isinstance(v, dict | list | tuple):
        return None
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _compact(v: object, parts: list[str], order: bool) -> None:
    text = _scalar(v)
    if text is not None:
        parts.append(text)
    elif isinstance(v, dict):
        parts.append("{")
        for n, k in enumerate(_keys(v, order)):
            parts.append(", " + quote(k) + ": " if n else quote(k) + ": ")
            _compact(v[k], parts, order)
        parts.append("}")
    else:
        assert isinstance(v, list | tuple)
        parts.append("[")
        for n, item in enumerate(v):
            if n:
                parts.append(", ")
            _compact(item, parts, order)
        parts.append("]")


def _pretty(v: object, parts: list[str], depth: int, order: bool) -> None:
    text = _scalar(v)
    if text is not None:
        parts.append(text)
        return
    inner = "\n" + "    " * (depth + 1)
    if isinstance(v, dict):
        parts.append("{")
        for n, k in enumerate(_keys(v, order)):
            parts.append(("," if n else "") + inner + quote(k) + ": ")
            _pretty(v[k], parts, depth + 1, order)
        parts.append("\n" + "    " * depth + "}")
    else:
        assert isinstance(v, list | tuple)
        parts.append("[")
        for n, item in enumerate(v):
            parts.append(("," if n else "") + inner)
            _pretty(item, parts, depth + 1, order)
        parts.append("\n" + "    " * depth + "]")


def to_json(value: object, *, pretty: bool = False, qdict_order: bool = True) -> str:
    """``qobject_to_json_pretty(value, pretty)``; ``qdict_order=False`` keeps dict order.

    Accepts None, bool, int, float, str, list/tuple and dicts with str keys (recursively);
    anything else raises :class:`TypeError`.
    """
    parts: list[str] = []
    if pretty:
        _pretty(value, parts, 0, qdict_order)
    else:
        _compact(value, parts, qdict_order)
    return "".join(parts)


def qmp_line(value: object, *, pretty: bool = False) -> bytes:
    """One QMP server message: the JSON text with every newline sent as CR LF, then CR LF."""
    text = to_json(value, pretty=pretty)
    if pretty:
        text = text.replace("\n", "\r\n")
    return (text + "\r\n").encode("ascii")


def qga_line(value: object, *, delimit: bool = False) -> bytes:
    """One guest-agent reply: JSON then LF; ``delimit`` prefixes the 0xFF sentinel byte
    (the one reply after ``guest-sync-delimited``)."""
    line = (to_json(value) + "\n").encode("ascii")
    return b"\xff" + line if delimit else line
