"""Creating a tap netdev from a :class:`~drivers.tap.options.TapPlan`: fds in, clients out.

Follows ``net_init_tap``, ``net_tap_init`` and ``net_init_tap_one`` (``net/tap.c``) in
QEMU's order. Daemon-opened taps: for each queue, open and configure the tun file
(:func:`drivers.tap.tun.configure`), run the up-script after queue 0 (awaited: the
command completes after it), then set up the fd (:func:`setup_fd`). ``fd=``/``fds=``:
the fd (a number or a name the control plane holds) is made non-blocking ("NAME: Can't
use file descriptor N: ERR") and its vnet header probed; every fd of ``fds=`` must agree
("vnet_hdr not consistent across given tap fds"). ``helper=``: the helper's fd ("Failed to
set FD nonblocking"). The netdev owns every fd it was given: on failure all of them are
closed, every client made so far is cleaned up, and nothing is left behind (QEMU keeps
the queues it made before a failing one).

:func:`setup_fd` is ``net_tap_fd_init`` plus ``tap_set_sndbuf``: with vnet headers the
length is set to 12 (the core's format; 10 where the kernel refuses 12), the kernel's
offload support is probed and the offloads are cleared (the client turns them on when its
peer can take them), then ``TUNSETSNDBUF``.

The macvtap case of QEMU 8.2+ is kept: when ``ifname`` names an existing interface with a
``/dev/tap<ifindex>`` character device (whose ``TUNGETIFF`` name matches: the nodes are
global, ifindexes per namespace), that device is opened instead of ``/dev/net/tun``.
Not exercised by the tests: the kernel of the test machines has no macvtap.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.tap import scripts, tun
from drivers.tap.client import TapClient, make_client
from drivers.tap.helper import run_helper
from drivers.tap.netns import open_netns, run_in_netns
from drivers.tap.options import TapPlan
from netstack.errors import GenericError
from netstack.net.sockaddr import fd_param, host_fd_lookup

if TYPE_CHECKING:
    from netstack.driver import DriverHost


@dataclass
class FdSetup:
    """What :func:`setup_fd` found out about one fd."""

    vnet_hdr_len: int
    offload_caps: int
    ifname: str


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def open_tun_files(ifname: str, count: int) -> list[int]:
    """Open ``count`` tun files (macvtap's ``/dev/tapN`` when ``ifname`` is one); runs in
    the target namespace. Raises QEMU's "could not open /dev/net/tun: ERR"."""
    fds: list[int] = []
    try:
        if ifname:
            fds = _open_macvtap(tun.clip_ifname(ifname), count)
        while len(fds) < count:
            try:
                fds.append(os.open(tun.PATH_NET_TUN, os.O_RDWR | os.O_CLOEXEC))
            except OSError as exc:
                raise GenericError(f"could not open {tun.PATH_NET_TUN}: {exc.strerror}") from None
    except BaseException:
        _close_all(fds)
        raise
    return fds


def _open_macvtap(ifname: str, count: int) -> list[int]:
    """``/dev/tap<ifindex>`` opened ``count`` times if ``ifname`` is a macvtap here.

    ``/dev/tapN`` nodes are global while ifindexes are per namespace, so the node is only
    taken when ``TUNGETIFF`` on it names ``ifname``.
    """
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        return []
    path = f"/dev/tap{index}"
    fds: list[int] = []
    try:
        for _ in range(count):
            fds.append(os.open(path, os.O_RDWR | os.O_CLOEXEC))
        if tun.get_iff(fds[0])[0] == ifname:
            return fds
    except OSError:
        pass
    _close_all(fds)
    return []


def setup_fd(fd: int, vnet: bool, sndbuf: int | None, *, probe: bool = True) -> FdSetup:
    """``net_tap_fd_init`` + ``tap_set_sndbuf`` on one configured tap fd."""
    hdr_len = 0
    caps = 0
    if vnet:
        if tun.set_vnet_hdr_len(fd, tun.VNET_HDR_LEN_V1):
            hdr_len = tun.VNET_HDR_LEN_V1
        else:
            tun.set_vnet_hdr_len(fd, tun.VNET_HDR_LEN_LEGACY)
            hdr_len = tun.VNET_HDR_LEN_LEGACY
        if probe:
            caps = tun.probe_offloads(fd)
    tun.set_offload(fd, 0)
    tun.set_sndbuf(fd, sndbuf)
    try:
        ifname = tun.get_iff(fd)[0]
    except OSError:
        ifname = ""
    return FdSetup(hdr_len, caps, ifname)


class _Building:
    """Clients and fds of a netdev under construction; undone on failure."""

    def __init__(self, host: DriverHost, name: str) -> None:
        self.host = host
        self.name = name
        self.loose_fds: list[int] = []
        self.clients: list[TapClient] = []
        self.nsfd: int | None = None

    def adopt(
        self,
        fd: int,
        setup: FdSetup,
        info: str,
        *,
        model: str = "tap",
        caps: int | None = None,
    ) -> TapClient:
        primary = self.clients[0] if self.clients else None
        client = make_client(
            self.name,
            fd,
            self.host.loop,
            self.host.log,
            vnet_hdr_len=setup.vnet_hdr_len,
            model=model,
            queue_index=len(self.clients),
            offload_caps=setup.offload_caps if caps is None else caps,
            ifname=setup.ifname,
            primary=primary,
        )
        if fd in self.loose_fds:
            self.loose_fds.remove(fd)
        client.info_str = info
        self.clients.append(client)
        return client

    def fail(self) -> None:
        _close_all(self.loose_fds)
        self.loose_fds.clear()
        for client in self.clients:
            client.on_close.clear()
            client.cleanup()
        self.clients.clear()
        if self.nsfd is not None:
            os.close(self.nsfd)
            self.nsfd = None

    def finish(self) -> list[TapClient]:
        nsfd = self.nsfd
        if nsfd is not None and self.clients:
            self.clients[0].on_close.append(lambda _fd: os.close(nsfd))
            self.nsfd = None
        for client in self.clients:
            client.start()
        return list(self.clients)


async def create_tap(host: DriverHost, name: str, plan: TapPlan) -> list[TapClient]:
    """Open what ``plan`` says and return one started client per queue."""
    if plan.vhost_warning is not None:
        host.log.warning("tap %s: %s", name, plan.vhost_warning)
    build = _Building(host, name)
    try:
        if plan.mode == "open":
            await _open_taps(build, plan)
        elif plan.mode in ("fd", "fds"):
            _inherited(build, plan)
        else:
            await _from_helper(build, plan, model="bridge", info=f"helper={plan.helper}")
    except BaseException:
        build.fail()
        raise
    return build.finish()


async def _open_taps(build: _Building, plan: TapPlan) -> None:
    if plan.netns is not None:
        build.nsfd = open_netns(plan.netns)
    nsfd = build.nsfd
    files = await run_in_netns(
        nsfd, lambda: open_tun_files(plan.ifname, plan.queues), discard=_close_all
    )
    build.loose_fds.extend(files)
    ifname = plan.ifname
    caps: int | None = None
    log = build.host.log
    for index, fd in enumerate(files):
        ifname, vnet = tun.configure(
            fd,
            ifname,
            vnet_hdr=plan.vnet_hdr,
            vnet_required=plan.vnet_required,
            multiqueue=plan.queues > 1,
            log=log,
        )
        script = plan.script if index == 0 else "no"
        downscript = plan.downscript if index == 0 else "no"
        if scripts.enabled(script):
            await scripts.run_script(script, ifname, fd, nsfd)
        setup = setup_fd(fd, vnet, plan.sndbuf, probe=caps is None)
        caps = setup.offload_caps if caps is None else caps
        info = f"ifname={ifname},script={script},downscript={downscript}"
        if plan.netns is not None:
            info += f",x-netns={plan.netns}"
        client = build.adopt(fd, setup, info, caps=caps)
        if index == 0 and scripts.enabled(downscript):
            client.on_close.append(_downscript_hook(build, downscript, ifname, nsfd))


def _downscript_hook(
    build: _Building, downscript: str, ifname: str, nsfd: int | None
) -> Callable[[int], None]:
    loop, log = build.host.loop, build.host.log

    def run(fd: int) -> None:
        scripts.start_downscript(downscript, ifname, fd, nsfd, log, loop)

    return run


def _take_fd(build: _Building, text: str) -> int:
    fd = fd_param(text, host_fd_lookup(build.host))
    build.loose_fds.append(fd)
    try:
        os.set_blocking(fd, False)
    except OSError as exc:
        raise GenericError(
            f"{build.name}: Can't use file descriptor {fd}: {exc.strerror}"
        ) from None
    return fd


def _inherited(build: _Building, plan: TapPlan) -> None:
    first_vnet: bool | None = None
    for text in plan.fds:
        fd = _take_fd(build, text)
        vnet = tun.probe_vnet_hdr(fd)
        if first_vnet is None:
            first_vnet = vnet
        elif vnet != first_vnet:
            raise GenericError("vnet_hdr not consistent across given tap fds")
        setup = setup_fd(fd, vnet, plan.sndbuf, probe=not build.clients)
        caps = build.clients[0].offload_caps if build.clients else None
        build.adopt(fd, setup, f"fd={fd}", caps=caps)


async def _from_helper(build: _Building, plan: TapPlan, *, model: str, info: str) -> None:
    if plan.netns is not None:
        build.nsfd = open_netns(plan.netns)
    fd = await run_helper(plan.helper, plan.bridge, build.nsfd)
    build.loose_fds.append(fd)
    try:
        os.set_blocking(fd, False)
    except OSError as exc:
        raise GenericError(f"Failed to set FD nonblocking: {exc.strerror}") from None
    vnet = tun.probe_vnet_hdr(fd)
    setup = setup_fd(fd, vnet, plan.sndbuf)
    build.adopt(fd, setup, info, model=model)


async def create_bridge_port(
    host: DriverHost,
    name: str,
    plan: TapPlan,
    *,
    direct: bool,
) -> list[TapClient]:
    """The ``bridge`` netdev: a tap on ``plan.bridge``, made by the helper or directly."""
    build = _Building(host, name)
    try:
        if direct:
            await _direct_bridge_port(build, plan)
        else:
            await _from_helper(
                build, plan, model="bridge", info=f"helper={plan.helper},br={plan.bridge}"
            )
    except BaseException:
        build.fail()
        raise
    return build.finish()


async def _direct_bridge_port(build: _Building, plan: TapPlan) -> None:
    from drivers.tap.netlink import attach_to_bridge, rtnl

    if plan.netns is not None:
        build.nsfd = open_netns(plan.netns)
    (fd,) = await run_in_netns(build.nsfd, lambda: open_tun_files("", 1), discard=_close_all)
    build.loose_fds.append(fd)
    ifname, vnet = tun.configure(
        fd, "", vnet_hdr=True, vnet_required=False, multiqueue=False, log=build.host.log
    )
    async with rtnl(build.nsfd) as ipr:
        await attach_to_bridge(ipr, ifname, plan.bridge)
    setup = setup_fd(fd, vnet, plan.sndbuf)
    info = f"ifname={ifname},br={plan.bridge}"
    if plan.netns is not None:
        info += f",x-netns={plan.netns}"
    build.adopt(fd, setup, info, model="bridge")
