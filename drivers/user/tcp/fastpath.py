"""Which established-flow fast path guest TCP runs: ``_tcpfast`` (C) or :mod:`.fastflow`.

Owns the choice, made at first use through :func:`netstack.fastpath.load` (so
``NETSTACK_PURE_PYTHON=1`` or an unbuilt extension gives the Python twin, which is the
reference: the differential tests hold the two to the same frames, socket bytes, state
and counters). Both offer ``FlowCache`` with the same constructor, attributes and methods.
"""

from __future__ import annotations

from types import ModuleType

from netstack import fastpath

from . import fastflow

#: The extension's import path (what ``fastpath.status()`` names).
EXTENSION = "drivers.user.tcp._tcpfast"


def impl() -> ModuleType:
    """The compiled module when it is built and allowed, else :mod:`.fastflow`."""
    mod = fastpath.load(EXTENSION)
    return mod if mod is not None else fastflow
