"""Test support: Debian's ``vde_switch`` and ``vde_plug`` (vde2, vdeplug4) as real peers.

* :class:`VdeSwitch` - a ``vde_switch -s DIR -M DIR/mgmt`` in a private directory; its
  console reads stdin, so stdin is a pipe the object keeps open (the switch exits at EOF).
  Stopped (or killed, to play a crash) by its PID; :meth:`VdeSwitch.restart` brings a new
  one up on the same directory.
* :class:`VdePlug` - ``vde_plug DIR``: libvdeplug's own plug, relaying the switch to its
  stdin/stdout in libvdestream framing (a 2-byte big-endian length, then the frame).

Used by ``tests/interop/test_vde_switch.py``, ``tests/conformance/case_vde.py`` and
``bench/bench_vde.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


def have_vde() -> str | None:
    """None when vde_switch and vde_plug are installed, else what is missing."""
    missing = [p for p in ("vde_switch", "vde_plug") if shutil.which(p) is None]
    return " and ".join(missing) + " not installed (Debian: vde2)" if missing else None


def _listening(path: str) -> bool:
    """Whether a unix socket listens at ``path`` (``/proc/net/unix``, ``__SO_ACCEPTCON``).

    Not by connecting: vde_switch 2.3.2 can lose track of a port's control connection
    when a short-lived connection (a probe) closes just before it (the port then stays
    active after its plug has gone).
    """
    with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                return True
    return False


class VdeSwitch:
    """A real ``vde_switch`` on ``directory`` (``-n ports``; ``hub`` makes it a hub)."""

    def __init__(self, directory: Path, *, ports: int = 32, hub: bool = False) -> None:
        self.directory = directory
        self.ports = ports
        self.hub = hub
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory.parent / f"{directory.name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> VdeSwitch:
        argv = ["vde_switch", "-s", str(self.directory), "-n", str(self.ports)]
        argv += ["-M", str(self.directory.parent / f"{self.directory.name}.mgmt")]
        if self.hub:
            argv.append("-x")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=out)
        ctl = str(self.directory / "ctl")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vde_switch exited: {self.log.read_text(errors='replace')}")
            if _listening(ctl):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("vde_switch did not create its control socket")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdin is not None:
            proc.stdin.close()

    def restart(self) -> None:
        self.stop(signal.SIGKILL)
        self.start()

    def __enter__(self) -> VdeSwitch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class VdePlug:
    """``vde_plug DIR`` with its stdio as the far end of a switch port."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.argv = ["vde_plug", *extra, str(directory)]
        self.proc: asyncio.subprocess.Process | None = None
        self._buf = b""

    async def start(self) -> VdePlug:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        return self

    async def send(self, frame: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(len(frame).to_bytes(2, "big") + frame)
        await self.proc.stdin.drain()

    async def recv(self, timeout: float = 2.0) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        try:
            async with asyncio.timeout(timeout):
                size = int.from_bytes(await out.readexactly(2), "big")
                return await out.readexactly(size)
        except (TimeoutError, asyncio.IncompleteReadError):
            return None

    async def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def plug_ports(directory: Path) -> list[str]:
    """The switch's data sockets (``PPP.FD``) present in ``directory``."""
    return sorted(n for n in os.listdir(directory) if n[:1].isdigit())
