"""SchemaInfo generation from the schema dataclasses."""

from __future__ import annotations

import json

from netstack.qapi import NETDEV_TYPES, OPTIONS_CLASSES, schema_info
from netstack.qapi.schema import members


def by_name() -> dict[str, dict[str, object]]:
    return {str(info["name"]): info for info in schema_info()}


def test_is_json_and_unique() -> None:
    infos = schema_info()
    names = [info["name"] for info in infos]
    assert len(names) == len(set(names))
    json.dumps(infos)


def test_netdev_union() -> None:
    netdev = by_name()["Netdev"]
    assert netdev["meta-type"] == "object"
    assert netdev["members"] == [
        {"name": "id", "type": "str"},
        {"name": "type", "type": "NetClientDriver"},
    ]
    assert netdev["tag"] == "type"
    variants = netdev["variants"]
    assert isinstance(variants, list)
    assert [v["case"] for v in variants] == list(NETDEV_TYPES)
    assert {"case": "none", "type": "q_empty"} in variants
    assert {"case": "user", "type": "NetdevUserOptions"} in variants


def test_members_follow_dataclasses() -> None:
    infos = by_name()
    for cls in OPTIONS_CLASSES.values():
        info = infos[cls.qapi_name]  # type: ignore[attr-defined]
        entries = info["members"]
        assert isinstance(entries, list)
        assert [e["name"] for e in entries] == [s.member.name for s in members(cls)]
        for entry, spec in zip(entries, members(cls), strict=True):
            assert ("default" in entry) == spec.member.optional


def test_user_options_details() -> None:
    infos = by_name()
    user = infos["NetdevUserOptions"]["members"]
    assert isinstance(user, list)
    assert {"name": "hostfwd", "type": "[String]", "default": None} in user
    assert {"name": "ipv6-prefixlen", "type": "int", "default": None} in user
    assert infos["[String]"] == {"name": "[String]", "meta-type": "array", "element-type": "String"}
    assert infos["String"]["members"] == [{"name": "str", "type": "str"}]
    assert infos["uint32"] == {"name": "uint32", "meta-type": "builtin", "json-type": "int"}
    assert infos["NetClientDriver"]["meta-type"] == "enum"


def test_wrapped_unions_and_features() -> None:
    infos = by_name()
    assert infos["ChardevSocketWrapper"]["members"] == [{"name": "data", "type": "ChardevSocket"}]
    legacy = infos["SocketAddressLegacy"]["variants"]
    assert isinstance(legacy, list)
    assert {"case": "unix", "type": "UnixSocketAddressWrapper"} in legacy
    stream = infos["NetdevStreamOptions"]["members"]
    assert isinstance(stream, list)
    assert {"name": "reconnect", "type": "int", "default": None, "features": ["deprecated"]} in (
        stream
    )
    tap = infos["NetdevTapOptions"]["members"]
    assert isinstance(tap, list)
    assert {"name": "vnet_hdr", "type": "bool", "default": None} in tap
    obj = infos["ObjectOptions"]
    assert obj["tag"] == "qom-type"
