"""QOM objects the daemon creates with ``-object`` / ``object-add``: the net filters and
TLS credentials.

Owns the ``ObjectOptions`` branches of ``qapi/qom.json`` (QEMU 10.0) for
``filter-buffer``, ``filter-dump``, ``filter-mirror`` and ``filter-redirector`` (all based on
``NetfilterProperties``) and ``tls-creds-x509`` (``TlsCredsX509Properties``), the
:class:`ObjectSpec` union record, and the two entry points.

Validation happens in QEMU's order, as far as it needs no daemon state:

1. visiting (``Parameter 'file' is missing``, enum values of ``queue``/``insert``, types);
2. ``id`` well-formedness (``user_creatable_add_type``) - for ``-object`` QemuOpts has
   already checked it while parsing;
3. the property setters: ``status`` must be ``on``/``off`` (``Invalid value for netfilter
   status, should be 'on' or 'off'``), ``filter-dump.maxlen`` and
   ``filter-buffer.interval`` must be non-zero (``Property 'filter-dump.maxlen' doesn't
   take value '0'``, ``Property 'filter-buffer.interval' requires a positive value``).

Left to the daemon (they need its tables, and in QEMU they come later): duplicate ids,
the netdev lookup (``Parameter 'netdev' expects a network backend id``), ``position``
parsing and lookup, and the filters' setup checks (chardev existence, redirector
``indev``/``outdev`` rules).

Deviation: only these five QOM types are known, so any other ``qom-type`` is rejected
by the enum check (``Parameter 'qom-type' does not accept value 'X'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from netstack.errors import GenericError

from . import qemuopts
from .helptext import HelpRequested
from .ids import check_id
from .jsonarg import parse_json_object
from .schema import QEnum, UnionInfo, opt, req
from .visitor import Mode, visit

NET_FILTER_DIRECTION: Final = QEnum("NetFilterDirection", ("all", "rx", "tx"))
NETFILTER_INSERT: Final = QEnum("NetfilterInsert", ("before", "behind"))
OBJECT_TYPES: Final = (
    "filter-buffer",
    "filter-dump",
    "filter-mirror",
    "filter-redirector",
    "tls-creds-x509",
)
OBJECT_TYPE: Final = QEnum("ObjectType", OBJECT_TYPES)


@dataclass(frozen=True, kw_only=True)
class NetfilterProperties:
    """Common netfilter properties (QEMU defaults: queue all, status "on",
    position "tail", insert behind)."""

    qapi_name: ClassVar[str] = "NetfilterProperties"
    netdev: str = req("str")
    queue: str | None = opt(NET_FILTER_DIRECTION)
    status: str | None = opt("str")
    position: str | None = opt("str")
    insert: str | None = opt(NETFILTER_INSERT)


@dataclass(frozen=True, kw_only=True)
class FilterBufferProperties(NetfilterProperties):
    """Hold frames and release them every ``interval`` microseconds."""

    qapi_name: ClassVar[str] = "FilterBufferProperties"
    interval: int = req("uint32")


DUMP_FORMAT = QEnum("FilterDumpFormat", ("pcap", "pcapng"))


@dataclass(frozen=True, kw_only=True)
class FilterDumpProperties(NetfilterProperties):
    """Capture to a pcap ``file``, at most ``maxlen`` bytes per frame (default 65536)."""

    qapi_name: ClassVar[str] = "FilterDumpProperties"
    file: str = req("str")
    maxlen: int | None = opt("uint32")
    #: Beyond QEMU: ``pcapng`` names the interface after the netdev and records direction.
    format: str | None = opt(DUMP_FORMAT)


@dataclass(frozen=True, kw_only=True)
class FilterMirrorProperties(NetfilterProperties):
    """Copy frames to the chardev ``outdev``."""

    qapi_name: ClassVar[str] = "FilterMirrorProperties"
    outdev: str = req("str")
    vnet_hdr_support: bool | None = opt("bool", name="vnet_hdr_support")


@dataclass(frozen=True, kw_only=True)
class FilterRedirectorProperties(NetfilterProperties):
    """Divert frames to ``outdev`` and/or inject frames read from ``indev``."""

    qapi_name: ClassVar[str] = "FilterRedirectorProperties"
    indev: str | None = opt("str")
    outdev: str | None = opt("str")
    vnet_hdr_support: bool | None = opt("bool", name="vnet_hdr_support")


TLS_CREDS_ENDPOINT: Final = QEnum("QCryptoTLSCredsEndpoint", ("client", "server"))


@dataclass(frozen=True, kw_only=True)
class TlsCredsProperties:
    """``TlsCredsProperties``: ``verify-peer`` (default on), ``dir``, ``endpoint`` (default
    client), ``priority`` (a GnuTLS priority string)."""

    qapi_name: ClassVar[str] = "TlsCredsProperties"
    verify_peer: bool | None = opt("bool")
    dir: str | None = opt("str")
    endpoint: str | None = opt(TLS_CREDS_ENDPOINT)
    priority: str | None = opt("str")


@dataclass(frozen=True, kw_only=True)
class TlsCredsX509Properties(TlsCredsProperties):
    """``tls-creds-x509``: X.509 credentials from the files in ``dir``."""

    qapi_name: ClassVar[str] = "TlsCredsX509Properties"
    loaded: bool | None = opt("bool", features=("deprecated",))
    sanity_check: bool | None = opt("bool")
    passwordid: str | None = opt("str")


ObjectProperties = NetfilterProperties | TlsCredsX509Properties

OBJECT_CLASSES: Final[dict[str, type[ObjectProperties]]] = {
    "filter-buffer": FilterBufferProperties,
    "filter-dump": FilterDumpProperties,
    "filter-mirror": FilterMirrorProperties,
    "filter-redirector": FilterRedirectorProperties,
    "tls-creds-x509": TlsCredsX509Properties,
}
#: Types QEMU creates before chardevs and netdevs (``object_create_early``); the
#: net filters come after the netdevs.
EARLY_OBJECT_TYPES: Final = frozenset({"tls-creds-x509"})


@dataclass(frozen=True, kw_only=True)
class ObjectSpec:
    """QAPI ``ObjectOptions`` (flat union on ``qom-type``): a QOM object to create."""

    qapi_name: ClassVar[str] = "ObjectOptions"
    qapi_union: ClassVar[UnionInfo] = UnionInfo("qom_type", "props", OBJECT_CLASSES)
    qom_type: str = req(OBJECT_TYPE)
    id: str = req("str")
    props: ObjectProperties = field()


def _check_setters(spec: ObjectSpec) -> None:
    """The property setters' own checks, in schema member order."""
    props = spec.props
    if not isinstance(props, NetfilterProperties):
        return
    if props.status is not None and props.status not in ("on", "off"):
        raise GenericError("Invalid value for netfilter status, should be 'on' or 'off'")
    if isinstance(props, FilterBufferProperties) and props.interval == 0:
        raise GenericError("Property 'filter-buffer.interval' requires a positive value")
    if isinstance(props, FilterDumpProperties) and props.maxlen == 0:
        raise GenericError("Property 'filter-dump.maxlen' doesn't take value '0'")


