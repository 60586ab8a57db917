"""Net filters (QOM ``netfilter`` subclasses): filter-dump, filter-mirror, filter-redirector,
filter-buffer.

Each filter is a :class:`netstack.net.filter.NetFilter` living in its netdev's chain; the
base class owns the chain walk and QEMU's common properties. A filter is built unattached,
then :meth:`setup` (given a :class:`.host.FilterHost`) opens what it needs - files,
chardevs, timers - raising QEMU's error on failure; :meth:`cleanup` releases it all.
Creation from ``object-add``/``-object`` specs, with QEMU's checks and their order, is
:mod:`netstack.objects`.

:data:`FILTER_TYPES` maps each QOM type name to its class. Importing this package has no
side effects.
"""

from __future__ import annotations

from typing import Final

from netstack.net.filter import NetFilter
from netstack.net.filters.buffer import FilterBuffer
from netstack.net.filters.dump import FilterDump
from netstack.net.filters.mirror import FilterMirror, FilterRedirector

FILTER_TYPES: Final[dict[str, type[NetFilter]]] = {
    "filter-buffer": FilterBuffer,
    "filter-dump": FilterDump,
    "filter-mirror": FilterMirror,
    "filter-redirector": FilterRedirector,
}

__all__ = [
    "FILTER_TYPES",
    "FilterBuffer",
    "FilterDump",
    "FilterMirror",
    "FilterRedirector",
]
