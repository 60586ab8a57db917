"""QEMU's traditional option-group parser (QemuOpts, ``util/qemu-option.c``).

Owns the ``-netdev``/``-chardev``/``-object`` comma syntax as QemuOpts reads it, which
differs from :mod:`.keyval` in ways users rely on:

* a parameter may repeat; all occurrences are kept in order (the options visitor turns
  repeats into lists, e.g. ``hostfwd=...,hostfwd=...``), a plain lookup sees the last;
* the first parameter without ``=`` is the value of the group's implied key (``type``,
  ``backend``, ``qom-type``); the implied value honours ``,,`` escaping;
* any later parameter without ``=`` is a flag: ``name`` means ``name=on`` and ``noname``
  means ``name=off`` (QEMU warns that this short form is deprecated);
* ``id`` is not an option: the first ``id=`` is the group's id, checked for
  well-formedness right away (:func:`.ids.check_id`), before any option is validated;
* groups with a descriptor table (``-chardev``) reject unknown names with
  ``Invalid parameter 'X'`` and validate typed values as they are read, in order; a
  ``help``/``?`` flag stops parsing and asks for help;
  groups without one (``-netdev``, ``-object``) accept any name, validation happens in
  the visitor.

Invariant: :func:`parse` either returns a :class:`QemuOpts` or raises GenericError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from netstack.errors import GenericError

from .ids import check_id
from .scalars import ConvError, parse_bool, strtosz, strtou64


class OptType(Enum):
    """QemuOptType of a descriptor entry."""

    STRING = "string"
    BOOL = "bool"
    NUMBER = "number"
    SIZE = "size"


@dataclass
class QemuOpts:
    """One parsed option group."""

    id: str | None
    opts: list[tuple[str, str]] = field(default_factory=list)
    help_wanted: bool = False

    def get(self, name: str) -> str | None:
        """Value of the last occurrence of ``name`` (``qemu_opt_get``)."""
        for key, value in reversed(self.opts):
            if key == name:
                return value
        return None

    def has(self, name: str) -> bool:
        return any(key == name for key, _ in self.opts)

    def get_bool(self, name: str, default: bool) -> bool:
        value = self.get(name)
        return default if value is None else parse_bool(value)

    def get_number(self, name: str, default: int) -> int:
        value = self.get(name)
        return default if value is None else strtou64(value)

    def get_size(self, name: str, default: int) -> int:
        value = self.get(name)
        return default if value is None else strtosz(value)

    def set(self, name: str, value: str) -> None:
        """Append an occurrence (``qemu_opt_set``)."""
        self.opts.append((name, value))

    def unset_last(self, name: str) -> None:
        """Remove the last occurrence of ``name`` (``qemu_opt_unset``)."""
        for i in range(len(self.opts) - 1, -1, -1):
            if self.opts[i][0] == name:
                del self.opts[i]
                return

    def multimap(self) -> dict[str, list[str]]:
        """Occurrences grouped by name, in order of first appearance."""
        out: dict[str, list[str]] = {}
        for key, value in self.opts:
            out.setdefault(key, []).append(value)
        return out


def is_help_option(name: str) -> bool:
    return name in ("help", "?")


def _opt_value(text: str, pos: int) -> tuple[str, int]:
    """Read a value up to a single ``,``; ``,,`` yields ``,`` (``get_opt_value``)."""
    parts: list[str] = []
    while True:
        comma = text.find(",", pos)
        if comma < 0:
            parts.append(text[pos:])
            return "".join(parts), len(text)
        parts.append(text[pos:comma])
        if comma + 1 < len(text) and text[comma + 1] == ",":
            parts.append(",")
            pos = comma + 2
            continue
        return "".join(parts), comma


def _name_value(text: str, pos: int, implied: str | None) -> tuple[str, str, bool, int]:
    """One parameter at ``pos``: (name, value, is help flag, next position)."""
    end = pos
    while end < len(text) and text[end] not in "=,":
        end += 1
    is_help = False
    if end >= len(text) or text[end] != "=":
        if implied is not None:
            name = implied
            value, end = _opt_value(text, pos)
        else:
            name = text[pos:end]
            if name.startswith("no"):
                name, value = name[2:], "off"
            else:
                value = "on"
                is_help = is_help_option(name)
    else:
        name = text[pos:end]
        value, end = _opt_value(text, end + 1)
    if end < len(text) and text[end] == ",":
        end += 1
    return name, value, is_help, end


def group_id(text: str) -> str | None:
    """The group id of an option text (its first ``id=``), unchecked."""
    pos = 0
    while pos < len(text):
        name, value, _, pos = _name_value(text, pos, None)
        if name == "id":
            return value
    return None


def validate(name: str, value: str, kind: OptType) -> None:
    """Check a typed option value like QEMU's ``qemu_opt_parse``."""
    try:
        if kind is OptType.BOOL:
            parse_bool(value)
        elif kind is OptType.NUMBER:
            strtou64(value)
        elif kind is OptType.SIZE:
            strtosz(value)
    except ConvError as exc:
        if kind is OptType.BOOL:
            raise GenericError(f"Parameter '{name}' expects 'on' or 'off'") from None
        if kind is OptType.NUMBER:
            if exc.kind == "ERANGE":
                raise GenericError(f"Value '{value}' is too large for parameter '{name}'") from None
            raise GenericError(f"Parameter '{name}' expects a number") from None
        if exc.kind == "ERANGE":
            raise GenericError(f"Value '{value}' is out of range for parameter '{name}'") from None
        raise GenericError(f"Parameter '{name}' expects a non-negative number below 2^64") from None


def parse_into(
    opts: QemuOpts,
    text: str,
    implied: str | None,
    desc: Mapping[str, OptType] | None,
    *,
    help_ok: bool = False,
) -> QemuOpts:
    """Add the parameters of ``text`` to ``opts`` (``qemu_opts_do_parse``).

    With ``help_ok`` (top-level parse of a group with a descriptor table) a ``help``/``?``
    flag stops parsing and sets ``help_wanted``; otherwise it is an ordinary flag.
    """
    pos = 0
    while pos < len(text):
        name, value, is_help, pos = _name_value(text, pos, implied)
        implied = None
        if is_help and help_ok and desc is not None:
            opts.help_wanted = True
            return opts
        if name == "id":
            continue
        if desc is not None:
            kind = desc.get(name)
            if kind is None:
                raise GenericError(f"Invalid parameter '{name}'")
            validate(name, value, kind)
        opts.set(name, value)
    return opts


def parse(text: str, implied: str | None, desc: Mapping[str, OptType] | None = None) -> QemuOpts:
    """Parse one option group (``qemu_opts_parse``): id first, then the options."""
    ident = group_id(text)
    if ident is not None:
        check_id(ident)
    return parse_into(QemuOpts(ident), text, implied, desc, help_ok=True)
