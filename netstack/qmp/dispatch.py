"""QMP command table and request dispatch, with QEMU's validation order and texts.

Follows ``qapi/qmp-dispatch.c`` and ``monitor/qmp.c`` (QEMU 7.2+):

1. the request must be a JSON object (``QMP input must be a JSON object``, no ``id``);
2. ``id`` is taken next and echoed in every later reply, verbatim;
3. members are checked in QEMU's ``QDict`` iteration order: ``execute`` / ``exec-oob``
   (the latter only when OOB is enabled) must be strings and must not clash,
   ``arguments`` must be an object, any other member is unexpected, and one of the
   command keys must be present;
4. unknown command -> ``CommandNotFound``;
5. ``exec-oob`` of a command that does not allow OOB;
6. arguments visited against the command's schema (QAPI visitor texts) before any side
   effect; then the handler runs; a command without a return value returns ``{}``.

Commands are described by :class:`QmpCommand`; ``visit_args`` turns the request's
``arguments`` object into the command's typed argument object (a frozen schema dataclass,
or None for a command without arguments), raising QEMU's texts; handlers are coroutines
taking that object and the calling session, and return a JSON-able value or None.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from netstack.errors import CommandNotFound, ControlError, GenericError
from netstack.qapi.schema import QType
from netstack.qmp.qdict_order import ordered_keys

Handler = Callable[[Any, Any], Awaitable[Any]]
"""``handler(arguments, session)``: the visited argument object and the calling session."""
ArgsVisitor = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class QmpCommand:
    """One command: name, handler, argument visitor and introspection facts."""

    name: str
    handler: Handler
    visit_args: ArgsVisitor | None = None
    allow_oob: bool = False
    #: Introspection: the argument type (a schema dataclass, or a schema type name for
    #: boxed/union arguments) and the return type (a schema type, or a type's name).
    arg_type: type | str | None = None
    ret_type: QType = "any"
    allow_preconfig: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)


class CommandTable:
    """The commands a monitor can run, by name."""

    def __init__(self, commands: Iterable[QmpCommand] = ()) -> None:
        self._commands: dict[str, QmpCommand] = {}
        for cmd in commands:
            self.add(cmd)

    def add(self, cmd: QmpCommand) -> None:
        self._commands[cmd.name] = cmd

    def get(self, name: str) -> QmpCommand | None:
        return self._commands.get(name)

    def names(self) -> list[str]:
        return list(self._commands)

    def __iter__(self) -> Iterator[QmpCommand]:
        return iter(self._commands.values())


def error_reply(exc: ControlError) -> dict[str, Any]:
    return {"error": {"class": exc.qmp_class, "desc": exc.desc}}


@dataclass
class Request:
    """A request that passed the member checks."""

    command: str
    arguments: dict[str, Any]
    oob: bool
    has_id: bool
    id: Any = None


def check_request(obj: object, allow_oob: bool) -> Request:
    """Steps 1 and 3: member checks in QEMU's order. Raises GenericError."""
    if not isinstance(obj, dict):
        raise GenericError("QMP input must be a JSON object")
    exec_key: str | None = None
    for key in ordered_keys(obj):
        value = obj[key]
        if key == "execute" or (key == "exec-oob" and allow_oob):
            if not isinstance(value, str):
                raise GenericError(f"QMP input member '{key}' must be a string")
            if exec_key is not None:
                raise GenericError(f"QMP input member '{key}' clashes with '{exec_key}'")
            exec_key = key
        elif key == "arguments":
            if not isinstance(value, dict):
                raise GenericError("QMP input member 'arguments' must be an object")
        elif key == "id":
            continue
        else:
            raise GenericError(f"QMP input member '{key}' is unexpected")
    if exec_key is None:
        raise GenericError("QMP input lacks member 'execute'")
    return Request(
        command=obj[exec_key],
        arguments=obj.get("arguments", {}),
        oob=exec_key == "exec-oob",
        has_id="id" in obj,
        id=obj.get("id"),
    )


def is_oob_request(obj: object) -> bool:
    """QEMU's ``qmp_is_oob``: ``exec-oob`` present and ``execute`` absent."""
    return isinstance(obj, dict) and "exec-oob" in obj and "execute" not in obj


async def dispatch(
    table: CommandTable, obj: object, allow_oob: bool, session: Any = None
) -> dict[str, Any]:
    """Run one request; return the reply object (``return`` or ``error``, plus ``id``)."""
    has_id = isinstance(obj, dict) and "id" in obj
    req_id = obj.get("id") if isinstance(obj, dict) else None
    try:
        req = check_request(obj, allow_oob)
        cmd = table.get(req.command)
        if cmd is None:
            raise CommandNotFound(f"The command {req.command} has not been found")
        if req.oob and not cmd.allow_oob:
            raise GenericError(f"The command {req.command} does not support OOB")
        args = (cmd.visit_args or no_args)(req.arguments)
        ret = await cmd.handler(args, session)
        reply: dict[str, Any] = {"return": {} if ret is None else ret}
    except ControlError as exc:
        reply = error_reply(exc)
    if has_id:
        reply["id"] = req_id
    return reply


def no_args(arguments: dict[str, Any]) -> None:
    """The visitor of a command without arguments: any member is unexpected."""
    for key in ordered_keys(arguments):
        raise GenericError(f"Parameter '{key}' is unexpected")
