"""``netstackd``: QEMU-style command line, the composition root, and the process life.

Arguments follow QEMU's spelling (one or two leading dashes): ``-netdev``, ``-chardev``,
``-object``, ``-qmp``, ``-qmp-pretty``, ``-mon``, ``-daemonize``, ``-pidfile``, ``-D``,
``-name``, ``-readconfig``, ``-writeconfig``, ``-run-with``/``-runas``, ``-sandbox``
(:mod:`netstack.confine`), ``-version``, ``-help``; beyond QEMU ``-metrics`` (a Prometheus
endpoint) and ``-webview`` (the live web view, :mod:`netstack.webview`). Under systemd the
daemon reports readiness and accepts activated sockets (:mod:`netstack.service`). Errors
are printed as QEMU prints them, ``netstackd: -netdev SPEC: TEXT`` (``netstackd:FILE:LINE:
TEXT`` for a config file), on one line, and exit with status 1; no input makes it print a
traceback. Every ``help`` form is answered as QEMU answers it (:mod:`netstack.clihelp`);
config files are :mod:`netstack.configfile` (``docs/config-files.md``).

With no arguments the daemon starts its embedded default: a ``user`` NAT and a
vhost-user server socket joined on hub 0, plus a QMP socket, under a per-user runtime
directory, and prints the QEMU command line that attaches a VM. Pieces whose driver this
build lacks are named plainly and left out. ``-webview tcp:HOST:PORT`` alone is the
embedded default plus the live web view (:mod:`netstack.webview`), whose address is
printed; with other options it adds the web view to what they create.

This is the only core module that imports ``drivers``. One asyncio loop runs everything;
SIGINT and SIGTERM (or QMP ``quit``) shut down cleanly: every netdev deleted (downscripts
run, fds closed), socket files the daemon created removed, exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netstack import __version__, confine, limits
from netstack.daemon import Netstack
from netstack.driver import DriverSpec
from netstack.errors import GenericError, NetstackError, StartupError
from netstack.qapi.helptext import HelpRequested

if TYPE_CHECKING:
    from netstack.webview import WebView

PROG = "netstackd"

_WITH_ARG = {"netdev", "chardev", "object", "qmp", "qmp-pretty", "mon", "pidfile", "D", "name",
             "readconfig", "writeconfig", "metrics", "webview"}  # fmt: skip
_FLAGS = {"daemonize", "version", "help", "h"}


class UsageError(StartupError):
    """A command-line error (printed with the program name, exit status 1); ``where`` is
    the ``FILE:LINE`` of a config file section the error is about."""

    def __init__(self, text: str, where: str | None = None) -> None:
        super().__init__(text)
        self.where = where


def error_line(exc: UsageError) -> str:
    """QEMU's ``error_report`` shape: ``PROG: TEXT`` or ``PROG:FILE:LINE: TEXT``."""
    return f"{PROG}:{exc.where}: {exc}" if exc.where else f"{PROG}: {exc}"


@dataclass
class Config:
    """What the command line asked for, in order of appearance per option kind."""

    netdevs: list[str] = field(default_factory=list)
    chardevs: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    #: ``(kind, text, pretty)`` with kind ``qmp`` (shorthand) or ``mon`` (``-mon`` opts).
    monitors: list[tuple[str, str, bool]] = field(default_factory=list)
    daemonize: bool = False
    pidfile: str | None = None
    logfile: str | None = None
    name: str | None = None
    #: ``-metrics unix:PATH|tcp:HOST:PORT``: the Prometheus endpoint (off by default).
    metrics: str | None = None
    #: ``-webview tcp:HOST:PORT[,...]``: the live web view (off by default).
    webview: str | None = None
    embedded_default: bool = False
    show_help: bool = False
    show_version: bool = False
    #: ``-writeconfig FILE`` (``-``: standard output), also QMP ``write-config``'s default.
    writeconfig: str | None = None
    #: ``(kind, index)`` -> the config file entry (``configfile.reader.Entry``) an option
    #: was read from; options given on the command line have none.
    origins: dict[tuple[str, int], Any] = field(default_factory=dict)
    #: ``-run-with``/``-runas``/``-sandbox`` (netstack.confine).
    confinement: confine.Confinement = field(default_factory=confine.Confinement)


