"""Network namespaces for tests: unique names, ``lo`` up, deleted on exit; and the ``ip``
command tests shell out to (the daemon never does).

Every name made here is ``PREFIX`` + the pid + a counter, so parallel runs and developers
on one machine never collide, and a leftover is traceable to its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator

import pytest

_names = itertools.count()


def ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; its stdout (``RuntimeError`` with its stderr when it fails)."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def unique_name(prefix: str) -> str:
    """``prefix`` + pid + a counter: unique on this machine, short enough for an ifname."""
    return f"{prefix}{os.getpid() % 10000}x{next(_names)}"


@contextlib.contextmanager
def netns(prefix: str = "nst", *, ipv6: bool = True) -> Iterator[str]:
    """A fresh named network namespace (``lo`` up), deleted on exit."""
    name = unique_name(prefix)
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        if not ipv6:
            subprocess.run(
                [
                    "ip", "netns", "exec", name, "sysctl", "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                ],
                check=True, timeout=20,
            )  # fmt: skip
        yield name
    finally:
        ip("netns", "del", name, check=False)


def link_exists(ns: str | None, ifname: str) -> bool:
    """Whether ``ifname`` exists in namespace ``ns`` (``None``: this one)."""
    args = ["-n", ns] if ns else []
    done = subprocess.run(["ip", *args, "link", "show", ifname], capture_output=True, timeout=20)
    return done.returncode == 0


def require_root() -> None:
    """Skip unless root with ``/dev/net/tun`` (namespaces and taps need both)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun")


async def run_in(ns: str, *cmd: str, timeout: float = 60) -> tuple[int, str]:
    """Run ``cmd`` inside namespace ``ns`` without blocking the event loop (an in-process
    daemon keeps running); its exit status and combined output. Killed if it outlives
    ``timeout`` or the caller is cancelled."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, *cmd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")
