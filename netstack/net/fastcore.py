"""Which forwarding core runs: the compiled one (``netstack.net._fastnet``) or Python.

Owns the choice for the net core's per-frame path (``NetClient.send`` and what it calls:
the peer's queue, ``NetClient.deliver``, the repeater hub's fan-out). The Python classes
in :mod:`netstack.net.client`, :mod:`netstack.net.queue` and :mod:`netstack.net.hub` are
the complete reference; the C extension follows them statement by statement, calls the
Python helpers they call (``vnet_hdr.to_plain``, a NIC's rx batch classifier, the
driver's ``receive``) and hands every case it does not cover (net filters, learning
switches, drivers' own ``can_receive``) back to them, so the outcome is the same either
way. Two deviations, in corners no driver uses: the C path looks hooks up on the class
(a ``receive`` assigned on one instance is not seen), and a loop of hubs joined port to
port raises ``RecursionError`` after a fixed depth of hub calls rather than at the
interpreter's limit (see ``netstack/net/_fastnet.c``).

The choice is made at first use, not at import: the first :class:`NetClient` or
:class:`~netstack.net.hub.Hub` created asks :func:`netstack.fastpath.load` for the
extension and, when it is there, installs its ``send`` as ``NetClient.send`` and makes
new clients and hubs count with its int64 counters (``Counters``, ``HubCounters``: same
attributes and ``as_dict`` as the Python ones). ``NETSTACK_PURE_PYTHON=1`` keeps Python.

:func:`use` switches the path explicitly (the differential tests run both in one
process); objects keep the counters they were made with, and a client made under the
Python path is simply handed to Python by the compiled ``send``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from netstack import fastpath

if TYPE_CHECKING:
    from netstack.net.client import Counters
    from netstack.net.hub import HubCounters

#: The extension's import path (what ``fastpath.status()`` names).
EXTENSION = "netstack.net._fastnet"

_chosen = False
_active: ModuleType | None = None
_reference_send: Callable[..., int] | None = None
_counters: Callable[[], Any] | None = None
_hub_counters: Callable[[], Any] | None = None


def ensure() -> ModuleType | None:
    """Make the choice once (first use); the compiled module, or None for Python."""
    if not _chosen:
        install(fastpath.load(EXTENSION))
    return _active


def install(mod: ModuleType | None) -> None:
    """Run the core compiled with ``mod`` (``_fastnet``), or in Python when None."""
    global _chosen, _active, _reference_send, _counters, _hub_counters
    from netstack.net.client import Counters, NetClient
    from netstack.net.hub import Hub, HubCounters, HubPort
    from netstack.net.queue import NetQueue

    if _reference_send is None:
        _reference_send = NetClient.__dict__["send"]
    if mod is None:
        setattr(NetClient, "send", _reference_send)  # noqa: B010 (a method is replaced)
        _counters, _hub_counters = Counters, HubCounters
    else:
        send = mod.install(NetClient, HubPort, Hub, NetQueue, _reference_send)
        setattr(NetClient, "send", send)  # noqa: B010
        _counters, _hub_counters = mod.Counters, mod.HubCounters
    _active = mod
    _chosen = True


def active() -> ModuleType | None:
    """The compiled module in use (None: the Python reference); makes the choice."""
    return ensure()


@contextmanager
def use(mod: ModuleType | None) -> Iterator[None]:
    """Run a block with the core compiled with ``mod`` (or in Python), then restore."""
    before = ensure()
    install(mod)
    try:
        yield
    finally:
        install(before)


def new_counters() -> Counters:
    """Counters for a new client, of the active path's type."""
    if _counters is None:
        ensure()
    assert _counters is not None
    counters: Counters = _counters()
    return counters


def new_hub_counters() -> HubCounters:
    """Counters for a new hub, of the active path's type."""
    if _hub_counters is None:
        ensure()
    assert _hub_counters is not None
    counters: HubCounters = _hub_counters()
    return counters
