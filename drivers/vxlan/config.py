"""The vxlan netdev's options, validated and defaulted (:class:`VxlanConfig`).

Addresses are IP literals (IPv4 or IPv6, ``[v6]`` accepted); ``remote`` and ``group`` must
share ``local``'s family; errors are GenericError texts starting with ``vxlan:``.
"""

from __future__ import annotations

import ipaddress
import socket

from netstack.errors import GenericError
from netstack.net.fdb import DEFAULT_AGEING
from netstack.proto.vxlan import VNI_MAX, VXLAN_PORT
from netstack.qapi import NetdevVxlanOptions

#: Default number of source-port sockets.
DEFAULT_SRCPORTS = 8
MAX_SRCPORTS = 64


class VxlanConfig:
    """Validated, defaulted options."""

    def __init__(self, opts: NetdevVxlanOptions) -> None:
        if not 0 <= opts.vni <= VNI_MAX:
            raise GenericError(f"vxlan: vni must be in 0..{VNI_MAX}")
        self.vni = opts.vni
        local = _address(opts.local, "local")
        if local.is_multicast or local.is_unspecified:
            raise GenericError(f"vxlan: local '{opts.local}' must be a unicast address")
        self.family = socket.AF_INET6 if local.version == 6 else socket.AF_INET
        self.local = str(local)
        self.remotes: list[str] = []
        for text in opts.remote or ():
            addr = _address(text, "remote")
            if addr.version != local.version:
                raise GenericError(f"vxlan: remote '{text}' and local are of different families")
            if addr.is_multicast:
                raise GenericError(f"vxlan: remote '{text}' is multicast (use group=)")
            if str(addr) not in self.remotes:
                self.remotes.append(str(addr))
        self.group: str | None = None
        if opts.group is not None:
            group = _address(opts.group, "group")
            if not group.is_multicast or group.version != local.version:
                raise GenericError(
                    f"vxlan: group '{opts.group}' must be a multicast address of local's family"
                )
            self.group = str(group)
        self.dstport = opts.dstport if opts.dstport is not None else VXLAN_PORT
        self.localport = opts.localport if opts.localport is not None else self.dstport
        self.srcports = opts.srcports if opts.srcports is not None else DEFAULT_SRCPORTS
        if self.srcports > MAX_SRCPORTS:
            raise GenericError(f"vxlan: srcports must be at most {MAX_SRCPORTS}")
        self.ttl = opts.ttl
        self.learning = opts.learning if opts.learning is not None else True
        self.ageing = float(opts.ageing) if opts.ageing is not None else DEFAULT_AGEING
        self.mtu = opts.mtu
        if self.mtu is not None and self.mtu < 68:
            raise GenericError("vxlan: mtu must be at least 68")
        self.coalesce = bool(opts.coalesce)
        self.netns: str | None = None

    def info(self) -> str:
        parts = [f"vxlan: vni={self.vni}", f"local={_join(self.local, self.localport)}"]
        if self.remotes:
            parts.append("remote=" + ",".join(self.remotes))
        if self.group is not None:
            parts.append(f"group={self.group}")
        parts.append(f"dstport={self.dstport}")
        if self.netns is not None:
            parts.append(f"netns={self.netns}")
        return " ".join(parts)


def _address(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise GenericError(f"vxlan: {what} '{text}' is not an IP address") from None


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
