"""Run DPDK's ``dpdk-testpmd`` as a vhost-user peer for tests and benches, and parse its
statistics.

Facts (checked on Debian 12): Debian's ``dpdk-dev`` ships testpmd and the
vhost/virtio-user PMDs; it runs without hugepages with ``--no-huge -m 256 --no-shconf
--no-telemetry --no-pci`` and a unique ``--file-prefix``; it needs two lcores, so on a
small machine both are pinned to one core (``--lcores 0@N,1@N`` under ``taskset -c N``);
a non-interactive run needs ``--stats-period 1`` and ends on SIGINT, printing per-port
"Forward statistics" (exact packet counts at stop). Byte counts only appear in the
periodic "NIC statistics" blocks, so :meth:`Testpmd.stop` returns the last of those too
(wait a little over a second after traffic stops for them to be complete).

Vdev strings: ``net_vhost0,iface=SOCK,queues=1`` (testpmd is the vhost *back end*; add
``client=1`` to make it connect to a listening front end), ``net_virtio_user0,path=SOCK,
queues=1,queue_size=256`` (testpmd is the *front end*; add ``server=1`` to listen).

The process is started with its own process group and always killed by PID
(SIGINT, then SIGKILL after a timeout); its output goes to a file, never a pipe that
could fill up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TESTPMD = "dpdk-testpmd"


def available() -> bool:
    return shutil.which(TESTPMD) is not None


def pick_core() -> int:
    """The highest CPU we may run on (the front end under test takes the others)."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[-1]


@dataclass
class PortStats:
    rx_packets: int = 0
    tx_packets: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0


_FWD = re.compile(
    r"Forward statistics for port (\d+)\s+-+\s+"
    r"RX-packets:\s*(\d+)\s+RX-dropped:\s*(\d+)\s+RX-total:\s*\d+\s+"
    r"TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)"
)
_NIC = re.compile(
    r"NIC statistics for port (\d+)\s+#+\s+"
    r"RX-packets:\s*(\d+)\s+RX-missed:\s*\d+\s+RX-bytes:\s*(\d+).*?"
    r"TX-packets:\s*(\d+)\s+TX-errors:\s*\d+\s+TX-bytes:\s*(\d+)",
    re.S,
)


_PPS = re.compile(r"NIC statistics for port (\d+).*?Rx-pps:\s*(\d+).*?Tx-pps:\s*(\d+)", re.S)


def pps_samples(text: str) -> dict[int, list[tuple[int, int]]]:
    """Per port, the (Rx-pps, Tx-pps) of every periodic statistics block, in order."""
    out: dict[int, list[tuple[int, int]]] = {}
    for block in text.split("Port statistics")[1:]:
        for m in _PPS.finditer(block):
            out.setdefault(int(m.group(1)), []).append((int(m.group(2)), int(m.group(3))))
    return out


def parse_stats(text: str) -> dict[int, PortStats]:
    """Per-port stats: packets from the final forward statistics (if present), bytes
    (and packets, when no final block exists) from the last NIC statistics block."""
    out: dict[int, PortStats] = {}
    for m in _NIC.finditer(text):
        port = int(m.group(1))
        out[port] = PortStats(
            rx_packets=int(m.group(2)),
            tx_packets=int(m.group(4)),
            rx_bytes=int(m.group(3)),
            tx_bytes=int(m.group(5)),
        )
    for m in _FWD.finditer(text):
        port = int(m.group(1))
        st = out.setdefault(port, PortStats())
        st.rx_packets = int(m.group(2))
        st.rx_dropped = int(m.group(3))
        st.tx_packets = int(m.group(4))
        st.tx_dropped = int(m.group(5))
    return out


class Testpmd:
    """One testpmd process (async context manager: started on enter, stopped on exit)."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        vdevs: Sequence[str],
        forward_mode: str = "io",
        *,
        core: int | None = None,
        txpkts: int | None = None,
        extra: Sequence[str] = (),
        mbufs: int = 16384,
        prefix: str | None = None,
        wait_for: Sequence[str] = (),
        workdir: str | None = None,
    ) -> None:
        if not available():
            raise FileNotFoundError(f"{TESTPMD} not found (apt-get install dpdk-dev)")
        self.core = pick_core() if core is None else core
        self.prefix = prefix or f"vhu{os.getpid()}x{id(self) & 0xFFFFFF:x}"
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="testpmd-"))
        self.log_path = self.dir / f"{self.prefix}.log"
        self.wait_for = list(wait_for)
        eal = [
            "--no-huge",
            "-m",
            "256",
            "--no-shconf",
            "--no-telemetry",
            "--no-pci",
            "--file-prefix",
            self.prefix,
            "--lcores",
            f"0@{self.core},1@{self.core}",
            "--log-level",
            "lib.eal:error",
        ]
        for v in vdevs:
            eal += ["--vdev", v]
        app = [
            f"--total-num-mbufs={mbufs}",
            f"--forward-mode={forward_mode}",
            "--stats-period",
            "1",
        ]
        if txpkts is not None:
            app.append(f"--txpkts={txpkts}")
        self.argv = [
            "taskset",
            "-c",
            str(self.core),
            TESTPMD,
            *eal,
            "--",
            *app,
            *extra,
        ]
        self.proc: asyncio.subprocess.Process | None = None
        self.output = ""

    async def start(self, timeout: float = 20.0) -> None:
        log = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            text = self.read_log()
            ready = "Port statistics" in text or "start packet forwarding" in text
            if ready and all(os.path.exists(p) for p in self.wait_for):
                return
            if self.proc.returncode is not None:
                raise RuntimeError(f"testpmd exited early:\n{text[-3000:]}")
            if loop.time() > deadline:
                await self.kill()
                raise TimeoutError(f"testpmd did not come up:\n{text[-3000:]}")
            await asyncio.sleep(0.05)

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def stats(self) -> dict[int, PortStats]:
        """The latest periodic NIC statistics (while running)."""
        return parse_stats(self.read_log())

    async def wait_stats(
        self,
        port: int,
        rx_packets: int | None = None,
        tx_packets: int | None = None,
        timeout: float = 10.0,
    ) -> PortStats | None:
        """Wait for a periodic NIC statistics block of ``port`` showing these counts (the
        block holds the byte counts; its printer shares a core with the forwarding lcore,
        so it can lag). Returns that block, or None on timeout."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            st = self.stats().get(port)
            if (
                st is not None
                and (rx_packets is None or st.rx_packets == rx_packets)
                and (tx_packets is None or st.tx_packets == tx_packets)
            ):
                return st
            if loop.time() > end or not self.alive():
                return None
            await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 15.0) -> dict[int, PortStats]:
        """SIGINT, wait for the final statistics, parse them (SIGKILL after timeout)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                await self.kill()
        self.output = self.read_log()
        return parse_stats(self.output)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)

    def cleanup(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def __aenter__(self) -> Testpmd:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        self.cleanup()
