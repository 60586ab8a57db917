"""``-writeconfig FILE`` and QMP ``write-config``: the running configuration as a file.

Owns the rendering of a running daemon's netdevs, chardevs and objects (net filters, TLS
credentials, authorization) - whether they came from the command line, a config file or
QMP at run time - in the format
:mod:`.reader` reads (QEMU's INI format), and the atomic write of that file.

QEMU 7.2 has no ``-writeconfig`` (removed in 6.0; it wrote only what the command line had
given, never what QMP added). netstackd's is its own design, see ``docs/config-files.md``:

* sections in the order the daemon creates them: chardevs, then netdevs, then objects,
  each in creation order (so a ``hubport`` follows the netdev it names, a filter the
  filter its ``position`` names);
* monitors and the chardevs they use are left out: they are the control plane, given on
  the command line again at restart (``-qmp``/``-mon``), where writing them would make
  the restarted daemon open the same socket twice;
* values are the configuration as given, normalised: booleans ``on``/``off``, a
  ``String`` list as one key per element (hostfwd twice), ``stream``/``dgram`` addresses
  with dotted keys; defaults the daemon filled in are written when the parsed form holds
  them (a chardev's ``logappend``, ``server``/``wait``), which reads back the same;
* what the format cannot hold is refused with a clear error rather than written wrong:
  a ``"`` or a newline in a value, a line longer than 1023 bytes, an id or key over 63
  characters, chardev options that have no command-line spelling (vsock addresses,
  ``keep-alive``, ...).

A ``user`` netdev's forwarding rules are written as they are now: rules added or removed
at run time (``user-forward-add``/``-remove``, HMP ``hostfwd_add``/``_remove``) included,
each in the words it was given. Run-time state that is not configuration is not written:
link state (``set_link``), DHCP leases, counters, hubs a deleted hubport left empty.

The file is replaced atomically (a temporary file in the same directory, fsync, rename);
a new file is created mode 0600, an existing file keeps its mode. ``-`` is standard output.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from netstack import __version__
from netstack.errors import GenericError
from netstack.qapi.chardev import (
    Chardev,
    ChardevCommon,
    ChardevFile,
    ChardevHostdev,
    ChardevMux,
    ChardevRingbuf,
    ChardevSocket,
    ChardevStdio,
    ChardevUdp,
)
from netstack.qapi.netdev import MODERN_TYPES, Netdev, NetdevUserOptions
from netstack.qapi.output import to_qmp
from netstack.qapi.qom import ObjectSpec
from netstack.qapi.sockets import (
    FdSocketAddress,
    InetSocketAddress,
    SocketAddressLegacy,
    UnixSocketAddress,
)

if TYPE_CHECKING:
    from netstack.daemon import Netstack
    from netstack.driver import NatTables

Pairs = list[tuple[str, str]]

_NAME_MAX: Final = 63
_LINE_MAX: Final = 1023


class ConfigWriteError(GenericError):
    """The running configuration cannot be written (unrepresentable value, I/O error)."""


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


# -- netdevs -----------------------------------------------------------------------------------


def _flat(name: str, value: Any, out: Pairs) -> None:
    """The options visitor's flat form: lists repeat the key, structs share the table."""
    if isinstance(value, dict):
        if set(value) == {"str"}:
            out.append((name, _text(value["str"])))
            return
        for key, item in value.items():
            _flat(key, item, out)
    elif isinstance(value, list):
        for item in value:
            _flat(name, item, out)
    else:
        out.append((name, _text(value)))


