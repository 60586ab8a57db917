"""DPDK testpmd's virtio-user (DPDK 22.11, Debian ``dpdk-dev``) as the front end of
netstack's vhost-user back end, in ``txonly``, ``rxonly`` and ``io`` modes.

testpmd plays the VM: it connects to a daemon server socket, negotiates (VERSION_1,
MRG_RXBUF, IN_ORDER, INDIRECT_DESC, protocol MQ/REPLY_ACK/STATUS; no EVENT_IDX; it sends
SET_VRING_CALL before SET_FEATURES and SET_VRING_ENABLE without protocol features) and
runs its forwarding mode until SIGINT, then prints per-port forward statistics, which the
test compares with the daemon's own counters. Runs without hugepages (``--no-huge``).
Every test runs with the compiled split-ring loops and with the pure-Python ones.

:class:`DpdkTestpmd` is also the traffic source and sink of ``bench/bench_vhost_user.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

import drivers.vhost_user as vu
from netstack.daemon import Netstack
from netstack.net.client import NetClient
from netstack.qapi import parse_chardev_cli, parse_netdev_cli
from tests.kit.polling import until
from tests.kit.vhost_user import RING_IMPLS, use_ring_impl
from tests.support import Recorder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TESTPMD = "dpdk-testpmd"
_STATS = re.compile(
    r"Forward statistics for port (\d+)\s+-+\s+"
    r"RX-packets:\s*(\d+)\s+RX-dropped:\s*(\d+)\s+RX-total:\s*(\d+)\s+"
    r"TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)\s+TX-total:\s*(\d+)"
)


class DpdkTestpmd:
    """One ``dpdk-testpmd`` process (``--no-huge``), stopped with SIGINT by PID."""

    _count = 0

    def __init__(
        self,
        vdevs: Sequence[str],
        mode: str,
        *,
        txpkts: int = 64,
        burst: int = 32,
        tx_first: int | None = None,
        cpu: int | None = None,
        workdir: Path,
        extra: Sequence[str] = (),
    ) -> None:
        DpdkTestpmd._count += 1
        self.name = f"nstpmd{os.getpid()}x{DpdkTestpmd._count}"
        self.workdir = workdir
        if cpu is None:
            cpu = 1 if (os.cpu_count() or 1) > 1 else 0
        argv = [
            TESTPMD, "--no-huge", "-m", "256", "--no-shconf", "--no-telemetry", "--no-pci",
            "--file-prefix", self.name, "--lcores", f"0@{cpu},1@{cpu}",
            "--log-level", "lib.eal:error",
        ]  # fmt: skip
        for vdev in vdevs:
            argv += ["--vdev", vdev]
        argv += [
            "--", "--total-num-mbufs=16384", f"--forward-mode={mode}", f"--txpkts={txpkts}",
            f"--burst={burst}", "--stats-period", "1", *extra,
        ]  # fmt: skip
        if tx_first is not None:
            cmds = workdir / f"{self.name}.cmds"
            cmds.write_text(f"start tx_first {tx_first}\n")
            argv.append(f"--cmdline-file={cmds}")
        self.argv = argv
        self.proc: asyncio.subprocess.Process | None = None
        self.output = ""
        self._reader: asyncio.Task[None] | None = None
        self._grew = asyncio.Event()

    @staticmethod
    def available() -> bool:
        return shutil.which(TESTPMD) is not None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self.output += chunk.decode(errors="replace")
            self._grew.set()
        self._grew.set()

    async def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Until ``text`` appears in the output (forwarding started: "Port statistics")."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while text not in self.output:
            if self.proc is None or self.proc.returncode is not None or loop.time() > end:
                raise AssertionError(f"testpmd never printed {text!r}:\n{self.output[-3000:]}")
            self._grew.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grew.wait(), 0.5)

    async def stop(self, timeout: float = 15.0) -> str:
        """SIGINT (testpmd prints its final statistics), then wait; SIGKILL if stuck."""
        proc = self.proc
        if proc is None:
            return self.output
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, 5)
        return self.output

    def forward_stats(self) -> dict[int, dict[str, int]]:
        """Per port: rx, rx_dropped, tx, tx_dropped (the final forward statistics)."""
        out: dict[int, dict[str, int]] = {}
        for m in _STATS.finditer(self.output):
            port, rx, rxd, _rxt, tx, txd, _txt = map(int, m.groups())
            out[port] = {"rx": rx, "rx_dropped": rxd, "tx": tx, "tx_dropped": txd}
        return out

    def rates(self) -> list[dict[str, int]]:
        """Per stats period and port: ``Rx-pps``/``Tx-pps`` lines in order."""
        rows = re.findall(r"Rx-pps:\s*(\d+).*?\n\s*Tx-pps:\s*(\d+)", self.output)
        return [{"rx_pps": int(r), "tx_pps": int(t)} for r, t in rows]


def virtio_user(path: Path, index: int = 0, queues: int = 1, size: int = 256) -> str:
    return f"net_virtio_user{index},path={path},queues={queues},queue_size={size}"


@pytest.fixture(autouse=True, params=RING_IMPLS)
def ring_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each exchange runs with the compiled split-ring loops and with the Python ones."""
    use_ring_impl(monkeypatch, request.param)
    return str(request.param)