def parse_argv(argv: Sequence[str]) -> Config:
    cfg = Config()
    if not argv:
        cfg.embedded_default = True
        return cfg
    from netstack.configfile.reader import Reader

    reader = Reader()  # the ids of -netdev/-chardev and config file sections
    it = iter(argv)
    for arg in it:
        if not arg.startswith("-") or arg in ("-", "--"):
            raise UsageError(f"{arg}: invalid option")
        name = arg.lstrip("-")
        if name in _FLAGS:
            if name == "daemonize":
                cfg.daemonize = True
            elif name == "version":
                cfg.show_version = True
            else:
                cfg.show_help = True
            continue
        if name not in _WITH_ARG and name not in confine.CLI_OPTIONS:
            raise UsageError(f"{arg}: invalid option")
        try:
            value = next(it)
        except StopIteration:
            raise UsageError(f"{arg}: requires an argument") from None
        if name in confine.CLI_OPTIONS:
            with _option(arg, value):
                cfg.confinement.add_option(name, value)
            continue
        if name in ("netdev", "chardev"):
            try:
                reader.claim(name, value)
            except NetstackError as exc:
                raise UsageError(f"{arg} {value}: {exc.desc}") from None
            (cfg.netdevs if name == "netdev" else cfg.chardevs).append(value)
        elif name == "object":
            cfg.objects.append(value)
        elif name in ("qmp", "qmp-pretty"):
            cfg.monitors.append(("qmp", value, name == "qmp-pretty"))
        elif name == "mon":
            cfg.monitors.append(("mon", value, False))
        elif name == "pidfile":
            cfg.pidfile = value
        elif name == "D":
            cfg.logfile = value
        elif name == "name":
            cfg.name = _name(value)
        elif name == "readconfig":
            _read_config(cfg, value, reader)
        elif name == "writeconfig":
            cfg.writeconfig = value
        elif name == "metrics":
            cfg.metrics = value
        elif name == "webview":
            cfg.webview = value
    if cfg.webview is not None and not (
        cfg.netdevs or cfg.chardevs or cfg.objects or cfg.monitors or cfg.show_help
    ):
        cfg.embedded_default = True
    return cfg


def _name(value: str) -> str:
    from netstack.clihelp import parse_name

    try:
        return parse_name(value)
    except NetstackError as exc:
        raise UsageError(f"-name {value}: {exc.desc}") from None


def _read_config(cfg: Config, path: str, reader: Any) -> None:
    """``-readconfig FILE``: its sections join the command line's options, in order."""
    from netstack.configfile.reader import ConfigError

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            text = f"Cannot read config file: {exc.strerror}"
        else:
            text = f"Could not open '{path}': {exc.strerror}"
        raise UsageError(f"-readconfig {path}: {text}") from None
    try:
        entries = reader.read(data, path)
    except ConfigError as exc:
        raise UsageError(exc.desc, exc.where) from None
    for entry in entries:
        lists = {"netdev": cfg.netdevs, "chardev": cfg.chardevs, "object": cfg.objects}
        if entry.kind == "mon":
            cfg.origins[("mon", len(cfg.monitors))] = entry
            cfg.monitors.append(("mon", entry.text, False))
        else:
            cfg.origins[(entry.kind, len(lists[entry.kind]))] = entry
            lists[entry.kind].append(entry.text)


