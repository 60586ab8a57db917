"""Command line of the extcap plugin (see :mod:`tools.extcap` for the design).

Exit status: 0 on success (also for a capture however it ended), 1 when the interface,
the daemon or the capture filter is unusable (the message on stderr is what Wireshark
shows), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.capture.bpf import BpfFilter, FilterSyntaxError, FilterUnavailable
from tools.capture.session import CaptureError, CaptureSession, NetworkView

PROG = "netstack-extcap"
VERSION = "1.0"
#: Seconds a daemon may take to answer before it is left out of the interface list.
CONNECT_TIMEOUT = 3.0
PREFIX = "netstack"
SYSTEM_SOCKET = "/run/netstack/qmp.sock"
#: Linktype Ethernet: every netdev carries Ethernet frames.
DLT = "dlt {number=1}{name=EN10MB}{display=Ethernet}"


@dataclass(frozen=True)
class Daemon:
    """A daemon's QMP socket and the prefix of its interface names."""

    prefix: str
    socket: str


def daemons() -> list[Daemon]:
    """The daemons whose interfaces are listed (see the module docstring)."""
    env = os.environ.get("NETSTACK_QMP")
    if env:
        paths = [p for p in env.split(os.pathsep) if p]
    else:
        candidates = [Path(f"/tmp/netstack-{os.getuid()}/qmp.sock"), Path(SYSTEM_SOCKET)]
        for base in (f"/run/user/{os.getuid()}", os.environ.get("XDG_RUNTIME_DIR")):
            if base:
                candidates.insert(0, Path(base) / "netstack" / "qmp.sock")
        paths = list(dict.fromkeys(str(p) for p in candidates if _is_socket(p)))
    return [Daemon(PREFIX if i == 0 else f"{PREFIX}{i + 1}", p) for i, p in enumerate(paths)]


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def split_interface(name: str) -> tuple[Daemon, str]:
    """``netstack:ID`` / ``netstack2:hub:N`` -> (daemon, capture target)."""
    prefix, sep, target = name.partition(":")
    for daemon in daemons():
        if daemon.prefix == prefix and sep and target:
            return daemon, target
    raise CaptureError(f"{name}: not a netstack interface, or its daemon is not configured")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Wireshark extcap plugin for netstack")
    p.add_argument("--extcap-interfaces", action="store_true")
    p.add_argument("--extcap-version", default=None)
    p.add_argument("--extcap-interface", default=None)
    p.add_argument("--extcap-dlts", action="store_true")
    p.add_argument("--extcap-config", action="store_true")
    p.add_argument("--extcap-capture-filter", default=None)
    p.add_argument("--extcap-reload-option", default=None)
    p.add_argument("--capture", action="store_true")
    p.add_argument("--fifo", default=None)
    p.add_argument("--socket", default=None, help="QMP socket (default: from the interface)")
    p.add_argument("--segment", action="store_true")
    p.add_argument("--snaplen", type=int, default=65536)
    p.add_argument("--install", metavar="DIR", help="install the plugin into DIR")
    args, unknown = p.parse_known_args(list(argv))
    if unknown:  # options a newer Wireshark passes: ignore, as extcaps are expected to
        logging.getLogger(PROG).debug("ignored: %s", unknown)
    return args


async def _view(socket_path: str) -> NetworkView:
    from qemu.qmp import QMPClient

    qmp = QMPClient(PROG)
    try:
        await asyncio.wait_for(qmp.connect(socket_path), CONNECT_TIMEOUT)

        async def execute(cmd: str, arguments: object) -> object:
            return await qmp.execute(cmd, dict(arguments))  # type: ignore[call-overload]

        session = CaptureSession(execute, lambda _p, _k: None)
        return await asyncio.wait_for(session.network(), CONNECT_TIMEOUT)
    finally:
        with contextlib.suppress(Exception):
            await qmp.disconnect()


async def interface_lines() -> list[str]:
    lines = [f"extcap {{version={VERSION}}}"]
    for daemon in daemons():
        try:
            view = await _view(daemon.socket)
        except Exception as exc:
            print(f"{PROG}: {daemon.socket}: {exc or type(exc).__name__}", file=sys.stderr)
            continue
        where = "" if daemon.prefix == PREFIX else f" ({daemon.socket})"
        for name, kind in view.clients:
            if kind == "nic":
                continue
            display = f"netstack {kind} {name}{where}"
            lines.append(f"interface {{value={daemon.prefix}:{name}}}{{display={display}}}")
        for hub_id, ports in sorted(view.hubs.items()):
            display = f"netstack hub {hub_id}: {' '.join(ports)}{where}"
            lines.append(f"interface {{value={daemon.prefix}:hub:{hub_id}}}{{display={display}}}")
    return lines


def config_lines(interface: str) -> list[str]:
    try:
        default = split_interface(interface)[0].socket
    except CaptureError:
        default = ""
    return [
        "arg {number=0}{call=--socket}{display=QMP socket}{type=string}"
        f"{{default={default}}}{{tooltip=The daemon's QMP socket}}",
        "arg {number=1}{call=--segment}{display=Segment offloaded super-frames}"
        "{type=boolflag}{default=false}"
        "{tooltip=Write TSO/USO super-frames as the MTU-sized segments the wire carries}",
        "arg {number=2}{call=--snaplen}{display=Bytes kept per frame}{type=unsigned}"
        "{default=65536}{range=64,262144}",
    ]


def check_filter(expression: str) -> int:
    """Wireshark validating the capture filter field: nothing printed means valid."""
    try:
        BpfFilter(expression).close()
    except (FilterSyntaxError, FilterUnavailable) as exc:
        print(str(exc))
        return 1
    return 0


def capture(args: argparse.Namespace) -> int:
    from tools.capture.__main__ import parse_args as capture_args
    from tools.capture.__main__ import run

    if not args.fifo or not args.extcap_interface:
        print(f"{PROG}: --capture needs --extcap-interface and --fifo", file=sys.stderr)
        return 2
    try:
        daemon, target = split_interface(args.extcap_interface)
    except CaptureError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    argv = ["-q", "-s", args.socket or daemon.socket, "-w", args.fifo, "-S", str(args.snaplen)]
    if args.segment:
        argv.append("--segment")
    if args.extcap_capture_filter:
        argv += ["-f", args.extcap_capture_filter]
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(run(capture_args([*argv, target])))
    except KeyboardInterrupt:
        return 0


def install(directory: str) -> int:
    """Write ``DIR/netstack``: runs this module with this interpreter."""
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    script = path / PREFIX
    root = Path(__file__).resolve().parents[2]
    script.write_text(
        "#!/bin/sh\n"
        "# netstack's Wireshark extcap plugin (netstack-extcap --install)\n"
        f"PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}} "
        f'exec {shlex.quote(sys.executable)} -m tools.extcap "$@"\n'
    )
    script.chmod(0o755)
    print(script)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.install:
        return install(args.install)
    if args.extcap_interfaces:
        for line in asyncio.run(interface_lines()):
            print(line)
        return 0
    if args.extcap_dlts:
        print(DLT)
        return 0
    if args.extcap_config:
        for line in config_lines(args.extcap_interface or ""):
            print(line)
        return 0
    if args.capture:
        return capture(args)
    if args.extcap_capture_filter is not None:
        return check_filter(args.extcap_capture_filter)
    print(f"{PROG}: nothing to do (see --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
