"""Command line of ``netstack-capture`` (see :mod:`tools.capture` for the design).

Exit status: 0 after a capture (however it ended), 1 when a target cannot be captured
or the output fails, 2 for usage errors and an unreachable daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import stat
import sys
from collections.abc import Sequence
from typing import Any

from tools.capture.bpf import BpfFilter, FilterSyntaxError, FilterUnavailable
from tools.capture.output import FORMATS, CaptureWriter
from tools.capture.session import CaptureError, CapturePoint, CaptureSession
from tools.capture.streams import Packet

PROG = "netstack-capture"
#: How long a closing pipe may take to hand its last bytes to the reader.
FLUSH_TIMEOUT = 5.0


def default_socket() -> str:
    """The QMP socket of ``netstackd``'s embedded default (its runtime directory)."""
    env = os.environ.get("NETSTACK_QMP")
    if env:
        return env
    from netstack.cli import runtime_dir

    return str(runtime_dir() / "qmp.sock")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Stream a netstack daemon's traffic as pcapng/pcap (to stdout by default).",
        epilog="targets: netdev ids, or hub:N for every port of hub N",
    )
    p.add_argument("targets", nargs="*", metavar="TARGET")
    p.add_argument(
        "-s",
        "--socket",
        help="QMP socket of the daemon (default: $NETSTACK_QMP "
        "or the runtime directory's qmp.sock)",
    )
    p.add_argument("-w", "--write", default="-", metavar="FILE", help="output file ('-': stdout)")
    p.add_argument("-F", "--format", choices=FORMATS, default="pcapng")
    p.add_argument("-f", "--filter", metavar="EXPR", help="capture filter, tcpdump syntax")
    p.add_argument("-S", "--snaplen", type=int, default=65536, help="bytes kept per frame")
    p.add_argument("-c", "--count", type=int, help="stop after COUNT packets")
    p.add_argument(
        "--segment",
        action="store_true",
        help="write offloaded super-frames as the MTU-sized segments the wire carries",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no counter or summary")
    p.add_argument("-D", "--list", action="store_true", help="list netdevs and hubs, then exit")
    args = p.parse_args(list(argv))
    if not args.list and not args.targets:
        p.error("name at least one netdev or hub:N (-D lists them)")
    if args.snaplen < 1:
        p.error("snaplen must be positive")
    return args


class Output:
    """The capture's destination: a file, or stdout with flow control when it is a pipe."""

    def __init__(self, session: CaptureSession, stop: asyncio.Event) -> None:
        self.session = session
        self.stop = stop
        self.closed_reason: str | None = None
        self._fd = -1
        self._transport: asyncio.WriteTransport | None = None
        self.gone = asyncio.Event()

    async def open(self, path: str) -> None:
        if path != "-":
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            return
        if os.isatty(1):
            raise CaptureError(
                "refusing to write a capture to a terminal: pipe it (| tshark -r -) or use -w"
            )
        mode = os.fstat(1).st_mode
        if stat.S_ISREG(mode):
            self._fd = os.dup(1)
            return
        pipe = os.fdopen(os.dup(1), "wb", buffering=0)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.connect_write_pipe(lambda: _StdoutProtocol(self), pipe)

    def write(self, data: bytes) -> None:
        if self.closed_reason is not None:
            return
        if self._transport is not None:
            if not self._transport.is_closing():
                self._transport.write(data)
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.lost(f"output: {exc.strerror}")

    def lost(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
            self.stop.set()

    async def close(self) -> None:
        """Flush what the pipe has not taken yet (bounded), then close."""
        if self.closed_reason is None:
            self.closed_reason = ""  # closed by us: not worth a message
        if self._transport is not None:
            self._transport.close()  # sends what is buffered first
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gone.wait(), FLUSH_TIMEOUT)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _StdoutProtocol(asyncio.Protocol):
    def __init__(self, output: Output) -> None:
        self.output = output

    def pause_writing(self) -> None:
        self.output.session.pause()

    def resume_writing(self) -> None:
        self.output.session.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self.output.lost("output closed")
        self.output.gone.set()


class Capture:
    """Counts, filters and writes packets as the session delivers them."""

    def __init__(self, args: argparse.Namespace, stop: asyncio.Event) -> None:
        self.args = args
        self.stop = stop
        self.writer: CaptureWriter | None = None
        self.bpf: BpfFilter | None = None
        self.captured = 0
        self.filtered = 0

    def on_packets(self, point: CapturePoint, packets: list[Packet]) -> None:
        writer = self.writer
        limit = self.args.count
        if writer is None or (limit is not None and self.captured >= limit):
            return
        for pkt in packets:
            if self.bpf is not None and not self.bpf.matches(pkt.data, pkt.length):
                self.filtered += 1
                continue
            writer.packet(point.if_index, pkt, point.direction or pkt.direction)
            self.captured += 1
            if limit is not None and self.captured >= limit:
                self.stop.set()
                return


async def _counter(capture: Capture) -> None:
    while True:
        sys.stderr.write(f"\r{capture.captured} packets captured")
        sys.stderr.flush()
        await asyncio.sleep(0.5)


async def _list(session: CaptureSession) -> int:
    view = await session.network()
    for name, kind in view.clients:
        if kind != "nic":
            print(f"{name}\t{kind}")
    for hub_id, ports in sorted(view.hubs.items()):
        print(f"hub:{hub_id}\tports {' '.join(ports)}")
    return 0


async def run(args: argparse.Namespace) -> int:
    from qemu.qmp import QMPClient

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    qmp = QMPClient(PROG)
    socket_path = args.socket or default_socket()
    try:
        await qmp.connect(socket_path)
    except Exception as exc:
        print(f"{PROG}: cannot connect to {socket_path}: {exc}", file=sys.stderr)
        return 2

    async def execute(cmd: str, arguments: Any) -> object:
        return await qmp.execute(cmd, dict(arguments))

    capture = Capture(args, stop)
    session = CaptureSession(
        execute, capture.on_packets, snaplen=args.snaplen, segment=bool(args.segment)
    )
    output = Output(session, stop)
    counter: asyncio.Task[None] | None = None
    ender: asyncio.Task[None] | None = None
    try:
        if args.list:
            return await _list(session)
        if args.filter:
            capture.bpf = BpfFilter(args.filter, args.snaplen)
        await session.plan(args.targets)
        await output.open(args.write)
        capture.writer = CaptureWriter(
            output.write, session.interfaces, fmt=args.format, snaplen=args.snaplen
        )
        await session.attach()
        ender = loop.create_task(_end_when_streams_end(session, stop))
        if not args.quiet and os.isatty(2):
            counter = loop.create_task(_counter(capture))
        await stop.wait()
    except (CaptureError, FilterSyntaxError, FilterUnavailable, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    finally:
        for task in (counter, ender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await session.close()
        await output.close()
        if capture.bpf is not None:
            capture.bpf.close()
        with contextlib.suppress(Exception):
            await qmp.disconnect()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if not args.quiet:
        _summary(capture, session, output)
    return 0


async def _end_when_streams_end(session: CaptureSession, stop: asyncio.Event) -> None:
    await session.wait_all_closed()
    stop.set()


def _summary(capture: Capture, session: CaptureSession, output: Output) -> None:
    parts = [f"{capture.captured} packets captured"]
    if capture.bpf is not None:
        parts.append(f"{capture.filtered} not matching the filter")
    dropped = session.daemon_dropped
    if dropped:
        parts.append(f"{dropped} dropped by the daemon")
    line = ", ".join(parts)
    prefix = "\r" if os.isatty(2) else ""
    print(f"{prefix}{line}", file=sys.stderr)
    if output.closed_reason == "output closed":
        print(f"{PROG}: output closed", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
