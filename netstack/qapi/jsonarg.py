"""JSON-object arguments on the command line (``-netdev '{"id": ..., "type": ...}'``).

Owns the conversion of a CLI argument starting with ``{`` into a ``dict``, which is then
visited exactly like QMP input. Mirrors QEMU's ``qobject_from_json``: the text must be a
single JSON object; duplicate keys are rejected; failures are GenericErrors starting with
``JSON parse error, ``.

Known difference: QEMU's parser also accepts single-quoted strings and reports
lexer-level details (``stray '...'``, ``invalid keyword``); this module uses Python's
``json`` and reports a generic detail for those cases.
"""

from __future__ import annotations

import json

from netstack.errors import GenericError


class _DuplicateKey(Exception):
    pass


def _pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"invalid keyword '{name}'")


def parse_json_object(text: str) -> dict[str, object]:
    """Parse ``text`` as one JSON object."""
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_reject_constant)
    except _DuplicateKey:
        raise GenericError("JSON parse error, duplicate key") from None
    except RecursionError:
        raise GenericError("JSON parse error, nesting depth limit exceeded") from None
    except ValueError as exc:
        detail = str(exc).split(":", 1)[0]
        if isinstance(exc, json.JSONDecodeError) and exc.msg.startswith("Expecting value"):
            detail = "expecting value"
        raise GenericError(f"JSON parse error, {detail}") from None
    if not isinstance(value, dict):
        raise GenericError("JSON parse error, expecting value")
    return value
