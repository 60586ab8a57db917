"""The bridge helper protocol: a privileged program creates the tap and hands its fd over.

Follows QEMU's ``net_bridge_run_helper`` and ``recv_fd`` (``net/tap.c``)
and ``qemu-bridge-helper.c``. The daemon makes a ``socketpair(AF_UNIX, SOCK_STREAM)``,
starts the helper with the child end as fd N and every other fd above 2 closed:

* a helper value containing a space or a tab is a shell command:
  ``/bin/sh -c "HELPER --use-vnet --fd=N [--br=BR]"`` (``--br=`` only if the command
  does not already contain one);
* anything else is executed directly: ``HELPER --use-vnet --fd=N --br=BR``.

The helper sends one byte carrying the tap fd (``SCM_RIGHTS``) and exits. Outcomes, in
QEMU's texts: no fd and a failed helper -> ``bridge helper failed``; an fd but a failed
helper -> ``bridge helper failed`` (the fd is closed); a receive error -> ``failed to recv
file descriptor: ERR``. Deviation: a helper that exits 0 without sending an fd fails with
``failed to recv file descriptor`` (QEMU would go on using fd 0). The daemon waits for the
fd and the exit without blocking its loop; cancelling the wait kills the helper.

:func:`main` is a helper of our own speaking the same protocol (``python -m
drivers.tap.helper --use-vnet --fd=N --br=BR``): it creates ``tap%d`` (with
``IFF_VNET_HDR`` when asked and offered) and attaches it to the bridge with
:func:`drivers.tap.netlink.attach_to_bridge`, all through pyroute2. It has no ACL: it is
meant for tests and for setups that grant it CAP_NET_ADMIN on purpose, where QEMU's
``qemu-bridge-helper`` (with ``/etc/qemu/bridge.conf``) is the production choice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys

from drivers.tap import tun
from drivers.tap.scripts import script_argv
from netstack.errors import GenericError

#: ``CONFIG_QEMU_HELPERDIR "/qemu-bridge-helper"`` of Debian's QEMU.
DEFAULT_HELPER = "/usr/lib/qemu/qemu-bridge-helper"
DEFAULT_BRIDGE = "br0"


def helper_argv(helper: str, bridge: str, fd: int) -> list[str]:
    """The helper's command line, as QEMU builds it."""
    if " " in helper or "\t" in helper:
        br = "" if "--br=" in helper else f"--br={bridge}"
        return ["/bin/sh", "-c", f"{helper} --use-vnet --fd={fd} {br}"]
    return [helper, "--use-vnet", f"--fd={fd}", f"--br={bridge}"]


async def _recv_fd(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> int | None:
    """The fd carried by the first message, None at EOF (or a message without one)."""
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(sock, 1, 4)
        except (BlockingIOError, InterruptedError):
            ready = loop.create_future()
            loop.add_reader(sock.fileno(), ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
            continue
        for extra in fds[1:]:
            os.close(extra)
        if not data and not fds:
            return None
        return fds[0] if fds else None


async def run_helper(helper: str, bridge: str, nsfd: int | None = None) -> int:
    """Run the bridge helper and return the tap fd it sent (ours to close)."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fd: int | None = None
    try:
        ours.setblocking(False)
        child_fd = theirs.fileno()
        argv = helper_argv(helper, bridge, child_fd)
        if nsfd is not None:
            argv = script_argv(argv[0], argv[1:], nsfd)
        pass_fds = (child_fd,) if nsfd is None else (child_fd, nsfd)
        try:
            proc = await asyncio.create_subprocess_exec(*argv, pass_fds=pass_fds, close_fds=True)
        except OSError:
            proc = None  # QEMU's child _exit(1)s: no fd, a failed helper
        theirs.close()
        try:
            if proc is not None:
                try:
                    fd = await _recv_fd(loop, ours)
                except OSError as exc:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                    raise GenericError(f"failed to recv file descriptor: {exc.strerror}") from None
                code = await proc.wait()
            else:
                code = 1
        except asyncio.CancelledError:
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            raise
        if code != 0:
            raise GenericError("bridge helper failed")
        if fd is None:
            raise GenericError("failed to recv file descriptor")
        result, fd = fd, None
        return result
    finally:
        if fd is not None:
            os.close(fd)
        ours.close()
        theirs.close()


# -- our own helper ----------------------------------------------------------------------------


async def _create_and_attach(bridge: str, use_vnet: bool) -> int:
    from drivers.tap.netlink import attach_to_bridge, rtnl

    fd = os.open(tun.PATH_NET_TUN, os.O_RDWR | os.O_CLOEXEC)
    try:
        ifname, _vnet = tun.configure(
            fd, "", vnet_hdr=use_vnet, vnet_required=False, multiqueue=False
        )
        async with rtnl() as ipr:
            await attach_to_bridge(ipr, ifname, bridge)
    except BaseException:
        os.close(fd)
        raise
    return fd


def main(argv: list[str] | None = None) -> int:
    """``--use-vnet --fd=N --br=BR``: create a tap on BR and send its fd over fd N."""
    parser = argparse.ArgumentParser(prog="netstack-bridge-helper", add_help=True)
    parser.add_argument("--use-vnet", action="store_true")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--br", required=True)
    args = parser.parse_args(argv)
    try:
        fd = asyncio.run(_create_and_attach(args.br, args.use_vnet))
    except (GenericError, OSError) as exc:
        print(f"netstack-bridge-helper: {exc}", file=sys.stderr)
        return 1
    try:
        with socket.socket(fileno=args.fd) as sock:
            socket.send_fds(sock, [b"\0"], [fd])
    except OSError as exc:
        print(f"failed to write fd to unix socket: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