def runtime_dir() -> Path:
    """A private per-user directory for sockets: $XDG_RUNTIME_DIR/netstack or /tmp."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        path = Path(base) / "netstack"
    elif Path(f"/run/user/{os.getuid()}").is_dir():
        path = Path(f"/run/user/{os.getuid()}") / "netstack"
    else:
        path = Path(f"/tmp/netstack-{os.getuid()}")
    return confine.private_dir(path)


@dataclass
class DefaultPlan:
    """The embedded default, as command-line options, plus what it cannot provide."""

    config: Config
    missing: list[str]
    vhost_socket: Path
    qmp_socket: Path


def embedded_default(registry: Mapping[str, DriverSpec], rundir: Path) -> DefaultPlan:
    vhost = rundir / "vhost-user.sock"
    qmp = rundir / "qmp.sock"
    cfg = Config(name="netstack")
    missing = [t for t in ("user", "vhost-user") if t not in registry]
    if "user" in registry:
        cfg.netdevs += ["user,id=nat0", "hubport,id=hp-nat0,hubid=0,netdev=nat0"]
    if "vhost-user" in registry:
        cfg.chardevs.append(f"socket,id=vhost0,path={vhost},server=on,wait=off")
        cfg.netdevs += ["vhost-user,id=vm0,chardev=vhost0", "hubport,id=hp-vm0,hubid=0,netdev=vm0"]
    cfg.monitors.append(("qmp", f"unix:{qmp},server=on,wait=off", False))
    return DefaultPlan(cfg, missing, vhost, qmp)


def attach_instructions(plan: DefaultPlan) -> str:
    lines = [f"{PROG} {__version__}: embedded default running"]
    lines.append(f"  QMP socket:        {plan.qmp_socket}   (qmp-shell {plan.qmp_socket})")
    if plan.missing:
        lines.append(
            "  NOT AVAILABLE in this build: "
            + ", ".join(f"the '{t}' driver" for t in plan.missing)
            + "; the default network is incomplete until they exist."
        )
    if "vhost-user" not in plan.missing:
        lines.append(f"  vhost-user socket: {plan.vhost_socket}")
        lines.append("Attach a VM with:")
        lines.append(
            "  qemu-system-x86_64 -m 1G"
            " -object memory-backend-memfd,id=mem,size=1G,share=on -machine memory-backend=mem"
            f" -chardev socket,id=vhost0,path={plan.vhost_socket},reconnect=1"
            " -netdev vhost-user,id=net0,chardev=vhost0"
            " -device virtio-net-pci,netdev=net0 ..."
        )
        lines.append(
            "  (guest memory must be shared: memory-backend-memfd with share=on, size = -m;"
            " under TCG, QEMU 7.2 also needs vectors=0 on the virtio-net-pci device)"
        )
    return "\n".join(lines)


def usage() -> str:
    return f"""usage: {PROG} [options]
With no options: start the embedded default (user NAT + vhost-user socket + QMP socket).

  -netdev TYPE,id=ID[,...]   create a network backend ('-netdev help' lists the types)
  -chardev BACKEND,id=ID,... create a character device (sockets for vhost-user, monitors)
  -object TYPE,id=ID,...     create an object (filter-dump, filter-mirror, ...)
  -qmp DEV                   a QMP monitor on DEV (unix:PATH,server=on,wait=off | tcp:H:P,...)
  -qmp-pretty DEV            the same with pretty-printed JSON
  -mon chardev=ID,mode=control[,pretty=on]
  -name NAME                 a name for this daemon
  -readconfig FILE           read netdevs, chardevs, objects from a QEMU config file
  -writeconfig FILE          write the running configuration to FILE ('-': stdout) once
                             started; QMP write-config writes it again at any time
  -metrics unix:PATH|tcp:HOST:PORT
                             serve Prometheus metrics (GET /metrics) there
  -webview tcp:HOST:PORT[,chardev=ID][,tls-creds=ID]
                             serve the live web view over HTTP(S) (off by default;
                             alone: the embedded default plus the web view)
  -D FILE                    write the log to FILE
  -pidfile FILE              write the process id to FILE
  -daemonize                 detach once started
  -run-with user=USER        drop root for USER (or UID:GID) once started (-runas USER)
  -sandbox on[,spawn=deny,...] confine the daemon to its system calls (seccomp)
  -version, -help
"""


async def _setup(ns: Netstack, cfg: Config) -> None:
    """Create everything the configuration names, in QEMU's order; errors name the option."""
    from netstack import qapi
    from netstack.qmp.server import monitor_add

    early = [i for i, spec in enumerate(cfg.objects) if _early_object(spec)]
    for index in early:  # TLS credentials: before the chardevs that use them, as QEMU does
        spec = cfg.objects[index]
        with _option("-object", spec, cfg.origins.get(("object", index))):
            await ns.object_add(qapi.parse_object_cli(spec))
    for index, spec in enumerate(cfg.chardevs):
        with _option("-chardev", spec, cfg.origins.get(("chardev", index))):
            await ns.chardev_add(qapi.parse_chardev_cli(spec), from_cli=True)
    for index, spec in enumerate(cfg.netdevs):
        entry = cfg.origins.get(("netdev", index))
        with _option("-netdev", spec, entry):
            netdev = qapi.parse_netdev_cli(spec) if entry is None else entry.netdev()
            qapi.check_id(netdev.id)
            await ns.netdev_add(netdev)
    for index, spec in enumerate(cfg.objects):
        if index in early:
            continue
        with _option("-object", spec, cfg.origins.get(("object", index))):
            await ns.object_add(qapi.parse_object_cli(spec))
    for index, (kind, spec, pretty) in enumerate(cfg.monitors):
        flag = "-qmp-pretty" if kind == "qmp" and pretty else f"-{kind}"
        with _option(flag, spec, cfg.origins.get(("mon", index))):
            await monitor_add(ns, kind, spec, pretty, index)


