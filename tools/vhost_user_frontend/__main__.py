"""Command line of the Python vhost-user front end (see :mod:`tools.vhost_user_frontend`).

    python -m tools.vhost_user_frontend --socket PATH [--server] --mode txonly|rxonly|io|ping
        [--size 64] [--seconds 5] [--mac 02:00:00:00:00:01] [--dst-mac ff:ff:ff:ff:ff:ff]
        [--queue-size 256] [--no-mrg-rxbuf] [--no-event-idx] [--json] [--quiet]

Prints one line per second (packets/s each way) and a summary; ``--json`` prints the
summary as one JSON object instead. Exit status: 0 after a run, 1 when the back end
cannot be reached or breaks the protocol, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence

from .channel import ChannelClosed, ReplyTimeout
from .frontend import FrontendConfig, VhostUserFrontend
from .protocol import BackendFailure, Feature, ReplyError, bit, feature_names
from .session import PACKED_FEATURES, SUPPORTED_FEATURES, NegotiationError
from .traffic import MODES, Report, parse_mac, run_mode

PROG = "python -m tools.vhost_user_frontend"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="A Python vhost-user-net front end.")
    p.add_argument("--socket", required=True, help="vhost-user unix socket path")
    p.add_argument("--server", action="store_true", help="listen on the socket (back end connects)")
    p.add_argument("--mode", choices=MODES, default="txonly")
    p.add_argument("--size", type=int, default=64, help="frame size in bytes (no FCS)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--count", type=int, help="stop after COUNT frames")
    p.add_argument("--mac", default="02:00:00:00:00:01", help="source MAC")
    p.add_argument("--dst-mac", default="ff:ff:ff:ff:ff:ff", help="destination MAC")
    p.add_argument("--queue-size", type=int, default=256)
    p.add_argument("--interval", type=float, default=0.01, help="ping interval (s)")
    p.add_argument("--no-mrg-rxbuf", action="store_true", help="do not negotiate MRG_RXBUF")
    p.add_argument("--packed", action="store_true", help="ask for packed virtqueues")
    p.add_argument("--no-event-idx", action="store_true", help="do not negotiate EVENT_IDX")
    p.add_argument("--timeout", type=float, default=10.0, help="connect/accept timeout (s)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-second lines")
    args = p.parse_args(list(argv))
    if args.size < 46 or args.size > 65535:
        p.error("--size must be in 46..65535")
    if args.seconds <= 0:
        p.error("--seconds must be positive")
    if args.queue_size <= 0 or args.queue_size & (args.queue_size - 1):
        p.error("--queue-size must be a power of two")
    try:
        args.src = parse_mac(args.mac)
        args.dst = parse_mac(args.dst_mac)
    except ValueError as exc:
        p.error(str(exc))
    return args


def _line(iv: Report, total: Report) -> None:
    txg = iv.tx_bytes * 8 / iv.seconds / 1e9
    rxg = iv.rx_bytes * 8 / iv.seconds / 1e9
    print(
        f"[{total.seconds:6.1f}s] tx {iv.tx_pps:12,.0f} pps {txg:7.3f} Gbit/s"
        f"   rx {iv.rx_pps:12,.0f} pps {rxg:7.3f} Gbit/s",
        flush=True,
    )


async def amain(args: argparse.Namespace) -> int:
    features = PACKED_FEATURES if args.packed else SUPPORTED_FEATURES
    if args.no_mrg_rxbuf:
        features &= ~bit(Feature.MRG_RXBUF)
    if args.no_event_idx:
        features &= ~bit(Feature.EVENT_IDX)
    slot = max(2048, args.size + 64)
    cfg = FrontendConfig(queue_size=args.queue_size, features=features, tx_slot_size=slot)
    opener = VhostUserFrontend.listen if args.server else VhostUserFrontend.connect
    try:
        fe = await opener(args.socket, cfg, timeout=args.timeout)
    except (OSError, TimeoutError, ReplyError, BackendFailure, NegotiationError) as exc:
        print(f"{PROG}: {args.socket}: {exc}", file=sys.stderr)
        return 1
    async with fe:
        try:
            await fe.start()
            if not args.json and not args.quiet:
                print(f"negotiated: {' '.join(feature_names(fe.session.acked))}", flush=True)
            report = await run_mode(
                fe,
                args.mode,
                seconds=args.seconds,
                size=args.size,
                src_mac=args.src,
                dst_mac=args.dst,
                max_frames=args.count,
                interval=args.interval,
                report=None if (args.quiet or args.json) else _line,
            )
            with contextlib.suppress(ChannelClosed, ReplyTimeout, ReplyError):
                await fe.stop()
        except (ChannelClosed, ReplyTimeout, ReplyError, BackendFailure, NegotiationError) as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
    summary = report.as_dict()
    if args.json:
        print(json.dumps(summary), flush=True)
    else:
        print(
            f"{args.mode}: {report.seconds:.2f} s, tx {report.tx_frames} frames "
            f"({report.tx_pps:,.0f} pps), rx {report.rx_frames} frames ({report.rx_pps:,.0f} pps)"
            + (
                f", ping {summary.get('replies', 0)} replies, {report.lost} lost, rtt "
                f"min/avg/max {summary.get('rtt_us_min')}/{summary.get('rtt_us_avg')}/"
                f"{summary.get('rtt_us_max')} us"
                if args.mode == "ping"
                else ""
            ),
            flush=True,
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
