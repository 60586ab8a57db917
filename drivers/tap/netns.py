"""Opening files and sockets inside another network namespace, without moving the daemon.

Beyond QEMU: ``x-netns=NAME|PATH`` on ``tap`` and ``bridge`` puts the tap into another
network namespace, the way slirp4netns and pasta serve one. ``NAME`` is looked up where
``ip netns`` keeps them (``/var/run/netns/NAME``); anything with a ``/`` is a path, e.g.
``/proc/PID/ns/net``.

The kernel binds a tun file to the namespace of the thread that *opened* it, and a socket
to the namespace of the thread that created it; later ioctls and netlink requests on them
act in that namespace wherever they are issued from. :func:`run_in_netns` therefore runs a
short function (open ``/dev/net/tun``, create a netlink socket) in a fresh thread that
``setns``-es into the target first (pyroute2's ``netns.setns``), and the thread ends right
after, so the daemon's own threads never leave their namespace, even if switching back
failed. Nothing else (no fork, no ``ip netns exec``) is involved. Child processes that must
run in the namespace (scripts, the bridge helper) are started through
:data:`NETNS_TRAMPOLINE`: the interpreter ``setns``-es and ``exec``-s the real program.

The namespace fd (:func:`open_netns`) stays open as long as the netdev lives; the tun
file itself also pins the namespace, as it does for any tap user.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from netstack.errors import GenericError

T = TypeVar("T")

NETNS_RUN_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = (0xB7 << 8) | 3

#: ``python -c`` program: setns(argv[1]) then exec argv[2:] (the fd is closed first).
NETNS_TRAMPOLINE = (
    "import ctypes,os,sys\n"
    "fd=int(sys.argv[1])\n"
    "libc=ctypes.CDLL(None,use_errno=True)\n"
    f"ok=libc.setns(fd,{CLONE_NEWNET})==0\n"
    "os.close(fd)\n"
    "if not ok:\n"
    "    sys.stderr.write('setns: '+os.strerror(ctypes.get_errno())+'\\n')\n"
    "    os._exit(1)\n"
    "try:\n"
    "    os.execv(sys.argv[2],sys.argv[2:])\n"
    "except OSError:\n"
    "    os._exit(1)\n"
)


def netns_path(spec: str) -> str:
    """``x-netns`` value -> file: a bare name lives in :data:`NETNS_RUN_DIR`."""
    if "/" in spec:
        return spec
    return f"{NETNS_RUN_DIR}/{spec}"


def open_netns(spec: str) -> int:
    """Open the namespace ``spec`` names (O_CLOEXEC); checks that it is a network one."""
    if not spec or spec in (".", ".."):
        raise GenericError(f"x-netns: invalid network namespace name '{spec}'")
    path = netns_path(spec)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise GenericError(
            f"x-netns: cannot open network namespace '{spec}': {exc.strerror}"
        ) from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = -1
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise GenericError(f"x-netns: '{spec}' is not a network namespace")
    return fd


def _setns(fd: int) -> None:
    from pyroute2 import netns as pr_netns

    pr_netns.setns(fd, flags=0)


def call_in_netns(nsfd: int, fn: Callable[[], T]) -> T:
    """Run ``fn`` with the *calling thread* in namespace ``nsfd``, then switch back.

    Only for threads that end right after (see :func:`run_in_netns`).
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(nsfd)
        except OSError as exc:
            raise GenericError(
                f"x-netns: cannot enter the network namespace: {os.strerror(exc.errno or 0)}"
            ) from None
        try:
            return fn()
        finally:
            # A failure to switch back strands only this thread, which ends next.
            with contextlib.suppress(OSError):
                _setns(own)
    finally:
        os.close(own)


async def run_in_netns(
    nsfd: int | None,
    fn: Callable[[], T],
    discard: Callable[[T], None] | None = None,
) -> T:
    """``fn()`` inside namespace ``nsfd`` (or here when None), on a thread of its own.

    If the caller is cancelled while ``fn`` runs, ``discard`` receives its result (close
    what it opened) once it is there.
    """
    if nsfd is None:
        return fn()
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: object) -> None:
        if fut.cancelled():
            if ok and discard is not None:
                discard(value)  # type: ignore[arg-type]
            return
        if ok:
            fut.set_result(value)  # type: ignore[arg-type]
        else:
            assert isinstance(value, BaseException)
            fut.set_exception(value)

    def worker() -> None:
        try:
            result = call_in_netns(nsfd, fn)
        except BaseException as exc:  # handed to the loop; the thread ends here
            loop.call_soon_threadsafe(deliver, False, exc)
        else:
            loop.call_soon_threadsafe(deliver, True, result)

    threading.Thread(target=worker, name="netstack-netns", daemon=True).start()
    return await fut
