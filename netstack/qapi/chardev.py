"""Chardev backends of ``qapi/char.json`` (QEMU 10.0) and the QMP ``chardev-add`` door.

Owns one frozen dataclass per backend configuration struct (``ChardevCommon`` and the
structs based on it), the wrapped ``ChardevBackend`` union (``{"type": T, "data":
{...}}``), the daemon-facing :class:`Chardev` record, and :func:`chardev_from_qmp`. The
command-line forms live in :mod:`.chardev_cli`.

Invariants: QAPI defaults are not applied (note that QMP and CLI defaults differ, e.g.
``ChardevSocket.server``: absent over QMP means *server*, the CLI always sets it and
defaults to client); the id is not checked (QEMU's ``chardev-add`` accepts any id).

QEMU 7.2 differences: ``ChardevSocket`` has no ``reconnect-ms`` (9.2); 10.0's ``hub``
backend is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Final

from .schema import QEnum, UnionInfo, member, opt, optional, req
from .sockets import SocketAddressLegacy
from .visitor import Mode, visit

CHARDEV_TYPES: Final = (
    "file",
    "serial",
    "parallel",
    "pipe",
    "socket",
    "udp",
    "pty",
    "null",
    "mux",
    "msmouse",
    "wctablet",
    "braille",
    "testdev",
    "stdio",
    "console",
    "spicevmc",
    "spiceport",
    "qemu-vdagent",
    "dbus",
    "vc",
    "ringbuf",
    "memory",
)
CHARDEV_BACKEND_KIND: Final = QEnum("ChardevBackendKind", CHARDEV_TYPES)


@dataclass(frozen=True, kw_only=True)
class ChardevCommon:
    """Members shared by every backend: an optional output log file."""

    qapi_name: ClassVar[str] = "ChardevCommon"
    logfile: str | None = opt("str")
    logappend: bool | None = opt("bool")


@dataclass(frozen=True, kw_only=True)
class ChardevFile(ChardevCommon):
    qapi_name: ClassVar[str] = "ChardevFile"
    in_: str | None = opt("str", name="in")
    out: str = req("str")
    append: bool | None = opt("bool")


@dataclass(frozen=True, kw_only=True)
class ChardevHostdev(ChardevCommon):
    """``serial``, ``parallel`` and ``pipe``: a device path."""

    qapi_name: ClassVar[str] = "ChardevHostdev"
    device: str = req("str")


@dataclass(frozen=True, kw_only=True)
class ChardevSocket(ChardevCommon):
    """A stream socket; ``reconnect`` (seconds) is deprecated since 9.2."""

    qapi_name: ClassVar[str] = "ChardevSocket"
    addr: SocketAddressLegacy = field(metadata=member(SocketAddressLegacy))
    tls_creds: str | None = opt("str")
    tls_authz: str | None = opt("str")
    server: bool | None = opt("bool")
    wait: bool | None = opt("bool")
    nodelay: bool | None = opt("bool")
    telnet: bool | None = opt("bool")
    tn3270: bool | None = opt("bool")
    websocket: bool | None = opt("bool")
    reconnect: int | None = opt("int", features=("deprecated",))
    reconnect_ms: int | None = opt("int")


@dataclass(frozen=True, kw_only=True)
class ChardevUdp(ChardevCommon):
    qapi_name: ClassVar[str] = "ChardevUdp"
    remote: SocketAddressLegacy = field(metadata=member(SocketAddressLegacy))
    local: SocketAddressLegacy | None = field(default=None, metadata=optional(SocketAddressLegacy))


@dataclass(frozen=True, kw_only=True)
class ChardevMux(ChardevCommon):
    qapi_name: ClassVar[str] = "ChardevMux"
    chardev: str = req("str")


@dataclass(frozen=True, kw_only=True)
class ChardevStdio(ChardevCommon):
    qapi_name: ClassVar[str] = "ChardevStdio"
    signal: bool | None = opt("bool")


@dataclass(frozen=True, kw_only=True)
class ChardevSpiceChannel(ChardevCommon):
    qapi_name: ClassVar[str] = "ChardevSpiceChannel"
    type: str = req("str")


@dataclass(frozen=True, kw_only=True)
class ChardevSpicePort(ChardevCommon):
    qapi_name: ClassVar[str] = "ChardevSpicePort"
    fqdn: str = req("str")


@dataclass(frozen=True, kw_only=True)
class ChardevDBus(ChardevCommon):
    qapi_name: ClassVar[str] = "ChardevDBus"
    name: str = req("str")


@dataclass(frozen=True, kw_only=True)
class ChardevVC(ChardevCommon):
    qapi_name: ClassVar[str] = "ChardevVC"
    width: int | None = opt("int")
    height: int | None = opt("int")
    cols: int | None = opt("int")
    rows: int | None = opt("int")


@dataclass(frozen=True, kw_only=True)
class ChardevRingbuf(ChardevCommon):
    """``ringbuf`` (and its deprecated alias ``memory``); size must be a power of two."""

    qapi_name: ClassVar[str] = "ChardevRingbuf"
    size: int | None = opt("int")


@dataclass(frozen=True, kw_only=True)
class ChardevQemuVDAgent(ChardevCommon):
    qapi_name: ClassVar[str] = "ChardevQemuVDAgent"
    mouse: bool | None = opt("bool")
    clipboard: bool | None = opt("bool")


BACKEND_CLASSES: Final[dict[str, type[ChardevCommon]]] = {
    "file": ChardevFile,
    "serial": ChardevHostdev,
    "parallel": ChardevHostdev,
    "pipe": ChardevHostdev,
    "socket": ChardevSocket,
    "udp": ChardevUdp,
    "pty": ChardevCommon,
    "null": ChardevCommon,
    "mux": ChardevMux,
    "msmouse": ChardevCommon,
    "wctablet": ChardevCommon,
    "braille": ChardevCommon,
    "testdev": ChardevCommon,
    "stdio": ChardevStdio,
    "console": ChardevCommon,
    "spicevmc": ChardevSpiceChannel,
    "spiceport": ChardevSpicePort,
    "qemu-vdagent": ChardevQemuVDAgent,
    "dbus": ChardevDBus,
    "vc": ChardevVC,
    "ringbuf": ChardevRingbuf,
    "memory": ChardevRingbuf,
}


@dataclass(frozen=True, kw_only=True)
class ChardevBackend:
    """QAPI ``ChardevBackend``: wrapped union of the backend structs."""

    qapi_name: ClassVar[str] = "ChardevBackend"
    qapi_union: ClassVar[UnionInfo] = UnionInfo("type", "data", BACKEND_CLASSES, wrapped=True)
    type: str = field(metadata=member(CHARDEV_BACKEND_KIND))
    data: ChardevCommon


@dataclass(frozen=True, kw_only=True)
class ChardevAddArguments:
    """The arguments of QMP ``chardev-add`` (and ``chardev-change``)."""

    qapi_name: ClassVar[str] = "q_obj_chardev-add-arg"
    id: str = req("str")
    backend: ChardevBackend = field(metadata=member(ChardevBackend))


@dataclass(frozen=True, kw_only=True)
class Chardev:
    """A chardev to create: its id, backend type and backend options.

    ``mux`` is the CLI's ``mux=on`` (and the ``mon:`` prefix): QEMU then creates the
    backend as ``<id>-base`` and a ``mux`` chardev named ``<id>`` on top of it.
    """

    id: str
    backend_type: str
    options: ChardevCommon
    mux: bool = False


def chardev_from_qmp(id: str, backend: object) -> Chardev:
    """Visit the ``backend`` argument of QMP ``chardev-add`` (errors name
    ``backend.data...`` paths like QEMU)."""
    parsed = visit(ChardevBackend, backend, Mode.QMP, path=("backend",))
    return Chardev(id=id, backend_type=parsed.type, options=parsed.data)


def chardev_add_from_qmp(args: dict[str, object]) -> Chardev:
    """Visit the complete ``chardev-add`` argument object (``id`` and ``backend``)."""
    parsed = visit(ChardevAddArguments, args, Mode.QMP)
    return Chardev(id=parsed.id, backend_type=parsed.backend.type, options=parsed.backend.data)
