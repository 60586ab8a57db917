"""Command-line chardev syntaxes: ``-chardev BACKEND,id=...`` and the legacy shorthand.

Owns the translation of QemuOpts-style chardev options into :class:`.chardev.Chardev`,
following QEMU 10.0's per-backend ``qemu_chr_parse_*`` functions (``chardev/char.c``,
``char-socket.c``, ``char-udp.c``, ``char-file.c``, ``char-stdio.c``, ``char-serial.c``,
``char-parallel.c``, ``char-pipe.c``, ``char-ringbuf.c``, ``char-mux.c``, ``ui/console-vc.c``,
``ui/spice-chardev.c``, ``ui/dbus-chardev.c``, ``ui/vdagent.c``), and the shorthand of
``qemu_chr_parse_compat`` used by ``-qmp``/``-monitor``/``-serial``
(``unix:PATH,server=on,wait=off``, ``tcp:HOST:PORT,...``, ``stdio``, ``mon:...`` ...).

CLI option names differ from QMP member names (``path`` -> ``addr.data.path`` or
``device``/``out``; ``host``/``port`` -> inet address; ``name`` -> spice ``type``/``fqdn``
or dbus ``name``; ``input-path`` -> ``in``), and so do defaults: the CLI always sets
``server`` (default off), sets ``wait`` whenever ``server=on`` (default on), always sets
``logappend``, ``append``, ``signal``, ``mouse``/``clipboard`` and Linux unix-socket
``tight``/``abstract``, exactly as QEMU fills its structs.

Invariants: unknown option names are ``Invalid parameter 'X'``; typed values are checked
in order while parsing (QemuOpts); then id presence, backend presence and validity, then
the backend's own checks. Semantic checks that need the running daemon (existing ids,
whether the backend can be opened) are not done here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypedDict

from netstack.errors import GenericError

from .chardev import (
    BACKEND_CLASSES,
    Chardev,
    ChardevCommon,
    ChardevDBus,
    ChardevFile,
    ChardevHostdev,
    ChardevMux,
    ChardevQemuVDAgent,
    ChardevRingbuf,
    ChardevSocket,
    ChardevSpiceChannel,
    ChardevSpicePort,
    ChardevStdio,
    ChardevUdp,
    ChardevVC,
)
from .helptext import HelpRequested
from .ids import check_id
from .qemuopts import OptType, QemuOpts, is_help_option, parse, parse_into
from .sockets import FdSocketAddress, InetSocketAddress, SocketAddressLegacy, UnixSocketAddress

_S, _B, _N, _Z = OptType.STRING, OptType.BOOL, OptType.NUMBER, OptType.SIZE

CHARDEV_OPTS: Final[dict[str, OptType]] = {
    "backend": _S,
    "path": _S,
    "input-path": _S,
    "host": _S,
    "port": _S,
    "fd": _S,
    "localaddr": _S,
    "localport": _S,
    "to": _N,
    "ipv4": _B,
    "ipv6": _B,
    "wait": _B,
    "server": _B,
    "delay": _B,
    "nodelay": _B,
    "reconnect": _N,
    "reconnect-ms": _N,
    "telnet": _B,
    "tn3270": _B,
    "tls-creds": _S,
    "tls-authz": _S,
    "websocket": _B,
    "width": _N,
    "height": _N,
    "cols": _N,
    "rows": _N,
    "mux": _B,
    "signal": _B,
    "name": _S,
    "debug": _N,
    "size": _Z,
    "chardev": _S,
    "append": _B,
    "logfile": _S,
    "logappend": _B,
    "mouse": _B,
    "clipboard": _B,
    "tight": _B,
    "abstract": _B,
}
"""QEMU 10.0 ``qemu_chardev_opts`` (Linux build): every name any backend may use."""


def _as_int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _as_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


class _Common(TypedDict):
    logfile: str | None
    logappend: bool


def _common(opts: QemuOpts) -> _Common:
    """``qemu_chr_parse_common``: the CLI always sets ``logappend``."""
    return {"logfile": opts.get("logfile"), "logappend": opts.get_bool("logappend", False)}


def _maybe_bool(opts: QemuOpts, name: str) -> bool | None:
    return opts.get_bool(name, False) if opts.has(name) else None


def _parse_socket(opts: QemuOpts) -> ChardevCommon:
    path, host, port, fd = opts.get("path"), opts.get("host"), opts.get("port"), opts.get("fd")
    if sum(x is not None for x in (path, fd, host)) > 1:
        raise GenericError("None or one of 'path', 'fd' or 'host' option required.")
    if host is not None and port is None:
        raise GenericError("chardev: socket: no port given")
    common = _common(opts)
    if opts.has("delay") and opts.has("nodelay"):
        raise GenericError("'delay' and 'nodelay' are mutually exclusive")
    server = opts.get_bool("server", False)
    data: UnixSocketAddress | InetSocketAddress | FdSocketAddress
    if path is not None:
        kind = "unix"
        data = UnixSocketAddress(
            path=path,
            tight=opts.get_bool("tight", True),
            abstract=opts.get_bool("abstract", False),
        )
    elif host is not None:
        assert port is not None
        kind = "inet"
        data = InetSocketAddress(
            host=host,
            port=port,
            to=opts.get_number("to", 0) & 0xFFFF if opts.has("to") else None,
            ipv4=_maybe_bool(opts, "ipv4"),
            ipv6=_maybe_bool(opts, "ipv6"),
        )
    elif fd is not None:
        kind = "fd"
        data = FdSocketAddress(fd=fd)
    else:
        # QEMU 10.0 goes on with a NULL fd name and fails later; reject it up front.
        raise GenericError("chardev: socket: no host given")
    return ChardevSocket(
        **common,
        addr=SocketAddressLegacy(type=kind, data=data),
        tls_creds=opts.get("tls-creds"),
        tls_authz=opts.get("tls-authz"),
        server=server,
        wait=opts.get_bool("wait", True) if opts.has("wait") or server else None,
        nodelay=(
            (not opts.get_bool("delay", True)) or opts.get_bool("nodelay", False)
            if opts.has("delay") or opts.has("nodelay")
            else None
        ),
        telnet=_maybe_bool(opts, "telnet"),
        tn3270=_maybe_bool(opts, "tn3270"),
        websocket=_maybe_bool(opts, "websocket"),
        reconnect=_as_int64(opts.get_number("reconnect", 0)) if opts.has("reconnect") else None,
        reconnect_ms=(
            _as_int64(opts.get_number("reconnect-ms", 0)) if opts.has("reconnect-ms") else None
        ),
    )


def _parse_udp(opts: QemuOpts) -> ChardevCommon:
    host = opts.get("host") or "localhost"
    port = opts.get("port")
    if not port:
        raise GenericError("chardev: udp: remote port not specified")
    localport = opts.get("localport") or ""
    localaddr = opts.get("localaddr") or ""
    has_local = bool(localport or localaddr)
    remote = InetSocketAddress(
        host=host, port=port, ipv4=_maybe_bool(opts, "ipv4"), ipv6=_maybe_bool(opts, "ipv6")
    )
    local = InetSocketAddress(host=localaddr, port=localport or "0") if has_local else None
    return ChardevUdp(
        **_common(opts),
        remote=SocketAddressLegacy(type="inet", data=remote),
        local=SocketAddressLegacy(type="inet", data=local) if local else None,
    )


def _parse_file(opts: QemuOpts) -> ChardevCommon:
    path = opts.get("path")
    if path is None:
        raise GenericError("chardev: file: no filename given")
    return ChardevFile(
        **_common(opts),
        out=path,
        in_=opts.get("input-path"),
        append=opts.get_bool("append", False),
    )


def _hostdev(what: str) -> Callable[[QemuOpts], ChardevCommon]:
    def parse_hostdev(opts: QemuOpts) -> ChardevCommon:
        device = opts.get("path")
        if device is None:
            raise GenericError(f"chardev: {what}: no device path given")
        return ChardevHostdev(**_common(opts), device=device)

    return parse_hostdev


def _named(
    what: str, build: Callable[[QemuOpts, str], ChardevCommon]
) -> Callable[[QemuOpts], ChardevCommon]:
    def parse_named(opts: QemuOpts) -> ChardevCommon:
        name = opts.get("name")
        if name is None:
            raise GenericError(f"chardev: {what}: no name given")
        return build(opts, name)

    return parse_named


def _parse_mux(opts: QemuOpts) -> ChardevCommon:
    chardev = opts.get("chardev")
    if chardev is None:
        raise GenericError("chardev: mux: no chardev given")
    return ChardevMux(**_common(opts), chardev=chardev)


def _parse_vc(opts: QemuOpts) -> ChardevCommon:
    def size(name: str) -> int | None:
        return _as_int32(opts.get_number(name, 0)) or None

    return ChardevVC(
        **_common(opts),
        width=size("width"),
        height=size("height"),
        cols=size("cols"),
        rows=size("rows"),
    )


def _parse_ringbuf(opts: QemuOpts) -> ChardevCommon:
    size = _as_int32(opts.get_size("size", 0))
    return ChardevRingbuf(**_common(opts), size=size or None)


_PARSERS: Final[dict[str, Callable[[QemuOpts], ChardevCommon]]] = {
    "socket": _parse_socket,
    "udp": _parse_udp,
    "file": _parse_file,
    "serial": _hostdev("serial/tty"),
    "parallel": _hostdev("parallel"),
    "pipe": _hostdev("pipe"),
    "mux": _parse_mux,
    "stdio": lambda o: ChardevStdio(
        **_common(o),
        signal=o.get_bool("signal", True),
    ),
    "vc": _parse_vc,
    "ringbuf": _parse_ringbuf,
    "memory": _parse_ringbuf,
    "spicevmc": _named(
        "spice channel",
        lambda o, n: ChardevSpiceChannel(**_common(o), type=n),
    ),
    "spiceport": _named(
        "spice port",
        lambda o, n: ChardevSpicePort(**_common(o), fqdn=n),
    ),
    "dbus": _named(
        "dbus",
        lambda o, n: ChardevDBus(**_common(o), name=n),
    ),
    "qemu-vdagent": lambda o: ChardevQemuVDAgent(
        **_common(o),
        mouse=o.get_bool("mouse", True),
        clipboard=o.get_bool("clipboard", False),
    ),
}


def chardev_from_opts(opts: QemuOpts) -> Chardev:
    """Build a :class:`Chardev` from parsed QemuOpts (``qemu_chr_new_from_opts`` order)."""
    backend = opts.get("backend")
    if backend is not None and is_help_option(backend):
        raise HelpRequested("chardev")
    if opts.id is None:
        raise GenericError("chardev: no id specified")
    if backend is None:
        raise GenericError(f'chardev: "{opts.id}" missing backend')
    if backend not in BACKEND_CLASSES:
        raise GenericError(f"'{backend}' is not a valid char driver name")
    parser = _PARSERS.get(backend)
    options = ChardevCommon(**_common(opts)) if parser is None else parser(opts)
    return Chardev(
        id=opts.id, backend_type=backend, options=options, mux=opts.get_bool("mux", False)
    )


def parse_chardev_cli(text: str) -> Chardev:
    """Parse a ``-chardev`` argument (raises :class:`.helptext.HelpRequested` for
    ``-chardev help`` and ``-chardev ...,help``)."""
    opts = parse(text, "backend", CHARDEV_OPTS)
    if opts.help_wanted:
        raise HelpRequested("chardev", "options")
    return chardev_from_opts(opts)


def _scan(text: str, pos: int, limit: int, stop: str) -> tuple[str, int] | None:
    """``sscanf``'s ``%<limit>[^<stop>]``: 1..limit characters not in ``stop``."""
    end = pos
    while end < len(text) and end - pos < limit and text[end] not in stop:
        end += 1
    return (text[pos:end], end) if end > pos else None


