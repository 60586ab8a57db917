"""The input visitor: untyped option data in, schema dataclasses out.

Owns the translation of three input shapes into the dataclasses of this package, driven
only by the schema metadata (:mod:`.schema`), with QEMU's error texts and error order:

``Mode.QMP``
    Parsed JSON (``dict``/``list``/``str``/``int``/``float``/``bool``/``None``), as QMP
    commands and ``-netdev '{...}'`` deliver it (QEMU ``qobject-input-visitor.c``).
``Mode.KEYVAL``
    A :mod:`.keyval` tree whose leaves are strings (QEMU's keyval flavour of the same
    visitor, used by ``-netdev stream|dgram``).
``Mode.OPTS``
    A flat QemuOpts group (name -> all values), QEMU ``qapi/opts-visitor.c``: scalars take
    the last occurrence, lists take every occurrence, nested structs read the same flat
    table, unknown names are ``Invalid parameter 'X'``.

Error order (QEMU's): members are visited in declaration order, base members first; a
missing mandatory member or a bad value stops the visit at once; unexpected members are
reported after all members of their struct were visited (the first one in input order).
Full member paths (``addr.host``, ``hostfwd[0].str``; keyval spells indexes ``.0``) are
used for missing/unexpected/type errors; enum and integer-range errors name the bare member
(``null`` for list elements), exactly like ``qapi-visit-core.c``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, TypeVar, cast

from netstack.errors import GenericError

from .scalars import (
    I64_MAX,
    I64_MIN,
    U64_MAX,
    ConvError,
    parse_bool,
    parse_uint,
    strtoi64,
    strtosz,
    strtou64,
)
from .schema import BUILTINS, Builtin, QEnum, QList, QType, members, union_info

T = TypeVar("T")
Path = tuple[str | int, ...]


class Mode(Enum):
    QMP = "qmp"
    KEYVAL = "keyval"
    OPTS = "opts"


class _Missing:
    pass


_MISSING: Final = _Missing()


@dataclass(frozen=True)
class _OptsItem:
    """The current element while the options visitor walks a repeated option."""

    value: str


class _Visitor:
    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.opts_root: dict[str, list[str]] = {}
        self.opts_consumed: set[str] = set()

    # -- names --------------------------------------------------------------------------

    def full(self, path: Path) -> str:
        if self.mode is Mode.OPTS:
            return self.bare(path)
        out = ""
        for seg in path:
            if isinstance(seg, int):
                out += f".{seg}" if self.mode is Mode.KEYVAL else f"[{seg}]"
            else:
                out = f"{out}.{seg}" if out else seg
        return out or "<anonymous>"

    @staticmethod
    def bare(path: Path) -> str:
        return path[-1] if path and isinstance(path[-1], str) else "null"

    def type_error(self, path: Path, expected: str) -> GenericError:
        return GenericError(f"Invalid parameter type for '{self.full(path)}', expected: {expected}")

    # -- dispatch -----------------------------------------------------------------------

    def visit(self, qtype: QType, raw: object, path: Path) -> object:
        if isinstance(qtype, str):
            return self.scalar(BUILTINS[qtype], raw, path)
        if isinstance(qtype, QEnum):
            text = self.scalar(BUILTINS["str"], raw, path)
            assert isinstance(text, str)
            if text not in qtype.values:
                raise GenericError(f"Parameter '{self.bare(path)}' does not accept value '{text}'")
            return text
        if isinstance(qtype, QList):
            return self.visit_list(qtype, raw, path)
        return self.struct(qtype, raw, path)

    def lookup(self, container: object, name: str) -> object:
        if self.mode is Mode.OPTS:
            if isinstance(container, _OptsItem):
                return container
            values = self.opts_root.get(name)
            return values if values else _MISSING
        assert isinstance(container, dict)
        return container.get(name, _MISSING)

    # -- structs and unions -------------------------------------------------------------

    def struct(self, cls: type[Any], raw: object, path: Path) -> object:
        if self.mode is not Mode.OPTS and not isinstance(raw, dict):
            raise self.type_error(path, "object")
        consumed: set[str] = set()
        kwargs = self.members(cls, raw, path, consumed)
        info = union_info(cls)
        if info is not None:
            variant = info.variants[cast(str, kwargs[info.tag])]
            if info.wrapped:
                data = self.lookup(raw, "data")
                if data is _MISSING:
                    raise GenericError(f"Parameter '{self.full((*path, 'data'))}' is missing")
                consumed.add("data")
                kwargs[info.payload] = self.struct(variant, data, (*path, "data"))
            else:
                kwargs[info.payload] = variant(**self.members(variant, raw, path, consumed))
        if isinstance(raw, dict):
            for key in raw:
                if key not in consumed:
                    raise GenericError(f"Parameter '{self.full((*path, key))}' is unexpected")
        return cls(**kwargs)

    def members(
        self, cls: type[Any], raw: object, path: Path, consumed: set[str]
    ) -> dict[str, object]:
        out: dict[str, object] = {}
        for spec in members(cls):
            m = spec.member
            got = self.lookup(raw, m.name)
            if got is _MISSING:
                if not m.optional:
                    raise GenericError(f"Parameter '{self.full((*path, m.name))}' is missing")
                out[spec.attr] = None
                continue
            consumed.add(m.name)
            if (
                self.mode is Mode.OPTS
                and not isinstance(raw, _OptsItem)
                and not isinstance(m.qtype, type)
            ):
                self.opts_consumed.add(m.name)
            out[spec.attr] = self.visit(m.qtype, got, (*path, m.name))
        return out

    def visit_list(self, qtype: QList, raw: object, path: Path) -> tuple[object, ...]:
        if self.mode is Mode.OPTS:
            assert isinstance(raw, list)
            elements: list[object] = [_OptsItem(v) for v in raw]
        elif isinstance(raw, list):
            elements = raw
        else:
            raise self.type_error(path, "array")
        out: list[object] = []
        for i, element in enumerate(elements):
            value = self.visit(qtype.element, element, (*path, i))
            out.append(getattr(value, qtype.unwrap) if qtype.unwrap else value)
        return tuple(out)

    # -- scalars ------------------------------------------------------------------------

    def scalar(self, b: Builtin, raw: object, path: Path) -> object:
        if b.kind == "any":  # QAPI 'any': any JSON value (strings in the CLI forms)
            if self.mode is Mode.OPTS:
                return raw.value if isinstance(raw, _OptsItem) else cast(list[str], raw)[-1]
            return raw
        if self.mode is Mode.QMP:
            value = self.qmp_scalar(b, raw, path)
        elif self.mode is Mode.KEYVAL:
            if isinstance(raw, dict | list):
                raise GenericError(f"Parameters '{self.full(path)}.*' are unexpected")
            if not isinstance(raw, str):
                raise GenericError(f"Internal error: parameter {self.full(path)} invalid")
            value = self.keyval_scalar(b, raw, path)
        else:
            if isinstance(raw, _OptsItem):
                value = self.opts_scalar(b, raw.value, path, True)
            else:
                assert isinstance(raw, list) and raw
                value = self.opts_scalar(b, raw[-1], path, False)
        if b.kind in ("int", "uint") and b.name not in ("int", "int64", "uint64"):
            assert isinstance(value, int)
            if not b.low <= value <= b.high:
                raise GenericError(f"Parameter '{self.bare(path)}' expects {b.name}")
        return value

    def qmp_scalar(self, b: Builtin, raw: object, path: Path) -> object:
        if b.kind == "str":
            if not isinstance(raw, str):
                raise self.type_error(path, "string")
            return raw
        if b.kind == "bool":
            if not isinstance(raw, bool):
                raise self.type_error(path, "boolean")
            return raw
        if b.kind == "number":
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise self.type_error(path, "number")
            return float(raw)
        is_int = isinstance(raw, int) and not isinstance(raw, bool)
        if b.kind == "int":
            if not is_int or not I64_MIN <= cast(int, raw) <= I64_MAX:
                raise self.type_error(path, "integer")
            return raw
        if is_int and 0 <= cast(int, raw) <= U64_MAX:
            return raw
        if is_int and I64_MIN <= cast(int, raw) < 0:
            return cast(int, raw) & U64_MAX
        raise GenericError(f"Parameter '{self.full(path)}' expects uint64")

    def keyval_scalar(self, b: Builtin, text: str, path: Path) -> object:
        try:
            if b.kind == "str":
                return text
            if b.kind == "bool":
                return parse_bool(text)
            if b.kind == "int":
                return strtoi64(text)
            if b.kind == "uint":
                return strtou64(text)
            if b.kind == "size":
                return strtosz(text)
            if not text.isascii() or "_" in text:
                raise ConvError("EINVAL")
            number = float(text.strip(" \t\n\v\f\r"))
            if not math.isfinite(number):
                raise ConvError("ERANGE")
            return number
        except (ConvError, ValueError):
            name = self.full(path)
            expects = {"bool": "'on' or 'off'", "int": "integer", "uint": "integer"}
            if b.kind in expects:
                raise GenericError(f"Parameter '{name}' expects {expects[b.kind]}") from None
            if b.kind == "size":
                raise GenericError(f"Parameter '{name}' expects size") from None
            raise self.type_error(path, "number") from None

    def opts_scalar(self, b: Builtin, text: str, path: Path, in_list: bool) -> object:
        name = self.bare(path)
        range_word = " or range" if in_list else ""
        try:
            if b.kind == "str":
                return text
            if b.kind == "bool":
                return parse_bool(text)
            if b.kind == "int":
                return strtoi64(text)
            if b.kind == "uint":
                return parse_uint(text)
            if b.kind == "size":
                return strtosz(text)
        except ConvError:
            if b.kind == "bool":
                raise GenericError(f"Parameter '{name}' expects 'on' or 'off'") from None
            if b.kind == "int":
                raise GenericError(
                    f"Parameter '{name}' expects an int64 value{range_word}"
                ) from None
            if b.kind == "uint":
                raise GenericError(
                    f"Parameter '{name}' expects a uint64 value{range_word}"
                ) from None
            raise GenericError(f"Parameter '{name}' expects a size value") from None
        raise self.type_error(path, "number")


def visit(cls: type[T], raw: object, mode: Mode, *, path: Path = ()) -> T:
    """Visit ``raw`` as an instance of schema dataclass ``cls``.

    For ``Mode.OPTS`` pass ``QemuOpts.multimap()`` (with ``"id"`` added when the group
    has one, as the options visitor does); ``path`` prefixes member names in errors
    (``("backend",)`` for ``chardev-add``).
    """
    v = _Visitor(mode)
    if mode is Mode.OPTS:
        assert isinstance(raw, dict)
        v.opts_root = raw
        result = v.struct(cls, _OptsRoot(), path)
        for name in raw:
            if name not in v.opts_consumed:
                raise GenericError(f"Invalid parameter '{name}'")
        return cast(T, result)
    return cast(T, v.struct(cls, raw, path))


class _OptsRoot:
    """Marker container for the options visitor's flat table (never a ``dict``)."""
