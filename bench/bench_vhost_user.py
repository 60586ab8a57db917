"""vhost-user back-end throughput: netstackd vs DPDK's vhost PMD, side by side in one run.

The front end is always DPDK testpmd's virtio-user (``--no-huge``, both lcores on the last
CPU), the traffic source and sink. The back end under test runs alone on CPU 0:

* ``dpdk``: a second testpmd with ``--vdev net_vhost0,iface=SOCK`` (DPDK's vhost library,
  busy-polling) - the reference;
* ``netstack``: a netstackd process (this file's ``--serve`` mode) with vhost-user netdevs.

Cases (``--cases``):

* ``g2b-64`` / ``g2b-1500``: guest -> back end, testpmd ``txonly`` with 64 / 1500-byte
  frames; DPDK counts them in ``rxonly``, netstackd takes them into a port with no peer
  (buffers returned, nothing copied: ``netstack``) and into a port peered with a counting
  client (every frame copied out and handed to the core: ``netstack-copy``). Figure: the
  rate testpmd transmits at (Mpps; Gbit/s of Ethernet bytes for 1500).
* ``loop-64``: testpmd ``io`` with ``start tx_first 8``: each frame the back end returns is
  sent again; DPDK echoes in ``io`` mode, netstackd through a reflector peer. Figure: Mpps
  each way.
* ``switch-64``: two virtio-user ports in ``io`` mode (``tx_first 8``) joined by the back
  end: DPDK's ``io`` forwarding between two vhost ports, netstackd's hub with two
  vhost-user ports. Figure: Mpps per port and direction.

Each case runs ``--seconds`` (5) after testpmd's first statistics and a 2-second warm-up;
the figure is the median of testpmd's 1-second ``Rx-pps``/``Tx-pps`` samples printed
during those seconds (with ``--repeat N``: the best of N runs, the back ends interleaved,
which filters out other load on a shared machine). Ratios are netstack / DPDK from the
same run. Other load on the machine skews every figure.

    python bench/bench_vhost_user.py [--seconds S] [--repeat N]
                                     [--cases g2b-64,g2b-1500,loop-64,switch-64]
                                     [--kinds dpdk,netstack,netstack-copy]

Packed rings (``--packed``, cases ``loop-64`` and ``g2b-64``): the same front end with
``packed_vq=1`` and without it, against netstackd and against DPDK's vhost PMD, all four
interleaved in every round (``--rounds``, default 3); medians of the rounds, the ratios
netstack packed/split and netstack/DPDK on packed rings, and the back end's CPU time per
frame (``/proc/PID/stat`` utime + stime over the measured seconds).

Compiled vs pure-Python ring loops (``--compiled``, cases ``loop-64`` and ``switch-64``):
DPDK's vhost PMD, netstackd as built (``netstack``: the C loops of
``drivers/vhost_user/_vring.c``, split and packed rings) and netstackd with
``NETSTACK_PURE_PYTHON=1`` (``netstack-py``), each on split and packed rings, all six
interleaved in every round; medians, same-round ratios to DPDK, CPU per frame.

Every process is started and stopped here by PID; only unix sockets in a temporary
directory are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.interop.test_vhost_user_dpdk import DpdkTestpmd  # noqa: E402

CASES = ("g2b-64", "g2b-1500", "loop-64", "switch-64")
KINDS = ("dpdk", "netstack", "netstack-copy", "netstack-py")
_BLOCK = re.compile(r"NIC statistics for port (\d+).*?Rx-pps:\s*(\d+).*?Tx-pps:\s*(\d+)", re.DOTALL)


# -- the netstackd side (subprocess) ------------------------------------------------------------


async def serve(case: str, sockdir: Path) -> int:
    """Run a daemon for ``case``; READY on stdout; ``stats`` on stdin prints counters."""
    from drivers import hubport
    from drivers import vhost_user as vu
    from netstack.daemon import Netstack
    from netstack.net.client import NetClient
    from netstack.qapi import parse_chardev_cli, parse_netdev_cli

    class Counter(NetClient):
        type = "socket"

        def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
            return len(frames)

    class Reflector(NetClient):
        type = "socket"
        accepts_vnet = True

        def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
            self.send(frames, vnet)
            return len(frames)

    ns = Netstack({"vhost-user": vu.SPEC, "hubport": hubport.SPEC})
    names = ["p0", "p1"] if case == "switch" else ["p0"]
    for name in names:
        await ns.chardev_add(
            parse_chardev_cli(f"socket,id=c{name},path={sockdir / name}.sock,server=on,wait=off"),
            from_cli=True,
        )
        (nc,) = await ns.netdev_add(parse_netdev_cli(f"vhost-user,id={name},chardev=c{name}"))
        if case == "switch":
            await ns.netdev_add(parse_netdev_cli(f"hubport,id=h{name},hubid=0,netdev={name}"))
        elif case == "copy":
            Counter("count").connect(nc)
        elif case == "reflect":
            Reflector("reflect").connect(nc)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("READY", flush=True)
    try:
        while line := await reader.readline():
            if line.strip() == b"stats":
                out = {
                    nc.name: {**nc.stats.as_dict(), **getattr(nc, "counters", dict)()}
                    for nc in ns.clients
                }
                print("STATS " + json.dumps(out), flush=True)
    finally:
        await ns.close()
    return 0


class NetstackProc:
    def __init__(self, case: str, sockdir: Path, cpu: int, pure: bool = False) -> None:
        self.pure = pure
        self.argv = [
            "taskset", "-c", str(cpu), sys.executable, str(Path(__file__).resolve()),
            "--serve", case, "--sockdir", str(sockdir),
        ]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env["NETSTACK_PURE_PYTHON"] = "1" if self.pure else ""
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if line.strip() != b"READY":
            raise RuntimeError(f"netstackd bench daemon failed: {line!r}")

    async def stats(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
            if line.startswith(b"STATS "):
                return dict(json.loads(line[6:]))

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


# -- measurement -----------------------------------------------------------------------------


def samples(output: str, skip: int) -> dict[int, dict[str, list[int]]]:
    """Per port: the Rx-pps and Tx-pps of each stats period after ``skip`` periods."""
    per: dict[int, dict[str, list[int]]] = {}
    for m in _BLOCK.finditer(output):
        port, rx, tx = int(m.group(1)), int(m.group(2)), int(m.group(3))
        d = per.setdefault(port, {"rx": [], "tx": []})
        d["rx"].append(rx)
        d["tx"].append(tx)
    return {p: {k: v[skip:] for k, v in d.items()} for p, d in per.items()}


def median(values: list[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_case(
    case: str, kind: str, seconds: float, tmp: Path, packed: bool = False
) -> dict[str, float]:
    front_cpu = (os.cpu_count() or 1) - 1
    sockdir = Path(tempfile.mkdtemp(dir=tmp))
    size = 1500 if case == "g2b-1500" else 64
    mode = {"g2b-64": "txonly", "g2b-1500": "txonly", "loop-64": "io", "switch-64": "io"}[case]
    ports = 2 if case == "switch-64" else 1
    tx_first = 8 if mode == "io" else None
    back: DpdkTestpmd | NetstackProc
    if kind == "dpdk":
        vdevs = [f"net_vhost{i},iface={sockdir / f'p{i}'}.sock,queues=1" for i in range(ports)]
        back_mode = "rxonly" if mode == "txonly" else "io"
        back = DpdkTestpmd(vdevs, back_mode, txpkts=size, cpu=0, workdir=sockdir)
        await back.start()
        for _ in range(300):  # until DPDK's vhost library created its sockets
            if all((sockdir / f"p{i}.sock").exists() for i in range(ports)):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    else:
        serve_case = {"g2b-64": "sink", "g2b-1500": "sink", "loop-64": "reflect"}.get(
            case, "switch"
        )
        if kind == "netstack-copy":
            serve_case = "copy"
        back = NetstackProc(serve_case, sockdir, 0, pure=kind == "netstack-py")
        await back.start()
    ring = ",packed_vq=1" if packed else ""
    vdevs = [
        f"net_virtio_user{i},path={sockdir / f'p{i}'}.sock,queues=1,queue_size=256{ring}"
        for i in range(ports)
    ]
    front = DpdkTestpmd(vdevs, mode, txpkts=size, tx_first=tx_first, cpu=front_cpu, workdir=sockdir)
    await front.start()
    assert back.proc is not None
    try:
        await front.wait_for("Rx-pps", timeout=60)  # forwarding started (slow when loaded)
        await asyncio.sleep(2.0)
        # Samples printed from here on fall in the measured window (a loaded machine may
        # start testpmd late: a fixed count of warm-up samples could leave none).
        skip = len(_BLOCK.findall(front.output)) // ports
        cpu0 = cpu_seconds(back.proc.pid)
        await asyncio.sleep(seconds)
        cpu = cpu_seconds(back.proc.pid) - cpu0
        ends = len(_BLOCK.findall(front.output)) // ports
    finally:
        await front.stop()
        await back.stop()
    per = {
        p: {k: v[: max(1, ends - skip)] for k, v in d.items()}
        for p, d in samples(front.output, skip=skip).items()
    }
    if not per:
        raise RuntimeError(f"no testpmd statistics ({case}, {kind}):\n{front.output[-2000:]}")
    if mode == "txonly":
        return {"mpps": median(per[0]["tx"]) / 1e6, "cpu": cpu}
    rx = [median(per[p]["rx"]) / 1e6 for p in sorted(per)]
    return {"mpps": min(rx), "mpps_ports": sum(rx) / len(rx), "cpu": cpu}


def figure(case: str, mpps: float) -> str:
    if case == "g2b-1500":
        return f"{mpps:6.3f} Mpps {mpps * 1500 * 8 / 1000:6.2f} Gbit/s"
    return f"{mpps:6.3f} Mpps"


async def bench(cases: Sequence[str], kinds: Sequence[str], seconds: float, repeat: int) -> None:
    if not DpdkTestpmd.available():
        print("dpdk-testpmd not found (Debian dpdk-dev)", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="bench-vhost-") as tmpname:
        tmp = Path(tmpname)
        note = f" (best of {repeat}, kinds interleaved)" if repeat > 1 else ""
        print(f"{'case':<11} {'back end':<14} {'figure' + note:<30} ratio to dpdk")
        for case in cases:
            todo = [k for k in kinds if not (k == "netstack-copy" and not case.startswith("g2b"))]
            best: dict[str, float] = {}
            for _ in range(repeat):
                for kind in todo:
                    mpps = (await run_case(case, kind, seconds, tmp))["mpps"]
                    best[kind] = max(best.get(kind, 0.0), mpps)
            ref = best.get("dpdk")
            for kind in todo:
                mpps = best[kind]
                ratio = f"{mpps / ref:.3f}" if ref and kind != "dpdk" else ""
                print(f"{case:<11} {kind:<14} {figure(case, mpps):<30} {ratio}", flush=True)


def per_frame(runs: list[dict[str, float]], seconds: float) -> float:
    """Median back-end CPU seconds per frame over the runs that moved frames."""
    values = [r["cpu"] / (r["mpps"] * 1e6 * seconds) for r in runs if r["mpps"] > 0]
    return float(statistics.median(values)) if values else 0.0


PACKED_KINDS = (("netstack", False), ("netstack", True), ("dpdk", False), ("dpdk", True))


async def bench_packed(cases: Sequence[str], seconds: float, rounds: int) -> None:
    """Packed vs split rings, netstackd vs DPDK, interleaved per round; medians."""
    if not DpdkTestpmd.available():
        print("dpdk-testpmd not found (Debian dpdk-dev)", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="bench-vhost-") as tmpname:
        tmp = Path(tmpname)
        print(f"{rounds} rounds of {seconds:g} s, medians; cpu: back end CPU time per frame")
        print(f"{'case':<8} {'back end':<9} {'ring':<7} {'Mpps':>7} {'cpu ns/frame':>13}  ratios")
        for case in cases:
            got: dict[tuple[str, bool], list[dict[str, float]]] = {k: [] for k in PACKED_KINDS}
            for _ in range(rounds):
                for kind, packed in PACKED_KINDS:
                    got[kind, packed].append(await run_case(case, kind, seconds, tmp, packed))
            med = {k: (median([int(r["mpps"] * 1e6) for r in v]) / 1e6, per_frame(v, seconds))
                   for k, v in got.items()}  # fmt: skip
            for kind, packed in PACKED_KINDS:
                mpps, cpu = med[kind, packed]
                ratios = ""
                if kind == "netstack" and packed:
                    split = med["netstack", False][0]
                    dpdk = med["dpdk", True][0]
                    ratios = (f"packed/split {mpps / split:.3f}" if split else "") + (
                        f", vs dpdk packed {mpps / dpdk:.3f}" if dpdk else ""
                    )
                elif kind == "dpdk" and packed:
                    split = med["dpdk", False][0]
                    ratios = f"packed/split {mpps / split:.3f}" if split else ""
                ring = "packed" if packed else "split"
                print(
                    f"{case:<8} {kind:<9} {ring:<7} {mpps:7.3f} {cpu * 1e9:13.0f}  {ratios}",
                    flush=True,
                )
            rounds_text = {
                f"{k[0]}-{'packed' if k[1] else 'split'}": [round(r["mpps"], 3) for r in v]
                for k, v in got.items()
            }
            print(f"{case:<8} per-round Mpps: {json.dumps(rounds_text)}", flush=True)


COMPILED_KINDS = tuple(
    (kind, packed) for packed in (False, True) for kind in ("dpdk", "netstack", "netstack-py")
)


async def bench_compiled(cases: Sequence[str], seconds: float, rounds: int) -> None:
    """netstackd with the compiled ring loops (``netstack``) and with the pure-Python ones
    (``netstack-py``, ``NETSTACK_PURE_PYTHON=1``) against DPDK's vhost PMD, split and packed
    rings, all interleaved in every round; medians of the rounds, same-round ratios."""
    if not DpdkTestpmd.available():
        print("dpdk-testpmd not found (Debian dpdk-dev)", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory(prefix="bench-vhost-") as tmpname:
        tmp = Path(tmpname)
        print(f"{rounds} rounds of {seconds:g} s, medians; cpu: back end CPU time per frame")
        print(f"{'case':<10} {'back end':<12} {'ring':<7} {'Mpps':>7} {'cpu ns/frame':>13}  ratios")
        for case in cases:
            got: dict[tuple[str, bool], list[dict[str, float]]] = {k: [] for k in COMPILED_KINDS}
            ratios: dict[tuple[str, bool], list[float]] = {k: [] for k in COMPILED_KINDS}
            for _ in range(rounds):
                for key in COMPILED_KINDS:
                    got[key].append(await run_case(case, key[0], seconds, tmp, key[1]))
                for kind, packed in COMPILED_KINDS:
                    ref = got["dpdk", packed][-1]["mpps"]
                    if kind != "dpdk" and ref:
                        ratios[kind, packed].append(got[kind, packed][-1]["mpps"] / ref)
            for kind, packed in COMPILED_KINDS:
                runs = got[kind, packed]
                mpps = median([int(r["mpps"] * 1e6) for r in runs]) / 1e6
                cpu = per_frame(runs, seconds)
                text = ""
                if ratios[kind, packed]:
                    text = f"vs dpdk {statistics.median(ratios[kind, packed]):.3f} (same-round)"
                ring = "packed" if packed else "split"
                print(f"{case:<10} {kind:<12} {ring:<7} {mpps:7.3f} {cpu * 1e9:13.0f}  {text}")
            rounds_text = {
                f"{k[0]}-{'packed' if k[1] else 'split'}": [round(r["mpps"], 3) for r in v]
                for k, v in got.items()
            }
            print(f"{case:<10} per-round Mpps: {json.dumps(rounds_text)}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--kinds", default="dpdk,netstack,netstack-copy")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case and kind; best kept")
    ap.add_argument("--packed", action="store_true", help="packed vs split rings (see above)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --packed (medians)")
    ap.add_argument(
        "--compiled", action="store_true", help="compiled vs pure-Python ring loops (see above)"
    )
    ap.add_argument("--serve", choices=("sink", "copy", "reflect", "switch"))
    ap.add_argument("--sockdir", type=Path)
    args = ap.parse_args()
    if args.serve:
        sys.exit(asyncio.run(serve(args.serve, args.sockdir)))
    cases = [c for c in args.cases.split(",") if c]
    kinds = [k for k in args.kinds.split(",") if k]
    for c in cases:
        if c not in CASES:
            ap.error(f"unknown case {c}")
    if args.compiled:
        todo = [c for c in cases if c in ("loop-64", "switch-64")]
        asyncio.run(bench_compiled(todo, args.seconds, max(3, args.rounds)))
        return
    if args.packed:
        packed_cases = [c for c in cases if c in ("loop-64", "g2b-64")]
        asyncio.run(bench_packed(packed_cases, args.seconds, max(3, args.rounds)))
        return
    asyncio.run(bench(cases, kinds, args.seconds, max(1, args.repeat)))


if __name__ == "__main__":
    main()