def object_from_qmp(args: dict[str, object]) -> ObjectSpec:
    """Visit QMP ``object-add`` arguments (flat: ``{"qom-type", "id", ...props}``),
    then check the id and run the stateless property-setter checks."""
    spec = visit(ObjectSpec, args, Mode.QMP)
    check_id(spec.id)
    _check_setters(spec)
    return spec


def parse_object_cli(text: str) -> ObjectSpec:
    """Parse an ``-object`` argument (QemuOpts + options visitor, or a JSON object).

    Raises :class:`.helptext.HelpRequested` for ``-object help`` (subject None) and
    ``-object TYPE,help`` (subject TYPE).
    """
    if text.startswith("{"):
        return object_from_qmp(parse_json_object(text))
    opts = qemuopts.parse(text, "qom-type")
    qom_type = opts.get("qom-type")
    if qom_type is None:
        raise GenericError("Parameter 'qom-type' is missing")
    if qemuopts.is_help_option(qom_type):
        raise HelpRequested("object")
    if opts.has("help") or opts.has("?"):
        raise HelpRequested("object", qom_type)
    table = opts.multimap()
    if opts.id is not None:
        table["id"] = [opts.id]
    spec = visit(ObjectSpec, table, Mode.OPTS)
    check_id(spec.id)
    _check_setters(spec)
    return spec
