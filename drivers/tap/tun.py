"""The Linux TUN/TAP character device: ``/dev/net/tun`` (and macvtap's ``/dev/tapN``) ioctls.

Follows QEMU's ``net/tap-linux.c`` and ``include/uapi/linux/if_tun.h``:

* :func:`configure` is ``tap_open`` after the ``open``: ``TUNGETFEATURES`` (a failure is a
  warning and means "no features"), flags ``IFF_TAP | IFF_NO_PI`` plus ``IFF_ONE_QUEUE``
  when offered, ``IFF_VNET_HDR`` when wanted and offered (required with ``vnet_hdr=on``:
  "vnet_hdr=1 requested, but no kernel support for IFF_VNET_HDR available"),
  ``IFF_MULTI_QUEUE`` for multiqueue ("multiqueue required, but no kernel support for
  IFF_MULTI_QUEUE available"), then ``TUNSETIFF`` with the name (at most ``IFNAMSIZ - 1``
  bytes, cut as QEMU's ``pstrcpy`` does) or the kernel template ``tap%d``; errors "could
  not configure /dev/net/tun (NAME): ERR" / "could not configure /dev/net/tun: ERR"; the
  fd ends non-blocking;
* :func:`probe_vnet_hdr` (``TUNGETIFF``; "Unable to query TUNGETIFF on FD N: ERR"),
  :func:`set_sndbuf` (``TUNSETSNDBUF``, INT_MAX unless given; "TUNSETSNDBUF ioctl failed:
  ERR" only when given), :func:`set_vnet_hdr_len`, :func:`set_offload`,
  :func:`probe_offloads`, :func:`device_netns` (``TUNGETDEVNETNS``, Linux 5.2+).

Everything here is a thin, synchronous wrapper over ``fcntl.ioctl`` on an fd the caller
owns; nothing blocks. The device belongs to the network namespace the ``/dev/net/tun``
file was *opened* in (the kernel records it at ``open``), which is what lets
:mod:`drivers.tap.netns` open the file inside another namespace and configure it here.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct

from netstack.errors import GenericError

PATH_NET_TUN = "/dev/net/tun"
IFNAMSIZ = 16

IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_NO_PI = 0x1000
IFF_ONE_QUEUE = 0x2000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
#: Every offload a receiver of virtio-net headers can be handed (UFO is never asked for:
#: the kernel stopped producing it in 4.14).
TUN_F_ALL = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6

#: Sizes of ``virtio_net_hdr`` and of ``virtio_net_hdr_mrg_rxbuf`` / ``_v1``.
VNET_HDR_LEN_LEGACY = 10
VNET_HDR_LEN_V1 = 12

INT_MAX = (1 << 31) - 1


def _iow(nr: int) -> int:
    return (1 << 30) | (4 << 16) | (ord("T") << 8) | nr


def _ior(nr: int) -> int:
    return (2 << 30) | (4 << 16) | (ord("T") << 8) | nr


TUNSETIFF = _iow(202)
TUNGETFEATURES = _ior(207)
TUNSETOFFLOAD = _iow(208)
TUNGETIFF = _ior(210)
TUNSETSNDBUF = _iow(212)
TUNGETVNETHDRSZ = _ior(215)
TUNSETVNETHDRSZ = _iow(216)
TUNSETQUEUE = _iow(217)
TUNGETDEVNETNS = (ord("T") << 8) | 227

_IFREQ = struct.Struct("=16sH22x")
_INT = struct.Struct("=i")
_UINT = struct.Struct("=I")


def _strerror(exc: OSError) -> str:
    return exc.strerror or os.strerror(exc.errno or 0)


def ifreq(name: str, flags: int = 0) -> bytes:
    """A ``struct ifreq`` with ``ifr_name`` (cut to ``IFNAMSIZ - 1`` bytes) and flags."""
    return _IFREQ.pack(clip_ifname(name).encode(), flags)


def clip_ifname(name: str) -> str:
    """The name as the kernel will see it: ``pstrcpy(ifr_name, IFNAMSIZ, name)``."""
    raw = name.encode()[: IFNAMSIZ - 1]
    return raw.decode(errors="ignore")


def features(fd: int, log: logging.Logger | None = None) -> int:
    """``TUNGETFEATURES``: the IFF_* flags the kernel offers (0 with a warning on failure)."""
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, TUNGETFEATURES, buf, True)
    except OSError as exc:
        if log is not None:
            log.warning("TUNGETFEATURES failed: %s", _strerror(exc))
        return 0
    return int(_UINT.unpack(buf)[0])


def configure(
    fd: int,
    ifname: str,
    *,
    vnet_hdr: bool,
    vnet_required: bool,
    multiqueue: bool,
    log: logging.Logger | None = None,
) -> tuple[str, bool]:
    """QEMU's ``tap_open`` on an open tun file: returns (interface name, vnet header on).

    Raises :class:`GenericError` with QEMU's texts; the caller closes ``fd`` on error.
    """
    offered = features(fd, log)
    flags = IFF_TAP | IFF_NO_PI
    if offered & IFF_ONE_QUEUE:
        flags |= IFF_ONE_QUEUE
    vnet = False
    if vnet_hdr:
        vnet = bool(offered & IFF_VNET_HDR)
        if vnet:
            flags |= IFF_VNET_HDR
        elif vnet_required:
            raise GenericError(
                "vnet_hdr=1 requested, but no kernel support for IFF_VNET_HDR available"
            )
    if multiqueue:
        if not offered & IFF_MULTI_QUEUE:
            raise GenericError(
                "multiqueue required, but no kernel support for IFF_MULTI_QUEUE available"
            )
        flags |= IFF_MULTI_QUEUE
    name = clip_ifname(ifname) if ifname else "tap%d"
    req = bytearray(ifreq(name, flags))
    try:
        fcntl.ioctl(fd, TUNSETIFF, req, True)
    except OSError as exc:
        if ifname:
            raise GenericError(
                f"could not configure {PATH_NET_TUN} ({name}): {_strerror(exc)}"
            ) from None
        raise GenericError(f"could not configure {PATH_NET_TUN}: {_strerror(exc)}") from None
    os.set_blocking(fd, False)
    return _name_of(req), vnet


def _name_of(req: bytes | bytearray) -> str:
    return bytes(req[:IFNAMSIZ]).split(b"\0", 1)[0].decode(errors="replace")


def get_iff(fd: int) -> tuple[str, int]:
    """``TUNGETIFF``: (interface name, IFF_* flags); raises OSError."""
    req = bytearray(_IFREQ.size)
    fcntl.ioctl(fd, TUNGETIFF, req, True)
    return _name_of(req), int(_IFREQ.unpack(req)[1])


def probe_vnet_hdr(fd: int) -> bool:
    """Whether an inherited tap fd was set up with ``IFF_VNET_HDR`` (QEMU's texts)."""
    try:
        return bool(get_iff(fd)[1] & IFF_VNET_HDR)
    except OSError as exc:
        raise GenericError(f"Unable to query TUNGETIFF on FD {fd}: {_strerror(exc)}") from None


def set_sndbuf(fd: int, sndbuf: int | None) -> None:
    """``TUNSETSNDBUF``: INT_MAX (no limit) by default; an error only when ``sndbuf`` given."""
    value = INT_MAX if not sndbuf else min(sndbuf, INT_MAX)
    try:
        fcntl.ioctl(fd, TUNSETSNDBUF, _INT.pack(value))
    except OSError as exc:
        if sndbuf is not None:
            raise GenericError(f"TUNSETSNDBUF ioctl failed: {_strerror(exc)}") from None


def get_vnet_hdr_len(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, TUNGETVNETHDRSZ, buf, True)
    return int(_INT.unpack(buf)[0])


def set_vnet_hdr_len(fd: int, length: int) -> bool:
    """``TUNSETVNETHDRSZ``; False when the kernel refuses the length."""
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, _INT.pack(length))
    except OSError:
        return False
    return True


