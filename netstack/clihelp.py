"""The command line's ``help`` forms: which option asks for help, and the text to print.

Owns the answer to every ``help`` (or ``?``) request QEMU 7.2 understands for the options
netstackd has, printed in QEMU's shape (``qemu_opts_print_help`` in ``util/qemu-option.c``,
``user_creatable_help`` in ``qom/object_interfaces.c``, ``show_netdevs`` in ``net/net.c``,
the backend list of ``chardev/char.c``) for the types this build provides:

* ``-netdev help`` / ``?`` / ``type=help`` / ``help,id=X``: the netdev backend types;
* ``-chardev help`` / ``backend=help``: the chardev backends; ``-chardev ...,help``:
  ``chardev options:`` and the option table;
* ``-object help`` / ``help,id=X``: the creatable object types; ``-object TYPE,help`` (or
  ``help=on``, ``qom-type=TYPE,help``): ``TYPE options:`` and its properties with QOM types;
* ``-mon ...,help``: ``mon options:``; ``-name ...,help``: ``name options:``.

``-netdev TYPE,help`` is "Parameter 'id' is missing" in QEMU 7.2 (no per-type netdev help)
and stays so. Deviation: QEMU exits with status 1 after printing an option table
(``-chardev socket,help``, ``-mon ...,help``, ``-name ...,help``) because its parser reports
"no options" to the caller; netstackd exits 0 after every help text it prints.

:func:`help_request` looks at a parsed command line before anything is created: the
daemon prints the text and exits instead of starting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from netstack.errors import GenericError
from netstack.qapi import HelpRequested, chardev_help, netdev_help, object_help
from netstack.qapi.qemuopts import OptType, parse
from netstack.qapi.qom import OBJECT_CLASSES
from netstack.qapi.schema import QEnum, members

_OPT_TYPE_NAMES: Final = {
    OptType.STRING: "str",
    OptType.BOOL: "bool (on/off)",
    OptType.NUMBER: "num",
    OptType.SIZE: "size",
}

NAME_OPTS: Final[dict[str, OptType]] = {
    "guest": OptType.STRING,
    "process": OptType.STRING,
    "debug-threads": OptType.BOOL,
}
"""QEMU's ``-name`` option table (``qemu_name_opts``)."""

_NAME_HELP: Final = {
    "guest": "Sets the name of this daemon (query-name).",
    "process": "Accepted for compatibility; the process keeps its name.",
    "debug-threads": "Accepted for compatibility; netstackd runs one thread.",
}


@dataclass(frozen=True)
class HelpText:
    """What to print (on standard output) and the exit status."""

    text: str
    status: int = 0


def opts_help(
    list_name: str, table: Mapping[str, OptType], texts: Mapping[str, str] | None = None
) -> str:
    """``qemu_opts_print_help``: ``LIST options:``, then ``  name=<type>`` sorted by name,
    a description padded to column 24 when there is one."""
    lines = [f"{list_name} options:"]
    for name in sorted(table):
        entry = f"  {name}=<{_OPT_TYPE_NAMES[table[name]]}>"
        if texts and name in texts:
            entry = f"{entry:<24} - {texts[name]}"
        lines.append(entry)
    return "\n".join(lines) + "\n"


def _qom_type_name(qtype: object) -> str:
    """The QOM property type QEMU prints for a schema member of a net filter."""
    if isinstance(qtype, QEnum):
        return qtype.name if qtype.name == "NetFilterDirection" else "string"
    return {"str": "string", "bool": "bool"}.get(str(qtype), str(qtype))


def object_type_help(qom_type: str) -> str:
    """``-object TYPE,help``: ``TYPE options:`` and ``  prop=<type>`` sorted by name."""
    cls = OBJECT_CLASSES[qom_type]
    props = sorted((m.member.name, _qom_type_name(m.member.qtype)) for m in members(cls))
    return f"{qom_type} options:\n" + "".join(f"  {name}=<{kind}>\n" for name, kind in props)


def parse_name(text: str) -> str:
    """``-name [guest=]NAME[,process=P][,debug-threads=on|off]``: the daemon's name.

    Raises :class:`HelpRequested` for a ``help`` flag, GenericError as QEMU would."""
    opts = parse(text, "guest", NAME_OPTS)
    if opts.help_wanted:
        raise HelpRequested("name", "options")
    return opts.get("guest") or ""


def text_for(request: HelpRequested, netdevs: Iterable[str], chardevs: Iterable[str]) -> HelpText:
    """The answer to a help request (an unknown object type gets QEMU's error)."""
    from netstack.qapi.chardev_cli import CHARDEV_OPTS, MON_OPTS

    option, subject = request.option, request.subject
    if option == "netdev":
        return HelpText(netdev_help(netdevs))
    if option == "chardev":
        if subject is None:
            return HelpText(chardev_help(chardevs))
        return HelpText(opts_help("chardev", CHARDEV_OPTS))
    if option == "object":
        if subject is None:
            return HelpText(object_help(OBJECT_CLASSES))
        if subject not in OBJECT_CLASSES:
            raise GenericError(f"Parameter 'qom-type' does not accept value '{subject}'")
        return HelpText(object_type_help(subject))
    if option == "mon":
        return HelpText(opts_help("mon", MON_OPTS))
    return HelpText(opts_help("name", NAME_OPTS, _NAME_HELP))


def help_request(options: Sequence[tuple[str, str]]) -> tuple[str, str, HelpRequested] | None:
    """The first ``(flag, spec)`` of ``options`` (``("-netdev", "help")`` ...) that asks for
    help, with its request; errors other than help requests are left for the daemon's
    start-up to report in its usual order."""
    from netstack import qapi
    from netstack.qapi.chardev_cli import parse_mon_cli

    parsers = {
        "-netdev": qapi.parse_netdev_cli,
        "-chardev": qapi.parse_chardev_cli,
        "-object": qapi.parse_object_cli,
        "-mon": parse_mon_cli,
    }
    for flag, spec in options:
        parser = parsers.get(flag)
        if parser is None:
            continue
        try:
            parser(spec)
        except HelpRequested as request:
            return flag, spec, request
        except Exception:  # reported with its option when the daemon creates it
            continue
    return None
