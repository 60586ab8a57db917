"""The QMP commands netstackd offers, bound to a daemon.

Each command's arguments are a schema dataclass visited with the QAPI visitor (QEMU's
texts: ``Parameter 'X' is missing`` ...) before anything happens; introspection
(``query-qmp-schema``) is derived from the same dataclasses.

QEMU's commands (net, chardev, objects, monitor basics) behave as in QEMU 7.2/10.0 (``monitor/``,
``net/net.c``, ``hw/net/virtio-net.c``, ``net/filter*.c``, ``chardev/char.c``). Beyond QEMU,
documented in ``query-qmp-schema`` too:

* ``query-netdev``: every net client with its type, options, peer, hub, link state and
  counters (QEMU never merged one);
* ``query-dhcp-leases``: the DHCP lease tables of the user netdevs (also reported by the
  ``DHCP_LEASE_GRANTED`` / ``DHCP_LEASE_RELEASED`` events);
* ``user-forward-add``, ``user-forward-remove``, ``query-user-forwards``: hostfwd and
  guestfwd rules of a running user netdev, and ``query-user-connections``: its connection
  table (the data of ``info usernet``) - their types are in :mod:`.extensions`;
* ``query-hub-fdb`` and ``query-tunnel-fdb``: the MAC tables of learning hubs and of
  vxlan netdevs (HMP ``info fdb``), types in :mod:`.extensions`;
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from netstack import __version__, qapi
from netstack.errors import CommandNotFound, GenericError
from netstack.qapi.schema import QEnum, QList, QType, members, opt, req, union_info
from netstack.qapi.visitor import Mode, visit
from netstack.qmp import user_state as us
from netstack.qmp.dispatch import CommandTable, QmpCommand
from netstack.qmp.extensions import (
    DHCP_LEASE_INFO_LIST,
    HUB_FDB_ENTRY_LIST,
    NETDEV_INFO_LIST,
    RX_FILTER_INFO_LIST,
    TUNNEL_FDB_LIST,
    USER_CONNECTION_INFO_LIST,
    USER_FORWARD_INFO_LIST,
    UserForwardAddArgs,
    UserForwardInfo,
    UserForwardSelector,
)

if TYPE_CHECKING:
    from netstack.daemon import Netstack

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
class NetdevNameArgs:
    qapi_name: ClassVar[str] = "q_obj_query-dhcp-leases-arg"
    netdev: str | None = opt("str")


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


def _visitor(cls: type[T]) -> Any:
    union = union_info(cls)

    def visit_args(raw: dict[str, Any]) -> dict[str, Any]:
        obj = visit(cls, raw, Mode.QMP)
        out = {spec.attr: getattr(obj, spec.attr) for spec in members(cls)}
        if union is not None:  # a flat union: its variant's members too
            variant = getattr(obj, union.payload)
            out.update((spec.attr, getattr(variant, spec.attr)) for spec in members(type(variant)))
        return out

    return visit_args


# -- the table -------------------------------------------------------------------------------


class Commands:
    """Builds the command table of one daemon."""

    def __init__(self, ns: Netstack) -> None:
        self.ns = ns
        self._oob_sem: asyncio.Semaphore | None = None

    def table(self) -> CommandTable:
        t = CommandTable()

        def add(
            name: str,
            fn: Any,
            args: type | None = None,
            *,
            oob: bool = False,
            ret: QType = "any",
            raw: str | None = None,
        ) -> None:
            visit_args = _raw if raw is not None else (_visitor(args) if args else None)
            t.add(
                QmpCommand(name, fn, visit_args, allow_oob=oob, arg_type=raw or args, ret_type=ret)
            )

        add("qmp_capabilities", self.qmp_capabilities, CapabilitiesArgs)
        add("query-version", self.query_version, oob=True, ret="VersionInfo")
        add("query-commands", self.query_commands, oob=True, ret="[CommandInfo]")
        add("query-qmp-schema", self.query_qmp_schema, ret="[SchemaInfo]")
        add("quit", self.quit)
        add("netdev_add", self.netdev_add, raw="Netdev")
        add("netdev_del", self.netdev_del, IdArgs)
        add("set_link", self.set_link, SetLinkArgs)
        add("query-rx-filter", self.query_rx_filter, OptNameArgs, ret=RX_FILTER_INFO_LIST)
        add("human-monitor-command", self.hmp, HmpArgs, ret="str")
        add("chardev-add", self.chardev_add, raw="q_obj_chardev-add-arg", ret="ChardevReturn")
        add("chardev-change", self.chardev_change, raw="q_obj_chardev-add-arg", ret="ChardevReturn")
        add("chardev-remove", self.chardev_remove, IdArgs)
        add("chardev-send-break", self.chardev_send_break, IdArgs)
        add("query-chardev", self.query_chardev, ret="[ChardevInfo]")
        add("query-chardev-backends", self.query_chardev_backends, ret="[ChardevBackendInfo]")
        add("ringbuf-write", self.ringbuf_write, RingbufWriteArgs)
        add("ringbuf-read", self.ringbuf_read, RingbufReadArgs, ret="str")
        add("object-add", self.object_add, raw="ObjectOptions")
        add("object-del", self.object_del, IdArgs)
        add("query-netdev", self.query_netdev, OptNameArgs, oob=True, ret=NETDEV_INFO_LIST)
        add("set-rx-filter", self.set_rx_filter, SetRxFilterArgs)
        add("query-dhcp-leases", self.query_dhcp_leases, NetdevNameArgs, ret=DHCP_LEASE_INFO_LIST)
        add("user-forward-add", self.user_forward_add, UserForwardAddArgs, ret=UserForwardInfo)
        add("user-forward-remove", self.user_forward_remove, UserForwardSelector)
        fwd_list, conn_list = USER_FORWARD_INFO_LIST, USER_CONNECTION_INFO_LIST
        add("query-user-forwards", self.query_user_forwards, NetdevNameArgs, ret=fwd_list)
        add("query-user-connections", self.query_user_connections, NetdevNameArgs, ret=conn_list)
        add("query-hub-fdb", self.query_hub_fdb, HubIdArgs, ret=HUB_FDB_ENTRY_LIST)
        add("query-tunnel-fdb", self.query_tunnel_fdb, NetdevNameArgs, ret=TUNNEL_FDB_LIST)
        add("x-user-state-export", self.user_state_export, us.UserStateExportArgs,
            ret=us.UserStateExport)  # fmt: skip
        add("x-user-state-import", self.user_state_import, us.UserStateImportArgs,
            ret=us.UserStateImport)  # fmt: skip
        add("guest-sync", self.guest_sync, SyncArgs, ret="int")
        add("guest-sync-delimited", self.guest_sync_delimited, SyncArgs, ret="int")
        add("guest-ping", self.guest_ping)
        add("guest-info", self.guest_info, ret="GuestAgentInfo")
        add("guest-network-get-interfaces", self.guest_interfaces, ret="[GuestNetworkInterface]")
        add("write-config", self.write_config, WriteConfigArgs)
        add("x-oob-test", self.oob_test, OobTestArgs, oob=True)
        self._table = t
        return t

    # -- monitor basics --------------------------------------------------------------------

    async def qmp_capabilities(self, args: dict[str, Any], session: Any) -> None:
        raise CommandNotFound("Capabilities negotiation is already complete, command ignored")

    async def query_version(self, args: dict[str, Any], session: Any) -> dict[str, Any]:
        return {"qemu": dict(QEMU_COMPAT), "package": VERSION_INFO["package"]}

    async def query_commands(self, args: dict[str, Any], session: Any) -> list[dict[str, str]]:
        return [{"name": name} for name in self._table.names()]

    async def query_qmp_schema(self, args: dict[str, Any], session: Any) -> list[dict[str, Any]]:
        from netstack.qmp.introspect import command_schema

        return command_schema(self._table)

    async def quit(self, args: dict[str, Any], session: Any) -> None:
        self.ns.emit_event("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        asyncio.get_running_loop().call_soon(self.ns.request_shutdown)

    # -- net -----------------------------------------------------------------------------------

    async def netdev_add(self, args: dict[str, Any], session: Any) -> None:
        netdev = qapi.netdev_from_qmp(args)
        qapi.check_id(netdev.id)
        await self.ns.netdev_add(netdev)

    async def netdev_del(self, args: dict[str, Any], session: Any) -> None:
        self.ns.netdev_del(args["id"])

    async def set_link(self, args: dict[str, Any], session: Any) -> None:
        self.ns.set_link(args["name"], args["up"])

    async def query_rx_filter(self, args: dict[str, Any], session: Any) -> list[dict[str, Any]]:
        return self.ns.query_rx_filter(args.get("name"))

    async def query_netdev(self, args: dict[str, Any], session: Any) -> list[dict[str, Any]]:
        return self.ns.query_netdev(args.get("name"))

    async def query_dhcp_leases(self, args: dict[str, Any], session: Any) -> list[dict[str, Any]]:
        return self.ns.query_dhcp_leases(args.get("netdev"))

    async def user_forward_add(self, args: dict[str, Any], session: Any) -> dict[str, Any]:
        return self.ns.user_forward_add(args["netdev"], args["type"] or "hostfwd", args["rule"])

    async def user_forward_remove(self, args: dict[str, Any], session: Any) -> None:
        if args["type"] == "hostfwd":
            addr, port = args["host_addr"], args["host_port"]
        else:
            addr, port = args["guest_addr"], args["guest_port"]
        self.ns.user_forward_remove(args["netdev"], args["type"], args.get("protocol"), addr, port)

    async def query_user_forwards(self, args: dict[str, Any], session: Any) -> list[Any]:
        return self.ns.query_user_forwards(args.get("netdev"))

    async def query_user_connections(self, args: dict[str, Any], session: Any) -> list[Any]:
        return self.ns.query_user_connections(args.get("netdev"))

    async def query_hub_fdb(self, args: dict[str, Any], session: Any) -> list[dict[str, Any]]:
        return self.ns.query_hub_fdb(args.get("hubid"))

    async def query_tunnel_fdb(self, args: dict[str, Any], session: Any) -> list[dict[str, Any]]:
        return self.ns.query_tunnel_fdb(args.get("netdev"))

    async def user_state_export(self, args: dict[str, Any], session: Any) -> dict[str, Any]:
        return us.export_state(self.ns, args)

    async def user_state_import(self, args: dict[str, Any], session: Any) -> dict[str, Any]:
        return us.import_state(self.ns, args)

    async def set_rx_filter(self, args: dict[str, Any], session: Any) -> None:
        modes = args.get("rx_modes")
        self.ns.set_rx_filter(
            args["name"],
            rx_modes=(
                {k: v for k, v in vars(modes).items() if v is not None}
                if modes is not None
                else None
            ),
            mac=args.get("main_mac"),
            unicast=args.get("unicast_table"),
            multicast=args.get("multicast_table"),
            vlans=args.get("vlan_table"),
            vlan_filtering=args.get("vlan_filtering"),
        )

    async def hmp(self, args: dict[str, Any], session: Any) -> str:
        from netstack.qmp.hmp import run_hmp

        text = await run_hmp(self.ns, args["command_line"])
        return text.replace("\n", "\r\n")

    # -- chardevs ----------------------------------------------------------------------------

    async def chardev_add(self, args: dict[str, Any], session: Any) -> dict[str, Any]:
        spec = qapi.chardev_add_from_qmp(args)
        return await self.ns.chardev_add(spec)

    async def chardev_change(self, args: dict[str, Any], session: Any) -> dict[str, Any]:
        spec = qapi.chardev_add_from_qmp(args)
        return await self.ns.chardevs.change(spec)

    async def chardev_remove(self, args: dict[str, Any], session: Any) -> None:
        await self.ns.chardevs.remove(args["id"])

    async def chardev_send_break(self, args: dict[str, Any], session: Any) -> None:
        self.ns.chardevs.send_break(args["id"])

    async def query_chardev(self, args: dict[str, Any], session: Any) -> list[dict[str, Any]]:
        return self.ns.chardevs.query()

    async def query_chardev_backends(
        self, args: dict[str, Any], session: Any
    ) -> list[dict[str, Any]]:
        return self.ns.chardevs.query_backends()

    async def ringbuf_write(self, args: dict[str, Any], session: Any) -> None:
        self.ns.chardevs.ringbuf_write(args["device"], args["data"], args.get("format"))

    async def ringbuf_read(self, args: dict[str, Any], session: Any) -> str:
        return self.ns.chardevs.ringbuf_read(args["device"], args["size"], args.get("format"))

    # -- objects ------------------------------------------------------------------------------

    async def object_add(self, args: dict[str, Any], session: Any) -> None:
        spec = qapi.object_from_qmp(args)
        await self.ns.object_add(spec)

    async def object_del(self, args: dict[str, Any], session: Any) -> None:
        self.ns.object_del(args["id"])

    # -- agent-style resynchronisation --------------------------------------------------------

    async def guest_sync(self, args: dict[str, Any], session: Any) -> int:
        return int(args["id"])

    async def guest_sync_delimited(self, args: dict[str, Any], session: Any) -> int:
        if session is not None:
            session.request_delimited_reply()
        return int(args["id"])

    async def guest_ping(self, args: dict[str, Any], session: Any) -> None:
        return None

    async def guest_info(self, args: dict[str, Any], session: Any) -> dict[str, Any]:
        return {
            "version": __version__,
            "supported_commands": [
                {"name": name, "enabled": True, "success-response": True}
                for name in self._table.names()
            ],
        }

    async def guest_interfaces(self, args: dict[str, Any], session: Any) -> list[dict[str, Any]]:
        return self.ns.guest_network_interfaces()

    async def write_config(self, args: dict[str, Any], session: Any) -> None:
        from netstack.configfile.writer import write_running_config

        path = self.ns.config_file if args["filename"] is None else args["filename"]
        if not path or path == "-":
            raise GenericError(
                "no file to write: give 'filename' (the command line's -writeconfig FILE"
                " is the default; '-' is for the command line only)"
            )
        write_running_config(self.ns, path)

    async def oob_test(self, args: dict[str, Any], session: Any) -> None:
        """QEMU's ``x-oob-test``: ``lock: true`` blocks in-band dispatch until an OOB
        ``x-oob-test`` with ``lock: false`` releases it (used by the OOB tests)."""
        if self._oob_sem is None:
            self._oob_sem = asyncio.Semaphore(0)
        if args["lock"]:
            try:
                await asyncio.wait_for(self._oob_sem.acquire(), 30)
            except TimeoutError:
                raise GenericError("x-oob-test: nobody unlocked within 30 s") from None
        else:
            self._oob_sem.release()


def _raw(args: dict[str, Any]) -> dict[str, Any]:
    """Commands whose arguments the qapi package visits itself (boxed or unions)."""
    return args
