"""The user netdev's net client: the adapter between the sans-IO gateway and the loop.

Owns every fd and the one timer of a user netdev: UDP flow sockets (one per guest source,
opened on the first :class:`~.udp_nat.UdpSend`, closed on :class:`~.udp_nat.UdpClose`),
one socket per address family for the DNS upstreams, the ICMP echo sockets (a ping socket
per echo flow, or one raw socket, or none - :func:`.hostsock.icmp_mode`), and the
``loop.call_at`` that runs :meth:`.router.Gateway.tick`. Frames from the peer go through
the gateway in one pass per batch; what the gateway produced leaves as one batch to the
peer (``send``), the host actions run, events go to QMP (``DHCP_LEASE_GRANTED``/
``DHCP_LEASE_RELEASED`` with the netdev name added), and the timer is moved if needed.

It implements the daemon's ``UserNetClient`` protocol: :meth:`usernet_info` (``info
usernet``, QEMU's layout: ``Hub N (NAME):``, the table header, one row per UDP and ICMP
flow, newest first, TCP rows first as libslirp does), :meth:`hostfwd` (HMP ``hostfwd_add`` /
``hostfwd_remove``: QEMU's syntax and texts; the rules live in a
:class:`~.hostfwd.HostForwarder`, bound at creation - a bind failure fails the netdev with
``Could not set up host forwarding rule 'RULE'`` - and shown as ``TCP[HOST_FORWARD]`` /
``UDP[HOST_FORWARD]`` rows) and
:meth:`leases_for` (``guest-network-get-interfaces``), plus :meth:`leases` (the data of a
``query-dhcp-leases`` command) and :meth:`counters`.

Guest TCP (IPv4) ends in a :class:`~.tcp.TcpSplicer` owned here: the gateway hands it
every TCP datagram (``Gateway.ip_handlers``), :meth:`UserNetClient._tcp_resolve` is the
NAT policy (libslirp's ``sotranslate_out``: the host address maps to 127.0.0.1, the DNS
address to the first DNS upstream - port 53 to the upstream's configured port, other
ports unchanged, i.e. DNS over TCP reaches the same resolver as the UDP relay; other
routable destinations are connected to directly; ``restrict=on`` and destinations inside
the virtual network that nobody owns get ECONNREFUSED, answered with RST), and the
splicer's frames leave through :meth:`send` on its own wake-ups (host reads, timers) and
once per guest batch.

IPv6 (unless ``ipv6=off``; QEMU's ``ipv4``/``ipv6`` quirk is applied by the options
module) is a :class:`~.host6.Ipv6Service` behind the same gateway: it registers Ethernet
type 0x86DD, its MACs and its timer with the gateway and owns its own host sockets; guest
TCP over IPv6 comes to the same splicer (:meth:`UserNetClient._tcp_in6`, policy
:meth:`.nat6.Nat6.tcp_target`); its lease data and addresses join :meth:`leases` and
:meth:`leases_for`, its flows the connection table, its counters :meth:`counters`; its
final Router Advertisement (router lifetime 0) leaves at :meth:`cleanup`. ``ipv4=off``
unregisters ARP and IPv4 (their frames are counted as ``ipv4-disabled``).

Invariant: no exception from guest or host input reaches the loop - an unexpected one is
counted (``internal-error``) and logged (rate-limited); the netdev keeps serving.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from netstack.errors import GenericError
from netstack.net.client import NetClient
from netstack.net.hub import HubPort
from netstack.proto import vnet as vnet_hdr

from . import conntable, hostsock, ipv4
from .dns import RESOLV_CONF, ResolvConf, Upstream
from .guestfwd import GuestForwarder
from .host6 import Ipv6Service
from .hostfwd import HostForwarder
from .icmp_relay import PingClose, PingSend
from .ipv6 import Packet6
from .options import (
    GuestFwdRule,
    HostFwdRule,
    UserConfig,
    ip_text,
    parse_guestfwd,
    parse_hostfwd,
    parse_hostfwd_remove,
)
from .router import DNS_PORT, Action, Gateway, Packet
from .tcp import (
    Event,
    Segment,
    State,
    TcpConfig,
    TcpEndpoint,
    TcpSplicer,
    ethernet_header,
    parse_l4,
)
from .tftproot import TftpRoot
from .udp_nat import UdpClose, UdpSend

RX_BATCH: Final = 64


def _drain(sock: socket.socket) -> Iterator[tuple[bytes, Any]]:
    """Up to RX_BATCH datagrams waiting on a non-blocking socket; receive errors (ICMP
    errors queued on the socket) are skipped, not fatal."""
    for _ in range(RX_BATCH):
        try:
            item = sock.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            continue
        yield item


LOG_INTERVAL: Final = 30.0
USERNET_HEADER: Final = (
    "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n"
)
_ECHO = struct.Struct("!BBHHH")
_SOFT_ERRORS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.EINTR)

EventSink = Callable[[str, Mapping[str, Any]], None]


class UserNetClient(NetClient):
    """One user netdev."""

    type = "user"
    #: Offloads (issue #7): guest TSO super-frames and checksum-partial TCP segments are
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
        self.info_str = f"net={ip_text(cfg.net)},restrict={'on' if cfg.restrict else 'off'}"
        self.gw = Gateway(cfg, tftp_root=TftpRoot(cfg.tftp) if cfg.tftp else None, **limits)
        self._loop = loop
        self._log = log
        self._emit = emit_event
        self._icmp_mode = icmp_mode if icmp_mode is not None else hostsock.icmp_mode()
        self._resolv = None if cfg.dns_upstreams else ResolvConf(resolv_conf)
        self._udp: dict[tuple[bytes, int], socket.socket] = {}
        self._udp_ttl: dict[tuple[bytes, int], int] = {}
        self._ping: dict[tuple[bytes, int], socket.socket] = {}
        self._raw: socket.socket | None = None
        self._dns: dict[int, socket.socket] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._closed = False
        self._log_at: dict[str, float] = {}
        self._reported_bad = 0
        self.host_errors = 0
        if self._icmp_mode == "none":
            log.warning(
                "user %s: ICMP echo relay unavailable (net.ipv4.ping_group_range forbids ping "
                "sockets and CAP_NET_RAW is missing): guest pings beyond the gateway are "
                "dropped",
                name,
            )
        if self._resolv is not None:
            self._refresh_upstreams(loop.time())
        self._net_bcast = cfg.broadcast.to_bytes(4, "big")
        #: The IPv6 side (router, NAT, host sockets: :mod:`.host6`); None with ipv6=off.
        self.v6: Ipv6Service | None = None
        if cfg.ipv6:
            self.v6 = Ipv6Service(
                name, cfg, self.gw, loop, flush=self._flush, host_error=self._host_error,
                internal_error=self._internal_error, icmp_mode=icmp_mode,
                offloaded=lambda: self._csum_trusted, udp_max_flows=limits.get("udp_max_flows"),
                icmp_max_flows=limits.get("icmp_max_flows"),
            )  # fmt: skip
            self.v6.router.ip_handlers[ipv4.IPPROTO_TCP] = self._tcp_in6
        if not cfg.ipv4:  # no ARP, no IPv4 service: counted and dropped
            self.gw.eth_handlers[ipv4.ETH_P_IP] = self._ipv4_off
            self.gw.eth_handlers[ipv4.ETH_P_ARP] = self._ipv4_off
        #: Set while a checksum-offloaded TCP frame is in the gateway (see _receive_vnet).
        self._csum_trusted = False
        self.tcp = TcpSplicer(
            loop, TcpConfig(mtu=cfg.mtu, vnet=True), send=self._tcp_send,
            resolve=self._tcp_resolve, l2_for=self._tcp_l2, on_event=self._tcp_event, log=log,
        )  # fmt: skip
        self.gw.ip_handlers[ipv4.IPPROTO_TCP] = self._tcp_in
        self.fwd = HostForwarder(loop, self.gw, self.tcp, send=self._tcp_send, flush=self._flush,
                                 log=log, v6=self.v6)  # fmt: skip
        for rule in cfg.hostfwd:
            err = self._add_hostfwd(rule)
            if err is not None:
                self.fwd.close()
                self.tcp.close()
                self.gw.close()
                raise GenericError(err)
        # guestfwd: rules now (conflicts fail here); chardevs open in create() (async)
        self.guestfwd = GuestForwarder(loop, self.gw, log)
        for grule in cfg.guestfwd:
            try:
                self.guestfwd.add(grule)
            except GenericError:
                self.cleanup()
                raise

    def _add_hostfwd(self, rule: HostFwdRule) -> str | None:
        """Bind ``rule``: None, or QEMU's error text."""
        try:
            self.fwd.add(rule)
        except (OSError, ValueError) as exc:
            self._log.warning("user %s: hostfwd %r: %s", self.name, rule.text, exc)
            return f"Could not set up host forwarding rule '{rule.text}'"
        return None

    # -- peer -> gateway -------------------------------------------------------------------

    def receive(self, frames: Sequence[bytes], vnet: bool) -> int:
        if self._closed:
            return len(frames)
        now = self._loop.time()
        if self._resolv is not None:
            self._refresh_upstreams(now)
        gw_input = self.gw.input
        if vnet:
            self._receive_vnet(frames, now)
        else:
            for frame in frames:
                try:
                    gw_input(frame, now)
                except Exception:
                    self._internal_error("guest frame")
        try:
            self.tcp.flush()
        except Exception:
            self._internal_error("guest TCP")
        self._flush(now)
        return len(frames)

    def _receive_vnet(self, frames: Sequence[bytes], now: float) -> None:
        """Frames behind virtio-net headers: a TCP frame asking for checksum offload or TSO
        goes to the gateway whole (its TCP checksum is partial, so it is not verified:
        :attr:`_csum_trusted`); any other offloaded frame is completed or segmented first
        (rare: UDP from a guest with checksum offload, UFO/USO); the rest lose the header."""
        gw_input = self.gw.input
        for frame in frames:
            try:
                if len(frame) < _VNET_MIN:
                    self.gw.stats["vnet-short"] += 1
                elif not frame[0] & vnet_hdr.NEEDS_CSUM and not frame[1] & ~vnet_hdr.GSO_ECN:
                    gw_input(frame[vnet_hdr.HDR_LEN :], now)
                elif _is_tcp(frame):
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
        if self._resolv.refresh(now):
            self.gw.dns.upstreams = list(self._resolv.servers)
            self._log.info("user %s: DNS upstreams %s", self.name, self._resolv.servers)

    # -- guest TCP -------------------------------------------------------------------------

    def _tcp_in(self, pkt: Packet, now: float) -> None:
        gw = self.gw
        dst = pkt.dst
        if dst[0] >= 224 or dst[0] in (0, 127) or dst == self._net_bcast:
            gw.stats["tcp-not-routed"] += 1  # multicast, broadcast, loopback, 0/8
            return
        seg = parse_l4(pkt.src, dst, pkt.payload, verify=not self._csum_trusted, mac=pkt.src_mac)
        if isinstance(seg, str):
            gw.stats[seg] += 1
            return
        self.tcp.guest_segment(seg, now)

    def _tcp_resolve(self, seg: Segment) -> tuple[int, tuple[Any, ...]] | int | socket.socket:
        target = self.guestfwd.resolve(seg)  # guestfwd targets pass restrict=on too
        if target is not None:
            return target
        gw = self.gw
        if self.cfg.restrict:
            gw.stats["restrict-refused"] += 1
            return errno.ECONNREFUSED
        if seg.v6:
            return self._tcp_resolve6(seg)
        dst = seg.dst
        if dst == gw.host_ip:
            return socket.AF_INET, ("127.0.0.1", seg.dport)
        if dst == gw.dns_ip:
            if not gw.dns.upstreams:
                return errno.ECONNREFUSED
            family, host, port = gw.dns.upstreams[0]
            return family, (host, port if seg.dport == DNS_PORT else seg.dport)
        if dst in gw.local or self.cfg.in_net(int.from_bytes(dst, "big")):
            gw.stats["tcp-not-routed"] += 1
            return errno.ECONNREFUSED
        return socket.AF_INET, (socket.inet_ntoa(dst), seg.dport)

    def _tcp_l2(self, seg: Segment) -> bytes:
        if seg.v6 and self.v6 is not None:
            return self.v6.l2_for(seg)
        return ethernet_header(seg.mac or self.gw.arp.get(seg.src, bytes(6)), self.gw.mac, seg.v6)

    def _tcp_send(self, frames: list[bytes]) -> None:
        self.send(frames, True)  # after cleanup (no peer): counted as tx_dropped

    def _tcp_event(self, m: TcpEndpoint, event: Event, detail: int) -> None:
        if event is Event.HOST_ERROR and detail and self._may_log("TCP host socket"):
            self._log.info("user %s: TCP host socket error: %s", self.name, os.strerror(detail))

    # -- gateway -> peer, host, QMP --------------------------------------------------------

    def _flush(self, now: float) -> None:
        gw = self.gw
        if gw.actions:
            actions, gw.actions = gw.actions, []
            for action in actions:
                try:
                    self._act(action, now)
                except Exception:
                    self._internal_error("host action")
        if gw.out:
            out, gw.out = gw.out, []
            self.send(out)
        if gw.events:
            events, gw.events = gw.events, []
            if self._emit is not None:
                for name, data in events:
                    self._emit(name, {"netdev": self.name, **data})
        self._schedule(now)

    def _act(self, action: Action, now: float) -> None:
        if isinstance(action, UdpSend):
            self._udp_send(action, now)
        elif isinstance(action, Upstream):
            self._dns_send(action)
        elif isinstance(action, UdpClose):
            self._close_udp(action.key)
        elif isinstance(action, PingSend):
            self._ping_send(action)
        elif isinstance(action, PingClose):
            self._close_ping(action.key)

    # -- UDP flows -------------------------------------------------------------------------

    def _udp_send(self, a: UdpSend, now: float) -> None:
        sock = self._udp.get(a.key)
        if sock is None:
            try:
                sock = hostsock.udp_flow_socket()
            except OSError as exc:
                self._host_error("UDP socket", exc)
                self.gw.udp.close(a.key)
                return
            self._udp[a.key] = sock
            key = a.key
            self._loop.add_reader(sock.fileno(), self._udp_readable, key, sock)
        if self._udp_ttl.get(a.key) != a.ttl:
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, max(1, min(a.ttl, 255)))
                self._udp_ttl[a.key] = a.ttl
            except OSError:
                pass
        for _attempt in range(2):
            try:
                sock.sendto(a.payload, (a.host, a.port))
                return
            except OSError as exc:
                if exc.errno == errno.ECONNREFUSED:
                    continue  # an earlier datagram's error, reported late: send again
                if exc.errno in _SOFT_ERRORS:
                    self.gw.stats["udp-send-dropped"] += 1
                    return
                # libslirp answers a failed send with "network unreachable"
                self.gw.udp_host_error(a.key, a.host, a.port, ipv4.ICMP_UNREACH,
                                       ipv4.UNREACH_NET, None, a.payload)  # fmt: skip
                self._host_error("UDP send", exc)
                return

    def _udp_readable(self, key: tuple[bytes, int], sock: socket.socket) -> None:
        if self._closed or self._udp.get(key) is not sock:
            return
        now = self._loop.time()
        gw = self.gw
        try:
            for err in hostsock.read_errors(sock):
                gw.udp_host_error(key, err.host, err.port, err.icmp_type, err.code,
                                  err.offender, err.head)  # fmt: skip
            for _ in range(RX_BATCH):
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno != errno.ECONNREFUSED:  # reported through the error queue
                        self._host_error("UDP receive", exc)
                    break
                gw.udp_from_host(key, addr[0], addr[1], data, now)
        except Exception:
            self._internal_error("UDP flow")
        self._flush(now)

    def _close_udp(self, key: tuple[bytes, int]) -> None:
        sock = self._udp.pop(key, None)
        self._udp_ttl.pop(key, None)
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()

    # -- DNS upstreams ---------------------------------------------------------------------

    def _dns_send(self, a: Upstream) -> None:
        sock = self._dns.get(a.family)
        if sock is None:
            try:
                sock = socket.socket(a.family, socket.SOCK_DGRAM)
                sock.setblocking(False)
            except OSError as exc:
                self._host_error("DNS socket", exc)
                return
            self._dns[a.family] = sock
            self._loop.add_reader(sock.fileno(), self._dns_readable, sock)
        try:
            sock.sendto(a.payload, (a.host, a.port))
        except OSError as exc:
            self.gw.stats["dns-send-failed"] += 1
            self._host_error("DNS send", exc)

    def _dns_readable(self, sock: socket.socket) -> None:
        if self._closed:
            return
        now = self._loop.time()
        try:
            for data, addr in _drain(sock):
                self.gw.dns_from_upstream((addr[0], addr[1]), data, now)
        except Exception:
            self._internal_error("DNS upstream")
        self._flush(now)

    # -- ICMP echo -------------------------------------------------------------------------

    def _ping_send(self, a: PingSend) -> None:
        mode = self._icmp_mode
        if mode == "ping":
            sock = self._ping.get(a.key)
            if sock is None:
                try:
                    sock = hostsock.ping_socket()
                except OSError as exc:
                    self._host_error("ping socket", exc)
                    self.gw.icmp.close(a.key)
                    return
                self._ping[a.key] = sock
                self._loop.add_reader(sock.fileno(), self._ping_readable, a.key, sock)
            packet = _ECHO.pack(ipv4.ICMP_ECHO, 0, 0, a.host_id, a.seq) + a.payload
        elif mode == "raw":
            sock = self._raw_socket()
            if sock is None:
                return
            packet = ipv4.icmp_message(ipv4.ICMP_ECHO, 0, struct.pack("!HH", a.host_id, a.seq),
                                       a.payload)  # fmt: skip
        else:
            self.gw.stats["icmp-relay-unavailable"] += 1
            return
        try:
            sock.sendto(packet, (a.host, 0))
        except OSError as exc:
            self.gw.stats["icmp-send-failed"] += 1
            self._host_error("ICMP send", exc)

    def _raw_socket(self) -> socket.socket | None:
        if self._raw is None:
            try:
                self._raw = hostsock.raw_icmp_socket()
            except OSError as exc:
                self._host_error("raw ICMP socket", exc)
                return None
            self._loop.add_reader(self._raw.fileno(), self._raw_readable)
        return self._raw

    def _ping_readable(self, key: tuple[bytes, int], sock: socket.socket) -> None:
        if self._closed or self._ping.get(key) is not sock:
            return
        now = self._loop.time()
        try:
            for data, addr in _drain(sock):
                if len(data) >= 8 and data[0] == ipv4.ICMP_ECHOREPLY:
                    seq = (data[6] << 8) | data[7]
                    self.gw.ping_reply(key, addr[0], seq, data[8:], now)
        except Exception:
            self._internal_error("ping socket")
        self._flush(now)

    def _raw_readable(self) -> None:
        sock = self._raw
        if self._closed or sock is None:
            return
        now = self._loop.time()
        gw = self.gw
        try:
            for data, addr in _drain(sock):
                ihl = (data[0] & 15) * 4 if data else 0
                icmp = data[ihl:]
                if len(icmp) < 8 or icmp[0] != ipv4.ICMP_ECHOREPLY:
                    continue
                key = gw.icmp.key_for_host_id((icmp[4] << 8) | icmp[5])
                if key is not None:
                    gw.ping_reply(key, addr[0], (icmp[6] << 8) | icmp[7], icmp[8:], now)
        except Exception:
            self._internal_error("raw ICMP socket")
        self._flush(now)

    def _close_ping(self, key: tuple[bytes, int]) -> None:
        sock = self._ping.pop(key, None)
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        if self._raw is not None and not self.gw.icmp.flows:
            self._loop.remove_reader(self._raw.fileno())
            self._raw.close()
            self._raw = None

    # -- IPv6 ------------------------------------------------------------------------------

    def _tcp_in6(self, p: Packet6, now: float) -> None:
        """Guest TCP over IPv6 (the router's TCP handler: to our addresses or beyond the
        link, hop limit checked) into the same splicer as IPv4."""
        seg = parse_l4(p.src, p.dst, p.payload, verify=not self._csum_trusted, mac=p.src_mac)
        if isinstance(seg, str):
            self.gw.stats[seg] += 1
            return
        self.tcp.guest_segment(seg, now)

    def _tcp_resolve6(self, seg: Segment) -> tuple[int, tuple[Any, ...]] | int:
        """The NAT policy for IPv6 (:meth:`.nat6.Nat6.tcp_target`): the host address to
        ::1, the DNS address to the first upstream, other in-prefix addresses refused,
        global ones connected to directly."""
        if self.v6 is None:
            return errno.ECONNREFUSED
        return self.v6.nat.tcp_target(seg.dst, seg.dport)

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
            self._flush(now)

    # -- timer -----------------------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        when = self.gw.next_deadline()
        if self._closed or when is None:
            return
        if self._timer is not None:
            if when >= self._timer_at - 0.001:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self._loop.time()
        try:
            self.gw.tick(now)
        except Exception:
            self._internal_error("timer")
        self._sync_bad(now)
        self._flush(now)

    # -- errors and logging ----------------------------------------------------------------

    def _internal_error(self, where: str) -> None:
        self.gw.stats["internal-error"] += 1
        if self._may_log("internal"):
            self._log.exception("user %s: unexpected error handling %s", self.name, where)

    def _host_error(self, what: str, exc: OSError) -> None:
        self.host_errors += 1
        if self._may_log(what):
            self._log.warning("user %s: %s failed: %s", self.name, what, exc)

    def _may_log(self, topic: str) -> bool:
        now = self._loop.time()
        last = self._log_at.get(topic)
        if last is not None and now - last < LOG_INTERVAL:
            return False
        self._log_at[topic] = now
        return True

    def _sync_bad(self, now: float) -> None:
        """Fold malformed-input counters into ``stats.malformed`` and log new ones."""
        counters = self._input_counters()
        bad = sum(v for k, v in counters.items() if _is_bad(k))
        self.stats.malformed = bad
        if bad > self._reported_bad and self._may_log("bad-input"):
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(counters.items()) if _is_bad(k) and v)
            self._log.warning("user %s: dropped bad input (totals: %s)", self.name, detail)
            self._reported_bad = bad

    # -- guestfwd --------------------------------------------------------------------------

    def guestfwd_add(self, rule_text: str) -> str | None:
        """Add a guestfwd rule at run time (QEMU's syntax; beyond QEMU, which has no
        ``guestfwd_add``): None, or QEMU's error text. ``cmd:`` and ``chardev:ID`` rules
        work on return; a chardev spec opens in the background (the rule is listed at
        once; if the chardev fails to open the rule is removed and the failure logged)."""
        try:
            self.guestfwd.add(parse_guestfwd(rule_text, self.cfg), start=True)
        except GenericError as exc:
            return str(exc.desc)
        return None

    def guestfwd_remove(self, server: str, port: int) -> bool:
        """Remove the rule for ``server:port``; False if there is none."""
        fwd = self.guestfwd.find(server, port)
        if fwd is None:
            return False
        self.guestfwd.remove(fwd)
        return True

    def guestfwd_rules(self) -> list[GuestFwdRule]:
        """The guestfwd rules, in creation order."""
        return [fwd.rule for fwd in self.guestfwd.forwards]

    # -- monitor views ---------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Driver counters (drops by reason, service work), for tests and tools."""
        self._sync_bad(self._loop.time())
        out = self._input_counters()
        out["host-errors"] = self.host_errors
        out["udp-sockets"] = len(self._udp)
        for key, value in self.tcp.counters().items():
            out[key if key.startswith("tcp-") else f"tcp-{key}"] = value
        return out

    def usernet_info(self) -> str:
        """HMP ``info usernet``, rendered from the rows of :meth:`connections` and
        :meth:`forwards` (:func:`.conntable.render_usernet`)."""
        peer = self.peer
        hub = peer.hub.id if isinstance(peer, HubPort) else -1
        return conntable.render_usernet(hub, self.name, self._conn_rows(), self._forward_rows())

    def _conn_rows(self) -> list[conntable.ConnRow]:
        """Every connection and flow, newest first per table. Another table (IPv6 UDP,
        ICMPv6) adds its rows here; ``info usernet`` groups them by protocol."""
        now = self._loop.time()
        guestfwd = conntable.guestfwd_targets(self.guestfwd_rules())
        return [
            *conntable.tcp_rows(self.tcp.flows.values(), guestfwd),
            *conntable.udp_rows(self.gw.udp.flows, self._udp, now),
            *conntable.icmp_rows(self.gw.icmp.flows, self._ping, self._raw, now),
            *(self.v6.conn_rows(now) if self.v6 is not None else ()),
        ]

    def _forward_rows(self) -> list[conntable.ForwardRow]:
        return conntable.forward_rows(self.fwd.forwards, self.guestfwd_rules())

    def connections(self) -> list[dict[str, Any]]:
        """The connection table (``query-user-connections``): the rows of ``info usernet``
        without the forwarding listeners."""
        return [row.to_qmp(self.name) for row in self._conn_rows()]

    def forwards(self) -> list[dict[str, Any]]:
        """The forwarding rules (``query-user-forwards``): hostfwd, then guestfwd, each in
        creation order."""
        return [row.to_qmp(self.name) for row in self._forward_rows()]

    def forward_add(self, kind: str, rule: str) -> dict[str, Any]:
        """``user-forward-add``: set up a hostfwd or guestfwd rule given in QEMU's syntax;
        returns it as :meth:`forwards` lists it (a hostfwd with its bound port). Raises
        GenericError with QEMU's texts."""
        if kind == "guestfwd":
            err = self.guestfwd_add(rule)
            if err is not None:
                raise GenericError(err)
            row = [r for r in self._forward_rows() if r.type == kind and r.rule == rule][-1]
            return row.to_qmp(self.name)
        err = self._add_hostfwd(parse_hostfwd(rule))
        if err is not None:
            raise GenericError(err)
        return conntable.hostfwd_row(self.fwd.forwards[-1]).to_qmp(self.name)

    def forward_remove(self, kind: str, protocol: str | None, addr: str | None, port: int) -> None:
        """``user-forward-remove``: hostfwd by protocol (tcp), bound host address (any) and
        port; guestfwd by guest address (net + .4) and port. GenericError if none matches."""
        if kind == "guestfwd":
            server = conntable.guest_address(addr, self.cfg.net | 4)
            if not self.guestfwd_remove(server, port):
                raise GenericError(f"guest forwarding rule for tcp:{addr or ''}:{port} not found")
            return
        proto = protocol or "tcp"
        fwd = self.fwd.find(proto == "udp", conntable.host_address(addr), port)
        if fwd is None:
            raise GenericError(f"host forwarding rule for {proto}:{addr or ''}:{port} not found")
        self.fwd.remove(fwd)

    def hostfwd(self, command: str, args: Sequence[str]) -> str:
        if not args:
            return "invalid format\n"
        rule = args[0]
        if command == "hostfwd_add":
            try:
                parsed = parse_hostfwd(rule)
            except GenericError as exc:
                return f"{exc.desc}\n"
            err = self._add_hostfwd(parsed)
            return "" if err is None else f"{err}\n"
        # hostfwd_remove [tcp|udp]:[hostaddr]:hostport (the port as strict base-10 int)
        parsed_remove = parse_hostfwd_remove(rule)
        if parsed_remove is None:
            return "invalid format\n"
        fwd = self.fwd.find(*parsed_remove)
        if fwd is None:
            return f"host forwarding rule for {rule} not found\n"
        self.fwd.remove(fwd)
        return f"host forwarding rule for {rule} removed\n"

    def leases_for(self, mac: bytes) -> list[tuple[str, int]]:
        """The guest's addresses: DHCPv4 leases, then IPv6 (DHCPv6 leases and the addresses
        it was seen using, e.g. SLAAC and link-local ones)."""
        found = self.gw.dhcp.leases_for(bytes(mac))
        if self.v6 is not None:
            found += self.v6.addresses_for(bytes(mac))
        return found

    def leases(self) -> list[dict[str, Any]]:
        """The DHCP lease tables, DHCPv4 then DHCPv6 (the data of ``query-dhcp-leases``)."""
        now = self._loop.time()
        entries = self.gw.dhcp.leases(now) + (self.v6.leases(now) if self.v6 is not None else [])
        return [{"netdev": self.name, **entry} for entry in entries]

    # -- life ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.v6 is not None:  # the final RA (router lifetime 0) while the peer is there
            try:
                self.send(self.v6.close())
            except Exception:
                self._internal_error("IPv6 close")
        for key in list(self._udp):
            self._close_udp(key)
        for key in list(self._ping):
            self._close_ping(key)
        socks = list(self._dns.values()) + ([self._raw] if self._raw is not None else [])
        for sock in socks:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._dns.clear()
        self._raw = None
        self.fwd.close()
        try:
            self.guestfwd.close()
        except Exception:
            self._internal_error("guestfwd close")
        try:
            self.tcp.close()
        except Exception:
            self._internal_error("TCP close")
        self.gw.close()


#: libslirp's names (``tcpstates``); a guest SYN held while the host connects shows as
#: SYN_RCVD, as in libslirp.
_TCP_STATE_NAMES: Final = {State.CONNECTING: "SYN_RCVD"}


_VNET_MIN: Final = vnet_hdr.HDR_LEN + 14
_IPPROTO_TCP: Final = 6


def _is_tcp(frame: bytes) -> bool:
    """Whether a frame behind a virtio-net header is IPv4 or IPv6 TCP (IPv6: the first
    next header; a TCP segment behind extension headers takes the completing path)."""
    at = vnet_hdr.HDR_LEN + 12
    etype = (frame[at] << 8) | frame[at + 1] if len(frame) > at + 1 else 0
    if etype == 0x0800:
        return len(frame) > at + 11 and frame[at + 11] == _IPPROTO_TCP
    if etype == 0x86DD:
        return len(frame) > at + 8 and frame[at + 8] == _IPPROTO_TCP
    return False


def _is_bad(name: str) -> bool:
    return any(word in name for word in ("malformed", "bad-", "short", "mismatch", "unexpected"))
