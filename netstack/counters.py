"""Declared counters: how a module names what it counts so that the type checker knows
every name.

A module declares its counter names once, as a ``Literal`` type next to the code that
counts (``VxlanCounter = Literal["tx-datagrams", ...]``), and keeps its counts in a
``collections.Counter[ThatLiteral]`` or a ``dict[ThatLiteral, int]``: ``mypy --strict``
then rejects ``self.stats["tx-datagram"] += 1`` (a name nobody declared) at the call site,
and the names in ``query-netdev``'s ``counters`` and in ``info`` texts stay exactly the
strings counted. Counters whose names are built at run time (``icmp-error-sent-3-1``, per
ICMP type and code) keep ``str`` keys. The core's per-client and per-hub counters are
slotted classes (:class:`netstack.net.client.Counters`).

:func:`by_name` widens a declared count table to the ``name -> int`` mapping that
``counters()`` returns (the key type of a ``dict`` is invariant, so a
``dict[Literal[...], int]`` is not a ``dict[str, int]`` to the type checker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

K = TypeVar("K", bound=str)


def by_name(counts: Mapping[K, int]) -> dict[str, int]:
    """``counts`` as a plain ``name -> count`` dict (a copy, in its order)."""
    out: dict[str, int] = {}
    for name, value in counts.items():
        out[name] = value
    return out
