"""QOM objects from specs: ``object-add`` / ``-object`` / ``object-del`` for net filters
and TLS credentials and authorization (``tls-creds-x509``, ``authz-simple``:
:mod:`netstack.tlscreds`).

Follows QEMU's ``user_creatable_add_type`` and ``netfilter_complete`` (``net/filter.c``).
The schema (:mod:`netstack.qapi.qom`) has already visited the options and run the
property setters' checks (``status``, ``maxlen``, ``interval``); the remaining checks need
the daemon's tables and run here, in QEMU's order, with its texts (all GenericError
unless noted):

1. the id is free: ``attempt to add duplicate property 'ID' to object (type 'container')``;
2. ``netdev`` names a non-NIC client: ``Parameter 'netdev' expects a network backend id``;
   one queue only: ``multiqueue is not supported``; not a vhost-accelerated client:
   ``Vhost is not supported``;
3. ``position`` is ``head``, ``tail`` or ``id=<filter>``: ``Parameter 'position' expects
   'head', 'tail' or 'id=<id>'``, ``filter 'X' not found``, ``filter 'X' belongs to a
   different netdev`` (also when X is the new filter itself, as in QEMU, where the object
   is already in the container when this check runs);
4. the filter's own setup (files, chardevs: see each filter module);
5. insertion into the netdev's chain: at the head, the tail, or before/behind
   (``insert``) the ``position`` filter; then the object table.

A failed creation leaves nothing behind. :func:`delete_object` is ``object-del``
(``object 'ID' not found``); a netdev's deletion removes its filters through the daemon.
:func:`set_status` is the runtime ``status`` setter (``qom-set``).

Beyond QEMU: ``filter-dump`` takes ``format`` (``pcap`` | ``pcapng``) when the schema has
it, and ``segment`` (offloaded super-frames written as their wire segments).
Deviation: ``Vhost is not supported`` applies to clients that set ``vhost = True``;
netstack's own vhost-user netdev carries its frames through the daemon, so its traffic
can be filtered and captured.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, cast

from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.net.filter import NetFilter, QueueSel
from netstack.net.filters import FilterBuffer, FilterDump, FilterMirror, FilterRedirector
from netstack.net.filters.pcap import DEFAULT_SNAPLEN
from netstack.qapi import (
    FilterBufferProperties,
    FilterDumpProperties,
    FilterMirrorProperties,
    FilterRedirectorProperties,
    NetfilterProperties,
    ObjectSpec,
)
from netstack.qapi.qom import AuthZSimpleProperties, TlsCredsX509Properties
from netstack.tlscreds import AuthzSimple, TlsCredsX509


class ObjectHost(Protocol):
    """The daemon as object creation sees it (``netstack.daemon.Netstack``)."""

    objects: dict[str, Any]

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def log(self) -> logging.Logger: ...

    def chardev(self, chardev_id: str) -> Any: ...

    def find_clients(self, name: str, *, except_nic: bool = False) -> list[NetClient]: ...

    def remove_filter(self, filter_id: str) -> None: ...


async def create_object(
    host: ObjectHost, spec: ObjectSpec
) -> NetFilter | TlsCredsX509 | AuthzSimple:
    """Create the object ``spec`` describes: TLS credentials go to the object table, a
    filter also into its netdev's chain."""
    props = spec.props
    if spec.id in host.objects:
        raise GenericError(
            f"attempt to add duplicate property '{spec.id}' to object (type 'container')"
        )
    if isinstance(props, AuthZSimpleProperties):
        authz = AuthzSimple(spec.id, props.identity)
        authz.spec = spec
        host.objects[spec.id] = authz
        return authz
    if isinstance(props, TlsCredsX509Properties):
        creds = TlsCredsX509(
            spec.id,
            dir=props.dir,
            endpoint=props.endpoint or "client",
            verify_peer=props.verify_peer is not False,
            sanity_check=props.sanity_check is not False,
            priority=props.priority,
            passwordid=props.passwordid,
        )
        creds.spec = spec
        host.objects[spec.id] = creds
        return creds
    netdev = _netdev(host, props.netdev)
    position = props.position if props.position is not None else "tail"
    anchor = _anchor(host, spec.id, position, netdev)
    nf = build_filter(spec, netdev)
    try:
        nf.setup(host)
    except BaseException:
        nf.cleanup()
        raise
    chain = netdev.filters
    if anchor is not None:
        at = chain.index(anchor)
        chain.insert(at if nf.insert == "before" else at + 1, nf)
    elif position == "head":
        chain.insert(0, nf)
    else:
        chain.append(nf)
    nf.spec = spec
    host.objects[spec.id] = nf
    return nf


