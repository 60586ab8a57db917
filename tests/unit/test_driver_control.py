"""What a driver adds to the control plane through ``DriverSpec.control``: its QMP commands
(visited into their frozen dataclass before the handler runs, QEMU's texts, introspected),
its HMP ``info`` topics and commands; and the one error tree."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

import drivers
from drivers.user.migration import StateError
from drivers.user.tcp_repair import RepairError
from drivers.vhost_user.dirtylog import LogError
from drivers.vhost_user.memguard import MemoryTableError
from drivers.vhost_user.protocol import BadRequest, ProtocolError
from drivers.vhost_user.virtqueue import RingError
from netstack.cli import UsageError
from netstack.confine import ConfineError
from netstack.daemon import Netstack
from netstack.driver import (
    ControlHost,
    DriverCommand,
    DriverControl,
    DriverSpec,
    HmpCommand,
    HmpInfo,
)
from netstack.errors import (
    ControlError,
    GenericError,
    NetstackError,
    RemoteInputError,
    StartupError,
)
from netstack.net.client import NetClient
from netstack.net.filters.framing import OversizedFrame
from netstack.privileges import PrivilegeError
from netstack.proto.websocket import HandshakeError
from netstack.qapi import Netdev
from netstack.qapi.schema import opt, req
from netstack.qmp.dispatch import dispatch
from netstack.qmp.hmp import run_hmp
from netstack.qmp.jsonstream import JSONParseError
from netstack.qmp.server import command_table


@dataclass(frozen=True, kw_only=True)
class EchoArgs:
    qapi_name: ClassVar[str] = "q_obj_x-echo-arg"
    text: str = req("str")
    times: int | None = opt("int")


@dataclass(frozen=True, kw_only=True)
class EchoReply:
    qapi_name: ClassVar[str] = "EchoReply"
    text: str = req("str")


seen: list[object] = []


async def _echo(host: ControlHost, args: EchoArgs) -> dict[str, Any]:
    seen.append(args)
    if args.text == "fail":
        raise GenericError("echo refused")
    return {"text": args.text * (args.times or 1)}


async def _count(host: ControlHost, args: None) -> int:
    return len(host.clients)


def _info(host: ControlHost) -> str:
    return f"echo: {len(host.clients)} clients\n"


def _shout(host: ControlHost, words: Sequence[str]) -> str:
    if not words:
        raise GenericError("nothing to shout")
    return " ".join(words).upper() + "\n"


async def _create(host: Any, netdev: Netdev) -> list[NetClient]:
    raise GenericError("not used")


ECHO = DriverSpec(
    "x-echo",
    _create,
    control=DriverControl(
        commands=(
            DriverCommand("x-echo", _echo, EchoArgs, EchoReply),
            DriverCommand("x-count", _count, returns="int", allow_oob=True),
        ),
        hmp_info=(HmpInfo("echo", "show the echo driver", _info),),
        hmp_commands=(HmpCommand("shout", _shout),),
    ),
)


@pytest.fixture
async def echo_ns(tmp_path: Path) -> AsyncIterator[Netstack]:
    ns = Netstack({**drivers.registry(), "x-echo": ECHO}, runtime_dir=tmp_path)
    try:
        yield ns
    finally:
        await ns.close()


async def qmp(ns: Netstack, command: str, **arguments: Any) -> dict[str, Any]:
    return await dispatch(command_table(ns), {"execute": command, "arguments": arguments}, True)


async def test_driver_command_gets_the_visited_dataclass(echo_ns: Netstack) -> None:
    seen.clear()
    assert await qmp(echo_ns, "x-echo", text="ab", times=2) == {"return": {"text": "abab"}}
    assert seen == [EchoArgs(text="ab", times=2)]
    # visited before the handler runs, with QEMU's texts
    assert await qmp(echo_ns, "x-echo", times=2) == {
        "error": {"class": "GenericError", "desc": "Parameter 'text' is missing"}
    }
    assert await qmp(echo_ns, "x-echo", text="a", nope=1) == {
        "error": {"class": "GenericError", "desc": "Parameter 'nope' is unexpected"}
    }
    assert await qmp(echo_ns, "x-echo", text=1) == {
        "error": {
            "class": "GenericError",
            "desc": "Invalid parameter type for 'text', expected: string",
        }
    }
    assert len(seen) == 1
    assert await qmp(echo_ns, "x-echo", text="fail") == {
        "error": {"class": "GenericError", "desc": "echo refused"}
    }
    assert await qmp(echo_ns, "x-count") == {"return": 0}
    assert await qmp(echo_ns, "x-count", extra=1) == {
        "error": {"class": "GenericError", "desc": "Parameter 'extra' is unexpected"}
    }


async def test_driver_commands_are_listed_and_introspected(echo_ns: Netstack) -> None:
    names = [c["name"] for c in (await qmp(echo_ns, "query-commands"))["return"]]
    assert {"x-echo", "x-count", "query-dhcp-leases", "query-tunnel-fdb"} <= set(names)
    assert names.index("x-echo") > names.index("quit")  # after the core's commands
    schema = {e["name"]: e for e in (await qmp(echo_ns, "query-qmp-schema"))["return"]}
    assert schema["x-echo"] == {
        "name": "x-echo",
        "meta-type": "command",
        "arg-type": "q_obj_x-echo-arg",
        "ret-type": "EchoReply",
    }
    assert schema["q_obj_x-echo-arg"]["members"] == [
        {"name": "text", "type": "str"},
        {"name": "times", "type": "int", "default": None},
    ]
    assert schema["x-count"]["allow-oob"] is True and schema["x-count"]["arg-type"] == "q_empty"


async def test_driver_hmp_lines(echo_ns: Netstack) -> None:
    help_text = await run_hmp(echo_ns, "info")
    assert help_text.splitlines() == [
        "info network  -- show the network state",
        "info usernet  -- show user network stack connection states",
        "info echo     -- show the echo driver",
        "info fdb      -- show the MAC tables of learning hubs and tunnels",
    ]
    assert await run_hmp(echo_ns, "info echo") == "echo: 0 clients\n"
    assert await run_hmp(echo_ns, "info nope") == "unknown command: 'info nope'\n"
    assert await run_hmp(echo_ns, "shout a b") == "A B\n"
    assert await run_hmp(echo_ns, "shout") == "Error: nothing to shout\n"
    reply = await qmp(echo_ns, "human-monitor-command", **{"command-line": "info echo"})
    assert reply == {"return": "echo: 0 clients\r\n"}


def test_one_error_tree() -> None:
    control: tuple[type[Exception], ...] = (GenericError, StateError)
    for cls in control:
        assert issubclass(cls, ControlError)
    remote: tuple[type[Exception], ...] = (
        RingError, ProtocolError, BadRequest, MemoryTableError, LogError, JSONParseError,
        OversizedFrame, HandshakeError,
    )  # fmt: skip
    for cls in remote:
        assert issubclass(cls, RemoteInputError) and not issubclass(cls, ControlError)
    startup: tuple[type[Exception], ...] = (UsageError, ConfineError, PrivilegeError)
    for cls in startup:
        assert issubclass(cls, StartupError)
    assert issubclass(RepairError, NetstackError)
    assert JSONParseError("JSON parse error, expecting value").desc == (
        "JSON parse error, expecting value"
    )
