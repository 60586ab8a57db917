"""Rx filter throughput: pure-Python ``RxFilter.accepts`` against the numpy batch classifier.

Run: ``python bench/bench_rxfilter.py [--quick]``. Prints frames/s for 64-byte frames under
a realistic state (promiscuous off, two unicast and four multicast table entries, VLAN
filtering negotiated with three vids) and a mixed stream (own MAC, tagged on allowed and
unknown VLANs, broadcast, listed and unlisted multicast, foreign unicast). Every numpy
result is checked against the pure-Python verdicts before it is timed. Runtime is bounded
(about 10 s; ``--quick`` about 2 s).
"""

from __future__ import annotations

import argparse
import functools
import random
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netstack.net.rxbatch import RxBatchClassifier, pack_headers
from netstack.net.rxfilter import RxFilter

FRAME_LEN = 64
OWN = bytes.fromhex("525400123456")
UNICAST = [bytes.fromhex("525400aaaa01"), bytes.fromhex("525400aaaa02")]
MULTICAST = [
    bytes.fromhex(h) for h in ("01005e000001", "01005e0000fb", "333300000001", "3333ff123456")
]
VLANS = (100, 200, 300)


def make_filter() -> RxFilter:
    f = RxFilter(OWN, vlan_negotiated=True)
    f.program(rx_modes={"promisc": False}, unicast=UNICAST, multicast=MULTICAST, vlans=VLANS)
    return f


def make_frames(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    src = bytes.fromhex("5254009999aa")
    out = []
    for _ in range(n):
        r = rnd.random()
        tag = b""
        if r < 0.45:
            dst = OWN
        elif r < 0.55:
            dst, tag = OWN, struct.pack(">HH", 0x8100, rnd.choice(VLANS))
        elif r < 0.60:
            dst, tag = OWN, struct.pack(">HH", 0x8100, 42)  # unknown VLAN: dropped
        elif r < 0.70:
            dst = b"\xff" * 6
        elif r < 0.80:
            dst = rnd.choice(MULTICAST)
        elif r < 0.85:
            dst = bytes.fromhex("01005e7f0001")  # not listed: dropped
        elif r < 0.90:
            dst = rnd.choice(UNICAST)
        else:
            dst = bytes([0x02, *rnd.randbytes(5)])  # foreign unicast: dropped
        head = dst + src + tag + b"\x08\x00"
        out.append(head + rnd.randbytes(FRAME_LEN - len(head)))
    return out


def rate(fn: Callable[[], object], frames: int, budget: float) -> float:
    """Frames per second of ``fn`` (best of repeated runs within ``budget`` seconds)."""
    fn()
    best = float("inf")
    deadline = time.perf_counter() + budget
    runs = 0
    while runs < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
        if runs >= 10_000:
            break
    return frames / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    args = parser.parse_args()
    budget = 0.15 if args.quick else 0.8

    f = make_filter()
    clf = RxBatchClassifier(f)
    frames = make_frames(1 << 16)
    ref = [f.accepts(x) for x in frames]
    print(f"state: {f!r}")
    print(f"stream: {len(frames)} x {FRAME_LEN}-byte frames, {sum(ref) / len(ref):.0%} accepted")
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}")
    print()

    rows: list[tuple[str, float]] = []
    small = frames[:4096]
    accepts = f.accepts
    rows.append(
        (
            "pure Python, accepts() per frame",
            rate(lambda: [accepts(x) for x in small], 4096, budget),
        )
    )
    rows.append(("pure Python, filter_batch()", rate(lambda: f.filter_batch(small), 4096, budget)))

    for batch in (256, 4096, 1 << 16):
        part = frames[:batch]
        hdrs, lengths = pack_headers(part)
        assert lengths is None
        assert clf.classify_headers(hdrs).tolist() == ref[:batch]
        rows.append(
            (
                f"numpy classify_headers, pre-packed, batch {batch}",
                rate(functools.partial(clf.classify_headers, hdrs), batch, budget),
            )
        )
    for batch in (256, 4096, 1 << 16):
        part = frames[:batch]
        assert clf.classify(part).tolist() == ref[:batch]
        rows.append(
            (
                f"numpy classify(list[bytes]), batch {batch}",
                rate(functools.partial(clf.classify, part), batch, budget),
            )
        )
    part = frames[:4096]
    assert clf.accepted(part) == f.filter_batch(part)
    rows.append(
        ("numpy accepted(list[bytes]), batch 4096", rate(lambda: clf.accepted(part), 4096, budget))
    )
    rows.append(
        (
            "pack_headers(list[bytes]) alone, batch 4096",
            rate(lambda: pack_headers(part), 4096, budget),
        )
    )

    width = max(len(name) for name, _ in rows)
    for name, fps in rows:
        print(f"{name:<{width}}  {fps / 1e6:9.2f} Mframes/s")


if __name__ == "__main__":
    main()
