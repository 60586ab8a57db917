"""Schema dataclasses back to their QMP JSON form (the visitor's inverse).

Used where the daemon reports configuration it was given (``query-netdev``): members with
wire names, absent optional members omitted, ``String`` lists as ``[{"str": ...}]``, unions
flat or wrapped as the schema says.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .schema import QList, members, union_info


def to_qmp(obj: Any) -> Any:
    """The QMP JSON value of a schema dataclass instance (or scalar, tuple)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        if isinstance(obj, tuple | list):
            return [to_qmp(v) for v in obj]
        return obj
    out: dict[str, Any] = {}
    for spec in members(type(obj)):
        value = getattr(obj, spec.attr)
        if value is None:
            continue
        qtype = spec.member.qtype
        if isinstance(qtype, QList) and qtype.unwrap is not None:
            out[spec.member.name] = [{"str": v} for v in value]
        else:
            out[spec.member.name] = to_qmp(value)
    union = union_info(type(obj))
    if union is not None:
        payload = to_qmp(getattr(obj, union.payload))
        if union.wrapped:
            out["data"] = payload
        elif isinstance(payload, dict):
            out.update(payload)
    return out