def delete_object(host: ObjectHost, object_id: str) -> None:
    """``object-del``: detach and destroy the object."""
    obj = host.objects.get(object_id)
    if obj is None:
        raise GenericError(f"object '{object_id}' not found")
    if isinstance(obj, (TlsCredsX509, AuthzSimple)):
        # Chardevs using the credentials keep their reference, as in QEMU.
        del host.objects[object_id]
        return
    host.remove_filter(object_id)


def set_status(nf: NetFilter, value: str) -> None:
    """The ``status`` property setter (``netfilter_set_status``)."""
    if value not in ("on", "off"):
        raise GenericError("Invalid value for netfilter status, should be 'on' or 'off'")
    on = value == "on"
    if nf.enabled == on:
        return
    nf.enabled = on
    hook = getattr(nf, "status_changed", None)
    if callable(hook):
        hook()


def _netdev(host: ObjectHost, name: str) -> NetClient:
    queues = host.find_clients(name, except_nic=True)
    if not queues:
        raise GenericError("Parameter 'netdev' expects a network backend id")
    if len(queues) > 1:
        raise GenericError("multiqueue is not supported")
    if getattr(queues[0], "vhost", False):
        raise GenericError("Vhost is not supported")
    return queues[0]


def _anchor(host: ObjectHost, new_id: str, position: str, netdev: NetClient) -> NetFilter | None:
    if position in ("head", "tail"):
        return None
    if not position.startswith("id="):
        raise GenericError("Parameter 'position' expects 'head', 'tail' or 'id=<id>'")
    anchor_id = position[3:]
    if anchor_id == new_id:
        raise GenericError(f"filter '{anchor_id}' belongs to a different netdev")
    anchor = host.objects.get(anchor_id)
    if not isinstance(anchor, NetFilter):
        raise GenericError(f"filter '{anchor_id}' not found")
    if anchor.netdev is not netdev:
        raise GenericError(f"filter '{anchor_id}' belongs to a different netdev")
    return anchor


def _common(props: NetfilterProperties) -> dict[str, Any]:
    return {
        "queue": cast(QueueSel, props.queue or "all"),
        "enabled": (props.status or "on") == "on",
        "position": props.position if props.position is not None else "tail",
        "insert": props.insert or "behind",
    }


AnyFilter = FilterDump | FilterMirror | FilterRedirector | FilterBuffer


def build_filter(spec: ObjectSpec, netdev: NetClient) -> AnyFilter:
    """The unattached, not yet set up filter object ``spec`` describes."""
    props = spec.props
    assert isinstance(props, NetfilterProperties)
    common = _common(props)
    if isinstance(props, FilterDumpProperties):
        fmt = getattr(props, "format", None) or "pcap"
        maxlen = props.maxlen if props.maxlen is not None else DEFAULT_SNAPLEN
        segment = bool(props.segment)
        return FilterDump(
            spec.id, netdev, file=props.file, maxlen=maxlen, fmt=fmt, segment=segment, **common
        )
    if isinstance(props, FilterMirrorProperties):
        return FilterMirror(
            spec.id,
            netdev,
            outdev=props.outdev,
            vnet_hdr_support=bool(props.vnet_hdr_support),
            **common,
        )
    if isinstance(props, FilterRedirectorProperties):
        return FilterRedirector(
            spec.id,
            netdev,
            indev=props.indev,
            outdev=props.outdev,
            vnet_hdr_support=bool(props.vnet_hdr_support),
            **common,
        )
    if isinstance(props, FilterBufferProperties):
        return FilterBuffer(spec.id, netdev, interval=props.interval, **common)
    raise GenericError(f"Parameter 'qom-type' does not accept value '{spec.qom_type}'")
