"""The virtual gateway of the user netdev: Ethernet, ARP, IPv4 and the local services.

Owns what the guest sees of the virtual network: ARP answers for the gateway's addresses
(host, DNS and guestfwd addresses: :attr:`Gateway.local`) with libslirp's MACs
``52:55:a:b:c:d``; an ARP table learnt from guest frames (bounded), with guest-bound packets
held while an ARP request for an unknown guest address is out; IPv4 header checks and
fragment reassembly (:mod:`.fragments`); dispatch by IP protocol (:attr:`Gateway.ip_handlers`:
ICMP and UDP here, TCP registered by the adapter, which owns the guest TCP splicer - any
other protocol gets ICMP "protocol unreachable" for a unicast datagram); local ICMP echo
for the gateway's addresses; the UDP services (DHCP on 67 at the host address or
broadcast, TFTP on 69 at the host address, DNS on 53 at the DNS address) and the UDP NAT
and ICMP echo relay for everything else; ``restrict=on`` (UDP other than DHCP/TFTP and
relayed ICMP dropped); and building guest-bound frames
(:mod:`netstack.proto.ipv4`: fragmented to the MTU, padded to 60 bytes).

Sans-IO, on the netdev's contract (:mod:`..endpoint`): frames and host events go in with
``now``; frames for the guest go into the netdev's :class:`~..endpoint.Outbox`
(:attr:`Gateway.out` is its frame list), work for the host sockets into its action list
(:class:`~..udp_nat.UdpSend`/:class:`~..udp_nat.UdpClose`, :class:`~..dns.Upstream`,
:class:`~..icmp_relay.PingSend`/:class:`~..icmp_relay.PingClose`,
:class:`~..udp_nat.UdpReply`) and QMP events into its event list; the adapter drains it.
Each timed service is one entry of the netdev's :class:`~..endpoint.Deadlines`
(:attr:`Gateway.parts`), told when input touched it; :meth:`Gateway.tick` and
:meth:`Gateway.next_deadline` run and ask all of them at once (standalone use). Bad input
never raises: it is counted (:meth:`Gateway.counters`) and dropped.

Deviation from libslirp: guest UDP to broadcast or multicast addresses is dropped (libslirp
relays limited broadcast to host loopback), and only the guest's own unicast sources are
NATed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, Literal, NamedTuple

from netstack.counters import Family, FamilyKey, by_name
from netstack.proto import ipv4
from netstack.proto import vnet as vnet_hdr
from netstack.proto.checksum import udp4_ok, verify
from netstack.proto.ipv4 import (
    ARP,
    BROADCAST_IP,
    BROADCAST_MAC,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IP_MF,
    IP_OFFMASK,
    IPPROTO_ICMP,
    IPPROTO_UDP,
    UDP,
    ZERO_IP,
)
from netstack.proto.tcp import Segment, TcpDropReason, parse_frame

from ..dns import DnsRelay, ToGuest, Upstream
from ..endpoint import Deadlines, Outbox, Part
from ..icmp_relay import IcmpRelay, PingClose, PingSend
from ..options import UserConfig
from ..tftp import TftpServer
from ..tftproot import TftpRoot
from ..udp_nat import UdpClose, UdpNat, UdpReply, UdpSend
from .dhcp import BOOTP_CLIENT, BOOTP_SERVER, DhcpServer
from .fragments import Reassembler

ARP_TABLE_MAX: Final = 1024
ARP_HOLD: Final = 3.0
ARP_HOLD_PACKETS: Final = 16
TFTP_PORT: Final = 69
DNS_PORT: Final = 53

Action = UdpSend | UdpClose | UdpReply | Upstream | PingSend | PingClose
"""Work for the adapter (other machines of the netdev add their own kinds)."""


class Packet(NamedTuple):
    """A guest IPv4 datagram (reassembled if it came in fragments)."""

    src: bytes
    dst: bytes
    proto: int
    ttl: int
    tos: int
    header: bytes
    payload: bytes
    src_mac: bytes


class _Held:
    __slots__ = ("deadline", "packets")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.packets: list[tuple[bytes, int, bytes]] = []  # src, proto, l4


#: What the gateway counts in :attr:`Gateway.stats`: its own drops and work, TCP frames the
#: client could not parse, and what the client's host side (:mod:`..v4.host`,
#: :mod:`..udpflows`, :mod:`..hostecho`, :mod:`..reporting`) counts there.
GatewayCounter = (
    Literal[
        "arp-hold-dropped", "arp-malformed", "arp-replies", "arp-unresolved-dropped",
        "dns-send-failed", "eth-not-for-us", "eth-short", "eth-unknown-type", "icmp-echo-local",
        "icmp-ignored", "icmp-malformed", "icmp-not-routed", "icmp-relay-unavailable",
        "icmp-send-failed", "internal-error", "ip-bad-checksum", "ip-bad-source",
        "ip-malformed", "ip-protocol-unsupported", "ipv4-disabled", "ipv6-unsupported",
        "restrict-dropped", "restrict-refused", "tcp-not-routed", "udp-bad-checksum",
        "udp-dns-other-port", "udp-flow-gone", "udp-malformed", "udp-not-routed",
        "udp-send-dropped", "vnet-short",
    ]
    | TcpDropReason
)  # fmt: skip
#: ``icmp-error-sent-TYPE-CODE``: ICMP errors sent to the guest, per type and code.
ICMP_ERROR_SENT: Final = Family("icmp-error-sent")


class Gateway:
    """The guest-facing side of one user netdev."""

    def __init__(
        self,
        cfg: UserConfig,
        *,
        tftp_root: TftpRoot | None = None,
        udp_max_flows: int | None = None,
        icmp_max_flows: int | None = None,
        tftp_max_sessions: int | None = None,
        outbox: Outbox | None = None,
        deadlines: Deadlines | None = None,
    ) -> None:
        self.cfg = cfg
        #: The netdev's output (:mod:`..endpoint`); its own when used alone.
        self.outbox = outbox if outbox is not None else Outbox()
        #: The netdev's timers; its own when used alone (then :meth:`tick` runs them).
        self.deadlines = deadlines if deadlines is not None else Deadlines()
        self._frames = self.outbox.frames
        self._actions = self.outbox.actions
        self.host_ip = cfg.host.to_bytes(4, "big")
        self.dns_ip = cfg.dns.to_bytes(4, "big")
        self.mac = ipv4.virtual_mac(self.host_ip)
        #: Addresses the gateway owns (answers ARP and echo for), with their MACs.
        self.local: dict[bytes, bytes] = {}
        self._macs: set[bytes] = set()
        self.add_local(self.host_ip)
        self.add_local(self.dns_ip)
        self._net_bcast = cfg.broadcast.to_bytes(4, "big")
        self.arp: dict[bytes, bytes] = {}
        self._held: dict[bytes, _Held] = {}
        self.reassembly = Reassembler()
        self.dhcp = DhcpServer(cfg, events=self.outbox.events)
        self.tftp = TftpServer(tftp_root, **_kw(max_sessions=tftp_max_sessions))
        self.dns = DnsRelay(cfg.dns_upstreams)
        self.udp = UdpNat(self.host_ip, **_kw(max_flows=udp_max_flows))
        self.icmp = IcmpRelay(self.host_ip, **_kw(max_flows=icmp_max_flows))
        #: IPv4 protocol number -> handler (the adapter registers TCP here).
        self.ip_handlers: dict[int, Callable[[Packet, float], None]] = {
            IPPROTO_ICMP: self._icmp_in,
            IPPROTO_UDP: self._udp_in,
        }
        #: Ethertype -> handler (the IPv6 side registers 0x86DD here: :mod:`..v6.host`).
        self.eth_handlers: dict[int, Callable[[bytes, float], None]] = {
            ETH_P_IP: self._ipv4_in,
            ETH_P_ARP: self._arp_in,
        }
        self.stats: Counter[GatewayCounter | FamilyKey] = Counter()
        self._ident = random.getrandbits(16)
        self._hold_wake: float | None = None
        self._now = 0.0
        self._t_reassembly = Part(self.reassembly.next_deadline, self._reassembly_tick)
        self._t_dhcp = Part(self.dhcp.next_deadline, self.dhcp.expire)
        self._t_tftp = Part(self.tftp.next_deadline, self._tftp_tick)
        self._t_dns = Part(self.dns.next_deadline, self._dns_tick)
        self._t_udp = Part(self.udp.next_deadline, self._udp_tick)
        self._t_icmp = Part(self.icmp.next_deadline, self._icmp_tick)
        self._t_held = Part(self._held_deadline, self._expire_held)
        #: The timed services, each one entry of :attr:`deadlines`.
        self.parts: tuple[Part, ...] = (
            self._t_reassembly, self._t_dhcp, self._t_tftp, self._t_dns, self._t_udp,
            self._t_icmp, self._t_held,
        )  # fmt: skip

    @property
    def out(self) -> list[bytes]:
        """Guest-bound frames not yet drained (the outbox's list)."""
        return self.outbox.frames

    @property
    def actions(self) -> list[Action]:
        """Host actions not yet drained (the outbox's list)."""
        return self.outbox.actions

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """QMP events not yet drained (the outbox's list)."""
        return self.outbox.events

    def count(self, name: GatewayCounter) -> None:
        """Count one ``name`` (for the host side, which shares :attr:`stats`)."""
        self.stats[name] += 1

    def add_local(self, addr: bytes) -> None:
        """Make the gateway own ``addr`` (ARP with its virtual MAC, ICMP echo)."""
        mac = ipv4.virtual_mac(addr)
        self.local[addr] = mac
        self._macs.add(mac)

    def remove_local(self, addr: bytes) -> None:
        """Stop owning ``addr`` (a guestfwd address no rule names any more)."""
        mac = self.local.pop(addr, None)
        if mac is not None and mac not in self.local.values():
            self._macs.discard(mac)

    def accept_mac(self, mac: bytes) -> None:
        """Let unicast frames to ``mac`` past the MAC filter too: a MAC another machine
        behind this port answers with (the IPv6 router's ``52:56:xx``; its handler in
        :attr:`eth_handlers` filters again). Nothing is answered for it here."""
        self._macs.add(mac)

    # -- guest frames ----------------------------------------------------------------------

    def input(self, frame: bytes, now: float) -> None:
        """One frame from the guest side."""
        self._now = now
        if len(frame) < 14:
            self.stats["eth-short"] += 1
            return
        if not frame[0] & 1 and frame[:6] not in self._macs:  # unicast to someone else
            self.stats["eth-not-for-us"] += 1
            return
        etype = (frame[12] << 8) | frame[13]
        handler = self.eth_handlers.get(etype)
        if handler is not None:
            handler(frame, now)
        elif etype == ETH_P_IPV6:
            self.stats["ipv6-unsupported"] += 1  # ipv6=off: no IPv6 handler registered
        else:
            self.stats["eth-unknown-type"] += 1

    def offloaded_tcp(self, frame: bytes) -> Segment | GatewayCounter:
        """An IPv4 TCP frame behind a virtio-net header that asks for checksum offload or
        TSO - the bulk of a guest's TCP - checked as :meth:`input` and :meth:`_ipv4_in`
        check it, but in place: its payload (up to 64 KiB) reaches the splicer as a view
        of ``frame``, not as copies. The TCP checksum is partial, so it is not verified.
        Returns the segment (the guest's address learnt) or the drop reason to count."""
        if not frame[vnet_hdr.HDR_LEN] & 1 and (
            frame[vnet_hdr.HDR_LEN : vnet_hdr.HDR_LEN + 6] not in self._macs
        ):
            return "eth-not-for-us"
        seg = parse_frame(frame, True)
        if isinstance(seg, str):
            return seg
        if seg.v6 or not self._unicast_source(seg.src):
            return "ip-bad-source"
        self._learn(seg.src, seg.mac)
        return seg

    def _arp_in(self, frame: bytes, now: float) -> None:
        if len(frame) < 42:
            self.stats["arp-malformed"] += 1
            return
        htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = ARP.unpack_from(frame, 14)
        if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
            self.stats["arp-malformed"] += 1
            return
        if self._unicast_source(spa):
            self._learn(spa, sha)
        if op == 1 and tpa in self.local:
            self._frames.append(ipv4.arp_packet(2, self.local[tpa], tpa, sha, spa, sha))
            self.stats["arp-replies"] += 1

    def _unicast_source(self, addr: bytes) -> bool:
        return (
            addr not in (ZERO_IP, BROADCAST_IP, self._net_bcast)
            and addr[0] < 224
            and addr[0] != 127
            and addr not in self.local
        )

    def _learn(self, ip: bytes, mac: bytes) -> None:
        if mac[0] & 1:
            return
        table = self.arp
        if table.get(ip) != mac:
            if ip not in table and len(table) >= ARP_TABLE_MAX:
                del table[next(iter(table))]
            table[ip] = mac
        held = self._held.pop(ip, None)
        if held is not None:
            for src, proto, l4 in held.packets:
                self.ip_to_guest(src, ip, proto, l4, mac)

    def _ipv4_in(self, frame: bytes, now: float) -> None:
        n = len(frame)
        if n < 34 or frame[14] >> 4 != 4:
            self.stats["ip-malformed"] += 1
            return
        ihl = (frame[14] & 15) * 4
        total = (frame[16] << 8) | frame[17]
        if ihl < 20 or total < ihl or 14 + total > n:
            self.stats["ip-malformed"] += 1
            return
        if not ipv4.header_ok(frame, 14, ihl):
            self.stats["ip-bad-checksum"] += 1
            return
        header = frame[14 : 14 + ihl]
        src = frame[26:30]
        dst = frame[30:34]
        if not self._unicast_source(src) and not (src == ZERO_IP and frame[23] == IPPROTO_UDP):
            self.stats["ip-bad-source"] += 1
            return
        src_mac = frame[6:12]
        if src != ZERO_IP:
            self._learn(src, src_mac)
        payload = frame[14 + ihl : 14 + total]
        frag = (frame[20] << 8) | frame[21]
        if frag & (IP_MF | IP_OFFMASK):
            key = (src, dst, frame[23], (frame[18] << 8) | frame[19])
            done = self.reassembly.add(
                key, header, (frag & IP_OFFMASK) * 8, bool(frag & IP_MF), payload, now
            )
            self.deadlines.changed(self._t_reassembly)
            if done is None:
                return
            header, payload = done
        proto = frame[23]
        packet = Packet(src, dst, proto, frame[22], frame[15], header, payload, src_mac)
        handler = self.ip_handlers.get(proto)
        if handler is not None:
            handler(packet, now)
            return
        self.stats["ip-protocol-unsupported"] += 1
        if dst in self.local or self._external(dst):
            self.icmp_error(packet, ipv4.ICMP_UNREACH, ipv4.UNREACH_PROTOCOL)

    def _external(self, dst: bytes) -> bool:
        """Whether ``dst`` lies beyond the gateway (NATed through the host)."""
        value = int.from_bytes(dst, "big")
        return not self.cfg.in_net(value) and 0 < dst[0] < 224 and dst[0] != 127

    # -- UDP -------------------------------------------------------------------------------

    def _udp_in(self, pkt: Packet, now: float) -> None:
        p = pkt.payload
        if len(p) < 8:
            self.stats["udp-malformed"] += 1
            return
        sport, dport, ulen, csum = UDP.unpack_from(p)
        if ulen < 8 or ulen > len(p):
            self.stats["udp-malformed"] += 1
            return
        if ulen < len(p):
            p = p[:ulen]
        if csum and not udp4_ok(pkt.src, pkt.dst, p):
            self.stats["udp-bad-checksum"] += 1
            return
        data = p[8:]
        dst = pkt.dst
        if dport == BOOTP_SERVER and (dst == self.host_ip or dst == BROADCAST_IP):
            for reply in self.dhcp.handle(data, now):
                seg = ipv4.udp_segment(
                    self.host_ip, reply.dst_ip, BOOTP_SERVER, BOOTP_CLIENT, reply.payload
                )
                self.ip_to_guest(self.host_ip, reply.dst_ip, IPPROTO_UDP, seg, reply.dst_mac)
            self.deadlines.changed(self._t_dhcp)
            return
        if pkt.src == ZERO_IP:
            self.stats["ip-bad-source"] += 1
            return
        if dport == TFTP_PORT and dst == self.host_ip:
            host_ip, src, mac = self.host_ip, pkt.src, pkt.src_mac
            for reply_payload in self.tftp.handle((src, sport), data, now):
                seg = ipv4.udp_segment(host_ip, src, TFTP_PORT, sport, reply_payload)
                self.ip_to_guest(host_ip, src, IPPROTO_UDP, seg, mac)
            self.deadlines.changed(self._t_tftp)
            return
        if self.cfg.restrict:  # only answers to UDP hostfwd flows pass (libslirp: none)
            answer = self.udp.reply_to_forward(pkt.src, sport, dst, dport, data)
            if answer is None:
                self.stats["restrict-dropped"] += 1
            else:
                self._actions.append(answer)
            return
        if dst == self.dns_ip:
            if dport == DNS_PORT:
                self._dns_results(self.dns.query(pkt.src, sport, data, now))
                self.deadlines.changed(self._t_dns)
            else:
                self.stats["udp-dns-other-port"] += 1
            return
        if dst != self.host_ip and not self._external(dst):
            self.stats["udp-not-routed"] += 1
            return
        if pkt.ttl <= 1:
            self.icmp_error(pkt, ipv4.ICMP_TIMXCEED, 0)
            return
        send = self.udp.outbound(pkt.src, sport, dst, dport, data, pkt.ttl - 1, now)
        if send is not None:
            self._actions.append(send)
            if send.__class__ is UdpSend:
                self.deadlines.changed(self._t_udp)

    def _dns_results(self, results: list[Upstream | ToGuest]) -> None:
        for item in results:
            if isinstance(item, ToGuest):
                self._udp_to_guest(
                    self.dns_ip, DNS_PORT, item.client_ip, item.client_port, item.payload
                )
            else:
                self._actions.append(item)

    def _udp_to_guest(self, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> None:
        seg = ipv4.udp_segment(src, dst, sport, dport, payload)
        self.ip_to_guest(src, dst, IPPROTO_UDP, seg)

    # -- ICMP ------------------------------------------------------------------------------

    def _icmp_in(self, pkt: Packet, now: float) -> None:
        p = pkt.payload
        if len(p) < 8 or not verify(p):
            self.stats["icmp-malformed"] += 1
            return
        if p[0] != ipv4.ICMP_ECHO:
            self.stats["icmp-ignored"] += 1
            return
        if pkt.dst in self.local:
            reply = ipv4.icmp_message(ipv4.ICMP_ECHOREPLY, 0, p[4:8], p[8:])
            self.ip_to_guest(pkt.dst, pkt.src, IPPROTO_ICMP, reply, pkt.src_mac)
            self.stats["icmp-echo-local"] += 1
            return
        if self.cfg.restrict:
            self.stats["restrict-dropped"] += 1
            return
        if not self._external(pkt.dst):
            self.stats["icmp-not-routed"] += 1
            return
        ident, seq = (p[4] << 8) | p[5], (p[6] << 8) | p[7]
        send = self.icmp.outbound(pkt.src, pkt.dst, ident, seq, p[8:], pkt.ttl - 1, now)
        if send is not None:
            self._actions.append(send)
            self.deadlines.changed(self._t_icmp)

    def icmp_error(self, pkt: Packet, icmp_type: int, code: int, src: bytes | None = None) -> None:
        """An ICMP error about a guest datagram, from ``src`` (default: the host address)."""
        if not ipv4.may_send_icmp_error(pkt.header, pkt.payload):
            return
        body = ipv4.icmp_error_body(pkt.header + pkt.payload)
        self._send_icmp_error(src or self.host_ip, pkt.src, icmp_type, code, body)

    def _send_icmp_error(
        self, src: bytes, dst: bytes, icmp_type: int, code: int, body: bytes
    ) -> None:
        msg = ipv4.icmp_message(icmp_type, code, bytes(4), body)
        self.ip_to_guest(src, dst, IPPROTO_ICMP, msg)
        self.stats[ICMP_ERROR_SENT.key(icmp_type, code)] += 1

    # -- host side -------------------------------------------------------------------------

    def udp_from_host(
        self, key: tuple[bytes, int], host: str, port: int, payload: bytes, now: float
    ) -> None:
        """A datagram that arrived on a UDP flow's host socket."""
        self._now = now
        src = self.udp.inbound(key, host, port, now)
        if src is None:
            self.stats["udp-flow-gone"] += 1
            return
        if port == 53:  # an answer shortens the flow's life (DNS_IDLE): maybe earlier
            self.deadlines.changed(self._t_udp)
        self._udp_to_guest(src, port, key[0], key[1], payload)

    def udp_host_error(
        self, key: tuple[bytes, int], host: str, port: int, icmp_type: int, code: int,
        offender: str | None, head: bytes,
    ) -> None:  # fmt: skip
        """The host reported an ICMP error for a datagram sent on flow ``key`` to
        ``host:port`` (``head``: the start of that datagram's payload)."""
        if key not in self.udp.flows:
            return
        guest_dst = self.udp.guest_source(host)
        quote = ipv4.quote_udp(key[0], guest_dst, key[1], port, head[:64])
        src = self.udp.guest_source(offender) if offender else guest_dst
        if src == ZERO_IP:
            src = self.host_ip
        self._send_icmp_error(src, key[0], icmp_type, code, quote)

    def dns_from_upstream(self, source: tuple[str, int], payload: bytes, now: float) -> None:
        self._now = now
        answer = self.dns.answer(source, payload, now)
        if answer is not None:
            self._dns_results([answer])

    def ping_reply(
        self, key: tuple[bytes, int], host: str, seq: int, payload: bytes, now: float
    ) -> None:
        """An echo reply for flow ``key`` from ``host``."""
        self._now = now
        src = self.icmp.reply(key, host)
        if src is None:
            return
        msg = ipv4.icmp_message(
            ipv4.ICMP_ECHOREPLY, 0, key[1].to_bytes(2, "big") + seq.to_bytes(2, "big"), payload
        )
        self.ip_to_guest(src, key[0], IPPROTO_ICMP, msg)

    # -- output ----------------------------------------------------------------------------

    def ip_to_guest(
        self, src: bytes, dst: bytes, proto: int, l4: bytes, mac: bytes | None = None
    ) -> None:
        if mac is None:
            if dst == BROADCAST_IP or dst == self._net_bcast:
                mac = BROADCAST_MAC
            else:
                mac = self.arp.get(dst)
                if mac is None:
                    self._hold(src, dst, proto, l4)
                    return
        self._ident = ident = (self._ident + 1) & 0xFFFF
        self._frames.extend(ipv4.frames(mac, self.mac, src, dst, proto, l4, ident, self.cfg.mtu))

    def _hold(self, src: bytes, dst: bytes, proto: int, l4: bytes) -> None:
        held = self._held.get(dst)
        if held is None:
            if len(self._held) >= ARP_TABLE_MAX:
                self.stats["arp-hold-dropped"] += 1
                return
            held = self._held[dst] = _Held(self._now + ARP_HOLD)
            if self._hold_wake is None or held.deadline < self._hold_wake:
                self._hold_wake = held.deadline
                self.deadlines.changed(self._t_held)
            self._arp_request(dst)
        if len(held.packets) >= ARP_HOLD_PACKETS:
            self.stats["arp-hold-dropped"] += 1
            return
        held.packets.append((src, proto, l4))

    def _arp_request(self, dst: bytes) -> None:
        arp = ipv4.arp_packet(1, self.mac, self.host_ip, bytes(6), dst, BROADCAST_MAC)
        self._frames.append(arp)

    # -- timers ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Run every timer of the gateway due at ``now`` (standalone use; the netdev runs
        :attr:`parts` from its :class:`~..endpoint.Deadlines`)."""
        for part in self.parts:
            part.on_deadline(now)

    def _reassembly_tick(self, now: float) -> None:
        self.reassembly.expire(now)

    def _tftp_tick(self, now: float) -> None:
        self._now = now
        for client_ip, client_port, payload in self.tftp.tick(now):
            seg = ipv4.udp_segment(self.host_ip, client_ip, TFTP_PORT, client_port, payload)
            self.ip_to_guest(self.host_ip, client_ip, IPPROTO_UDP, seg)

    def _dns_tick(self, now: float) -> None:
        self._now = now
        self._dns_results(self.dns.tick(now))

    def _udp_tick(self, now: float) -> None:
        self._actions.extend(self.udp.expire(now))

    def _icmp_tick(self, now: float) -> None:
        self._actions.extend(self.icmp.expire(now))

    def _held_deadline(self) -> float | None:
        return self._hold_wake

    def _expire_held(self, now: float) -> None:
        if self._hold_wake is None or now < self._hold_wake:
            return
        for dst, held in list(self._held.items()):
            if held.deadline <= now:
                del self._held[dst]
                self.stats["arp-unresolved-dropped"] += len(held.packets)
        self._hold_wake = min((h.deadline for h in self._held.values()), default=None)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` is next due (None: no timer)."""
        best = None
        for part in self.parts:
            t = part.next_deadline()
            if t is not None and (best is None or t < best):
                best = t
        return best

    def counters(self) -> dict[str, int]:
        """Every counter of the gateway and its services (drops by reason, work done)."""
        total: Counter[str] = Counter(by_name(self.stats))
        for part in (
            by_name(self.reassembly.counters), by_name(self.dhcp.counters),
            by_name(self.tftp.counters), by_name(self.dns.counters), by_name(self.udp.counters),
            by_name(self.icmp.counters),
        ):  # fmt: skip
            total.update(part)
        return dict(total)

    def close(self) -> None:
        self.tftp.close()


def _kw(**given: int | None) -> dict[str, int]:
    return {k: v for k, v in given.items() if v is not None}
