"""``netstackd``: QEMU-style command line, the composition root, and the process life.

Arguments follow QEMU's spelling (one or two leading dashes): ``-netdev``, ``-chardev``,
``-object``, ``-qmp``, ``-qmp-pretty``, ``-mon``, ``-daemonize``, ``-pidfile``, ``-D``,
``-name``, ``-webview``, ``-version``, ``-help``. Errors are printed as QEMU prints them,
``netstackd: -netdev SPEC: TEXT``, and exit with status 1.

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
import logging
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from netstack import __version__
from netstack.daemon import Netstack
from netstack.driver import DriverSpec
from netstack.errors import GenericError, NetstackError

if TYPE_CHECKING:
    from netstack.webview import WebView

PROG = "netstackd"

_WITH_ARG = {
    "netdev", "chardev", "object", "qmp", "qmp-pretty", "mon", "pidfile", "D", "name", "webview",
}  # fmt: skip
_FLAGS = {"daemonize", "version", "help", "h"}


class UsageError(Exception):
    """A command-line error (printed with the program name, exit status 1)."""


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
    webview: str | None = None
    embedded_default: bool = False
    show_help: bool = False
    show_version: bool = False


def parse_argv(argv: Sequence[str]) -> Config:
    cfg = Config()
    if not argv:
        cfg.embedded_default = True
        return cfg
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
        if name not in _WITH_ARG:
            raise UsageError(f"{arg}: invalid option")
        try:
            value = next(it)
        except StopIteration:
            raise UsageError(f"{arg}: requires an argument") from None
        if name == "netdev":
            cfg.netdevs.append(value)
        elif name == "chardev":
            cfg.chardevs.append(value)
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
            cfg.name = value
        elif name == "webview":
            cfg.webview = value
    if cfg.webview is not None and not (
        cfg.netdevs or cfg.chardevs or cfg.objects or cfg.monitors or cfg.show_help
    ):
        cfg.embedded_default = True
    return cfg


def runtime_dir() -> Path:
    """A private per-user directory for sockets: $XDG_RUNTIME_DIR/netstack or /tmp."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir():
        path = Path(base) / "netstack"
    elif Path(f"/run/user/{os.getuid()}").is_dir():
        path = Path(f"/run/user/{os.getuid()}") / "netstack"
    else:
        path = Path(f"/tmp/netstack-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


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
  -webview tcp:HOST:PORT[,chardev=ID][,tls-creds=ID]
                             serve the live web view over HTTP(S) (off by default;
                             alone: the embedded default plus the web view)
  -D FILE                    write the log to FILE
  -pidfile FILE              write the process id to FILE
  -daemonize                 detach once started
  -version, -help
"""


async def _setup(ns: Netstack, cfg: Config) -> None:
    """Create everything the configuration names, in QEMU's order; errors name the option."""
    from netstack import qapi

    early = [spec for spec in cfg.objects if _early_object(spec)]
    for spec in early:  # TLS credentials: before the chardevs that use them, as QEMU does
        with _option("-object", spec):
            await ns.object_add(qapi.parse_object_cli(spec))
    for spec in cfg.chardevs:
        with _option("-chardev", spec):
            await ns.chardev_add(qapi.parse_chardev_cli(spec), from_cli=True)
    for spec in cfg.netdevs:
        with _option("-netdev", spec):
            netdev = qapi.parse_netdev_cli(spec)
            qapi.check_id(netdev.id)
            await ns.netdev_add(netdev)
    for spec in cfg.objects:
        if spec in early:
            continue
        with _option("-object", spec):
            await ns.object_add(qapi.parse_object_cli(spec))
    for index, (kind, spec, pretty) in enumerate(cfg.monitors):
        with _option(f"-{kind}", spec):
            await ns.monitor_add(kind, spec, pretty, index)


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
def _option(flag: str, spec: str) -> Iterator[None]:
    try:
        yield
    except NetstackError as exc:
        raise UsageError(f"{flag} {spec}: {exc.desc}") from exc


async def serve(
    cfg: Config,
    registry: Mapping[str, DriverSpec],
    *,
    ready: asyncio.Future[None] | None = None,
    banner: str | None = None,
) -> int:
    log = logging.getLogger("netstack")
    ns = Netstack(registry, runtime_dir=runtime_dir(), name=cfg.name, log=log)
    webview: WebView | None = None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, ns.request_shutdown)
    try:
        try:
            await _setup(ns, cfg)
        except UsageError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        if cfg.webview is not None:
            try:
                webview = await _start_webview(ns, cfg)
            except UsageError as exc:
                print(f"{PROG}: {exc}", file=sys.stderr)
                return 1
            line = f"  Web view:          {webview.url}"
            banner = f"{banner}\n{line}" if banner else f"{PROG}: web view at {webview.url}"
        if banner:
            print(banner, flush=True)
        if ready is not None and not ready.done():
            ready.set_result(None)
        await ns.wait_shutdown()
        return 0
    finally:
        if webview is not None:
            await webview.close()
        await ns.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


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
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_argv(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if cfg.show_help:
        print(usage(), end="")
        return 0
    if cfg.show_version:
        print(f"{PROG} version {__version__}")
        return 0

    import drivers

    registry = drivers.registry()
    if any(spec.split(",", 1)[0] in ("help", "?") for spec in cfg.netdevs):
        from netstack.qapi import netdev_help

        print(netdev_help(registry.keys()), end="")
        return 0

    banner = None
    if cfg.embedded_default:
        plan = embedded_default(registry, runtime_dir())
        plan.config.webview = cfg.webview
        cfg = plan.config
        banner = attach_instructions(plan)

    logging.basicConfig(
        filename=cfg.logfile,
        level=logging.INFO if cfg.logfile else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if cfg.daemonize:
        code = _daemonize()
        if code is not None:
            return code
    pidfile = Path(cfg.pidfile) if cfg.pidfile else None
    if pidfile is not None:
        pidfile.write_text(f"{os.getpid()}\n")
    try:
        return asyncio.run(_main_async(cfg, registry, banner))
    finally:
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)


async def _main_async(cfg: Config, registry: Mapping[str, DriverSpec], banner: str | None) -> int:
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ready.add_done_callback(lambda _f: _signal_ready(True))
    code = await serve(cfg, registry, ready=ready, banner=banner)
    if not ready.done():
        _signal_ready(False)
    return code
