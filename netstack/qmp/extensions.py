"""The schema of netstackd's QMP commands beyond QEMU: their argument and return types.

Owns the schema dataclasses (:mod:`netstack.qapi.schema`) that the dispatcher visits
arguments with and ``query-qmp-schema`` describes, for the commands QEMU does not have.
Names follow QAPI conventions (commands and members lower-case with dashes, types in
CamelCase, enum values lower-case); optional members are absent, never null.

``query-netdev`` -> ``[NetdevInfo]``
    Every net client: ``id``, ``type``, ``queue-index``, ``info`` (its ``info network``
    text), ``link-up``, ``netdev`` (false for NICs), ``statistics``
    (``NetClientStatistics``: the core's frame/byte counters), ``queued`` /
    ``queue-dropped`` (its incoming queue), and when they apply ``options`` (the netdev's
    options as given, QAPI ``any``), ``peer``, ``hub``, ``mac`` (NIC-class clients) and
    ``counters`` (the driver's own counters - drops by reason, sockets, sessions - as a
    JSON object of name -> integer; QAPI has no map type, so its type is ``any``; the
    names are the driver's and may grow), ``filters`` (``[NetdevFilterInfo]``: the filter
    objects on the client in chain order, ``id``, ``qom-type``, ``queue``, ``status`` -
    ``info network`` shows them only for some clients, never for hub ports).

``query-hub-fdb`` {hubid?} -> ``[HubFdbEntry]``
    The MAC tables of learning hubs (``hubport,...,x-learning=on``): {hubid, mac, port
    (the hubport id), peer? (the netdev behind it), isolated (split horizon), age-ms}.
    ``hub N not found`` for an unknown hub; a repeater has no rows.
Drivers' own commands and their types are the drivers' (``drivers/user/control.py``,
``drivers/vxlan/control.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final

from netstack.qapi.schema import QEnum, QList, opt, req

# -- query-netdev ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NetClientStatistics:
    """The core's per-client counters (``netstack.net.client.Counters``)."""

    qapi_name: ClassVar[str] = "NetClientStatistics"
    malformed: int = req("int")
    rx_bytes: int = req("int")
    rx_dropped: int = req("int")
    rx_filtered: int = req("int")
    rx_frames: int = req("int")
    tx_bytes: int = req("int")
    tx_dropped: int = req("int")
    tx_frames: int = req("int")


@dataclass(frozen=True, kw_only=True)
class NetdevFilterInfo:
    """One filter object on a net client (``object-add`` of a ``filter-*`` type)."""

    qapi_name: ClassVar[str] = "NetdevFilterInfo"
    id: str = req("str")
    qom_type: str = req("str")
    queue: str = req("str")
    status: str = req("str")


@dataclass(frozen=True, kw_only=True)
class NetdevInfo:
    """One net client, as ``query-netdev`` reports it."""

    qapi_name: ClassVar[str] = "NetdevInfo"
    id: str = req("str")
    type: str = req("str")
    queue_index: int = req("int")
    info: str = req("str")
    link_up: bool = req("bool")
    netdev: bool = req("bool")
    statistics: NetClientStatistics = req(NetClientStatistics)  # noqa: RUF009 - schema metadata
    queued: int = req("int")
    queue_dropped: int = req("int")
    options: Any = opt("any")  # noqa: RUF009 - schema metadata
    peer: str | None = opt("str")
    hub: int | None = opt("int")
    mac: str | None = opt("str")
    counters: Any = opt("any")  # noqa: RUF009 - schema metadata
    filters: list[NetdevFilterInfo] | None = opt(QList(NetdevFilterInfo))  # noqa: RUF009


# -- query-rx-filter (QEMU's own types, qapi/net.json) -------------------------------------

#: QEMU's ``RxState``.
RX_STATE: Final = QEnum("RxState", ("normal", "none", "all"))


@dataclass(frozen=True, kw_only=True)
class RxFilterInfo:
    """QEMU's ``RxFilterInfo``, member for member (``netstack.net.rxfilter.RxFilter.info``)."""

    qapi_name: ClassVar[str] = "RxFilterInfo"
    name: str = req("str")
    promiscuous: bool = req("bool")
    multicast: str = req(RX_STATE)
    unicast: str = req(RX_STATE)
    vlan: str = req(RX_STATE)
    broadcast_allowed: bool = req("bool")
    multicast_overflow: bool = req("bool")
    unicast_overflow: bool = req("bool")
    main_mac: str = req("str")
    vlan_table: list[int] = req(QList("int"))  # noqa: RUF009 - schema metadata
    unicast_table: list[str] = req(QList("str"))  # noqa: RUF009 - schema metadata
    multicast_table: list[str] = req(QList("str"))  # noqa: RUF009 - schema metadata


# -- MAC tables: learning hubs ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HubFdbEntry:
    """One learned address of a learning hub: behind which port, seen how long ago."""

    qapi_name: ClassVar[str] = "HubFdbEntry"
    hubid: int = req("int")
    mac: str = req("str")
    port: str = req("str")
    peer: str | None = opt("str")
    isolated: bool = req("bool")
    age_ms: int = req("int")


NETDEV_INFO_LIST: Final = QList(NetdevInfo)
HUB_FDB_ENTRY_LIST: Final = QList(HubFdbEntry)
RX_FILTER_INFO_LIST: Final = QList(RxFilterInfo)
