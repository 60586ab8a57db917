"""Declared counters: how a module names what it counts so that the type checker knows
every name.

A module declares its counter names once, as a ``Literal`` type next to the code that
counts (``VxlanCounter = Literal["tx-datagrams", ...]``), and keeps its counts in a
``collections.Counter[ThatLiteral]`` or a ``dict[ThatLiteral, int]``: ``mypy --strict``
then rejects ``self.stats["tx-datagram"] += 1`` (a name nobody declared) at the call site,
and the names in ``query-netdev``'s ``counters`` and in ``info`` texts stay exactly the
strings counted. A family of names built from numbers at run time (``icmp-error-sent-3-1``,
per ICMP type and code) is declared once as a :class:`Family` of its prefix; its
:meth:`Family.key` is the only way to make a :data:`FamilyKey`, so a table typed
``Counter[ThatLiteral | FamilyKey]`` takes no free-form string either. The core's
per-client and per-hub counters are slotted classes (:class:`netstack.net.client.Counters`).

:func:`by_name` widens a declared count table to the ``name -> int`` mapping that
``counters()`` returns (the key type of a ``dict`` is invariant, so a
``dict[Literal[...], int]`` is not a ``dict[str, int]`` to the type checker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, NewType, TypeVar

K = TypeVar("K", bound=str)
P = TypeVar("P", bound=str)

#: A counter name of a declared :class:`Family` (``prefix-N-M``), made by :meth:`Family.key`.
FamilyKey = NewType("FamilyKey", str)


class Family(Generic[P]):
    """A declared family of counter names: a fixed ``prefix`` and numbers after it."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: P) -> None:
        self.prefix: P = prefix

    def key(self, *numbers: int) -> FamilyKey:
        """The name ``prefix-n1-n2...`` (``icmp-error-sent-3-1``)."""
        return FamilyKey("-".join([self.prefix, *map(str, numbers)]))


def by_name(counts: Mapping[K, int]) -> dict[str, int]:
    """``counts`` as a plain ``name -> count`` dict (a copy, in its order)."""
    out: dict[str, int] = {}
    for name, value in counts.items():
        out[name] = value
    return out
