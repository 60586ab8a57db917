"""The Python vhost-user front end as a traffic source, next to DPDK's own, into the same
back end: DPDK's vhost PMD in ``dpdk-testpmd --forward-mode=rxonly``.

Cases, per frame size (64 and 1500 bytes by default), each for ``--seconds``:

* ``testpmd virtio-user``: a second testpmd (``net_virtio_user0``, txonly) as the front
  end -- the peer figure, and the back end's capacity;
* ``python blast``: this front end's fast path (:meth:`TxQueue.blast_prepare` /
  ``blast_step``: fixed frame, completed heads recycled into the avail ring with numpy);
* ``python send``: the general path (``TxQueue.send`` of 64-frame batches: frames copied
  into slots, descriptors written per batch);
* ``python rx``: the reverse direction, testpmd vhost txonly into this front end's RX
  queue (``RxQueue.drain``, mergeable buffers).

Rates are the back end's (testpmd's median Rx-pps over the run, first second dropped),
with the front end's own count beside it. The front end (this process) and the
virtio-user testpmd are pinned to CPU 0, the vhost testpmd to the last CPU: on a 2-CPU
machine each side owns one core. Other load on the machine shows up as noise; compare
columns of one run, not runs.

    python bench/bench_vhu_frontend.py [--seconds 2] [--sizes 64,1500] [--repeat 3]
                                       [--queue-size 256] [--json]

Every testpmd is started and killed here by PID; sockets live in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tools.vhost_user_frontend import testpmd  # noqa: E402
from tools.vhost_user_frontend.frontend import FrontendConfig, VhostUserFrontend  # noqa: E402
from tools.vhost_user_frontend.testpmd import Testpmd, pps_samples  # noqa: E402
from tools.vhost_user_frontend.traffic import run_mode, udp_frame  # noqa: E402

FE_CPU = 0
#: case -> which figure is its rate (the back end's, except for RX where ours is the sink)
CASES = {
    "testpmd virtio-user tx": "backend_rx_pps",
    "python blast tx": "backend_rx_pps",
    "python send() tx": "backend_rx_pps",
    "python rx (drain)": "frontend_pps",
}


def _median_pps(text: str, port: int, rx: bool) -> float:
    samples = pps_samples(text).get(port, [])
    vals = [s[0] if rx else s[1] for s in samples]
    vals = [v for v in vals if v > 0]
    if len(vals) > 2:
        vals = vals[1:]  # the first second includes start-up
    return float(statistics.median(vals)) if vals else 0.0


async def _vhost(sock: Path, mode: str, core: int, size: int | None = None) -> Testpmd:
    tp = Testpmd(
        [f"net_vhost0,iface={sock},queues=1"],
        mode,
        core=core,
        txpkts=size,
        wait_for=[sock],
        workdir=str(sock.parent),
    )
    await tp.start()
    return tp


async def case_virtio_user(
    d: Path, size: int, seconds: float, be_core: int, qsize: int
) -> dict[str, float]:
    sock = d / f"vu{size}.sock"
    be = await _vhost(sock, "rxonly", be_core)
    fe = Testpmd(
        [f"net_virtio_user0,path={sock},queues=1,queue_size={qsize}"],
        "txonly",
        core=FE_CPU,
        txpkts=size,
        workdir=str(d),
    )
    try:
        await fe.start()
        await asyncio.sleep(seconds + 1.2)
    finally:
        await fe.stop()
        await be.stop()
    return {
        "backend_rx_pps": _median_pps(be.output, 0, rx=True),
        "frontend_pps": _median_pps(fe.output, 0, rx=False),
    }


async def case_python_tx(
    d: Path, size: int, seconds: float, be_core: int, qsize: int, blast: bool
) -> dict[str, float]:
    sock = d / f"py{size}{int(blast)}.sock"
    be = await _vhost(sock, "rxonly", be_core)
    try:
        cfg = FrontendConfig(queue_size=qsize, tx_slot_size=max(2048, size + 64))
        async with await VhostUserFrontend.connect(str(sock), cfg) as fe:
            await fe.start()
            if blast:
                rep = await run_mode(fe, "txonly", seconds=seconds + 1.2, size=size)
                own = rep.tx_pps
            else:
                frame = udp_frame(size)
                tx = fe.tx[0]
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                end = t0 + seconds + 1.2
                while loop.time() < end:
                    tx.send([frame] * 64)
                own = tx.completed / (loop.time() - t0)
    finally:
        await be.stop()
    return {"backend_rx_pps": _median_pps(be.output, 0, rx=True), "frontend_pps": own}


async def case_python_rx(
    d: Path, size: int, seconds: float, be_core: int, qsize: int
) -> dict[str, float]:
    sock = d / f"rx{size}.sock"
    be = await _vhost(sock, "txonly", be_core, size)
    try:
        cfg = FrontendConfig(queue_size=qsize)
        async with await VhostUserFrontend.connect(str(sock), cfg) as fe:
            await fe.start()
            rep = await run_mode(fe, "rxonly", seconds=seconds + 1.2)
    finally:
        await be.stop()
    return {"backend_tx_pps": _median_pps(be.output, 0, rx=False), "frontend_pps": rep.rx_pps}


async def amain(args: argparse.Namespace) -> list[dict[str, object]]:
    be_core = testpmd.pick_core()
    os.sched_setaffinity(0, {FE_CPU})
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-vhu-") as tmp:
        d = Path(tmp)
        for size in args.sizes:
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in CASES}
            for _ in range(args.repeat):  # interleaved, so that load drifts hit all cases
                q = args.queue_size
                runs["testpmd virtio-user tx"].append(
                    await case_virtio_user(d, size, args.seconds, be_core, q)
                )
                runs["python blast tx"].append(
                    await case_python_tx(d, size, args.seconds, be_core, q, True)
                )
                runs["python send() tx"].append(
                    await case_python_tx(d, size, args.seconds, be_core, q, False)
                )
                runs["python rx (drain)"].append(
                    await case_python_rx(d, size, args.seconds, be_core, q)
                )
            med = {
                name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
                for name, rs in runs.items()
            }
            base = med["testpmd virtio-user tx"]["backend_rx_pps"] or 1.0
            for name, key in CASES.items():
                r = med[name]
                rows.append(
                    {
                        "size": size,
                        "case": name,
                        "pps": round(r[key]),
                        "gbit": round(r[key] * size * 8 / 1e9, 3),
                        "vs_testpmd": round(r[key] / base, 3),
                        "frontend_count_pps": round(r["frontend_pps"]),
                        "runs_pps": [round(x[key]) for x in runs[name]],
                    }
                )
            if not args.json:
                for row in rows[-len(CASES) :]:
                    print(
                        f"{row['size']:5d} B  {row['case']:24s} {row['pps']:>12,} pps "
                        f"{row['gbit']:8.3f} Gbit/s  x{row['vs_testpmd']:<6} "
                        f"(front end's own count {row['frontend_count_pps']:,} pps; "
                        f"runs {row['runs_pps']})",
                        flush=True,
                    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--sizes", default="64,1500")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case (median shown)")
    ap.add_argument("--queue-size", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if not testpmd.available():
        sys.exit("dpdk-testpmd not found: apt-get install dpdk-dev")
    rows = asyncio.run(amain(args))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