async def _start_webview(ns: Netstack, cfg: Config) -> WebView:
    from netstack.webview import WebView, parse_spec

    assert cfg.webview is not None
    with _option("-webview", cfg.webview):
        webview = WebView(ns, parse_spec(cfg.webview), monitor_index=len(cfg.monitors))
        try:
            await webview.start()
        except OSError as exc:
            raise GenericError(f"cannot listen: {exc.strerror or exc}") from exc
    return webview


def _early_object(spec: str) -> bool:
    """``object_create_early``: created before chardevs (the ``qom-type`` is the first
    key, or the JSON form's ``qom-type`` member)."""
    from netstack.qapi.qom import EARLY_OBJECT_TYPES

    head = spec.split(",", 1)[0]
    if head.startswith("qom-type="):
        head = head[len("qom-type=") :]
    if spec.startswith("{"):
        return any(f'"{t}"' in spec for t in EARLY_OBJECT_TYPES)
    return head in EARLY_OBJECT_TYPES


@contextlib.contextmanager
def _option(flag: str, spec: str, origin: Any = None) -> Iterator[None]:
    """Errors while creating what an option names, as one line that names it (or the
    location of the config file entry ``origin`` it was read from)."""
    try:
        yield
    except confine.OptionHelp:
        raise
    except Exception as exc:
        if isinstance(exc, NetstackError):
            desc = exc.desc
        else:  # a bug: one line for the user, the traceback in the log (-D)
            logging.getLogger("netstack").info("%s %s failed", flag, spec, exc_info=True)
            desc = f"internal error: {exc!r}"
        if origin is None:
            raise UsageError(f"{flag} {spec}: {desc}") from exc
        raise UsageError(desc, origin.where) from exc


async def serve(
    cfg: Config,
    registry: Mapping[str, DriverSpec],
    *,
    ready: asyncio.Future[None] | None = None,
    banner: str | None = None,
) -> int:
    from netstack.service.hooks import ServiceHooks

    log = logging.getLogger("netstack")
    ns = Netstack(registry, runtime_dir=runtime_dir(), name=cfg.name, log=log)
    ns.config_file = cfg.writeconfig
    service = ServiceHooks(metrics=cfg.metrics, daemonized=cfg.daemonize)
    service.attach(ns)
    webview: WebView | None = None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ns.request_shutdown)
    try:
        try:
            await _setup(ns, cfg)
            if cfg.writeconfig is not None:
                _write_config(ns, cfg.writeconfig)
            if cfg.webview is not None:
                webview = await _start_webview(ns, cfg)
            ours = [p for dev in ns.chardevs for p in dev.created_paths]
            cfg.confinement.apply(ns.runtime_dir, [*ours, *filter(None, [cfg.pidfile])], log)
            with _option("-metrics", cfg.metrics or ""):
                await service.started(ns)
        except UsageError as exc:
            print(error_line(exc), file=sys.stderr)
            service.failed(str(exc))
            return 1
        except confine.ConfineError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            service.failed(str(exc))
            return 1
        if webview is not None:
            line = f"  Web view:          {webview.url}"
            banner = f"{banner}\n{line}" if banner else f"{PROG}: web view at {webview.url}"
        if banner:
            print(banner, flush=True)
        if ready is not None and not ready.done():
            ready.set_result(None)
        await ns.wait_shutdown()
        service.stopping()
        return 0
    finally:
        if webview is not None:
            await webview.close()
        await ns.close()
        await service.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _write_config(ns: Netstack, path: str) -> None:
    from netstack.configfile.writer import write_running_config

    try:
        write_running_config(ns, path)
    except NetstackError as exc:
        raise UsageError(f"-writeconfig {path}: {exc.desc}") from None


def _help(cfg: Config, registry: Mapping[str, DriverSpec]) -> int | None:
    """Answer a ``help`` request anywhere on the command line; None if there is none."""
    from netstack import clihelp
    from netstack.chardev.table import SUPPORTED

    options = [("-chardev", s) for s in cfg.chardevs] + [("-netdev", s) for s in cfg.netdevs]
    options += [("-object", s) for s in cfg.objects]
    options += [("-mon", s) for kind, s, _ in cfg.monitors if kind == "mon"]
    found = clihelp.help_request(options)
    if found is None:
        return None
    flag, spec, request = found
    try:
        answer = clihelp.text_for(request, registry.keys(), SUPPORTED)
    except NetstackError as exc:
        print(f"{PROG}: {flag} {spec}: {exc.desc}", file=sys.stderr)
        return 1
    print(answer.text, end="")
    return answer.status


