"""QAPI introspection data (``query-qmp-schema`` ``SchemaInfo``) derived from the dataclasses.

Owns the rendering of the schema metadata of :mod:`.schema` into the ``SchemaInfo``
entries QEMU's ``query-qmp-schema`` returns (``qapi/introspect.json``), so the QMP layer
never keeps a second copy of the schema:

* ``{"name", "meta-type": "object", "members": [{"name", "type", "default"?}], "tag"?,
  "variants"?}`` for structs and unions (base members first; an optional member has
  ``"default": None``; a union lists every tag value, members-less branches as
  ``q_empty``; wrapped unions reference ``<Name>Wrapper`` structs with one ``data``
  member, as QEMU's generated schema does);
* ``{"name", "meta-type": "enum", "members": [{"name"}], "values"}`` for enums;
* ``{"name": "[T]", "meta-type": "array", "element-type": "T"}`` for arrays;
* ``{"name", "meta-type": "builtin", "json-type"}`` for built-in scalars;
* ``"features"`` on members that have them (``deprecated``, ``unstable``).

Deviation: QEMU masks non-command type names with numbers in ``query-qmp-schema``; the
names here are the schema's own. Commands and events are the QMP layer's to add.
"""

from __future__ import annotations

from collections.abc import Iterable

from .chardev import ChardevAddArguments
from .netdev import Netdev
from .qom import ObjectSpec
from .schema import BUILTINS, Empty, QEnum, QList, QType, members, type_name, union_info

SchemaInfo = dict[str, object]


class _Collector:
    def __init__(self) -> None:
        self.out: dict[str, SchemaInfo] = {}

    def add(self, qtype: QType) -> str:
        name = type_name(qtype)
        if name in self.out:
            return name
        if isinstance(qtype, str):
            self.out[name] = {
                "name": name,
                "meta-type": "builtin",
                "json-type": BUILTINS[qtype].json_type,
            }
        elif isinstance(qtype, QEnum):
            self.out[name] = {
                "name": name,
                "meta-type": "enum",
                "members": [{"name": v} for v in qtype.values],
                "values": list(qtype.values),
            }
        elif isinstance(qtype, QList):
            info: SchemaInfo = {"name": name, "meta-type": "array"}
            self.out[name] = info
            info["element-type"] = self.add(qtype.element)
        else:
            self.add_object(qtype, name)
        return name

    def add_object(self, cls: type, name: str) -> None:
        info: SchemaInfo = {"name": name, "meta-type": "object"}
        self.out[name] = info
        entries: list[dict[str, object]] = []
        for spec in members(cls):
            m = spec.member
            entry: dict[str, object] = {"name": m.name, "type": self.add(m.qtype)}
            if m.optional:
                entry["default"] = None
            if m.features:
                entry["features"] = list(m.features)
            entries.append(entry)
        info["members"] = entries
        union = union_info(cls)
        if union is None:
            return
        tag = next(s.member for s in members(cls) if s.attr == union.tag)
        info["tag"] = tag.name
        variants: list[dict[str, object]] = []
        for case, variant in union.variants.items():
            if union.wrapped:
                inner = self.add(variant)
                wrapper = f"{inner}Wrapper"
                if wrapper not in self.out:
                    self.out[wrapper] = {
                        "name": wrapper,
                        "meta-type": "object",
                        "members": [{"name": "data", "type": inner}],
                    }
                variants.append({"case": case, "type": wrapper})
            else:
                variants.append({"case": case, "type": self.add(variant)})
        info["variants"] = variants


def schema_info(extra: Iterable[QType] = ()) -> list[SchemaInfo]:
    """SchemaInfo entries for ``Netdev``, ``chardev-add``'s arguments and the QOM objects,
    plus ``extra`` root types (command arguments), with every type they reference (each
    exactly once)."""
    collector = _Collector()
    for root in (Netdev, ChardevAddArguments, ObjectSpec, Empty, *extra):
        collector.add(root)
    return list(collector.out.values())
