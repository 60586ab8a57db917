"""``-readconfig FILE``: QEMU's INI-style configuration files, read as QEMU 7.2 reads them.

Owns the file scanner (QEMU 7.2 ``util/qemu-config.c``, ``qemu_config_foreach``) and the
per-group handling of ``softmmu/vl.c`` (``qemu_parse_config_group``,
``qemu_record_config_group``) for the groups netstackd has: ``netdev``, ``chardev``,
``object`` and ``mon``. The result is a list of :class:`Entry`: the option kind, the
option text the command-line parsers take, and the file location errors are reported at.

The scanner reproduces QEMU's ``fgets`` + ``sscanf`` line handling, quirks included, so
the same files are accepted and the same errors given:

* lines are read in chunks of at most 1023 bytes (a longer line continues as a new
  "line", counted as such); a chunk starting with ``\\n`` is empty, one starting with
  ``#`` a comment (an indented ``#`` is not);
* ``[GROUP "ID"]`` (``[%63s "%63[^"]"]``) or ``[GROUP]`` (``[%63[^]]]``) starts a section;
  trailing text after a match is ignored, names and ids are cut at 63 characters;
* any other line with a non-blank word is ``KEY = "VALUE"``: the key is the first word (at
  most 63 characters, ``=`` and ``"`` included if not separated by blanks); the value is
  what follows ``= "`` up to the next ``"`` (at most 1023 characters) and the empty
  string when the line does not have that shape; a blank line that is not empty is a
  ``parse error``; a key before any section is ``no group defined``;
* a section is handed to its group when the next section starts or the file ends, and its
  errors are reported at the location of the last key line read before that (none if
  there was none), exactly like QEMU's ``Location``.

Groups, as in QEMU 7.2: ``netdev``, ``chardev`` and ``mon`` are QemuOpts groups (the
section id, or a later ``id`` key, is the group id: ``Parameter 'id' expects an
identifier``, ``Duplicate ID 'X' for netdev``, ids shared with the command line's
QemuOpts-style ``-netdev``/``-chardev`` options, :meth:`Reader.claim`; chardev and mon
keys are checked against their option tables at once: ``Invalid parameter 'X'``); the
backend is created later and its errors carry the section's location. ``object``
sections are crumpled (dotted keys into nested dicts: ``Cannot mix scalar and non-scalar
keys``, ``Lists cannot be at top level of a configuration section``) and visited as
keyval at once (``Parameter 'qom-type' is missing``, ``Parameter 'X' is unexpected``);
creating the object later reports errors without a location. Any other group is
``There is no option group 'X'``.

Deviations from QEMU 7.2:

* a key repeated in a ``netdev`` section keeps every value, like a repeated command-line
  option (``hostfwd`` twice forwards two ports); QEMU keeps only the last, so a file can
  hold one forwarding rule only. Scalar options still take the last value;
* ``stream`` and ``dgram`` netdev sections use dotted keys (``addr.type = "inet"``) as on
  the command line; QEMU 7.2 cannot create these netdevs from a file at all;
* a section with two bad keys reports the first in file order (QEMU walks a hash table).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from netstack.errors import GenericError
from netstack.qapi.chardev_cli import CHARDEV_OPTS, MON_OPTS
from netstack.qapi.ids import check_id
from netstack.qapi.netdev import MODERN_TYPES, Netdev, netdev_from_opts
from netstack.qapi.output import to_qmp
from netstack.qapi.qemuopts import QemuOpts, parse_into, validate
from netstack.qapi.qemuopts import group_id as qemuopts_id
from netstack.qapi.qom import ObjectSpec
from netstack.qapi.visitor import Mode, visit

_LINE_MAX: Final = 1023  # fgets(line, 1024, fp)
_NAME_MAX: Final = 63
_VALUE_MAX: Final = 1023
_BLANK: Final = " \t\n\v\f\r"  # C isspace()

GROUPS: Final = ("netdev", "chardev", "object", "mon")


class ConfigError(GenericError):
    """An error in a configuration file; ``where`` is ``FILE:LINE`` or None (no location)."""

    def __init__(self, where: str | None, desc: str) -> None:
        super().__init__(desc)
        self.where = where


@dataclass(frozen=True)
class Section:
    """One ``[group "id"]`` section: its key/value pairs in file order (the id first)."""

    group: str
    pairs: tuple[tuple[str, str], ...]
    where: str | None


@dataclass(frozen=True)
class Entry:
    """What a section configures: ``kind`` is ``netdev``, ``chardev``, ``object`` or
    ``mon``; ``text`` is the equivalent command-line argument; errors creating it are
    reported at ``where`` (None: no location, as QEMU does for objects).

    A netdev keeps its section's ``id`` and ``pairs``: a key may hold any character
    (``type="user"`` is a key), which no command-line text can spell."""

    kind: str
    text: str
    where: str | None
    ident: str | None = None
    pairs: tuple[tuple[str, str], ...] = ()

    def netdev(self) -> Netdev:
        """Visit a netdev section (``stream``/``dgram``: dotted keys, keyval style)."""
        kind = dict(self.pairs).get("type")
        if kind in MODERN_TYPES:
            tree = crumple(dict(self.pairs) | ({} if self.ident is None else {"id": self.ident}))
            if not isinstance(tree, dict):
                raise GenericError("Lists cannot be at top level of a configuration section")
            return visit(Netdev, tree, Mode.KEYVAL)
        return netdev_from_opts(QemuOpts(self.ident, list(self.pairs)))


# -- the scanner ----------------------------------------------------------------------------


def _chunks(data: bytes) -> Iterator[bytes]:
    """What successive ``fgets(line, 1024, fp)`` calls return."""
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos, pos + _LINE_MAX)
        end = nl + 1 if nl >= 0 else min(len(data), pos + _LINE_MAX)
        yield data[pos:end]
        pos = end


def _skip_blank(s: str, i: int) -> int:
    while i < len(s) and s[i] in _BLANK:
        i += 1
    return i


def _word(s: str, i: int) -> tuple[str, int] | None:
    """``%63s``: skip blanks, then 1..63 non-blank characters."""
    i = _skip_blank(s, i)
    j = i
    while j < len(s) and j - i < _NAME_MAX and s[j] not in _BLANK:
        j += 1
    return (s[i:j], j) if j > i else None


def _span(s: str, i: int, limit: int, stop: str) -> str | None:
    """``%N[^stop]``: 1..limit characters not in ``stop`` (no blank skipping)."""
    j = i
    while j < len(s) and j - i < limit and s[j] not in stop:
        j += 1
    return s[i:j] if j > i else None


def _key_value(s: str) -> tuple[str, str] | None:
    """``" %63s = \\"%1023[^\\"]\\""`` or ``" %63s = \\"\\""`` (either matches once the
    key does: sscanf counts the key even when the rest does not match)."""
    word = _word(s, 0)
    if word is None:
        return None
    key, i = word
    i = _skip_blank(s, i)
    value = ""
    if i < len(s) and s[i] == "=":
        i = _skip_blank(s, i + 1)
        if i < len(s) and s[i] == '"':
            value = _span(s, i + 1, _VALUE_MAX, '"') or ""
    return key, value


def scan(data: bytes, fname: str) -> Iterator[Section]:
    """The sections of a configuration file, each as soon as it is complete.

    Raises :class:`ConfigError` at the first line QEMU rejects (after yielding the
    sections before it, so their errors come first, as in QEMU)."""
    pairs: list[tuple[str, str]] | None = None
    group = prev_group = ""
    where: str | None = None
    for lno, raw in enumerate(_chunks(data), 1):
        if raw[:1] in (b"\n", b"#"):
            continue
        s = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        if raw[:1] == b"[":
            new: list[tuple[str, str]] | None = None
            word = _word(s, 1)
            if word is not None:
                group = word[0]  # sscanf stores the group even when the id does not match
                i = _skip_blank(s, word[1])
                ident = _span(s, i + 1, _NAME_MAX, '"') if s[i : i + 1] == '"' else None
                if ident is not None:
                    new = [("id", ident)]
            if new is None:
                name = _span(s, 1, _NAME_MAX, "]")
                if name is not None:
                    group, new = name, []
            if new is not None:
                if pairs is not None:
                    yield Section(prev_group, tuple(pairs), where)
                pairs, prev_group = new, group
                continue
        where = f"{fname}:{lno}"
        kv = _key_value(s)
        if kv is None:
            raise ConfigError(where, "parse error")
        if pairs is None:
            raise ConfigError(where, "no group defined")
        pairs.append(kv)
    if pairs is not None:
        yield Section(group, tuple(pairs), where)


# -- the groups -----------------------------------------------------------------------------


def _escape(value: str) -> str:
    return value.replace(",", ",,")


def _opts_text(pairs: list[tuple[str, str]], ident: str | None) -> str:
    items = [] if ident is None else [f"id={_escape(ident)}"]
    items += [f"{key}={_escape(value)}" for key, value in pairs]
    return ",".join(items)


def _split_key(key: str) -> tuple[str, str | None]:
    """``qdict_split_flat_key``: split at the first ``.`` not doubled; ``..`` is ``.``."""
    i = 0
    while True:
        dot = key.find(".", i)
        if dot < 0 or key[dot + 1 : dot + 2] != ".":
            break
        i = dot + 2
    prefix, suffix = (key, None) if dot < 0 else (key[:dot], key[dot + 1 :])
    return prefix.replace("..", "."), suffix


def _is_index(key: str) -> tuple[bool, int]:
    """``qemu_strtoi64(key, NULL, 10)`` succeeds."""
    text = key.lstrip(_BLANK)
    body = text[1:] if text[:1] in "+-" else text
    if not body.isascii() or not body.isdigit():
        return False, 0
    value = int(text)
    return -(1 << 63) <= value < (1 << 63), value


def crumple(flat: dict[str, str]) -> object:
    """``qdict_crumple``: dotted keys into nested dicts, all-index dicts into lists."""
    two: dict[str, object] = {}
    for key, value in flat.items():
        prefix, suffix = _split_key(key)
        child = two.get(prefix)
        if prefix in two and (not isinstance(child, dict) or suffix is None):
            raise GenericError("Cannot mix scalar and non-scalar keys")
        if suffix is None:
            two[prefix] = value
        else:
            if not isinstance(child, dict):
                child = two[prefix] = {}
            child[suffix] = value
    multi = {k: crumple(v) if isinstance(v, dict) and v else v for k, v in two.items()}
    kinds = [_is_index(k) for k in multi]
    if any(is_index != kinds[0][0] for is_index, _ in kinds):
        raise GenericError("Cannot mix list and non-list keys")
    indexes = [value for is_index, value in kinds if is_index]
    if len(indexes) != max(indexes, default=-1) + 1:
        raise GenericError(
            f"List indices are not contiguous, saw {len(indexes)} elements "
            f"but {max(indexes)} largest index"
        )
    if not indexes:
        return multi
    by_index = {value: item for (_, value), item in zip(kinds, multi.values(), strict=True)}
    out: list[object] = []
    for i in range(len(by_index)):
        if i not in by_index:
            raise GenericError(f"Missing list index {i}")
        out.append(by_index[i])
    return out


class Reader:
    """Turns sections into entries; keeps the ids seen per QemuOpts group (duplicates are
    rejected across every file read, as QEMU's option lists do)."""

    def __init__(self) -> None:
        self._ids: dict[str, set[str]] = {"netdev": set(), "chardev": set(), "mon": set()}

    def claim(self, group: str, text: str) -> None:
        """Reserve the id of a ``-netdev``/``-chardev`` command-line argument, as QEMU's
        option list does when it parses one (JSON and ``stream``/``dgram`` netdevs are not
        kept in that list: their duplicates are found when they are created). Raises
        GenericError for a duplicate; other errors are left for creation time."""
        if text.startswith("{"):
            return
        implied = "type" if group == "netdev" else "backend"
        try:
            opts = parse_into(QemuOpts(None), text, implied, None)
            ident = qemuopts_id(text)
        except GenericError:
            return
        if ident is None or (group == "netdev" and opts.get("type") in MODERN_TYPES):
            return
        if ident in self._ids[group]:
            raise GenericError(f"Duplicate ID '{ident}' for {group}")
        self._ids[group].add(ident)

    def read(self, data: bytes, fname: str) -> list[Entry]:
        out: list[Entry] = []
        for section in scan(data, fname):
            try:
                out.append(self.entry(section))
            except ConfigError:
                raise
            except GenericError as exc:
                raise ConfigError(section.where, exc.desc) from exc
        return out

    def entry(self, section: Section) -> Entry:
        group, where = section.group, section.where
        if group == "object":
            return Entry("object", _object_text(section.pairs), None)
        if group not in self._ids:
            raise GenericError(f"There is no option group '{group}'")
        ident: str | None = None
        rest: list[tuple[str, str]] = []
        for key, value in section.pairs:
            if key == "id":
                ident = value
            else:
                rest.append((key, value))
        if ident is not None:
            check_id(ident)
            if ident in self._ids[group]:
                raise GenericError(f"Duplicate ID '{ident}' for {group}")
        if group == "netdev":  # no option table: the visitor checks the keys later
            if ident is not None:
                self._ids[group].add(ident)
            return Entry(group, _opts_text(rest, ident), where, ident, tuple(rest))
        table = CHARDEV_OPTS if group == "chardev" else MON_OPTS
        last: dict[str, str] = {}
        for key, value in rest:
            kind = table.get(key)
            if kind is None:
                raise GenericError(f"Invalid parameter '{key}'")
            validate(key, value, kind)
            last[key] = value
        if ident is not None:
            self._ids[group].add(ident)
        text = _opts_text(list(last.items()), ident if group == "chardev" else None)
        return Entry(group, text, where)


def _object_text(pairs: tuple[tuple[str, str], ...]) -> str:
    """Crumple and visit an ``[object]`` section; the result as ``-object`` JSON."""
    tree = crumple(dict(pairs))
    if isinstance(tree, list):
        raise GenericError("Lists cannot be at top level of a configuration section")
    assert isinstance(tree, dict)
    spec = visit(ObjectSpec, tree, Mode.KEYVAL)
    return json.dumps(to_qmp(spec), separators=(",", ":"))
