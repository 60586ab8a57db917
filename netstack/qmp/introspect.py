"""``query-qmp-schema``: SchemaInfo for the commands, events and types netstackd offers.

Types come from the schema dataclasses (:func:`netstack.qapi.schema_info`): every
command's argument type and, where the command table names one as a schema type, its
return type; commands and events are added here from the command table, so the schema can
never disagree with what the dispatcher accepts. A return type given only by name that no
schema dataclass defines is reported as ``any``. Unlike QEMU, type names are not masked
with numbers.
"""

from __future__ import annotations

from typing import Any

from netstack.qapi import schema_info
from netstack.qapi.schema import QType, type_name
from netstack.qmp.dispatch import CommandTable

#: Events netstackd may emit, with their data members.
EVENTS: dict[str, list[dict[str, Any]]] = {
    "NIC_RX_FILTER_CHANGED": [
        {"name": "name", "type": "str", "default": None},
        {"name": "path", "type": "str"},
    ],
    "NETDEV_STREAM_CONNECTED": [
        {"name": "netdev-id", "type": "str"},
        {"name": "addr", "type": "SocketAddress"},
    ],
    "NETDEV_STREAM_DISCONNECTED": [{"name": "netdev-id", "type": "str"}],
    "NETDEV_VHOST_USER_CONNECTED": [
        {"name": "netdev-id", "type": "str"},
        {"name": "chardev-id", "type": "str"},
    ],
    "NETDEV_VHOST_USER_DISCONNECTED": [{"name": "netdev-id", "type": "str"}],
    "DHCP_LEASE_GRANTED": [
        {"name": "netdev", "type": "str"},
        {"name": "mac-address", "type": "str"},
        {"name": "ip-address", "type": "str"},
        {"name": "lease-time", "type": "int"},
        {"name": "renewal", "type": "bool"},
        {"name": "hostname", "type": "str", "default": None},
    ],
    "DHCP_LEASE_RELEASED": [
        {"name": "netdev", "type": "str"},
        {"name": "mac-address", "type": "str"},
        {"name": "ip-address", "type": "str"},
        {"name": "reason", "type": "str"},
    ],
    "SHUTDOWN": [{"name": "guest", "type": "bool"}, {"name": "reason", "type": "str"}],
}


def command_schema(table: CommandTable) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    roots: list[QType] = [c.arg_type for c in table if isinstance(c.arg_type, type)]
    roots += [c.ret_type for c in table if not isinstance(c.ret_type, str)]
    types: dict[str, dict[str, Any]] = {str(t["name"]): dict(t) for t in schema_info(roots)}
    types.setdefault("any", {"name": "any", "meta-type": "builtin", "json-type": "value"})
    for cmd in table:
        if cmd.arg_type is None:
            arg_type = "q_empty"
        elif isinstance(cmd.arg_type, str):
            arg_type = cmd.arg_type
        else:
            arg_type = type_name(cmd.arg_type)
        ret_type = cmd.ret_type if isinstance(cmd.ret_type, str) else type_name(cmd.ret_type)
        info: dict[str, Any] = {
            "name": cmd.name,
            "meta-type": "command",
            "arg-type": arg_type,
            "ret-type": ret_type if ret_type in types else "any",
        }
        if cmd.allow_oob:
            info["allow-oob"] = True
        out.append(info)
    for name, members in EVENTS.items():
        arg_type = f"q_obj_{name}-arg"
        types[arg_type] = {"name": arg_type, "meta-type": "object", "members": members}
        out.append({"name": name, "meta-type": "event", "arg-type": arg_type})
    types.setdefault("q_empty", {"name": "q_empty", "meta-type": "object", "members": []})
    out.extend(types.values())
    return out