def _dotted(name: str, value: Any, out: Pairs) -> None:
    """The keyval form: ``addr.type``, ``list.0``."""
    if isinstance(value, dict):
        for key, item in value.items():
            _dotted(f"{name}.{key}" if name else key, item, out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _dotted(f"{name}.{index}", item, out)
    else:
        out.append((name, _text(value)))


def netdev_pairs(spec: Netdev) -> Pairs:
    out: Pairs = [("type", spec.type)]
    options = to_qmp(spec.options)
    render = _dotted if spec.type in MODERN_TYPES else _flat
    for key, value in options.items():
        render(key, value, out)
    return out


# -- chardevs ----------------------------------------------------------------------------------


def _unsupported(what: str) -> ConfigWriteError:
    return ConfigWriteError(f"{what} has no config file form")


def _bools(out: Pairs, **flags: bool | None) -> None:
    for name, flag in flags.items():
        if flag is not None:
            out.append((name.replace("_", "-"), _text(flag)))


def _socket_pairs(opts: ChardevSocket, out: Pairs) -> None:
    data = opts.addr.data
    if isinstance(data, UnixSocketAddress):
        out.append(("path", data.path))
        _bools(out, tight=data.tight, abstract=data.abstract)
    elif isinstance(data, InetSocketAddress):
        _inet(data, out, "host", "port")
        if data.to is not None:
            out.append(("to", str(data.to)))
    elif isinstance(data, FdSocketAddress):
        out.append(("fd", data.fd))
    else:
        raise _unsupported(f"a '{opts.addr.type}' socket address")
    for name, value in (("tls-creds", opts.tls_creds), ("tls-authz", opts.tls_authz)):
        if value is not None:
            out.append((name, value))
    _bools(out, server=opts.server, wait=opts.wait, nodelay=opts.nodelay, telnet=opts.telnet,
           tn3270=opts.tn3270, websocket=opts.websocket)  # fmt: skip
    if opts.reconnect is not None:
        out.append(("reconnect", str(opts.reconnect)))
    if opts.reconnect_ms is not None:
        out.append(("reconnect-ms", str(opts.reconnect_ms)))


def _inet(data: InetSocketAddress, out: Pairs, host: str, port: str) -> None:
    for name in ("numeric", "keep_alive", "mptcp"):
        if getattr(data, name) is not None:
            raise _unsupported(f"socket address option '{name.replace('_', '-')}'")
    out += [(host, data.host), (port, data.port)]
    _bools(out, ipv4=data.ipv4, ipv6=data.ipv6)


def _udp_pairs(opts: ChardevUdp, out: Pairs) -> None:
    remote = opts.remote.data
    if not isinstance(remote, InetSocketAddress):
        raise _unsupported(f"a '{opts.remote.type}' udp address")
    _inet(remote, out, "host", "port")
    local = opts.local.data if isinstance(opts.local, SocketAddressLegacy) else None
    if local is not None:
        if not isinstance(local, InetSocketAddress) or local.to is not None:
            raise _unsupported("this udp local address")
        sub: Pairs = []
        _inet(local, sub, "localaddr", "localport")
        out += [pair for pair in sub if pair[0] in ("localaddr", "localport")]
        if len(sub) > 2:
            raise _unsupported("ipv4/ipv6 on a udp local address")
    if remote.to is not None:
        raise _unsupported("a port range on a udp address")


def chardev_pairs(spec: Chardev) -> Pairs:
    opts: ChardevCommon = spec.options
    out: Pairs = [("backend", spec.backend_type)]
    if isinstance(opts, ChardevSocket):
        _socket_pairs(opts, out)
    elif isinstance(opts, ChardevUdp):
        _udp_pairs(opts, out)
    elif isinstance(opts, ChardevFile):
        out.append(("path", opts.out))
        if opts.in_ is not None:
            out.append(("input-path", opts.in_))
        _bools(out, append=opts.append)
    elif isinstance(opts, ChardevHostdev):
        out.append(("path", opts.device))
    elif isinstance(opts, ChardevMux):
        out.append(("chardev", opts.chardev))
    elif isinstance(opts, ChardevStdio):
        _bools(out, signal=opts.signal)
    elif isinstance(opts, ChardevRingbuf):
        if opts.size is not None:
            out.append(("size", str(opts.size)))
    elif type(opts) is not ChardevCommon:
        raise _unsupported(f"backend '{spec.backend_type}'")
    if opts.logfile is not None:
        out.append(("logfile", opts.logfile))
    _bools(out, logappend=opts.logappend)
    if spec.mux:
        out.append(("mux", "on"))
    return [pair for pair in out if pair not in _CHARDEV_DEFAULTS]


#: Values the command-line parser fills in when an option is absent: not written.
_CHARDEV_DEFAULTS: Final = {
    ("tight", "on"),
    ("abstract", "off"),
    ("logappend", "off"),
    ("server", "off"),
    ("append", "off"),
}


# -- objects -----------------------------------------------------------------------------------


def object_pairs(spec: ObjectSpec) -> Pairs:
    table = to_qmp(spec)
    out: Pairs = [("qom-type", str(table.pop("qom-type")))]
    table.pop("id", None)
    for key, value in table.items():
        _dotted(key, value, out)
    return out


# -- the running configuration ---------------------------------------------------------------


def _is_monitor(ns: Netstack, frontend: object) -> bool:
    """A QMP monitor's chardev (the monitors are the daemon's, attached at start)."""
    return any(frontend is monitor for monitor in ns.monitors)


def running_sections(ns: Netstack) -> Iterator[tuple[str, str, Pairs]]:
    """``(group, id, pairs)`` of everything the running daemon was configured with."""
    for dev in ns.chardevs:
        spec = getattr(dev, "spec", None)
        if isinstance(spec, Chardev) and not _is_monitor(ns, dev.frontend):
            yield _guard("chardev", spec.id, lambda s=spec: chardev_pairs(s))
    nats = {id(nc): tables for nc, tables in ns.nat_tables()}
    for nc in ns.clients:
        netdev = nc.netdev_spec
        if nc.is_netdev and nc.queue_index == 0 and netdev is not None:
            netdev = _with_forwards(netdev, nats.get(id(nc)))
            yield _guard("netdev", netdev.id, lambda n=netdev: netdev_pairs(n))
    for nf in ns.objects.values():
        obj = getattr(nf, "spec", None)
        if isinstance(obj, ObjectSpec):
            yield _guard("object", obj.id, lambda o=obj: object_pairs(o))


def _with_forwards(spec: Netdev, tables: NatTables | None) -> Netdev:
    """A user netdev's forwarding rules as they are now (``user-forward-add``,
    ``hostfwd_add``, ``..._remove`` included), each as it was given."""
    if not isinstance(spec.options, NetdevUserOptions) or tables is None:
        return spec
    rows = tables.forwards()
    host = _in_given_order(spec.options.hostfwd, [r for r in rows if r["type"] == "hostfwd"])
    guest = _in_given_order(spec.options.guestfwd, [r for r in rows if r["type"] == "guestfwd"])
    options = dataclasses.replace(spec.options, hostfwd=host, guestfwd=guest)
    return dataclasses.replace(spec, options=options)


def _in_given_order(
    given: tuple[str, ...] | None, rows: list[dict[str, Any]]
) -> tuple[str, ...] | None:
    """The rules of ``rows``: those still there from ``given`` in its order, then the ones
    added at run time (so writing, reading and writing again gives the same file)."""
    left = [str(r["rule"]) for r in rows]
    out = []
    for rule in given or ():
        if rule in left:
            left.remove(rule)
            out.append(rule)
    return tuple(out + left) or None


def _guard(group: str, ident: str, build: Any) -> tuple[str, str, Pairs]:
    try:
        pairs: Pairs = build()
    except ConfigWriteError as exc:
        raise ConfigWriteError(f"cannot write {group} '{ident}': {exc.desc}") from None
    return group, ident, pairs


def _check_id(group: str, ident: str) -> None:
    if len(ident) > _NAME_MAX or any(c in ident for c in '"\n\0'):
        raise ConfigWriteError(f"cannot write {group} '{ident}': the id does not fit a config file")


def _check(group: str, ident: str, key: str, value: str) -> None:
    where = f"{group} '{ident}'"
    if not key or len(key) > _NAME_MAX or any(c.isspace() for c in key):
        raise ConfigWriteError(f"cannot write {where}: option name '{key}' does not fit")
    if '"' in value or "\n" in value or "\0" in value:
        raise ConfigWriteError(
            f"cannot write {where}: the value of '{key}' holds a '\"', a newline or a NUL,"
            " which config files cannot represent"
        )
    if len(f'  {key} = "{value}"'.encode("utf-8", "surrogateescape")) > _LINE_MAX - 1:
        raise ConfigWriteError(f"cannot write {where}: the value of '{key}' is too long")


def render(sections: Iterator[tuple[str, str, Pairs]]) -> str:
    """The configuration file text (QEMU's ``[group "id"]`` / ``  key = "value"`` form)."""
    lines = [
        f"# netstackd {__version__} running configuration",
        "# load it with: netstackd -readconfig FILE",
        "",
    ]
    for group, ident, pairs in sections:
        _check_id(group, ident)
        lines.append(f'[{group} "{ident}"]')
        for key, value in pairs:
            _check(group, ident, key, value)
            lines.append(f'  {key} = "{value}"')
        lines.append("")
    return "\n".join(lines)


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (``-``: standard output)."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    if not path:
        raise ConfigWriteError("Could not open '': No such file or directory")
    target = Path(path)
    if not target.name or target.is_dir():
        raise ConfigWriteError(f"Could not open '{path}': Is a directory")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(text.encode("utf-8", "surrogateescape"))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigWriteError(f"Could not open '{path}': {exc.strerror or exc}") from None


def write_running_config(ns: Netstack, path: str) -> None:
    """Render the running configuration first (nothing is written if it cannot be), then
    write it to ``path``."""
    write_text(path, render(running_sections(ns)))
    if path != "-":
        ns.log.info("running configuration written to %s", path)