def _daemonize() -> int | None:
    """Fork; the parent waits for the child's readiness byte and returns its exit code."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(wfd)
        data = os.read(rfd, 1)
        os.close(rfd)
        return 0 if data == b"\0" else 1
    os.close(rfd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.environ["NETSTACK_READY_FD"] = str(wfd)
    return None


def _signal_ready(ok: bool) -> None:
    fd = os.environ.pop("NETSTACK_READY_FD", None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"\0" if ok else b"\1")
        os.close(int(fd))
    except OSError:
        pass
    if ok:
        devnull = os.open(os.devnull, os.O_RDWR)
        for std in (0, 1, 2):
            os.dup2(devnull, std)
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``netstackd`` entry point: an exit status, and never a traceback (an unexpected
    exception is one line on stderr, its traceback in the log of ``-D``)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logging.getLogger("netstack").info("internal error", exc_info=True)
        print(f"{PROG}: internal error: {exc!r}", file=sys.stderr)
        return 1


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_argv(args)
    except UsageError as exc:
        print(error_line(exc), file=sys.stderr)
        return 1
    except HelpRequested as request:  # -name ...,help
        from netstack.clihelp import text_for

        print(text_for(request, (), ()).text, end="")
        return 0
    except confine.OptionHelp as exc:  # QEMU exits 1 here; every help text exits 0 here
        print(exc, end="")
        return 0
    if cfg.show_help:
        print(usage(), end="")
        return 0
    if cfg.show_version:
        print(f"{PROG} version {__version__}")
        print(_data_path())
        return 0

    import drivers

    registry = drivers.registry()
    status = _help(cfg, registry)
    if status is not None:
        return status

    confine.private_files()
    banner = None
    if cfg.embedded_default:
        plan = embedded_default(registry, runtime_dir())
        plan.config.webview = cfg.webview
        cfg = plan.config
        banner = attach_instructions(plan)

    try:
        if cfg.logfile == "":  # FileHandler would open the current directory
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))
        handler = None if cfg.logfile is None else logging.FileHandler(cfg.logfile)
    except OSError as exc:
        print(f"{PROG}: Error opening logfile {cfg.logfile}: {exc.strerror}", file=sys.stderr)
        return 1
    logging.basicConfig(
        handlers=None if handler is None else [handler],
        level=logging.INFO if cfg.logfile else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if cfg.daemonize:
        code = _daemonize()
        if code is not None:
            return code
    limits.raise_nofile(logging.getLogger("netstack"))
    pidfile = Path(cfg.pidfile) if cfg.pidfile is not None else None
    if pidfile is not None:
        try:
            confine.write_pidfile(pidfile)
        except OSError as exc:
            reason = f"Could not create '{cfg.pidfile}': {exc.strerror}"
            print(f"{PROG}: cannot create PID file: {reason}", file=sys.stderr)
            return 1
    try:
        return asyncio.run(_main_async(cfg, registry, banner))
    finally:
        if pidfile is not None:
            with contextlib.suppress(OSError):  # a dropped user may not remove it
                pidfile.unlink(missing_ok=True)


#: Compiled modules of drivers (by name: netstack imports no driver module here).
_DRIVER_ACCELERATORS = (
    "drivers.tap._fasttap",
    "drivers.vhost_user._vring",
    "drivers.user.tcp._tcpfast",
)


def _data_path() -> str:
    """Which data path runs (compiled or pure Python), making the choices first."""
    from netstack import fastpath
    from netstack.net import fastcore

    fastcore.ensure()
    for name in _DRIVER_ACCELERATORS:  # the same cached choice the driver makes at first use
        fastpath.load(name)
    return fastpath.describe()


async def _main_async(cfg: Config, registry: Mapping[str, DriverSpec], banner: str | None) -> int:
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready.add_done_callback(lambda _f: _signal_ready(True))
    # at ready, so the accelerators chosen while the netdevs were made are named too
    ready.add_done_callback(lambda _f: logging.getLogger("netstack").info("%s", _data_path()))
    code = await serve(cfg, registry, ready=ready, banner=banner)
    if not ready.done():
        _signal_ready(False)
    return code
