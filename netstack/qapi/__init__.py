"""The option schema of netstack: QEMU's QAPI types for netdevs, chardevs and net filters.

One source of truth (frozen dataclasses with QAPI metadata, :mod:`.schema`) feeds one
visitor (:mod:`.visitor`) for every input form - QMP JSON, ``-netdev``/``-chardev``/
``-object`` command-line strings (QemuOpts, keyval or JSON), the ``-qmp`` shorthand - and
the introspection data (:mod:`.introspect`). Errors are :class:`netstack.errors.GenericError`
with QEMU 10.0's texts, raised in QEMU's order.

Entry points re-exported here; see the modules for the contracts:

* netdevs: :func:`parse_netdev_cli`, :func:`netdev_from_qmp`, :data:`NETDEV_TYPES`,
  :data:`OPTIONS_CLASSES`, :func:`netdev_help`;
* chardevs: :func:`parse_chardev_cli`, :func:`chardev_from_qmp`,
  :func:`chardev_add_from_qmp`, :func:`parse_qmp_shorthand`, :func:`chardev_help`;
* QOM filters: :func:`parse_object_cli`, :func:`object_from_qmp`, :func:`object_help`;
* :func:`check_id`, :func:`schema_info`, :class:`HelpRequested`, and :mod:`.keyval` for
  any other option (``keyval.parse(text, implied_key)``).
"""

from __future__ import annotations

from . import keyval
from .chardev import (
    CHARDEV_TYPES,
    Chardev,
    ChardevCommon,
    ChardevFile,
    ChardevHostdev,
    ChardevMux,
    ChardevRingbuf,
    ChardevSocket,
    ChardevStdio,
    ChardevUdp,
    ChardevVC,
    chardev_add_from_qmp,
    chardev_from_qmp,
)
from .chardev_cli import parse_chardev_cli, parse_qmp_shorthand
from .helptext import HelpRequested, chardev_help, netdev_help, object_help
from .ids import ID_HINT, check_id, id_wellformed
from .introspect import schema_info
from .netdev import (
    NETDEV_TYPES,
    OPTIONS_CLASSES,
    Netdev,
    NetdevBridgeOptions,
    NetdevDgramOptions,
    NetdevHubPortOptions,
    NetdevL2TPv3Options,
    NetdevNetmapOptions,
    NetdevOptions,
    NetdevSocketOptions,
    NetdevStreamOptions,
    NetdevTapOptions,
    NetdevUserOptions,
    NetdevVdeOptions,
    NetdevVhostUserOptions,
    NetdevVhostVDPAOptions,
    NetdevVxlanOptions,
    NetLegacyNicOptions,
    netdev_from_qmp,
    parse_netdev_cli,
)
from .qom import (
    OBJECT_TYPES,
    FilterBufferProperties,
    FilterDumpProperties,
    FilterMirrorProperties,
    FilterRedirectorProperties,
    NetfilterProperties,
    ObjectSpec,
    object_from_qmp,
    parse_object_cli,
)
from .schema import Empty
from .sockets import (
    FdSocketAddress,
    InetSocketAddress,
    SocketAddress,
    SocketAddressLegacy,
    UnixSocketAddress,
    VsockSocketAddress,
)

__all__ = [
    "CHARDEV_TYPES",
    "ID_HINT",
    "NETDEV_TYPES",
    "OBJECT_TYPES",
    "OPTIONS_CLASSES",
    "Chardev",
    "ChardevCommon",
    "ChardevFile",
    "ChardevHostdev",
    "ChardevMux",
    "ChardevRingbuf",
    "ChardevSocket",
    "ChardevStdio",
    "ChardevUdp",
    "ChardevVC",
    "Empty",
    "FdSocketAddress",
    "FilterBufferProperties",
    "FilterDumpProperties",
    "FilterMirrorProperties",
    "FilterRedirectorProperties",
    "HelpRequested",
    "InetSocketAddress",
    "NetLegacyNicOptions",
    "Netdev",
    "NetdevBridgeOptions",
    "NetdevDgramOptions",
    "NetdevHubPortOptions",
    "NetdevL2TPv3Options",
    "NetdevNetmapOptions",
    "NetdevOptions",
    "NetdevSocketOptions",
    "NetdevStreamOptions",
    "NetdevTapOptions",
    "NetdevUserOptions",
    "NetdevVdeOptions",
    "NetdevVhostUserOptions",
    "NetdevVhostVDPAOptions",
    "NetdevVxlanOptions",
    "NetfilterProperties",
    "ObjectSpec",
    "SocketAddress",
    "SocketAddressLegacy",
    "UnixSocketAddress",
    "VsockSocketAddress",
    "chardev_add_from_qmp",
    "chardev_from_qmp",
    "chardev_help",
    "check_id",
    "id_wellformed",
    "keyval",
    "netdev_from_qmp",
    "netdev_help",
    "object_from_qmp",
    "object_help",
    "parse_chardev_cli",
    "parse_netdev_cli",
    "parse_object_cli",
    "parse_qmp_shorthand",
    "schema_info",
]