def _digits(text: str, pos: int) -> tuple[str, int] | None:
    """``sscanf``'s ``%7[0-9]``."""
    end = pos
    while end < len(text) and end - pos < 7 and text[end] in "0123456789":
        end += 1
    return (text[pos:end], end) if end > pos else None


def _host_port(text: str, port_stop: str) -> tuple[str, str, int] | None:
    """``"%64[^:]:%32[^<stop>]%n"`` with the ``":%32[^<stop>]%n"`` fallback."""
    host = _scan(text, 0, 64, ":")
    if host is not None and host[1] < len(text) and text[host[1]] == ":":
        port = _scan(text, host[1] + 1, 32, port_stop)
        if port is not None:
            return host[0], port[0], port[1]
    if text.startswith(":"):
        port = _scan(text, 1, 32, port_stop)
        if port is not None:
            return "", port[0], port[1]
    return None


_SIMPLE: Final = ("null", "pty", "msmouse", "wctablet", "braille", "testdev", "stdio")


def _compat_opts(opts: QemuOpts, filename: str) -> bool:
    """Fill ``opts`` from a shorthand (``qemu_chr_parse_compat``); False on syntax error."""
    if filename in _SIMPLE:
        opts.set("backend", filename)
        return True
    if filename.startswith("vc"):
        opts.set("backend", "vc")
        rest = filename[2:]
        if rest.startswith(":"):
            width = _digits(rest, 1)
            if width is None:
                return False
            pixels = rest[width[1] : width[1] + 1] == "x"
            if not pixels and rest[width[1] : width[1] + 2] != "Cx":
                return False
            height = _digits(rest, width[1] + (1 if pixels else 2))
            if height is None:
                return False
            opts.set("width" if pixels else "cols", width[0])
            opts.set("height" if pixels else "rows", height[0])
        return True
    if filename == "con:":
        opts.set("backend", "console")
        return True
    if filename.startswith("COM"):
        opts.set("backend", "serial")
        opts.set("path", filename)
        return True
    for prefix, backend in (("file:", "file"), ("pipe:", "pipe"), ("pty:", "pty")):
        if filename.startswith(prefix):
            opts.set("backend", backend)
            opts.set("path", filename[len(prefix) :])
            return True
    for prefix in ("tcp:", "telnet:", "tn3270:", "websocket:"):
        if filename.startswith(prefix):
            parsed = _host_port(filename[len(prefix) :], ",")
            if parsed is None:
                return False
            host, port, end = parsed
            rest = filename[len(prefix) :]
            opts.set("backend", "socket")
            opts.set("host", host)
            opts.set("port", port)
            if rest[end : end + 1] == ",":
                parse_into(opts, rest[end + 1 :], None, CHARDEV_OPTS)
            if prefix != "tcp:":
                opts.set(prefix[:-1], "on")
            return True
    if filename.startswith("udp:"):
        rest = filename[4:]
        remote = _host_port(rest, "@,")
        if remote is None:
            return False
        opts.set("backend", "udp")
        opts.set("host", remote[0])
        opts.set("port", remote[1])
        if rest[remote[2] : remote[2] + 1] == "@":
            local = _host_port(rest[remote[2] + 1 :], ",")
            if local is None:
                return False
            opts.set("localaddr", local[0])
            opts.set("localport", local[1])
        return True
    if filename.startswith("unix:"):
        opts.set("backend", "socket")
        parse_into(opts, filename[5:], "path", CHARDEV_OPTS)
        return True
    if filename.startswith(("/dev/parport", "/dev/ppi")):
        opts.set("backend", "parallel")
        opts.set("path", filename)
        return True
    if filename.startswith("/dev/"):
        opts.set("backend", "serial")
        opts.set("path", filename)
        return True
    raise GenericError(f"'{filename}' is not a valid char driver")


