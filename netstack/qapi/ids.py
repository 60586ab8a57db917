"""Identifier well-formedness (QEMU ``util/id.c``).

Owns the one rule QEMU applies to user-supplied ids of netdevs, QemuOpts groups
(``-chardev``, ``-netdev``, ``-object``) and QOM objects: the first character is an ASCII
letter, the rest are ASCII letters, digits, ``-``, ``.`` or ``_``. The empty string is not
an identifier.

Where the check runs is the caller's business and follows QEMU's order: QMP ``netdev_add``
visits the arguments first and checks the id afterwards; QemuOpts checks it while parsing,
before any option is visited; QMP ``chardev-add`` never checks it.
"""

from __future__ import annotations

from typing import Final

from netstack.errors import GenericError

ID_HINT: Final = "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
"""QEMU's error hint (printed on the command line only, never part of a QMP desc)."""

_LETTERS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_TAIL: Final = _LETTERS | frozenset("0123456789-._")


def id_wellformed(value: str) -> bool:
    """True if ``value`` is a well-formed QEMU identifier."""
    return bool(value) and value[0] in _LETTERS and all(c in _TAIL for c in value[1:])


def check_id(value: str, what: str = "id") -> None:
    """Raise QEMU's ``Parameter 'id' expects an identifier`` unless ``value`` is one."""
    if not id_wellformed(value):
        raise GenericError(f"Parameter '{what}' expects an identifier")
