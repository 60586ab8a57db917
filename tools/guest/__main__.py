"""Command line for the test guest.

``python -m tools.guest build [--module NAME]...`` builds (or finds) the image and prints its
paths; ``python -m tools.guest run --script FILE [options] -- <qemu args>`` boots it, streams
the console to stdout and exits with the script's status (124 on timeout, 125 without an exit
marker); ``python -m tools.guest clean`` empties the cache.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .image import build, clean
from .runner import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, GuestError, run_guest_sync


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.guest", description=__doc__)
    parser.add_argument("--cache", type=Path, help="cache directory (default: see debs.py)")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the image and print its paths")
    b.add_argument("--module", action="append", default=[], help="extra kernel module")
    r = sub.add_parser("run", help="boot a guest running a script")
    r.add_argument("--script", type=Path, help="shell script to run as /test.sh")
    r.add_argument("--file", action="append", default=[], metavar="GUEST=HOST",
                   help="also put host file HOST at guest path GUEST")  # fmt: skip
    r.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    r.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MB, help="guest RAM in MiB")
    r.add_argument("--ifaces", default="eth0", help="interfaces to wait for ('' for none)")
    r.add_argument("--name", default="guest")
    r.add_argument("--append", default="", help="extra kernel command line")
    r.add_argument("--log", type=Path, help="also write the console to this file")
    r.add_argument("qemu_args", nargs=argparse.REMAINDER, help="-- then QEMU arguments")
    sub.add_parser("clean", help="remove the cache")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "clean":
        clean(args.cache)
        return 0
    if args.command == "build":
        image = build(args.cache, extra_modules=args.module)
        print(f"kernel: {image.kernel}")
        print(f"initrd: {image.initrd}")
        print(f"kernel_package: {image.kernel_package}")
        print(f"kernel_version: {image.kernel_version}")
        print(f"modules: {' '.join(image.modules)}")
        print(f"digest: {image.digest}")
        return 0
    qemu_args = list(args.qemu_args)
    if qemu_args[:1] == ["--"]:
        qemu_args = qemu_args[1:]
    files: dict[str, str | bytes] = {}
    for spec in args.file:
        guest_path, sep, host_path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--file wants GUEST=HOST, got {spec!r}")
        files[guest_path.lstrip("/")] = Path(host_path).read_bytes()
    script = args.script.read_bytes() if args.script else b""
    image = build(args.cache)
    try:
        result = run_guest_sync(
            script,
            qemu_args,
            image=image,
            name=args.name,
            files=files,
            memory_mb=args.memory,
            timeout=args.timeout,
            wait_ifaces=[i for i in args.ifaces.split(",") if i],
            append=args.append,
            echo=sys.stdout,
            log_path=args.log,
        )
    except GuestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 125
    if result.stderr:
        print(result.stderr, end="", file=sys.stderr)
    boot = f"{result.boot_seconds:.2f}s" if result.boot_seconds is not None else "n/a"
    print(
        f"[guest {result.name}: exit status {result.exit_status}, boot-to-script {boot}, "
        f"total {result.elapsed:.2f}s{', TIMED OUT' if result.timed_out else ''}]",
        file=sys.stderr,
    )
    if result.timed_out:
        return 124
    return result.exit_status if result.exit_status is not None else 125


if __name__ == "__main__":
    sys.exit(main())
