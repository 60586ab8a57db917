"""String-to-scalar conversions with QEMU's exact acceptance rules.

Owns the textual number and boolean grammars QEMU uses on its command line, so every CLI
front end (QemuOpts, the options visitor, the keyval visitor) accepts and rejects exactly
the strings QEMU does. Errors are reported as :class:`ConvError` kinds (``"EINVAL"`` /
``"ERANGE"``); callers turn them into their own QEMU error texts.

Spec (QEMU ``util/cutils.c``, ``qapi/qapi-util.c``):
* ``strtoll``/``strtoull`` base 0: optional leading C whitespace and sign, ``0x`` hex,
  leading ``0`` octal, else decimal; the whole string must be consumed.
* ``qemu_strtoi64``: int64 range, else ERANGE. ``qemu_strtou64``: magnitude up to
  2**64-1, a leading ``-`` negates modulo 2**64 (like ``strtoull``).
* ``parse_uint``: like ``qemu_strtou64`` but a ``-`` sign is ERANGE.
* ``qemu_strtosz``: decimal (optionally with a fraction) or hex integer, optional suffix
  ``B K M G T P E`` (case-insensitive, powers of 1024, default bytes); a fraction needs a
  scaling suffix; hex takes no suffix; result at most 2**64-1.
* ``qapi_bool_parse``: ``on yes true y`` / ``off no false n`` (case-sensitive).

Invariant: functions are total over ``str``: they return a value or raise ConvError.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Final

from netstack.errors import NetstackError

_SPACE: Final = " \t\n\v\f\r"
_DIGITS: Final = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}
U64_MAX: Final = (1 << 64) - 1
I64_MIN: Final = -(1 << 63)
I64_MAX: Final = (1 << 63) - 1

TRUE_WORDS: Final = ("on", "yes", "true", "y")
FALSE_WORDS: Final = ("off", "no", "false", "n")


class ConvError(NetstackError):
    """A failed conversion; ``kind`` is ``"EINVAL"`` or ``"ERANGE"``."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _scan(text: str, base: int, pos: int = 0) -> tuple[bool, int, int] | None:
    """Scan an integer like C ``strtoull`` from ``pos``.

    Returns ``(negative, magnitude, end)`` or None when no digit was consumed.
    """
    n = len(text)
    i = pos
    while i < n and text[i] in _SPACE:
        i += 1
    negative = False
    if i < n and text[i] in "+-":
        negative = text[i] == "-"
        i += 1
    has_hex_prefix = text[i : i + 2] in ("0x", "0X") and i + 2 < n and text[i + 2] in _DIGITS[16]
    if base == 0:
        if has_hex_prefix:
            base, i = 16, i + 2
        elif i < n and text[i] == "0":
            base = 8
        else:
            base = 10
    elif base == 16 and has_hex_prefix:
        i += 2
    digits = _DIGITS[base]
    start = i
    while i < n and text[i] in digits:
        i += 1
    if i == start:
        return None
    return negative, int(text[start:i], base), i


def strtoi64(text: str, base: int = 0) -> int:
    """``qemu_strtoi64(text, NULL, base)`` / full-string ``strtoll``."""
    scanned = _scan(text, base)
    if scanned is None or scanned[2] != len(text):
        raise ConvError("EINVAL")
    negative, magnitude, _ = scanned
    value = -magnitude if negative else magnitude
    if not I64_MIN <= value <= I64_MAX:
        raise ConvError("ERANGE")
    return value


def strtou64(text: str, base: int = 0) -> int:
    """``qemu_strtou64(text, NULL, base)``: negative input wraps modulo 2**64."""
    scanned = _scan(text, base)
    if scanned is None or scanned[2] != len(text):
        raise ConvError("EINVAL")
    negative, magnitude, _ = scanned
    if magnitude > U64_MAX:
        raise ConvError("ERANGE")
    return (-magnitude) & U64_MAX if negative else magnitude


def parse_uint(text: str, base: int = 0) -> int:
    """``parse_uint`` requiring full consumption: rejects a ``-`` sign."""
    if text.lstrip(_SPACE).startswith("-"):
        raise ConvError("ERANGE")
    return strtou64(text, base)


_SUFFIX: Final = {"b": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def strtosz(text: str) -> int:
    """``qemu_strtosz(text, NULL)``: a byte count with optional binary suffix."""
    if text.lstrip(_SPACE).startswith("-"):
        raise ConvError("ERANGE")
    scanned = _scan(text, 10)
    end = scanned[2] if scanned else 0
    value: Fraction
    if scanned and scanned[1] == 0 and text[end : end + 1] in ("x", "X"):
        hexed = _scan(text, 16)
        if hexed is None:
            raise ConvError("EINVAL")
        end = hexed[2]
        if text[end : end + 1] == "." or text[end : end + 1].lower() in _SUFFIX:
            raise ConvError("EINVAL")
        value = Fraction(hexed[1])
    elif text[end : end + 1] == "." or (scanned is None and "." in text):
        stripped = text.lstrip(_SPACE)
        i = len(text) - len(stripped)
        if stripped.startswith("+"):
            i += 1
        whole_start = i
        while i < len(text) and text[i] in _DIGITS[10]:
            i += 1
        whole = text[whole_start:i]
        if i >= len(text) or text[i] != ".":
            raise ConvError("EINVAL")
        i += 1
        frac_start = i
        while i < len(text) and text[i] in _DIGITS[10]:
            i += 1
        frac = text[frac_start:i]
        if not whole and not frac:
            raise ConvError("EINVAL")
        value = Fraction(int(whole or "0")) + (
            Fraction(int(frac), 10 ** len(frac)) if frac else Fraction(0)
        )
        end = i
    elif scanned is None:
        raise ConvError("EINVAL")
    else:
        if scanned[0]:
            raise ConvError("ERANGE")
        value = Fraction(scanned[1])
    power = _SUFFIX.get(text[end : end + 1].lower()) if end < len(text) else None
    if power is not None:
        end += 1
    else:
        power = 0
    if end != len(text):
        raise ConvError("EINVAL")
    if power == 0 and value.denominator != 1:
        raise ConvError("EINVAL")
    scaled = value * (1024**power)
    result = int(scaled) + (1 if scaled - int(scaled) >= Fraction(1, 2) else 0)
    if result > U64_MAX:
        raise ConvError("ERANGE")
    return result


def parse_bool(text: str) -> bool:
    """``qapi_bool_parse``: the CLI boolean words."""
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ConvError("EINVAL")
