"""The ring burst loops alone: compiled (``drivers/vhost_user/_vring.c``) vs the
pure-Python reference, in one process, interleaved; split rings, or packed ones with
``--packed`` (the packed driver of ``tests/unit/test_vhost_user_packed.py`` re-posting the
same buffers, outside the measured calls).

A ``NetDevice`` with one queue pair of 256-entry rings in a memfd (the test kit's front
end, ``tests/kit/vhost_user.py``) moves bursts of ``--frame``-byte frames: ``transmit`` on
the transmit ring (256 one-descriptor chains), then ``receive`` of those frames into 256
receive buffers of 2 KiB; the driver side (re-publishing the same buffers) is outside the
measured calls. Prints, per round and as medians of ``--rounds`` interleaved rounds, the
thread CPU time (``time.thread_time``) per frame of each half and the ratio Python /
compiled from the same round.

    python bench/bench_vring.py [--rounds 5] [--bursts 400] [--frame 64] [--packed]
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from drivers.vhost_user import fastring  # noqa: E402
from drivers.vhost_user import protocol as vp  # noqa: E402
from drivers.vhost_user.device import NetDevice  # noqa: E402
from drivers.vhost_user.virtqueue import DESC_F_WRITE  # noqa: E402
from tests.kit.vhost_user import GuestSetup  # noqa: E402

NUM = 256


def one_round(compiled: bool, bursts: int, size: int) -> tuple[float, float]:
    """CPU seconds per frame of transmit and of receive."""
    guest = GuestSetup(num=NUM)
    dev = NetDevice(1)
    dev.vring = fastring.load() if compiled else None
    session = vp.Session(dev)
    for m in guest.start_messages():
        session.handle(m)
    rx, tx = guest.rings[0], guest.rings[1]
    frame = bytes(range(256)) * (size // 256 + 1)
    data = bytes(12) + frame[:size]
    tx_heads = []
    for _ in range(NUM):
        addr = guest.ram.alloc(len(data), 16)
        guest.ram.write(addr, data)
        tx_heads.append(tx.add_chain([(addr, len(data), 0)]))
    rx_heads = [rx.add_chain([(guest.ram.alloc(2048, 64), 2048, DESC_F_WRITE)]) for _ in range(NUM)]
    t_tx = t_rx = 0.0
    frames_moved = 0
    try:
        for _ in range(bursts):
            for ring, heads in ((tx, tx_heads), (rx, rx_heads)):
                for h in heads:
                    slot = ring.avail_idx % NUM
                    ring.ram.write(ring.avail + 4 + 2 * slot, struct.pack("<H", h))
                    ring.avail_idx = (ring.avail_idx + 1) & 0xFFFF
                ring.set_avail_idx(ring.avail_idx)
            t0 = time.thread_time()
            frames, vnet, n = dev.transmit(dev.tx_queue(0))
            t1 = time.thread_time()
            done = dev.receive(dev.rx_queue(0), frames, vnet)
            t2 = time.thread_time()
            assert n == NUM and done == NUM, (n, done)
            t_tx += t1 - t0
            t_rx += t2 - t1
            frames_moved += n
    finally:
        dev.close()
        guest.close()
    return t_tx / frames_moved, t_rx / frames_moved


def one_round_packed(compiled: bool, bursts: int, size: int) -> tuple[float, float]:
    """:func:`one_round` on packed rings."""
    from tests.unit.test_vhost_user_packed import FEATURES, Rig

    rig = Rig(num=NUM, features=FEATURES)
    dev = rig.dev
    dev.vring = fastring.load() if compiled else None
    data = bytes(12) + (bytes(range(256)) * (size // 256 + 1))[:size]
    tx_bufs = []
    for _ in range(NUM):
        addr = rig.ram.alloc(len(data), 16)
        rig.ram.write(addr, data)
        tx_bufs.append(addr)
    rx_bufs = [rig.ram.alloc(2048, 64) for _ in range(NUM)]
    t_tx = t_rx = 0.0
    moved = 0
    try:
        for _ in range(bursts):
            for k, addr in enumerate(tx_bufs):
                rig.tx.post([(addr, len(data), 0)], buf_id=k)
            for k, addr in enumerate(rx_bufs):
                rig.rx.post([(addr, 2048, DESC_F_WRITE)], buf_id=k)
            t0 = time.thread_time()
            frames, vnet, n = dev.transmit(dev.tx_queue(0))
            t1 = time.thread_time()
            done = dev.receive(dev.rx_queue(0), frames, vnet)
            t2 = time.thread_time()
            assert n == NUM and done == NUM, (n, done)
            rig.tx.take_used()
            rig.rx.take_used()
            t_tx += t1 - t0
            t_rx += t2 - t1
            moved += n
    finally:
        rig.close()
    return t_tx / moved, t_rx / moved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bursts", type=int, default=400)
    ap.add_argument("--frame", type=int, default=64)
    ap.add_argument("--packed", action="store_true", help="packed rings instead of split")
    args = ap.parse_args()
    run = one_round_packed if args.packed else one_round
    if fastring.load() is None:
        print("drivers.vhost_user._vring is not built (or NETSTACK_PURE_PYTHON is set)")
        return
    rows: dict[str, list[float]] = {k: [] for k in ("c-tx", "c-rx", "py-tx", "py-rx")}
    ratios: list[float] = []
    for r in range(args.rounds):
        c = run(True, args.bursts, args.frame)
        p = run(False, args.bursts, args.frame)
        rows["c-tx"].append(c[0])
        rows["c-rx"].append(c[1])
        rows["py-tx"].append(p[0])
        rows["py-rx"].append(p[1])
        ratios.append(sum(p) / sum(c))
        print(
            f"round {r}: compiled tx {c[0] * 1e9:6.0f} rx {c[1] * 1e9:6.0f} ns/frame;"
            f" python tx {p[0] * 1e9:6.0f} rx {p[1] * 1e9:6.0f} ns/frame; ratio {ratios[-1]:.1f}",
            flush=True,
        )
    med = {k: statistics.median(v) * 1e9 for k, v in rows.items()}
    print(
        f"median ({'packed' if args.packed else 'split'} rings, {args.frame}-byte frames,"
        f" bursts of {NUM}): compiled tx {med['c-tx']:.0f}"
        f" + rx {med['c-rx']:.0f} ns/frame; python tx {med['py-tx']:.0f} + rx {med['py-rx']:.0f}"
        f" ns/frame; python/compiled {statistics.median(ratios):.1f}x (same-round median)"
    )


if __name__ == "__main__":
    main()
