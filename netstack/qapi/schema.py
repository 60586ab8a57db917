"""Schema vocabulary: how a dataclass declares its QAPI shape.

Owns the single source of truth that both the input visitor (:mod:`.visitor`) and the
introspection generator (:mod:`.introspect`) read: every schema dataclass field carries, in
its ``dataclasses.field`` metadata, the member's wire name and QAPI type; unions carry a
:class:`UnionInfo` class attribute naming the discriminator, the payload attribute and the
variant table.

Spec: QEMU's QAPI type system (``docs/devel/qapi-code-gen.rst``): built-in scalar types with
their ranges (``qapi/qapi-visit-core.c`` ``visit_type_intN``/``uintN``), enums, arrays,
structs with bases (base members first) and discriminated unions. Two union layouts exist:
*flat* (variant members live next to the discriminator, e.g. ``Netdev``, ``SocketAddress``)
and *wrapped* (the legacy "simple union" wire form ``{"type": T, "data": {...}}``, e.g.
``ChardevBackend``, ``SocketAddressLegacy``).

Invariants:
* Optional members default to ``None``; QAPI defaults are never filled in here (the
  consumer of a dataclass applies them, as QEMU's drivers do).
* Field declaration order is QAPI member order, which is also visiting (and therefore
  error) order.
* Lists of the ``String`` wrapper struct are exposed as ``tuple[str, ...]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

META_KEY: Final = "qapi"


@dataclass(frozen=True)
class Builtin:
    """A QAPI built-in scalar type."""

    name: str
    json_type: str  # "string", "boolean", "int", "number" or "value" (SchemaInfo json-type)
    kind: str  # "str", "bool", "int", "uint", "size", "number" or "any" (any JSON value)
    low: int = 0
    high: int = 0


def _int(name: str, bits: int) -> Builtin:
    return Builtin(name, "int", "int", -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def _uint(name: str, bits: int) -> Builtin:
    return Builtin(name, "int", "uint", 0, (1 << bits) - 1)


BUILTINS: Final[Mapping[str, Builtin]] = {
    b.name: b
    for b in (
        Builtin("str", "string", "str"),
        Builtin("bool", "boolean", "bool"),
        Builtin("number", "number", "number"),
        _int("int", 64),
        _int("int8", 8),
        _int("int16", 16),
        _int("int32", 32),
        _int("int64", 64),
        _uint("uint8", 8),
        _uint("uint16", 16),
        _uint("uint32", 32),
        _uint("uint64", 64),
        Builtin("size", "int", "size", 0, (1 << 64) - 1),
        Builtin("any", "value", "any"),
    )
}


@dataclass(frozen=True)
class QEnum:
    """A QAPI enum: its schema name and its values in declaration order."""

    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class QList:
    """A QAPI array type; ``unwrap`` names the single member of a wrapper struct whose
    value replaces each element in Python (``['String']`` -> ``tuple[str, ...]``)."""

    element: QType
    unwrap: str | None = None

    @property
    def name(self) -> str:
        return f"[{type_name(self.element)}]"


# A member's QAPI type: a built-in name, an enum, an array, or a schema dataclass.
QType = str | QEnum | QList | type


@dataclass(frozen=True)
class Member:
    """Metadata of one schema member."""

    name: str  # wire name, e.g. "ipv6-prefix"
    qtype: QType
    optional: bool
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class UnionInfo:
    """Discriminated-union layout of a schema dataclass.

    ``tag`` and ``payload`` are attribute names of the union dataclass; the tag field is
    an ordinary member (carrying :class:`Member` metadata, its type an enum), the payload
    field has no metadata and holds the variant dataclass instance.
    """

    tag: str
    payload: str
    variants: Mapping[str, type]
    wrapped: bool = False


def member(
    qtype: QType, *, name: str | None = None, features: tuple[str, ...] = ()
) -> dict[str, Member]:
    """Metadata for a mandatory member (``name`` defaults to the attribute name with
    ``_`` turned into ``-``; :func:`members` resolves it)."""
    return {META_KEY: Member(name or "", qtype, False, features)}


def optional(
    qtype: QType, *, name: str | None = None, features: tuple[str, ...] = ()
) -> dict[str, Member]:
    """Metadata for an optional member (pair it with ``default=None``)."""
    return {META_KEY: Member(name or "", qtype, True, features)}


def opt(qtype: QType, *, name: str | None = None, features: tuple[str, ...] = ()) -> Any:
    """Shorthand for an optional member field: ``x: T | None = opt("str")``."""
    return field(default=None, metadata=optional(qtype, name=name, features=features))


def req(qtype: QType, *, name: str | None = None) -> Any:
    """Shorthand for a mandatory member field: ``x: T = req("str")``."""
    return field(metadata=member(qtype, name=name))


@dataclass(frozen=True)
class FieldSpec:
    """A resolved schema member of a dataclass: attribute name plus :class:`Member`."""

    attr: str
    member: Member


_MEMBERS_CACHE: dict[type, tuple[FieldSpec, ...]] = {}


def members(cls: type) -> tuple[FieldSpec, ...]:
    """The schema members of dataclass ``cls`` in QAPI order (base members first)."""
    cached = _MEMBERS_CACHE.get(cls)
    if cached is not None:
        return cached
    out: list[FieldSpec] = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(META_KEY)
        if not isinstance(meta, Member):
            continue
        wire = meta.name or f.name.replace("_", "-")
        out.append(FieldSpec(f.name, dataclasses.replace(meta, name=wire)))
    result = _MEMBERS_CACHE[cls] = tuple(out)
    return result


def union_info(cls: type) -> UnionInfo | None:
    info = getattr(cls, "qapi_union", None)
    return info if isinstance(info, UnionInfo) else None


def type_name(qtype: QType) -> str:
    """The QAPI name of a type, as introspection and error texts spell it."""
    if isinstance(qtype, str):
        if qtype not in BUILTINS:
            raise KeyError(f"unknown QAPI built-in type {qtype!r}")
        return qtype
    if isinstance(qtype, QEnum | QList):
        return qtype.name
    name = getattr(qtype, "qapi_name", None)
    if not isinstance(name, str):
        raise TypeError(f"{qtype!r} is not a schema dataclass")
    return name


@dataclass(frozen=True, kw_only=True)
class String:
    """QAPI ``String``: a fat type wrapping ``str`` so it can be embedded in lists."""

    qapi_name: ClassVar[str] = "String"
    value: str = req("str", name="str")


STRING_LIST: Final = QList(String, unwrap="value")


@dataclass(frozen=True, kw_only=True)
class Empty:
    """The implicit empty struct of union branches without members (``q_empty``)."""

    qapi_name: ClassVar[str] = "q_empty"
