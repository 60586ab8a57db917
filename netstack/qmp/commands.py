"""The QMP commands netstackd offers, bound to a daemon's :class:`~.control.Control`.

Each command's arguments are a schema dataclass visited with the QAPI visitor (QEMU's
texts: ``Parameter 'X' is missing`` ...) before anything happens, and the handler receives
that frozen dataclass (boxed commands: the ``Netdev`` / ``Chardev`` / ``ObjectSpec`` the
qapi package builds; commands without arguments: None); introspection
(``query-qmp-schema``) is derived from the same dataclasses. After the core's commands come
those the drivers contribute (:class:`netstack.driver.DriverCommand`, e.g. the user
netdev's ``query-dhcp-leases``, ``user-forward-*``, ``query-user-*``, ``x-user-state-*``,
documented in ``drivers/user/control.py``, and the vxlan netdev's ``query-tunnel-fdb``).

QEMU's commands (net, chardev, objects, monitor basics) behave as in QEMU 7.2/10.0 (``monitor/``,
``net/net.c``, ``hw/net/virtio-net.c``, ``net/filter*.c``, ``chardev/char.c``). Beyond QEMU,
documented in ``query-qmp-schema`` too:

* ``query-netdev``: every net client with its type, options, peer, hub, link state and
  counters (QEMU never merged one);
* ``query-hub-fdb``: the MAC tables of learning hubs (HMP ``info fdb``, which shows the
  vxlan netdevs' too), types in :mod:`.extensions`;
* ``set-rx-filter``: programs a NIC-class client's rx filter (rx modes, MAC, MAC table,
  VLANs), since no guest control queue reaches a vhost-user back end;
* ``write-config`` {filename?}: writes the running configuration (netdevs, chardevs and
  filter objects, including those added at run time) as a ``-readconfig`` file, to
  ``filename`` or else the ``-writeconfig FILE`` of the command line
  (:mod:`netstack.configfile.writer`, ``docs/config-files.md``);
* the agent resynchronisation commands of qemu-ga (``guest-sync``,
  ``guest-sync-delimited``, ``guest-ping``, ``guest-info``) and
  ``guest-network-get-interfaces`` answered from the daemon's view of its NICs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from netstack import __version__, qapi
from netstack.driver import DriverCommand
from netstack.errors import CommandNotFound, GenericError
from netstack.qapi.schema import QEnum, QList, QType, opt, req
from netstack.qapi.visitor import Mode, visit
from netstack.qmp.control import Control
from netstack.qmp.dispatch import CommandTable, QmpCommand, no_args
from netstack.qmp.extensions import (
    HUB_FDB_ENTRY_LIST,
    NETDEV_INFO_LIST,
    RX_FILTER_INFO_LIST,
)

T = TypeVar("T")

#: The QEMU release whose QMP behaviour netstackd reproduces (reported by query-version).
QEMU_COMPAT = {"major": 10, "minor": 0, "micro": 0}
VERSION_INFO: dict[str, Any] = {"qemu": dict(QEMU_COMPAT), "package": f"netstack-{__version__}"}

QMP_CAPABILITY = QEnum("QMPCapability", ("oob",))
DATA_FORMAT = QEnum("DataFormat", ("utf8", "base64"))


# -- argument structs ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CapabilitiesArgs:
    qapi_name: ClassVar[str] = "q_obj_qmp_capabilities-arg"
    enable: tuple[str, ...] | None = opt(QList(QMP_CAPABILITY))


@dataclass(frozen=True, kw_only=True)
class IdArgs:
    qapi_name: ClassVar[str] = "q_obj_netdev_del-arg"
    id: str = req("str")


@dataclass(frozen=True, kw_only=True)
class SetLinkArgs:
    qapi_name: ClassVar[str] = "q_obj_set_link-arg"
    name: str = req("str")
    up: bool = req("bool")


@dataclass(frozen=True, kw_only=True)
class OptNameArgs:
    qapi_name: ClassVar[str] = "q_obj_query-rx-filter-arg"
    name: str | None = opt("str")


@dataclass(frozen=True, kw_only=True)
class HubIdArgs:
    qapi_name: ClassVar[str] = "q_obj_query-hub-fdb-arg"
    hubid: int | None = opt("int")


@dataclass(frozen=True, kw_only=True)
class HmpArgs:
    qapi_name: ClassVar[str] = "q_obj_human-monitor-command-arg"
    command_line: str = req("str")
    cpu_index: int | None = opt("int")


@dataclass(frozen=True, kw_only=True)
class RingbufWriteArgs:
    qapi_name: ClassVar[str] = "q_obj_ringbuf-write-arg"
    device: str = req("str")
    data: str = req("str")
    format: str | None = opt(DATA_FORMAT)


@dataclass(frozen=True, kw_only=True)
class RingbufReadArgs:
    qapi_name: ClassVar[str] = "q_obj_ringbuf-read-arg"
    device: str = req("str")
    size: int = req("int")
    format: str | None = opt(DATA_FORMAT)


@dataclass(frozen=True, kw_only=True)
class SyncArgs:
    qapi_name: ClassVar[str] = "q_obj_guest-sync-arg"
    id: int = req("int")


@dataclass(frozen=True, kw_only=True)
class WriteConfigArgs:
    qapi_name: ClassVar[str] = "q_obj_write-config-arg"
    filename: str | None = opt("str")


@dataclass(frozen=True, kw_only=True)
class OobTestArgs:
    qapi_name: ClassVar[str] = "q_obj_x-oob-test-arg"
    lock: bool = req("bool")


@dataclass(frozen=True, kw_only=True)
class RxModesArgs:
    qapi_name: ClassVar[str] = "RxModes"
    promiscuous: bool | None = opt("bool")
    allmulti: bool | None = opt("bool")
    alluni: bool | None = opt("bool")
    nomulti: bool | None = opt("bool")
    nouni: bool | None = opt("bool")
    nobcast: bool | None = opt("bool")


@dataclass(frozen=True, kw_only=True)
class SetRxFilterArgs:
    qapi_name: ClassVar[str] = "q_obj_set-rx-filter-arg"
    name: str = req("str")
    rx_modes: RxModesArgs | None = opt(RxModesArgs)  # noqa: RUF009 - schema metadata
    main_mac: str | None = opt("str")
    unicast_table: tuple[str, ...] | None = opt(QList("str"))
    multicast_table: tuple[str, ...] | None = opt(QList("str"))
    vlan_table: tuple[int, ...] | None = opt(QList("int"))
    vlan_filtering: bool | None = opt("bool")


def _visitor(cls: type[T]) -> Callable[[dict[str, Any]], T]:
    def visit_args(raw: dict[str, Any]) -> T:
        return visit(cls, raw, Mode.QMP)

    return visit_args


Session = Any
"""The calling :class:`~netstack.qmp.monitor.QmpSession` (None outside a monitor)."""


# -- the table -------------------------------------------------------------------------------


class Commands:
    """Builds the command table of one daemon: the core's commands, then each driver's."""

    def __init__(self, ns: Control) -> None:
        self.ns = ns
        self._oob_sem: asyncio.Semaphore | None = None
        self._table = CommandTable()

    def _add(
        self,
        name: str,
        fn: Callable[[T, Session], Awaitable[Any]],
        args: type[T],
        *,
        oob: bool = False,
        ret: QType = "any",
    ) -> None:
        self._table.add(QmpCommand(name, fn, _visitor(args), oob, args, ret))

    def _add0(
        self,
        name: str,
        fn: Callable[[None, Session], Awaitable[Any]],
        *,
        oob: bool = False,
        ret: QType = "any",
    ) -> None:
        self._table.add(QmpCommand(name, fn, no_args, oob, None, ret))

    def _add_boxed(
        self,
        name: str,
        fn: Callable[[T, Session], Awaitable[Any]],
        visitor: Callable[[dict[str, Any]], T],
        schema_name: str,
        *,
        ret: QType = "any",
    ) -> None:
        """A command whose arguments the qapi package visits itself (boxed or a union)."""
        self._table.add(QmpCommand(name, fn, visitor, False, schema_name, ret))

    def _add_driver(self, cmd: DriverCommand[Any]) -> None:
        ns = self.ns
        run = cmd.run

        async def handler(args: Any, session: Session) -> Any:
            return await run(ns, args)

        visit_args = _visitor(cmd.args) if cmd.args is not None else no_args
        self._table.add(
            QmpCommand(cmd.name, handler, visit_args, cmd.allow_oob, cmd.args, cmd.returns)
        )

    def table(self) -> CommandTable:
        add, add0, boxed = self._add, self._add0, self._add_boxed
        add("qmp_capabilities", self.qmp_capabilities, CapabilitiesArgs)
        add0("query-version", self.query_version, oob=True, ret="VersionInfo")
        add0("query-commands", self.query_commands, oob=True, ret="[CommandInfo]")
        add0("query-qmp-schema", self.query_qmp_schema, ret="[SchemaInfo]")
        add0("quit", self.quit)
        boxed("netdev_add", self.netdev_add, qapi.netdev_from_qmp, "Netdev")
        add("netdev_del", self.netdev_del, IdArgs)
        add("set_link", self.set_link, SetLinkArgs)
        add("query-rx-filter", self.query_rx_filter, OptNameArgs, ret=RX_FILTER_INFO_LIST)
        add("human-monitor-command", self.hmp, HmpArgs, ret="str")
        chardev_arg = "q_obj_chardev-add-arg"
        boxed("chardev-add", self.chardev_add, qapi.chardev_add_from_qmp, chardev_arg,
              ret="ChardevReturn")  # fmt: skip
        boxed("chardev-change", self.chardev_change, qapi.chardev_add_from_qmp, chardev_arg,
              ret="ChardevReturn")  # fmt: skip
        add("chardev-remove", self.chardev_remove, IdArgs)
        add("chardev-send-break", self.chardev_send_break, IdArgs)
        add0("query-chardev", self.query_chardev, ret="[ChardevInfo]")
        add0("query-chardev-backends", self.query_chardev_backends, ret="[ChardevBackendInfo]")
        add("ringbuf-write", self.ringbuf_write, RingbufWriteArgs)
        add("ringbuf-read", self.ringbuf_read, RingbufReadArgs, ret="str")
        boxed("object-add", self.object_add, qapi.object_from_qmp, "ObjectOptions")
        add("object-del", self.object_del, IdArgs)
        add("query-netdev", self.query_netdev, OptNameArgs, oob=True, ret=NETDEV_INFO_LIST)
        add("set-rx-filter", self.set_rx_filter, SetRxFilterArgs)
        add("query-hub-fdb", self.query_hub_fdb, HubIdArgs, ret=HUB_FDB_ENTRY_LIST)
        add("guest-sync", self.guest_sync, SyncArgs, ret="int")
        add("guest-sync-delimited", self.guest_sync_delimited, SyncArgs, ret="int")
        add0("guest-ping", self.guest_ping)
        add0("guest-info", self.guest_info, ret="GuestAgentInfo")
        add0("guest-network-get-interfaces", self.guest_interfaces,
             ret="[GuestNetworkInterface]")  # fmt: skip
        add("write-config", self.write_config, WriteConfigArgs)
        add("x-oob-test", self.oob_test, OobTestArgs, oob=True)
        for spec in self.ns.registry.values():
            for cmd in spec.control.commands:
                self._add_driver(cmd)
        return self._table

    # -- monitor basics --------------------------------------------------------------------

    async def qmp_capabilities(self, args: CapabilitiesArgs, session: Session) -> None:
        raise CommandNotFound("Capabilities negotiation is already complete, command ignored")

    async def query_version(self, args: None, session: Session) -> dict[str, Any]:
        return {"qemu": dict(QEMU_COMPAT), "package": VERSION_INFO["package"]}

    async def query_commands(self, args: None, session: Session) -> list[dict[str, str]]:
        return [{"name": name} for name in self._table.names()]

    async def query_qmp_schema(self, args: None, session: Session) -> list[dict[str, Any]]:
        from netstack.qmp.introspect import command_schema

        return command_schema(self._table)

    async def quit(self, args: None, session: Session) -> None:
        self.ns.emit_event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        asyncio.get_running_loop().call_soon(self.ns.request_shutdown)

    # -- net -----------------------------------------------------------------------------------

    async def netdev_add(self, netdev: qapi.Netdev, session: Session) -> None:
        qapi.check_id(netdev.id)
        await self.ns.netdev_add(netdev)

    async def netdev_del(self, args: IdArgs, session: Session) -> None:
        self.ns.netdev_del(args.id)

    async def set_link(self, args: SetLinkArgs, session: Session) -> None:
        self.ns.set_link(args.name, args.up)

    async def query_rx_filter(self, args: OptNameArgs, session: Session) -> list[dict[str, Any]]:
        return self.ns.query_rx_filter(args.name)

    async def query_netdev(self, args: OptNameArgs, session: Session) -> list[dict[str, Any]]:
        return self.ns.query_netdev(args.name)

    async def query_hub_fdb(self, args: HubIdArgs, session: Session) -> list[dict[str, Any]]:
        return self.ns.query_hub_fdb(args.hubid)

    async def set_rx_filter(self, args: SetRxFilterArgs, session: Session) -> None:
        modes = args.rx_modes
        self.ns.set_rx_filter(
            args.name,
            rx_modes=(
                {k: v for k, v in vars(modes).items() if v is not None}
                if modes is not None
                else None
            ),
            mac=args.main_mac,
            unicast=args.unicast_table,
            multicast=args.multicast_table,
            vlans=args.vlan_table,
            vlan_filtering=args.vlan_filtering,
        )

    async def hmp(self, args: HmpArgs, session: Session) -> str:
        from netstack.qmp.hmp import run_hmp

        text = await run_hmp(self.ns, args.command_line)
        return text.replace("\n", "\r\n")

    # -- chardevs ----------------------------------------------------------------------------

    async def chardev_add(self, spec: qapi.Chardev, session: Session) -> dict[str, Any]:
        return await self.ns.chardev_add(spec)

    async def chardev_change(self, spec: qapi.Chardev, session: Session) -> dict[str, Any]:
        return await self.ns.chardevs.change(spec)

    async def chardev_remove(self, args: IdArgs, session: Session) -> None:
        await self.ns.chardevs.remove(args.id)

    async def chardev_send_break(self, args: IdArgs, session: Session) -> None:
        self.ns.chardevs.send_break(args.id)

    async def query_chardev(self, args: None, session: Session) -> list[dict[str, Any]]:
        return self.ns.chardevs.query()

    async def query_chardev_backends(self, args: None, session: Session) -> list[dict[str, Any]]:
        return self.ns.chardevs.query_backends()

    async def ringbuf_write(self, args: RingbufWriteArgs, session: Session) -> None:
        self.ns.chardevs.ringbuf_write(args.device, args.data, args.format)

    async def ringbuf_read(self, args: RingbufReadArgs, session: Session) -> str:
        return self.ns.chardevs.ringbuf_read(args.device, args.size, args.format)

    # -- objects ------------------------------------------------------------------------------

    async def object_add(self, spec: qapi.ObjectSpec, session: Session) -> None:
        await self.ns.object_add(spec)

    async def object_del(self, args: IdArgs, session: Session) -> None:
        self.ns.object_del(args.id)

    # -- agent-style resynchronisation --------------------------------------------------------

    async def guest_sync(self, args: SyncArgs, session: Session) -> int:
        return int(args.id)

    async def guest_sync_delimited(self, args: SyncArgs, session: Session) -> int:
        if session is not None:
            session.request_delimited_reply()
        return int(args.id)

    async def guest_ping(self, args: None, session: Session) -> None:
        return None

    async def guest_info(self, args: None, session: Session) -> dict[str, Any]:
        return {
            "version": __version__,
            "supported_commands": [
                {"name": name, "enabled": True, "success-response": True}
                for name in self._table.names()
            ],
        }

    async def guest_interfaces(self, args: None, session: Session) -> list[dict[str, Any]]:
        return self.ns.guest_network_interfaces()

    async def write_config(self, args: WriteConfigArgs, session: Session) -> None:
        path = self.ns.config_file if args.filename is None else args.filename
        if not path or path == "-":
            raise GenericError(
                "no file to write: give 'filename' (the command line's -writeconfig FILE"
                " is the default; '-' is for the command line only)"
            )
        self.ns.write_config(path)

    async def oob_test(self, args: OobTestArgs, session: Session) -> None:
        """QEMU's ``x-oob-test``: ``lock: true`` blocks in-band dispatch until an OOB
        ``x-oob-test`` with ``lock: false`` releases it (used by the OOB tests)."""
        if self._oob_sem is None:
            self._oob_sem = asyncio.Semaphore(0)
        if args.lock:
            try:
                await asyncio.wait_for(self._oob_sem.acquire(), 30)
            except TimeoutError:
                raise GenericError("x-oob-test: nobody unlocked within 30 s") from None
        else:
            self._oob_sem.release()
