"""The user netdev's net client: the adapter that composes the sans-IO machines and their
host sides, and owns the netdev's one timer.

:class:`UserNetClient` holds the :class:`~.v4.router.Gateway` (ARP, IPv4, DHCP, DNS relay,
TFTP, UDP NAT, ICMP relay), :class:`~.v4.host.Ipv4Sockets` (the IPv4 host fds: UDP flows, DNS
upstreams, ICMP echo), unless ``ipv6=off`` an :class:`~.v6.host.Ipv6Service` (router, NAT and
host fds of IPv6, behind the gateway's Ethernet type 0x86DD), a :class:`~.tcp.TcpSplicer`
for guest TCP of both families, a :class:`~.hostfwd.HostForwarder` and a
:class:`~.guestfwd.GuestForwarder`; ``ipv4=off`` unregisters ARP and IPv4 (their frames are
counted as ``ipv4-disabled``). The netdev's contract is :mod:`.endpoint`: every machine writes
into the one :class:`~.endpoint.Outbox` and keeps its timers in the one
:class:`~.endpoint.Deadlines` (a heap; one ``loop.call_at``, :class:`~.endpoint.NetdevTimer`).
Frames from the peer go through the gateway in one pass per batch, then the held-back TCP
ACKs; then :meth:`UserNetClient._pump` - the one pump, also run after every host socket
wake-up and timer - drains the outbox: host actions run, dispatched by class
(:meth:`.v4.host.Ipv4Sockets.act`, :meth:`.v6.host.Ipv6Service.act`,
:meth:`.hostfwd.HostForwarder.udp_reply`), frames leave as one batch per kind (``send``),
events go to QMP with the netdev name added.

Offloads: :attr:`UserNetClient.accepts_vnet` is True; :meth:`UserNetClient._vnet_frame`
passes checksum-partial and TSO guest TCP to the gateway whole (not verified, not
segmented), completes other offloaded frames, and the splicer sends guest-bound TCP as
checksum-partial TSO super-frames.

NAT policy for guest TCP: :class:`.nat_policy.TcpPolicy` (libslirp's
``sotranslate_out``). Log throttling and error accounting: :class:`.reporting.Reporter`.

``smb=`` (:mod:`.smb`): :meth:`start_smb` adds its exec forwards to the guestfwd rules;
:meth:`cleanup` removes its private directory once the guestfwd children are reaped.

Monitor views (QMP rows, ``info usernet``, HMP ``hostfwd_*``, run-time forwarding rules)
are :mod:`.control`'s, functions of this client; :meth:`counters` (``query-netdev``:
gateway, IPv6, sockets, TCP, hostfwd and guestfwd counters) stays here.

Flow budget (:mod:`.budget`, ``x-max-flows``): caps the splicer and the UDP and echo flow
tables of both families; refusals are counted there and logged at most every 30 s.

Invariants: :meth:`cleanup` is the one release path (netdev_del, and a netdev whose
hostfwd or guestfwd rules fail at creation): every fd, timer and child is released and the
final IPv6 Router Advertisement leaves while the peer is there. No exception from guest or
host input reaches the loop - an unexpected one is counted (``internal-error``) and logged
(rate-limited); the netdev keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.proto import ipv4
from netstack.proto import vnet as vnet_hdr

from . import budget
from .dns import RESOLV_CONF, RESOLV_RECHECK, ResolvConf
from .endpoint import NetdevTimer, Outbox
from .guestfwd import GuestForwarder
from .hostfwd import HostForwarder
from .nat_policy import Target, TcpPolicy
from .options import (
    HostFwdRule,
    UserConfig,
    ip_text,
)
from .reporting import Reporter
from .smb import SmbServer
from .tcp import Event, Segment, TcpConfig, TcpEndpoint, TcpSplicer, ethernet_header, parse_l4
from .tcp.fastpath import impl as fastflow_impl
from .tftproot import TftpRoot
from .udp_nat import UdpReply
from .v4 import host as v4_host
from .v4.host import Ipv4Sockets
from .v4.router import Gateway, Packet
from .v6 import Packet6
from .v6 import host as v6_host
from .v6.host import Ipv6Service

#: Drain rounds per pump (a host action may produce output, e.g. an ICMP error).
PUMP_ROUNDS: Final = 4

EventSink = Callable[[str, Mapping[str, Any]], None]


class UserNetClient(NetClient):
    """One user netdev."""

    type = "user"
    #: Offloads: guest TSO super-frames and checksum-partial TCP segments are
    #: taken as they are, and guest-bound TCP leaves as checksum-partial TSO super-frames;
    #: the core converts for a peer that can't take them (``netstack.proto.vnet``).
    accepts_vnet = True

    def __init__(
        self,
        name: str,
        cfg: UserConfig,
        loop: asyncio.AbstractEventLoop,
        log: logging.Logger,
        emit_event: EventSink | None = None,
        *,
        icmp_mode: str | None = None,
        resolv_conf: str = RESOLV_CONF,
        **limits: int,
    ) -> None:
        super().__init__(name)
        self.cfg = cfg
        limits = {**budget.flow_limits(cfg.max_flows), **limits}
        tcp_max_flows = limits.pop("tcp_max_flows")
        self.info_str = f"net={ip_text(cfg.net)},restrict={'on' if cfg.restrict else 'off'}"
        #: The netdev's output and timers (:mod:`.endpoint`).
        self.outbox = Outbox()
        self._timer = NetdevTimer(loop, self._on_timer)
        self.deadlines = self._timer.deadlines
        self.gw = Gateway(cfg, tftp_root=TftpRoot(cfg.tftp) if cfg.tftp else None,
                          outbox=self.outbox, deadlines=self.deadlines, **limits)  # fmt: skip
        self._loop = loop
        self._log = log
        self._emit = emit_event
        self._resolv = None if cfg.dns_upstreams else ResolvConf(resolv_conf)
        #: When resolv.conf may be looked at again (:data:`.dns.RESOLV_RECHECK`).
        self._resolv_due = 0.0
        self._closed = False
        self.report = Reporter(name, log, loop.time, self.gw.count)
        #: Set while a checksum-offloaded TCP frame is in the gateway (see _vnet_frame).
        self._csum_trusted = False
        if self._resolv is not None:
            self._refresh_upstreams(loop.time())
        #: The IPv4 side's host sockets (UDP flows, DNS upstreams, ICMP echo: :mod:`.v4.host`).
        self.host4 = Ipv4Sockets(
            name, self.gw, loop, log, flush=self._pump, host_error=self._host_error,
            internal_error=self._internal_error, icmp_mode=icmp_mode,
        )  # fmt: skip
        #: The IPv6 side (router, NAT, host sockets: :mod:`.v6.host`); None with ipv6=off.
        self.v6: Ipv6Service | None = None
        if cfg.ipv6:
            self.v6 = Ipv6Service(
                name, cfg, self.gw, loop, flush=self._pump, host_error=self._host_error,
                internal_error=self._internal_error, icmp_mode=icmp_mode,
                offloaded=lambda: self._csum_trusted, udp_max_flows=limits.get("udp_max_flows"),
                icmp_max_flows=limits.get("icmp_max_flows"),
            )  # fmt: skip
            self.v6.router.ip_handlers[ipv4.IPPROTO_TCP] = self._tcp_in6
        if not cfg.ipv4:  # no ARP, no IPv4 service: counted and dropped
            self.gw.eth_handlers[ipv4.ETH_P_IP] = self._ipv4_off
            self.gw.eth_handlers[ipv4.ETH_P_ARP] = self._ipv4_off
        tcp_cfg = TcpConfig(mtu=cfg.mtu, vnet=True)
        #: The established-flow fast path of guest TCP (:mod:`.tcp.fastflow`).
        self.fast = fastflow_impl().FlowCache(
            self.outbox.vnet_frames, self.send, self._pump_now, rcvbuf=tcp_cfg.rcvbuf,
            sndbuf=tcp_cfg.sndbuf, delack=tcp_cfg.delack, idle_timeout=tcp_cfg.idle_timeout,
        )  # fmt: skip
        self.tcp = TcpSplicer(
            loop, tcp_cfg, send=self._tcp_send,
            resolve=self._resolve_tcp, l2_for=self._tcp_l2, on_event=self._tcp_event, log=log,
            max_flows=tcp_max_flows, outbox=self.outbox, deadlines=self.deadlines,
            pump=self._pump_now, fast=self.fast,
        )  # fmt: skip
        self.gw.ip_handlers[ipv4.IPPROTO_TCP] = self._tcp_in
        self.fwd = HostForwarder(loop, self.gw, self.tcp, send=self._tcp_send, flush=self._pump,
                                 log=log, v6=self.v6, deadlines=self.deadlines)  # fmt: skip
        self.guestfwd = GuestForwarder(loop, self.gw, log, deadlines=self.deadlines)
        #: Host action class -> the adapter that runs it (the pump's dispatch): IPv4's and
        #: IPv6's host sockets, hostfwd's for answers to forwarded UDP.
        self._executors: dict[type, Callable[[Any, float], None]] = {
            **dict.fromkeys(v4_host.ACTIONS, self.host4.act),
            **(dict.fromkeys(v6_host.ACTIONS, self.v6.act) if self.v6 is not None else {}),
            UdpReply: self._udp_reply,
        }
        self.policy = TcpPolicy(cfg, self.gw, self.guestfwd, self.v6)
        #: The ``smb=`` server (:mod:`.smb`), started by :meth:`start_smb`.
        self.smb: SmbServer | None = None
        # The rules: hostfwd binds, then guestfwd conflicts (chardevs open in create(),
        # async). A failure releases everything above through the one cleanup path.
        try:
            for rule in cfg.hostfwd:
                self.add_hostfwd(rule)
            for grule in cfg.guestfwd:
                self.guestfwd.add(grule)
        except BaseException:
            self.cleanup()
            raise

    def add_hostfwd(self, rule: HostFwdRule) -> None:
        """Bind ``rule``; GenericError with QEMU's text if the host refuses it."""
        try:
            self.fwd.add(rule)
        except (OSError, ValueError) as exc:
            self._log.warning("user %s: hostfwd %r: %s", self.name, rule.text, exc)
            raise GenericError(f"Could not set up host forwarding rule '{rule.text}'") from exc

    # -- peer -> gateway -------------------------------------------------------------------

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        if self._closed:
            return len(frames)
        now = self._loop.time()
        if self._resolv is not None and now >= self._resolv_due:
            self._refresh_upstreams(now)
        if self._receive_frames(frames, now, vnet):  # every frame took the fast path
            try:
                self.fast.flush(now)
                self.tcp.flush_acks()  # connections the fast path handed back
            except Exception:
                self._internal_error("guest TCP")
            outbox = self.outbox
            if outbox.vnet_frames or outbox.frames or outbox.actions or outbox.events:
                self._pump(now)
            return len(frames)
        try:
            self.fast.flush(now)
            self.tcp.flush_acks()
        except Exception:
            self._internal_error("guest TCP")
        self._pump(now)
        refused = budget.refused(self.tcp, self.gw, self.v6)
        if refused > self.report.reported_refused:
            self.report.flow_budget(refused, self.tcp.max_flows, self.gw.udp.max_flows,
                                    self.gw.icmp.max_flows)  # fmt: skip
        return len(frames)

    def _receive_frames(self, frames: Sequence[bytes], now: float, vnet: bool) -> bool:
        """A batch from the peer (behind virtio-net headers when ``vnet``); True when
        every frame took the TCP fast path (:attr:`fast`: plain segments of lent
        connections), which is tried first, in order: a frame it declines goes the
        general way (:meth:`_vnet_frame`, or the gateway)."""
        fast = self.fast
        one = self._vnet_frame if vnet else self._plain_frame
        try:
            i = fast.guest_frames(frames, 0, now, vnet)
        except Exception:
            self._internal_error("guest TCP")
            return False
        if i >= len(frames):
            return True
        while i < len(frames):  # the fast path's callbacks may have changed the list
            one(frames[i], now)
            try:
                i = fast.guest_frames(frames, i + 1, now, vnet)
            except Exception:
                self._internal_error("guest TCP")
                return False
        return False

    def _plain_frame(self, frame: bytes, now: float) -> None:
        try:
            self.gw.input(frame, now)
        except Exception:
            self._internal_error("guest frame")

    def _vnet_frame(self, frame: bytes, now: float) -> None:
        """One frame behind a virtio-net header, the general way. A TCP frame asking for
        checksum offload or TSO has a partial checksum, which is not verified: over IPv4
        it is checked in place (:meth:`.v4.router.Gateway.offloaded_tcp`) and its payload
        reaches the splicer uncopied; over IPv6 it goes through the gateway whole
        (:attr:`_csum_trusted`). Any other offloaded frame is completed or segmented first
        (rare: UDP from a guest with checksum offload, UFO/USO); the rest lose the
        header."""
        gw_input = self.gw.input
        try:
            if len(frame) < _VNET_MIN:
                self.gw.stats["vnet-short"] += 1
                return
            if not frame[0] & vnet_hdr.NEEDS_CSUM and not frame[1] & ~vnet_hdr.GSO_ECN:
                gw_input(frame[vnet_hdr.HDR_LEN :], now)
                return
            family = _is_tcp(frame)
            if family == 4 and self.cfg.ipv4:
                seg = self.gw.offloaded_tcp(frame)
                if isinstance(seg, str):
                    self.gw.stats[seg] += 1
                elif self.policy.routable(seg.dst):
                    self.tcp.guest_segment(seg, now)
            elif family:
                self._csum_trusted = True
                try:
                    gw_input(frame[vnet_hdr.HDR_LEN :], now)
                finally:
                    self._csum_trusted = False
            else:
                for plain in vnet_hdr.to_plain((frame,)):
                    gw_input(plain, now)
        except Exception:
            self._internal_error("guest frame")

    def _refresh_upstreams(self, now: float) -> None:
        assert self._resolv is not None
        self._resolv_due = now + RESOLV_RECHECK
        if self._resolv.refresh(now):
            self.gw.dns.upstreams = list(self._resolv.servers)
            self._log.info("user %s: DNS upstreams %s", self.name, self._resolv.servers)

    # -- guest TCP -------------------------------------------------------------------------

    def _tcp_in(self, pkt: Packet, now: float) -> None:
        gw = self.gw
        dst = pkt.dst
        if not self.policy.routable(dst):
            return
        seg = parse_l4(pkt.src, dst, pkt.payload, verify=not self._csum_trusted, mac=pkt.src_mac)
        if isinstance(seg, str):
            gw.stats[seg] += 1
            return
        self.tcp.guest_segment(seg, now)

    def _resolve_tcp(self, seg: Segment) -> Target:
        return self.policy.resolve(seg)  # bound late: the policy is made after the splicer

    def _tcp_l2(self, seg: Segment) -> bytes:
        if seg.v6 and self.v6 is not None:
            return self.v6.l2_for(seg)
        return ethernet_header(seg.mac or self.gw.arp.get(seg.src, bytes(6)), self.gw.mac, seg.v6)

    def _tcp_send(self, frames: list[bytes]) -> None:
        self.send(frames, True)  # after cleanup (no peer): counted as tx_dropped

    def _tcp_event(self, m: TcpEndpoint, event: Event, detail: int) -> None:
        if event is Event.HOST_ERROR and detail and self.report.may_log("TCP host socket"):
            self._log.info("user %s: TCP host socket error: %s", self.name, os.strerror(detail))

    # -- gateway -> peer, host, QMP --------------------------------------------------------

    def _pump_now(self) -> None:
        self._pump(self._loop.time())

    def _pump(self, now: float) -> None:
        """The one pump: drain the outbox - host actions first (their output joins the
        next round), then frames in one batch per kind, then events."""
        outbox = self.outbox
        for _ in range(PUMP_ROUNDS):
            if not (outbox.frames or outbox.vnet_frames or outbox.actions or outbox.events):
                return  # (Outbox.__bool__ spelt out: this runs after every wake-up)
            frames, vnet_frames, actions, events = outbox.drain()
            run = self._executors  # the adapters own the fds (see __init__)
            for action in actions:
                try:
                    run[action.__class__](action, now)
                except Exception:
                    self._internal_error("host action")
            if frames:
                self.send(frames)
            if vnet_frames:
                self.send(vnet_frames, True)  # after cleanup (no peer): tx_dropped
            if events and self._emit is not None:
                for name, data in events:
                    self._emit(name, {"netdev": self.name, **data})

    def _udp_reply(self, action: UdpReply, now: float) -> None:
        self.fwd.udp_reply(action)

    # -- IPv6 ------------------------------------------------------------------------------

    def _tcp_in6(self, p: Packet6, now: float) -> None:
        """Guest TCP over IPv6 (the router's TCP handler: to our addresses or beyond the
        link, hop limit checked) into the same splicer as IPv4."""
        seg = parse_l4(p.src, p.dst, p.payload, verify=not self._csum_trusted, mac=p.src_mac)
        if isinstance(seg, str):
            self.gw.stats[seg] += 1
            return
        self.tcp.guest_segment(seg, now)

    def _input_counters(self) -> dict[str, int]:
        """The gateway's counters with the IPv6 side's added (a name both use is summed)."""
        out = self.gw.counters()
        if self.v6 is not None:
            for key, value in self.v6.counters().items():
                out[key] = out.get(key, 0) + value
        return out

    def _ipv4_off(self, frame: bytes, now: float) -> None:
        self.gw.stats["ipv4-disabled"] += 1

    def link_status_changed(self) -> None:
        """``set_link``: when the link comes up again, RAs restart with the initial burst."""
        if self.v6 is not None and not self.link_down and not self._closed:
            now = self._loop.time()
            self.v6.link_up(now)
            self.deadlines.changed(self.v6)
            self._pump(now)

    # -- timer -----------------------------------------------------------------------------

    def deadlines_changed(self) -> None:
        """State was put into the machines from outside (live migration): ask every
        timed part of the gateway and the IPv6 side for its deadline again."""
        for part in self.gw.parts:
            self.deadlines.changed(part)
        if self.v6 is not None:
            self.deadlines.changed(self.v6)

    def _on_timer(self) -> None:
        """The netdev's one timer: every machine due runs, then the pump."""
        now = self._loop.time()
        try:
            self.deadlines.run(now)
        except Exception:
            self._internal_error("timer")
        self._sync_bad(now)
        self._pump(now)
        self._timer.rearm()

    # -- errors and logging ----------------------------------------------------------------

    def _internal_error(self, where: str) -> None:
        self.report.internal_error(where)

    def _host_error(self, what: str, exc: OSError) -> None:
        self.report.host_error(what, exc)

    @property
    def host_errors(self) -> int:
        """Host socket failures (``host-errors``)."""
        return self.report.host_errors

    def _sync_bad(self, now: float) -> None:
        """Fold malformed-input counters into ``stats.malformed`` and log new ones."""
        self.stats.malformed = self.report.bad_input(self._input_counters())

    def start_smb(self) -> None:
        """``smb=``: the private smbd and its exec forwards (after the guestfwd rules, as in
        QEMU); GenericError with QEMU's texts."""
        if self.cfg.smb is not None and self.smb is None:
            self.smb = SmbServer.open(self.cfg, self.guestfwd, self._log)

    # -- monitor views ---------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Driver counters (drops by reason, service work), for tests and tools."""
        self._sync_bad(self._loop.time())
        out = self._input_counters()
        out["host-errors"] = self.host_errors
        out.update(self.host4.counters())
        for key, value in self.tcp.counters().items():
            out[key if key.startswith("tcp-") else f"tcp-{key}"] = value
        for part in (self.fwd.stats, self.guestfwd.counters()):  # hostfwd-*, guestfwd-*
            for key, value in part.items():
                out[key] = out.get(key, 0) + value
        return out

    # -- life ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._timer.close()
        if self.v6 is not None:  # the final RA (router lifetime 0) while the peer is there
            try:
                self.send(self.v6.close())
            except Exception:
                self._internal_error("IPv6 close")
        self.host4.close()
        self.fwd.close()
        try:
            self.guestfwd.close()  # smbd children are reaped before their directory goes
        except Exception:
            self._internal_error("guestfwd close")
        if self.smb is not None:
            try:
                self.smb.close()
            except Exception:
                self._internal_error("smb close")
        try:
            self.tcp.close()
        except Exception:
            self._internal_error("TCP close")
        _, vnet_frames, _, _ = self.outbox.drain()  # the RSTs of the connections
        if vnet_frames:
            self._tcp_send(vnet_frames)
        self.gw.close()


_VNET_MIN: Final = vnet_hdr.HDR_LEN + 14
_IPPROTO_TCP: Final = 6


def _is_tcp(frame: bytes) -> int:
    """4 or 6 when a frame behind a virtio-net header is IPv4 or IPv6 TCP (IPv6: the first
    next header; a TCP segment behind extension headers takes the completing path),
    else 0."""
    at = vnet_hdr.HDR_LEN + 12
    etype = (frame[at] << 8) | frame[at + 1] if len(frame) > at + 1 else 0
    if etype == 0x0800:
        return 4 if len(frame) > at + 11 and frame[at + 11] == _IPPROTO_TCP else 0
    if etype == 0x86DD:
        return 6 if len(frame) > at + 8 and frame[at + 8] == _IPPROTO_TCP else 0
    return 0
