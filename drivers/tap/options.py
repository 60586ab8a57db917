"""``NetdevTapOptions`` -> a :class:`TapPlan`: QEMU's validation and defaults, no I/O.

Follows ``net_init_tap`` (``net/tap.c``, QEMU 7.2). One of four modes:

* ``fd=`` - "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and
  vhostfds= are invalid with fd=";
* ``fds=A:B:...`` (at most 1024) - "ifname=, script=, downscript=, vnet_hdr=, helper=,
  queues=, and vhostfd= are invalid with fds="; with ``vhostfds=`` the counts must match
  ("The number of fds passed does not match the number of vhostfds passed");
* ``helper=`` - "ifname=, script=, downscript=, vnet_hdr=, queues=, and vhostfds= are
  invalid with helper="; ``br`` defaults to ``br0``;
* otherwise the daemon opens the tap: "vhostfds= is invalid if fds= wasn't specified";
  ``script`` / ``downscript`` default to ``/etc/qemu-ifup`` / ``/etc/qemu-ifdown``;
  ``ifname`` defaults to the kernel template ``tap%d``; ``queues`` to 1.

``vnet_hdr``: absent means "if the kernel offers it" (auto), ``on`` requires it, ``off``
refuses it. ``sndbuf`` absent means unlimited. ``poll-us`` is accepted and unused (QEMU
uses it for vhost-net busy polling only).

vhost-net cannot exist here (frames always cross the daemon): where QEMU would start it
(``vhost=on``, or ``vhostfd``/``vhostforce`` without ``vhost``) the plan records a warning,
and ``vhostforce=on`` is an error ("vhost-net is not available in netstackd"). A
``vhostfd``/``vhostfds`` with ``vhost=off`` keeps QEMU's "vhostfd(s)= is not valid without
vhost". Deviations: these checks run before anything is opened (QEMU runs them after the
tap is up and its script has run), and ``queues`` outside 1..1024 is refused ("queues
must be between 1 and 1024"; QEMU 7.2 makes no client at all for 0).

Beyond QEMU: ``x-netns=NAME|PATH`` (see :mod:`drivers.tap.netns`) with the daemon
opening the tap or with ``helper=``; "x-netns= is invalid with fd=" / "... with fds=".
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.tap.helper import DEFAULT_BRIDGE, DEFAULT_HELPER
from drivers.tap.scripts import DEFAULT_DOWNSCRIPT, DEFAULT_SCRIPT
from netstack.errors import GenericError
from netstack.qapi import NetdevTapOptions

MAX_TAP_QUEUES = 1024


@dataclass(frozen=True)
class TapPlan:
    """What to open and how, after validation."""

    mode: str  # "fd", "fds", "helper" or "open"
    fds: tuple[str, ...] = ()
    helper: str = DEFAULT_HELPER
    bridge: str = DEFAULT_BRIDGE
    ifname: str = ""
    script: str = "no"
    downscript: str = "no"
    queues: int = 1
    vnet_hdr: bool = True
    vnet_required: bool = False
    sndbuf: int | None = None
    netns: str | None = None
    #: Set when the options ask for vhost-net, which is ignored (logged once).
    vhost_warning: str | None = None


def split_fds(text: str) -> tuple[str, ...]:
    """QEMU's ``get_fds``: split at ``:``, at most 1024 parts, no empty tail part."""
    out: list[str] = []
    pos = 0
    while len(out) < MAX_TAP_QUEUES and pos < len(text):
        cut = text.find(":", pos)
        if cut < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:cut])
        pos = cut + 1
    return tuple(out)


def netns_option(opts: object) -> str | None:
    """The ``x-netns`` member, where the schema has it."""
    value = getattr(opts, "x_netns", None)
    return value if isinstance(value, str) else None


def _vhost_check(opts: NetdevTapOptions) -> str | None:
    vhostfd = opts.vhostfd if opts.vhostfd is not None else opts.vhostfds
    wants = opts.vhost if opts.vhost is not None else bool(vhostfd or opts.vhostforce)
    if not wants:
        if vhostfd is not None:
            raise GenericError("vhostfd(s)= is not valid without vhost")
        return None
    if opts.vhostforce:
        raise GenericError(
            "vhost-net is not available in netstackd (frames always pass through the "
            "daemon); remove vhostforce=on"
        )
    return "vhost-net requested but not available in netstackd; frames pass the daemon"


def plan_tap(opts: NetdevTapOptions) -> TapPlan:
    """Validate ``opts`` in QEMU's order; raises :class:`GenericError` with its texts."""
    netns = netns_option(opts)
    if opts.fd is not None:
        if (
            opts.ifname is not None
            or opts.script is not None
            or opts.downscript is not None
            or opts.vnet_hdr is not None
            or opts.helper is not None
            or opts.queues is not None
            or opts.fds is not None
            or opts.vhostfds is not None
        ):
            raise GenericError(
                "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and "
                "vhostfds= are invalid with fd="
            )
        if netns is not None:
            raise GenericError("x-netns= is invalid with fd=")
        warning = _vhost_check(opts)
        return TapPlan("fd", fds=(opts.fd,), vhost_warning=warning, sndbuf=opts.sndbuf)
    if opts.fds is not None:
        if (
            opts.ifname is not None
            or opts.script is not None
            or opts.downscript is not None
            or opts.vnet_hdr is not None
            or opts.helper is not None
            or opts.queues is not None
            or opts.vhostfd is not None
        ):
            raise GenericError(
                "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= "
                "are invalid with fds="
            )
        if netns is not None:
            raise GenericError("x-netns= is invalid with fds=")
        fds = split_fds(opts.fds)
        if opts.vhostfds is not None and len(split_fds(opts.vhostfds)) != len(fds):
            raise GenericError(
                "The number of fds passed does not match the number of vhostfds passed"
            )
        warning = _vhost_check(opts)
        return TapPlan("fds", fds=fds, vhost_warning=warning, sndbuf=opts.sndbuf)
    if opts.helper is not None:
        if (
            opts.ifname is not None
            or opts.script is not None
            or opts.downscript is not None
            or opts.vnet_hdr is not None
            or opts.queues is not None
            or opts.vhostfds is not None
        ):
            raise GenericError(
                "ifname=, script=, downscript=, vnet_hdr=, queues=, and vhostfds= are "
                "invalid with helper="
            )
        warning = _vhost_check(opts)
        return TapPlan(
            "helper",
            helper=opts.helper,
            bridge=opts.br if opts.br is not None else DEFAULT_BRIDGE,
            netns=netns,
            vhost_warning=warning,
            sndbuf=opts.sndbuf,
        )
    if opts.vhostfds is not None:
        raise GenericError("vhostfds= is invalid if fds= wasn't specified")
    queues = opts.queues if opts.queues is not None else 1
    if not 1 <= queues <= MAX_TAP_QUEUES:
        raise GenericError(f"queues must be between 1 and {MAX_TAP_QUEUES}")
    warning = _vhost_check(opts)
    return TapPlan(
        "open",
        ifname=opts.ifname or "",
        script=opts.script if opts.script is not None else DEFAULT_SCRIPT,
        downscript=opts.downscript if opts.downscript is not None else DEFAULT_DOWNSCRIPT,
        queues=queues,
        vnet_hdr=opts.vnet_hdr if opts.vnet_hdr is not None else True,
        vnet_required=bool(opts.vnet_hdr),
        netns=netns,
        vhost_warning=warning,
        sndbuf=opts.sndbuf,
    )
