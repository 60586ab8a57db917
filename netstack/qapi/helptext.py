"""Command-line help requests and the help texts QEMU prints for them.

Owns :class:`HelpRequested` (raised by the CLI parsers instead of returning a value when
the user asked for help, e.g. ``-netdev help``, ``-chardev help``, ``-object help``,
``-object filter-dump,help``) and the list texts, formatted exactly like QEMU's
``show_netdevs`` (``net/net.c``), the chardev backend list of ``chardev/char.c`` and
``user_creatable_print_types`` (``qom/object_interfaces.c``).

The lists take the names the daemon actually provides, so help never advertises a type
the daemon would then refuse with "not compiled into this binary".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

# QEMU 10.0 show_netdevs order (conditional entries included).
_NETDEV_ORDER: Final = (
    "socket",
    "stream",
    "dgram",
    "hubport",
    "tap",
    "user",
    "l2tpv3",
    "vde",
    "bridge",
    "netmap",
    "af-xdp",
    "vhost-user",
    "vhost-vdpa",
    "vmnet-host",
    "vmnet-shared",
    "vmnet-bridged",
)


class HelpRequested(Exception):
    """The user asked for help instead of creating something.

    ``option`` is ``"netdev"``, ``"chardev"`` or ``"object"``; ``subject`` is None when the
    list of types was requested, else what the help is about (a QOM type for
    ``-object TYPE,help``, ``"options"`` for ``-chardev ...,help``).
    """

    def __init__(self, option: str, subject: str | None = None) -> None:
        super().__init__(option if subject is None else f"{option}: {subject}")
        self.option = option
        self.subject = subject


def netdev_help(available: Iterable[str]) -> str:
    """``-netdev help`` output for the backend types in ``available``.

    Types are listed in QEMU's order (unknown extra names last, in the given order);
    ``none`` and ``nic`` are never listed (QEMU does not list them either).
    """
    names = [n for n in dict.fromkeys(available) if n not in ("none", "nic")]
    known = [n for n in _NETDEV_ORDER if n in names]
    extra = [n for n in names if n not in _NETDEV_ORDER]
    return "Available netdev backend types:\n" + "".join(f"{n}\n" for n in known + extra)


def chardev_help(available: Iterable[str]) -> str:
    """``-chardev help`` output: QEMU prints the names on one logical line each."""
    names = "".join(f"\n  {n}" for n in dict.fromkeys(available))
    return f"Available chardev backend types: {names}\n"


def object_help(available: Iterable[str]) -> str:
    """``-object help`` output (QEMU sorts the user-creatable types by name)."""
    return "List of user creatable objects:\n" + "".join(f"  {n}\n" for n in sorted(set(available)))