@pytest.fixture
def ns(ns: Netstack) -> Netstack:
    if not DpdkTestpmd.available():
        pytest.skip("dpdk-testpmd not installed (Debian dpdk-dev)")
    return ns


async def port(ns: Netstack, name: str, tmp: Path, hub: int | None = 0) -> tuple[Path, NetClient]:
    path = tmp / f"{name}.sock"
    await ns.chardev_add(
        parse_chardev_cli(f"socket,id=c{name},path={path},server=on,wait=off"), from_cli=True
    )
    (nc,) = await ns.netdev_add(parse_netdev_cli(f"vhost-user,id={name},chardev=c{name}"))
    if hub is not None:
        await ns.netdev_add(parse_netdev_cli(f"hubport,id=h{name},hubid={hub},netdev={name}"))
    return path, nc


async def test_txonly_frames_reach_the_hub(ns: Netstack, tmp_path: Path) -> None:
    path, nc = await port(ns, "t0", tmp_path)
    rec = Recorder("rec", capacity=2000)
    ns.hub(0).add_port("hrec").connect(rec)
    pmd = DpdkTestpmd([virtio_user(path)], "txonly", workdir=tmp_path)
    await pmd.start()
    try:
        await until(lambda: len(rec.got) >= 2000, timeout=20)
    finally:
        await pmd.stop()
    stats = pmd.forward_stats()
    assert stats[0]["tx"] > 0, pmd.output[-3000:]
    assert nc.stats.tx_frames >= stats[0]["tx"] - 256  # the rest queued/dropped at the recorder
    frame0 = rec.got[0]
    assert len(frame0) == 64 and frame0[12:14] == b"\x08\x00"  # testpmd's IPv4/UDP packet
    assert isinstance(nc, vu.VhostUserClient)
    c = nc.counters()
    assert c["rings-broken"] == 0 and c["requests-refused"] == 0 and c["protocol-errors"] == 0
    assert c["connections"] == 1


async def test_txonly_into_a_sink_copies_nothing(ns: Netstack, tmp_path: Path) -> None:
    path, nc = await port(ns, "s0", tmp_path, hub=None)
    pmd = DpdkTestpmd([virtio_user(path)], "txonly", workdir=tmp_path)
    await pmd.start()
    try:
        await until(lambda: nc.stats.tx_dropped > 50000, timeout=20)
    finally:
        await pmd.stop()
    assert nc.stats.tx_frames == 0 and nc.stats.tx_dropped >= pmd.forward_stats()[0]["tx"] - 256


async def test_rxonly_receives_every_frame_sent(ns: Netstack, tmp_path: Path) -> None:
    """A source peered directly with the port, paced by the core's completion callback:
    every frame reaches testpmd (through a hub, a source faster than the guest overruns the
    port's bounded queue, as in QEMU)."""
    path, nc = await port(ns, "r0", tmp_path, hub=None)
    src = Recorder("src")
    src.connect(nc)
    pmd = DpdkTestpmd([virtio_user(path)], "rxonly", workdir=tmp_path)
    await pmd.start()
    try:
        await pmd.wait_for("Port statistics")  # forwarding started (its rx queues flushed)
        frame = b"\x02" * 6 + b"\x02\x00\x00\x00\x00\x07" + b"\x88\xb5" + bytes(50)
        total = 20000
        loop = asyncio.get_running_loop()
        for _ in range(total // 100):
            done: asyncio.Future[None] = loop.create_future()
            batch = [frame] * 100
            if src.send(batch, sent_cb=lambda _n, f=done: f.done() or f.set_result(None)) < 100:
                await done
            else:
                await asyncio.sleep(0)
        await until(lambda: nc.stats.rx_frames >= total, timeout=20)
        await asyncio.sleep(1.5)  # one stats period
    finally:
        await pmd.stop()
    assert nc.incoming.dropped == 0
    assert pmd.forward_stats()[0]["rx"] == nc.stats.rx_frames == total, pmd.output[-2000:]


async def test_io_loop_through_the_hub(ns: Netstack, tmp_path: Path) -> None:
    pa, a = await port(ns, "pa", tmp_path)
    pb, b = await port(ns, "pb", tmp_path)
    pmd = DpdkTestpmd([virtio_user(pa, 0), virtio_user(pb, 1)], "io", tx_first=4, workdir=tmp_path)
    await pmd.start()
    try:
        await until(lambda: a.stats.tx_frames > 20000 and b.stats.tx_frames > 20000, timeout=20)
    finally:
        await pmd.stop()
    stats = pmd.forward_stats()
    assert stats[0]["rx"] > 10000 and stats[1]["rx"] > 10000, pmd.output[-3000:]
    # what one port sent, the other received (modulo frames in flight at the end)
    assert abs(a.stats.tx_frames - b.stats.rx_frames) <= 512
    assert abs(b.stats.tx_frames - a.stats.rx_frames) <= 512