def parse_qmp_shorthand(text: str, id: str) -> Chardev:
    """Parse the chardev shorthand of ``-qmp``/``-monitor`` (``unix:PATH,server=on,
    wait=off``, ``tcp:HOST:PORT,server=on``, ``stdio``, ``mon:...``) into a chardev named
    ``id`` (QEMU uses ``compat_monitor<N>``).

    The ``chardev:NAME`` form names an existing chardev and is the caller's to handle.
    """
    check_id(id)
    opts = QemuOpts(id)
    filename = text
    if filename.startswith("mon:"):
        filename = filename[4:]
        opts.set("mux", "on")
        if filename == "stdio":
            opts.set("signal", "off")
    if not _compat_opts(opts, filename):
        raise GenericError(f"parse error: {text}")
    return chardev_from_opts(opts)


MON_OPTS: Final[dict[str, OptType]] = {"mode": _S, "chardev": _S, "pretty": _B}
"""QEMU's ``qemu_mon_opts`` table (``-mon`` and ``[mon]`` config file sections)."""


def parse_mon_cli(text: str) -> tuple[str, str, bool]:
    """Parse a ``-mon [chardev=]ID[,mode=readline|control][,pretty=on|off]`` argument
    (QemuOpts, as QEMU's ``monitor_init_opts``): ``(chardev id, mode, pretty)``.

    Raises :class:`.helptext.HelpRequested` for a ``help`` flag."""
    opts = parse(text, "chardev", MON_OPTS)
    if opts.help_wanted:
        raise HelpRequested("mon", "options")
    chardev = opts.get("chardev")
    if chardev is None:
        raise GenericError("Parameter 'chardev' is missing")
    return chardev, opts.get("mode") or "readline", opts.get_bool("pretty", False)