def set_offload(fd: int, offloads: int) -> bool:
    """``TUNSETOFFLOAD`` (the argument is passed by value); False when refused."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
    except OSError:
        return False
    return True


def probe_offloads(fd: int) -> int:
    """The subset of :data:`TUN_F_ALL` this kernel and device accept (left set to 0).

    Like QEMU's probes: checksum with TSO first, then USO on top (Linux 6.2+).
    """
    supported = 0
    base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    if set_offload(fd, base):
        supported = base
    elif set_offload(fd, TUN_F_CSUM):
        supported = TUN_F_CSUM
    if supported & TUN_F_CSUM and set_offload(fd, supported | TUN_F_USO4 | TUN_F_USO6):
        supported |= TUN_F_USO4 | TUN_F_USO6
    set_offload(fd, 0)
    return supported


def set_queue(fd: int, attach: bool) -> None:
    """``TUNSETQUEUE``: enable or disable one queue of a multiqueue tap (raises OSError)."""
    flags = IFF_ATTACH_QUEUE if attach else IFF_DETACH_QUEUE
    fcntl.ioctl(fd, TUNSETQUEUE, ifreq("", flags))


def device_netns(fd: int) -> int | None:
    """``TUNGETDEVNETNS``: a new fd of the device's network namespace (None if unsupported)."""
    try:
        return int(fcntl.ioctl(fd, TUNGETDEVNETNS))
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTTY, errno.EPERM, errno.EBADFD):
            return None
        raise
