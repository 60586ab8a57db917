"""Host prerequisites for guests: locating QEMU, and installing what is missing through
``tools/setup-deps.sh`` (the one place that knows the suite's Debian packages).

Nothing here runs at import time; :func:`ensure_qemu` is the only function that may install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

QEMU_ENV = "NETSTACK_QEMU"
QEMU_BINARY = "qemu-system-x86_64"
SETUP_SCRIPT = Path(__file__).resolve().parent.parent / "setup-deps.sh"


class HostUnavailable(RuntimeError):
    """A host prerequisite is missing and could not be installed."""


def find_qemu() -> str | None:
    """``$NETSTACK_QEMU`` or ``qemu-system-x86_64`` from ``PATH``, if present."""
    override = os.environ.get(QEMU_ENV)
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which(QEMU_BINARY)


def ensure_qemu(install: bool = True, timeout: float = 1800.0) -> str:
    """The QEMU binary, running ``tools/setup-deps.sh`` first if it is missing and ``install``
    allows. Raises :class:`HostUnavailable` with the reason when there is still none."""
    found = find_qemu()
    if found is not None or not install:
        if found is None:
            raise HostUnavailable(f"{QEMU_BINARY} not found and installing was not allowed")
        return found
    if not SETUP_SCRIPT.exists():
        raise HostUnavailable(f"{QEMU_BINARY} not found and {SETUP_SCRIPT} is missing")
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        raise HostUnavailable(f"{QEMU_BINARY} not found; installing needs root or sudo")
    if shutil.which("apt-get") is None:
        raise HostUnavailable(f"{QEMU_BINARY} not found and there is no apt-get to install it")
    try:
        done = subprocess.run(
            ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostUnavailable(f"{SETUP_SCRIPT} failed: {exc}") from exc
    found = find_qemu()
    if found is None:
        tail = (done.stdout + done.stderr)[-2000:]
        raise HostUnavailable(
            f"{QEMU_BINARY} still missing after {SETUP_SCRIPT} (exit {done.returncode}):\n{tail}"
        )
    return found
