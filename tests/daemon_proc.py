"""Test support: run a real ``netstackd`` process with a QMP socket, and stop it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class Daemon:
    def __init__(self, proc: subprocess.Popen[bytes], qmp: Path, log: Path) -> None:
        self.proc = proc
        self.qmp = qmp
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@contextmanager
def running_daemon(
    tmp: Path, args: Sequence[str] = (), *, qmp: bool = True, timeout: float = 15
) -> Iterator[Daemon]:
    """Start ``python -m netstack ARGS [-qmp unix:TMP/qmp.sock,server=on,wait=off]``."""
    sock = tmp / "qmp.sock"
    log = tmp / "daemon.log"
    argv = [sys.executable, "-m", "netstack", *args]
    if qmp:
        argv += ["-qmp", f"unix:{sock},server=on,wait=off"]
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp))
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    daemon = Daemon(proc, sock, log)
    try:
        deadline = time.monotonic() + timeout
        while qmp and not sock.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"netstackd exited early:\n{daemon.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"netstackd did not create its QMP socket:\n{daemon.output()}")
            time.sleep(0.05)
        yield daemon
    finally:
        daemon.stop()
