"""The QEMU test guest (:mod:`tools.guest`) on a vhost-user port of a daemon, and the host
side those tests talk to.

The usual shape: the daemon has a vhost-user server chardev ``c0`` at ``SOCK``, a netdev
``vm0`` on it and a user netdev ``nat0``, both on hub 0; QEMU gets guest RAM it can share,
a client chardev on ``SOCK`` and a virtio-net NIC with ``MAC``.
:func:`attach_user_over_vhost_user` builds the daemon half in process,
:func:`user_over_vhost_user_argv` as a ``netstackd`` command line, and
:func:`vhost_user_qemu_args` the QEMU half.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
import pytest

from netstack.daemon import Netstack
from netstack.proto.streamframe import FrameDecoder, encode_frames
from netstack.qapi import parse_chardev_cli
from tests.kit.daemon import add_netdevs
from tools.guest import (
    GuestImage,
    HostUnavailable,
    build,
    ensure_qemu,
    shared_memory_args,
    virtio_nic_args,
)

#: The guest NIC's MAC address unless a test needs another.
MAC = "52:54:00:12:34:56"
#: Guest RAM in MiB (shared with the back end).
MEMORY_MB = 256


def guest_image_or_skip(extra_modules: Sequence[str] = ()) -> GuestImage:
    """The built test guest (loading ``extra_modules`` too); skips when QEMU is absent (it
    is never installed from here)."""
    try:
        ensure_qemu(install=False)
    except HostUnavailable as exc:
        pytest.skip(f"qemu-system-x86_64 unavailable: {exc}")
    return build(extra_modules=extra_modules)


def _vhost_user_netdevs(user: str, mac: str) -> tuple[str, ...]:
    return (
        user,
        f"vhost-user,id=vm0,chardev=c0,mac={mac}",
        "hubport,id=h0,hubid=0,netdev=nat0",
        "hubport,id=h1,hubid=0,netdev=vm0",
    )


async def attach_user_over_vhost_user(
    ns: Netstack, sock: Path, user: str | None = "user,id=nat0", mac: str = MAC
) -> None:
    """Give ``ns`` the vhost-user server chardev ``c0`` at ``sock``, netdev ``vm0`` on it,
    the user netdev ``user`` (``None``: the test added ``nat0`` itself) and hub 0 joining
    them."""
    await ns.chardev_add(
        parse_chardev_cli(f"socket,id=c0,path={sock},server=on,wait=off"), from_cli=True
    )
    specs = _vhost_user_netdevs(user or "", mac)
    await add_netdevs(ns, *(specs if user else specs[1:]))


def user_over_vhost_user_argv(sock: Path, user: str = "user,id=nat0", mac: str = MAC) -> list[str]:
    """The ``netstackd`` arguments for what :func:`attach_user_over_vhost_user` builds."""
    argv = ["-chardev", f"socket,id=c0,path={sock},server=on,wait=off"]
    for spec in _vhost_user_netdevs(user, mac):
        argv += ["-netdev", spec]
    return argv


def vhost_user_qemu_args(
    sock: Path, mac: str = MAC, *, memory: Sequence[str] | None = None
) -> list[str]:
    """QEMU's half: shareable guest RAM (``memory``, default a memfd of :data:`MEMORY_MB`),
    a chardev on ``sock``, the vhost-user netdev and a virtio-net NIC without MSI-X."""
    return [
        *(shared_memory_args(MEMORY_MB) if memory is None else memory),
        "-chardev",
        f"socket,id=vhost0,path={sock}",
        "-netdev",
        "vhost-user,id=net0,chardev=vhost0",
        *virtio_nic_args("net0", mac, msix=False),
    ]


def ping_until(other: str) -> str:
    """Guest shell lines: ping ``other`` once a second until it answers (60 tries, else
    ``PING-FAILED``), then 3 more must pass; ``PING-OK``."""
    return f"""
i=0
until ping -c 1 -W 1 {other} >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -ge 60 ] && {{ echo PING-FAILED; exit 1; }}
done
ping -c 3 -W 2 {other} || exit 2
echo PING-OK
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@contextlib.contextmanager
def serve_directory(root: Path, host: str = "127.0.0.1") -> Iterator[int]:
    """An HTTP server for the files under ``root`` on ``host`` (IPv4 or IPv6), on a thread;
    yields its port and shuts it down on exit."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    cls = _Server6 if ":" in host else http.server.ThreadingHTTPServer
    server = cls((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def http_get(port: int, timeout: float = 10.0, path: str = "/f") -> bytes:
    """GET ``path`` from ``127.0.0.1:port`` over HTTP/1.0; the body of a 200 response."""

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n")[0], data
        return body

    return await asyncio.wait_for(get(), timeout)


async def stream_arp(
    path: Path,
    target: str,
    timeout: float = 60,
    *,
    sender: str = "10.9.1.77",
    mac: bytes = bytes.fromhex("020000000077"),
) -> bytes:
    """Connect to the stream netdev listening on unix socket ``path`` and send an ARP
    request for ``target`` from ``sender``/``mac`` (once a second); the first ARP frame
    back to ``mac``."""
    loop = asyncio.get_running_loop()
    peer = socket.socket(socket.AF_UNIX)
    peer.setblocking(False)
    await loop.sock_connect(peer, str(path))
    mine = mac
    arp = dpkt.arp.ARP(
        op=dpkt.arp.ARP_OP_REQUEST,
        sha=mine,
        spa=socket.inet_aton(sender),
        tha=bytes(6),
        tpa=socket.inet_aton(target),
    )
    request = bytes(dpkt.ethernet.Ethernet(dst=b"\xff" * 6, src=mine, type=0x0806, data=arp))
    dec = FrameDecoder()
    try:
        async with asyncio.timeout(timeout):
            while True:
                await loop.sock_sendall(peer, encode_frames([request]))
                try:
                    async with asyncio.timeout(1):
                        while True:
                            for frame in dec.feed(await loop.sock_recv(peer, 65536)):
                                if frame[:6] == mine and frame[12:14] == b"\x08\x06":
                                    return frame
                except TimeoutError:
                    continue
    finally:
        peer.close()


@dataclass
class Sink:
    """What a :func:`tcp_sink` saw: its port, the bytes it read to EOF and their MD5, the
    error that ended it early (if any); ``done`` is set when it has finished."""

    port: int = 0
    received: int = -1
    md5: str = ""
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def tcp_sink(
    host: str = "127.0.0.1", accept_timeout: float = 300, read_timeout: float = 120
) -> Iterator[Sink]:
    """A one-connection TCP sink on ``host`` (IPv4 or IPv6), on a thread: it reads to EOF
    hashing as it goes, then answers ``UPLOAD <bytes> <md5>`` and closes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, 0), family=family)
    listener.settimeout(accept_timeout)
    result = Sink(port=listener.getsockname()[1])

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(read_timeout)
                digest, n = hashlib.md5(), 0
                while data := conn.recv(1 << 20):
                    digest.update(data)
                    n += len(data)
                result.received, result.md5 = n, digest.hexdigest()
                conn.sendall(f"UPLOAD {n} {result.md5}\n".encode())
        except OSError as exc:
            result.error = repr(exc)
        finally:
            result.done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept() if the peer never came
        listener.close()
        thread.join(10)
