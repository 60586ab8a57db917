"""The vhost-user data path's CPU cost per frame with each guest-memory backing, and across
source trees: what the SIGBUS guard and the per-batch fault check cost.

The device (:class:`drivers.vhost_user.device.NetDevice`) is driven directly, in this
process, over a 256-entry split ring pair in guest memory (``tests/kit``'s raw driver
side): transmit batches of ``--batch`` (256) single-descriptor 64-byte frames (copied out)
and receive batches of as many 64-byte frames into 2 KiB buffers; ``--batch 1`` shows the
per-call costs (the fault check is one per call). The figure is the thread's CPU time per
frame (``time.thread_time_ns`` around the device calls only), median of the rounds; with
wall-clock rates this machine's other load would drown the difference.

Backings (``--backings``): ``sealed-memfd`` (QEMU's default ``memory-backend-memfd``),
``memfd`` (``seal=off``), ``tmpfs`` (a file in ``/dev/shm``). ``--trees A,B`` runs the same
measurement with each source tree on ``PYTHONPATH`` in a subprocess, interleaved round by
round (``A`` first in odd rounds, ``B`` first in even ones), and prints B/A ratios: e.g. the
tree before and after a change, side by side in one run.

    python bench/bench_vhost_user_memory.py [--rounds 5] [--batches 400] [--batch 256]
                                            [--backings sealed-memfd,memfd,tmpfs]
                                            [--trees BEFORE_DIR,AFTER_DIR]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BACKINGS = ("sealed-memfd", "memfd", "tmpfs")
BATCH = 256
SIZE = 64
RAM = 8 << 20


def _make_ram(backing: str) -> Any:
    """A GuestRam (tests/unit) whose file is ``backing``."""
    from tests.kit import vhost_user as guest

    class Ram(guest.GuestRam):
        def __init__(self, size: int = RAM, gpa: int = 0, uaddr: int = guest.UADDR_BASE):
            self.size, self.gpa, self.uaddr = size, gpa, uaddr
            if backing == "tmpfs":
                self.fd = os.open("/dev/shm", os.O_RDWR | os.O_TMPFILE, 0o600)
            else:
                flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if backing != "memfd" else 0)
                self.fd = os.memfd_create("bench-guest", flags)
            os.ftruncate(self.fd, size)
            if backing == "sealed-memfd":
                seals = fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
                fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, seals)
            self.mm = mmap.mmap(self.fd, size)
            self._next = 0x1000

    return Ram


def measure(backing: str, batches: int, batch: int) -> dict[str, float]:
    """CPU ns per frame for transmit and receive with ``backing``, ``batch`` frames per
    device call."""
    import struct

    from drivers.vhost_user import protocol as vp
    from drivers.vhost_user.device import NetDevice
    from drivers.vhost_user.virtqueue import DESC_F_WRITE
    from tests.kit import vhost_user as guest

    guest.GuestRam = _make_ram(backing)  # type: ignore[misc]
    setup = guest.GuestSetup(pairs=1, num=BATCH, size=RAM)
    dev = NetDevice(1)
    session = vp.Session(dev)
    for m in setup.start_messages():
        session.handle(m)
    assert session.refused == 0
    # (a tree from before the guard has no notion of backings)
    kinds = sorted({getattr(getattr(r, "backing", None), "kind", "-") for r in dev.mem.regions})
    rx_ring, tx_ring = setup.rings
    frame = bytes(12) + b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + bytes(SIZE - 14)
    for _ in range(BATCH):
        addr = setup.ram.alloc(len(frame), 16)
        setup.ram.write(addr, frame)
        tx_ring.add_chain([(addr, len(frame), 0)])
        rx_ring.add_chain([(setup.ram.alloc(2048, 64), 2048, DESC_F_WRITE)])
    heads = struct.pack(f"<{BATCH}H", *range(BATCH))
    for ring in (tx_ring, rx_ring):
        setup.ram.write(ring.avail + 4, heads)  # entry i names descriptor i, for good
    rx_frames = [frame[12:]] * batch
    txq, rxq = dev.tx_queue(0), dev.rx_queue(0)
    for q in (txq, rxq):
        dev.start_queue(q)
    tx_ns = rx_ns = 0
    idx = 0
    clock = time.thread_time_ns
    for _ in range(batches):
        idx = (idx + batch) & 0xFFFF
        for ring in (tx_ring, rx_ring):
            setup.ram.write(ring.avail + 2, struct.pack("<H", idx))
        t0 = clock()
        frames, _vnet, n = dev.transmit(txq, batch)
        t1 = clock()
        done = dev.receive(rxq, rx_frames, False)
        t2 = clock()
        assert n == batch and len(frames) == batch and done == batch, (n, done)
        tx_ns += t1 - t0
        rx_ns += t2 - t1
    dev.close()
    setup.close()
    frames_total = batches * batch
    return {"tx": tx_ns / frames_total, "rx": rx_ns / frames_total, "kind": ",".join(kinds)}  # type: ignore[dict-item]


def child(tree: Path, backings: list[str], batches: int, batch: int) -> dict[str, dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--batches", str(batches)]
    argv += ["--batch", str(batch)]
    argv += ["--backings", ",".join(backings)]
    out = subprocess.run(argv, env=env, cwd=tree, capture_output=True, timeout=600, check=True)
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--batch", type=int, default=BATCH, help=f"frames per call (1..{BATCH})")
    ap.add_argument("--backings", default=",".join(BACKINGS))
    ap.add_argument("--trees", default=str(REPO))
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    backings = args.backings.split(",")
    if args.child:
        sys.path.insert(0, os.getcwd())
        print(json.dumps({b: measure(b, args.batches, args.batch) for b in backings}))
        return 0
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    results: dict[tuple[str, str, str], list[float]] = {}
    kinds: dict[tuple[str, str], str] = {}
    for rnd in range(args.rounds):
        order = trees if rnd % 2 == 0 else trees[::-1]
        for tree in order:
            got = child(tree, backings, args.batches, args.batch)
            for backing, fig in got.items():
                kinds[(str(tree), backing)] = str(fig["kind"])
                for way in ("tx", "rx"):
                    results.setdefault((str(tree), backing, way), []).append(float(fig[way]))
    base = str(trees[0])
    print(f"{'tree':<40} {'backing':<13} {'seen as':<13} {'tx ns/frame':>12} {'rx ns/frame':>12}"
          f" {'tx ratio':>9} {'rx ratio':>9}")  # fmt: skip
    for tree in trees:
        for backing in backings:
            row = []
            for way in ("tx", "rx"):
                row.append(statistics.median(results[(str(tree), backing, way)]))
            ratios = [
                r / statistics.median(results[(base, backing, way)])
                for r, way in zip(row, ("tx", "rx"), strict=True)
            ]
            name = str(tree)[-40:]
            kind = kinds[(str(tree), backing)]
            print(f"{name:<40} {backing:<13} {kind:<13} {row[0]:>12.0f} {row[1]:>12.0f}"
                  f" {ratios[0]:>9.3f} {ratios[1]:>9.3f}")  # fmt: skip
    print(f"(rounds {args.rounds}, {args.batches} batches of {args.batch} x {SIZE}-byte frames;"
          " medians; ratios to the first tree)")  # fmt: skip
    return 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
