"""The IPv6 side of the user netdev's virtual router: one sans-IO machine over the others.

Owns what a guest sees of IPv6 on the link (libslirp's ``ip6_input.c``,
``ip6_icmp.c``, ``udp6.c``): the router's addresses (:meth:`.config.Ipv6Config.
local_addresses`: fe80::2, host, DNS and their fe80:: forms) with libslirp's virtual MACs;
input checks (version, lengths, a multicast/own/loopback source is refused, the
unspecified source only for NDP; the link MTU is enforced with Packet Too Big, as libslirp
does); the extension-header walk and fragment reassembly (:mod:`netstack.proto.ipv6`,
:mod:`.fragments`); NDP (answers for our addresses, DAD probes for our addresses defended
with an NA to all-nodes, DAD probes of guests never answered, guests learnt into
:class:`.neighbors.Neighbors`, packets held while we solicit); RAs (:mod:`.advert`,
:mod:`.ndp`; a solicitation inside the 3 s multicast gap is answered at once by
unicast); ICMPv6 echo (answered for our addresses, relayed otherwise through
:class:`.icmp6.EchoRelay`, dropped with ``restrict=on``); DHCPv6 (:mod:`.dhcpv6`); ICMPv6
errors (rate-limited, RFC 4443 §2.4). Every other upper layer goes to
:attr:`Ipv6Router.ip_handlers` (the NAT registers UDP and TCP there; it owns ``restrict``
for them): datagrams to our addresses or beyond the link (not on-link, not multicast) are
handed over as :class:`Packet6`; beyond the link the hop limit is checked first (Time
Exceeded). Without a handler, our addresses answer Port Unreachable (UDP, TCP) or a
Parameter Problem (other protocols) and other destinations "administratively prohibited".

Sans-IO (:mod:`..endpoint`): frames go in with ``now``; output goes into the netdev's
:class:`~..endpoint.Outbox` (given, or its own when used alone): frames for the guest, echo
work for the host as actions (:class:`.icmp6.PingSend`/:class:`.icmp6.PingClose`, run by the
client's pump through :meth:`.host.Ipv6Service.act`), lease events; :meth:`tick` runs
every timer, :meth:`next_deadline` says when it is next due. The NAT sends to guests
with :meth:`Ipv6Router.send` / :meth:`Ipv6Router.udp_to_guest` (fragmented to the MTU,
held while the guest's MAC is resolved) and reports errors with
:meth:`Ipv6Router.icmp_error` / :meth:`Ipv6Router.icmp_error_to`. Bad input never
raises: it is counted and dropped.

Deviations from libslirp (documented choices): frames from addresses other than our own
(NATed traffic) carry the router's MAC, not ``52:56`` + the remote address's low bytes;
the RA carries an MTU option, RDNSS whenever a DNS relay exists (lifetime 1800 s, RFC 8106's
3 x MaxRtrAdvInterval; libslirp sends 1,200,000 s, and only if the host has an IPv6
resolver), DNSSL when a search list is configured, O=1 when DHCPv6 has something to say,
router lifetime 0 with ``restrict=on`` (no default route, as DHCPv4 leaves out its router).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, Literal, NamedTuple

from netstack.counters import Family, FamilyKey, by_name
from netstack.proto import ipv6 as pk

from ..endpoint import Outbox
from . import addr as a6
from . import icmp6, ndp
from .advert import Advertiser
from .config import Ipv6Config
from .dhcpv6 import Dhcpv6Server
from .dhcpv6_codec import CLIENT_PORT, SERVER_PORT
from .fragments import MAX_FRAGMENTABLE, Reassembler
from .icmp6 import EchoRelay, PingClose, PingSend, RateLimit
from .neighbors import Neighbors

Action = PingSend | PingClose
_MLD = frozenset((130, 131, 132, 143))
_PLAIN = frozenset((pk.IPPROTO_TCP, pk.IPPROTO_UDP, pk.IPPROTO_ICMPV6))


class Packet6(NamedTuple):
    """A guest IPv6 datagram (reassembled if it came in fragments), extension headers
    skipped: ``payload`` is the upper-layer message, ``packet`` the IPv6 packet as received
    (its first fragment if fragmented: what an ICMPv6 error quotes)."""

    src: bytes
    dst: bytes
    proto: int
    hop_limit: int
    tclass: int
    flow: int
    payload: bytes
    packet: bytes
    src_mac: bytes
    link_multicast: bool


Handler = Callable[[Packet6, float], None]


#: What the router counts in :attr:`Ipv6Router.stats`: its own drops and work, and the
#: reasons NDP messages (:mod:`.ndp`) and extension header chains (:func:`netstack.proto.ipv6.walk`)
#: are refused.
RouterCounter = (
    Literal[
        "eth-not-for-us", "eth-not-ipv6", "eth-own-source", "icmp6-bad-checksum",
        "icmp6-echo-local", "icmp6-echo-multicast-ignored", "icmp6-error-from-guest",
        "icmp6-error-rate-limited", "icmp6-error-suppressed", "icmp6-ignored",
        "icmp6-malformed", "icmp6-mld", "ip6-atomic-fragment", "ip6-bad-source",
        "ip6-frag-headers-split", "ip6-hop-limit-exceeded", "ip6-jumbo", "ip6-malformed",
        "ip6-multicast-ignored", "ip6-no-upper-layer", "ip6-not-routed",
        "ip6-protocol-unsupported", "ip6-send-bad-destination", "ip6-send-too-large",
        "ip6-short", "ip6-too-big", "ip6-truncated", "ndp-conflict", "ndp-dad-defended",
        "ndp-dad-probe", "ndp-guest-ra", "ndp-guest-redirect", "ndp-na-received", "ndp-na-sent",
        "ndp-ns-not-ours", "ndp-ns-sent", "ndp-ra-sent", "ndp-ra-unicast", "ndp-rs-deferred",
        "ndp-rs-received", "restrict-dropped", "udp6-bad-checksum", "udp6-malformed",
        "udp6-multicast-ignored",
    ]
    | ndp.NdpReason
    | pk.ProblemReason
)  # fmt: skip
#: ``ip6-no-handler-PROTO``: datagrams of an upper-layer protocol nobody handles.
NO_HANDLER: Final = Family("ip6-no-handler")
#: ``icmp6-error-sent-TYPE-CODE``: ICMPv6 errors sent to the guest, per type and code.
ICMP6_ERROR_SENT: Final = Family("icmp6-error-sent")


class Ipv6Router:
    """The guest-facing IPv6 side of one user netdev."""

    def __init__(
        self, cfg: Ipv6Config, *, now: float = 0.0, rng: random.Random | None = None,
        outbox: Outbox | None = None, neighbors: Neighbors | None = None,
        reassembly: Reassembler | None = None, dhcp_max_leases: int | None = None,
        echo_max_flows: int | None = None,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        #: The netdev's output (:mod:`..endpoint`); its own when used alone.
        self.outbox = outbox if outbox is not None else Outbox()
        self._out = self.outbox.frames
        self._actions = self.outbox.actions
        self.rng = rng if rng is not None else random.Random()
        #: Addresses the router owns (NDP, echo), with their MACs.
        self.local = cfg.local_addresses()
        self.mac = a6.virtual_mac(cfg.router_link_local)
        self.macs = frozenset(self.local.values())
        self._groups = frozenset(
            {a6.ALL_NODES, a6.ALL_ROUTERS, a6.ALL_DHCP} | {a6.solicited_node(x) for x in self.local}
        )
        self.neighbors = neighbors if neighbors is not None else Neighbors()
        self.reassembly = reassembly if reassembly is not None else Reassembler()
        self.advertiser = Advertiser(now, self.rng)
        self.dhcp = Dhcpv6Server(
            cfg, self.mac, in_use=self._used_by_other, events=self.outbox.events,
            **({} if dhcp_max_leases is None else {"max_leases": dhcp_max_leases}),
        )  # fmt: skip
        self.echo = EchoRelay(
            cfg.host, **({} if echo_max_flows is None else {"max_flows": echo_max_flows})
        )
        self.error_limit = RateLimit()
        self._unicast_ra_limit = RateLimit(rate=10.0, burst=10)
        #: Upper-layer protocol -> handler (the NAT registers UDP and TCP here; ICMPv6
        #: errors from the guest go to a handler for 58 if one is registered).
        self.ip_handlers: dict[int, Handler] = {}
        self.stats: Counter[RouterCounter | FamilyKey] = Counter()
        self._ident = self.rng.getrandbits(32)
        self._ra_params = self._advert_params()

    @property
    def out(self) -> list[bytes]:
        """Guest-bound frames not yet drained (the outbox's list)."""
        return self.outbox.frames

    @property
    def actions(self) -> list[Any]:
        """Host actions not yet drained (the outbox's list: echo work, and the NAT's when
        it shares the outbox)."""
        return self.outbox.actions

    @property
    def events(self) -> list[tuple[str, dict[str, Any]]]:
        """Lease events (QMP) not yet drained (the outbox's list)."""
        return self.outbox.events

    def _advert_params(self) -> ndp.RouterAdvertParams:
        cfg = self.cfg
        relay = cfg.dns_relay
        return ndp.RouterAdvertParams(
            source_mac=self.mac, prefix=cfg.network, prefixlen=cfg.prefixlen,
            managed=cfg.managed_flag, other=relay or bool(cfg.dnssearch) or bool(cfg.bootfile),
            router_lifetime=0 if cfg.restrict else 1800, mtu=cfg.link_mtu,
            autonomous=cfg.autonomous_flag, rdnss=(cfg.dns,) if relay else (),
            dnssl=cfg.dnssearch if relay else (),
        )  # fmt: skip

    def accepts(self, frame: bytes) -> bool:
        """Whether a frame's destination MAC is ours or multicast (for the adapter's
        Ethernet filter: IPv6 needs 33:33:xx multicast and the 52:56:xx MACs)."""
        return len(frame) >= 6 and (bool(frame[0] & 1) or frame[:6] in self.macs)

    # -- guest frames ----------------------------------------------------------------------

    def input(self, frame: bytes, now: float, *, offloaded: bool = False) -> None:
        """One Ethernet frame (ethertype 0x86DD) from the guest side. ``offloaded``: it
        came behind a virtio-net header asking for checksum offload or TSO, so a TCP
        super-frame may exceed the link MTU (its segments do not): no Packet Too Big."""
        if len(frame) < pk.ETH_HLEN + pk.IPV6_HLEN:
            self.stats["ip6-short"] += 1
            return
        link_multicast = bool(frame[0] & 1)
        if not link_multicast and frame[:6] not in self.macs:
            self.stats["eth-not-for-us"] += 1
            return
        if frame[12] != 0x86 or frame[13] != 0xDD:
            self.stats["eth-not-ipv6"] += 1
            return
        pkt = frame[pk.ETH_HLEN :]
        hdr = pk.parse_header(pkt)
        if hdr is None:
            self.stats["ip6-malformed"] += 1
            return
        end = pk.IPV6_HLEN + hdr.payload_len
        if end > len(pkt) or hdr.payload_len == 0:
            self.stats["ip6-truncated" if hdr.payload_len else "ip6-jumbo"] += 1
            return
        pkt = pkt[:end]
        src, dst = hdr.src, hdr.dst
        if not (a6.is_unicast(src) or a6.is_unspecified(src)) or src in self.local:
            self.stats["ip6-bad-source"] += 1
            return
        multicast = a6.is_multicast(dst)
        if multicast:
            if dst not in self._groups:
                self.stats["ip6-multicast-ignored"] += 1
                return
        elif dst not in self.local and not self._beyond(dst):
            self.stats["ip6-not-routed"] += 1
            return
        src_mac = frame[6:12]
        if src_mac in self.macs:
            self.stats["eth-own-source"] += 1  # a frame of ours came back (a loop)
            return
        if not a6.is_unspecified(src) and not src_mac[0] & 1:
            self._learn(src, src_mac, now)
        if end > self.cfg.link_mtu and not offloaded:
            self.stats["ip6-too-big"] += 1
            probe = Packet6(src, dst, hdr.next_header, hdr.hop_limit, 0, 0, pkt[pk.IPV6_HLEN :],
                            pkt, src_mac, link_multicast)  # fmt: skip
            self.icmp_error(probe, icmp6.PACKET_TOO_BIG, 0, self.cfg.link_mtu, now=now)
            return
        if hdr.next_header in _PLAIN:  # no extension headers: the common case, no walk
            p = Packet6(src, dst, hdr.next_header, hdr.hop_limit, hdr.tclass, hdr.flow,
                        pkt[pk.IPV6_HLEN :], pkt, src_mac, link_multicast)  # fmt: skip
            self._dispatch(p, 6, now)
            return
        self._walk(hdr, pkt, src_mac, link_multicast, now)

    def _walk(
        self, hdr: pk.Header, pkt: bytes, src_mac: bytes, link_multicast: bool, now: float
    ) -> None:
        multicast = a6.is_multicast(hdr.dst)
        raw = pkt
        chain = pk.walk(pkt, hdr.next_header, pk.IPV6_HLEN, len(pkt), dst_multicast=multicast)

        def packet6(proto: int, payload: bytes) -> Packet6:
            return Packet6(hdr.src, hdr.dst, proto, hdr.hop_limit, hdr.tclass, hdr.flow,
                           payload, raw, src_mac, link_multicast)  # fmt: skip

        if isinstance(chain, pk.Problem):
            self._problem(chain, packet6(-1, b""), now)
            return
        frag = chain.fragment
        if frag is not None and (frag.offset or frag.more):
            data = pkt[chain.offset :]
            if frag.more and len(data) % 8:
                self._problem(pk.Problem("ip6-frag-bad-length", 0, 4), packet6(-1, b""), now)
                return
            if frag.offset + len(data) > MAX_FRAGMENTABLE:
                problem = pk.Problem("ip6-frag-too-long", 0, frag.header_at + 2)
                self._problem(problem, packet6(-1, b""), now)
                return
            done = self.reassembly.add(
                (hdr.src, hdr.dst, frag.ident), frag.offset, frag.more, frag.next_header,
                data, pkt, now,
            )  # fmt: skip
            if done is None:
                return
            raw = done.first_packet
            body = done.data
            chain = pk.walk(body, done.next_header, 0, len(body), dst_multicast=multicast,
                            fragmented=True)  # fmt: skip
            if isinstance(chain, pk.Problem):
                self.stats[chain.reason] += 1  # pointers would not name the packet: silent
                return
            if chain.offset > done.first_len:
                self.stats["ip6-frag-headers-split"] += 1  # RFC 7112
                return
            self._dispatch(packet6(chain.proto, body[chain.offset :]), -1, now)
            return
        if frag is not None:  # an atomic fragment (RFC 6946): the rest of this packet
            self.stats["ip6-atomic-fragment"] += 1
            chain = pk.walk(pkt, frag.next_header, chain.offset, len(pkt),
                            dst_multicast=multicast, fragmented=True)  # fmt: skip
            if isinstance(chain, pk.Problem):
                self._problem(chain, packet6(-1, b""), now)
                return
        self._dispatch(packet6(chain.proto, pkt[chain.offset :]), chain.proto_at, now)

    def _problem(self, problem: pk.Problem, p: Packet6, now: float) -> None:
        self.stats[problem.reason] += 1
        if problem.code is not None:
            self.icmp_error(p, icmp6.PARAM_PROBLEM, problem.code, problem.pointer, now=now)

    def _dispatch(self, p: Packet6, proto_at: int, now: float) -> None:
        proto = p.proto
        if proto == pk.IPPROTO_ICMPV6:
            self._icmp_in(p, now)
        elif a6.is_unspecified(p.src):
            self.stats["ip6-bad-source"] += 1
        elif proto == pk.IPPROTO_UDP:
            self._udp_in(p, now)
        elif proto == pk.IPPROTO_NONE:
            self.stats["ip6-no-upper-layer"] += 1
        else:
            self._other_in(p, proto_at, now)

    def _beyond(self, dst: bytes) -> bool:
        """Whether ``dst`` lies beyond the router (reached through the NAT)."""
        return (
            a6.is_unicast(dst) and not a6.is_link_local(dst) and not self.cfg.in_prefix(dst)
            and not a6.is_v4_mapped(dst)
        )  # fmt: skip

    def _forwardable(self, p: Packet6, now: float) -> bool:
        """For a packet to pass the router: the hop limit check (RFC 8200 §3)."""
        if p.dst in self.local or p.hop_limit > 1:
            return True
        self.stats["ip6-hop-limit-exceeded"] += 1
        self.icmp_error(p, icmp6.TIME_EXCEEDED, icmp6.TIME_EXCEEDED_HOPS, now=now)
        return False

    # -- ICMPv6 and NDP --------------------------------------------------------------------

    def _icmp_in(self, p: Packet6, now: float) -> None:
        m = p.payload
        if len(m) < 4:
            self.stats["icmp6-malformed"] += 1
            return
        if not pk.checksum_ok(p.src, p.dst, pk.IPPROTO_ICMPV6, m):
            self.stats["icmp6-bad-checksum"] += 1
            return
        kind = m[0]
        if kind in ndp.NDP_TYPES:
            self._ndp_in(p, m, now)
            return
        if a6.is_unspecified(p.src):
            self.stats["icmp6-mld" if kind in _MLD else "ip6-bad-source"] += 1
            return
        if kind == icmp6.ECHO_REQUEST:
            self._echo_in(p, m, now)
        elif kind < 128:
            handler = self.ip_handlers.get(pk.IPPROTO_ICMPV6)
            if handler is not None:
                handler(p, now)
            else:
                self.stats["icmp6-error-from-guest"] += 1
        elif kind in _MLD:
            self.stats["icmp6-mld"] += 1
        else:
            self.stats["icmp6-ignored"] += 1

    def _echo_in(self, p: Packet6, m: bytes, now: float) -> None:
        if len(m) < 8:
            self.stats["icmp6-malformed"] += 1
            return
        if p.dst in self.local:
            reply = pk.icmp6_message(p.dst, p.src, icmp6.ECHO_REPLY, 0, m[4:])
            self.send(p.dst, p.src, pk.IPPROTO_ICMPV6, reply, now, mac=p.src_mac)
            self.stats["icmp6-echo-local"] += 1
            return
        if a6.is_multicast(p.dst):
            self.stats["icmp6-echo-multicast-ignored"] += 1
            return
        if self.cfg.restrict:
            self.stats["restrict-dropped"] += 1
            return
        if not self._forwardable(p, now):
            return
        ident, seq = (m[4] << 8) | m[5], (m[6] << 8) | m[7]
        send = self.echo.outbound(p.src, p.dst, ident, seq, m[8:], p.hop_limit - 1, now)
        if send is not None:
            self._actions.append(send)

    def _ndp_in(self, p: Packet6, m: bytes, now: float) -> None:
        kind = m[0]
        if kind == ndp.ND_NEIGHBOR_SOLICIT:
            self._ns_in(p, m, now)
        elif kind == ndp.ND_NEIGHBOR_ADVERT:
            na = ndp.parse_na(m, p.dst, p.hop_limit)
            if isinstance(na, str):
                self.stats[na] += 1
            elif na.target in self.local:
                self.stats["ndp-conflict"] += 1  # a guest claims one of our addresses
            else:
                mac = na.target_mac or p.src_mac
                override = na.override or na.target not in self.neighbors
                self._learn(na.target, mac, now, override=override)
                self.stats["ndp-na-received"] += 1
        elif kind == ndp.ND_ROUTER_SOLICIT:
            slla = ndp.parse_rs(m, p.src, p.hop_limit)
            if isinstance(slla, str):
                self.stats[slla] += 1
                return
            if slla is not None:
                self._learn(p.src, slla, now)
            self.stats["ndp-rs-received"] += 1
            if self.advertiser.solicited(now):
                self._send_ra()
            elif not a6.is_unspecified(p.src) and self._unicast_ra_limit.allow(now):
                # inside the multicast gap: answer this guest alone, at once
                self._send_ra(dst=p.src, dst_mac=slla or p.src_mac)
                self.advertiser.answered()
            else:
                self.stats["ndp-rs-deferred"] += 1
        elif kind == ndp.ND_ROUTER_ADVERT:
            self.stats["ndp-guest-ra"] += 1  # libslirp warns: a guest should not send RAs
        else:
            self.stats["ndp-guest-redirect"] += 1

    def _ns_in(self, p: Packet6, m: bytes, now: float) -> None:
        ns = ndp.parse_ns(m, p.src, p.dst, p.hop_limit)
        if isinstance(ns, str):
            self.stats[ns] += 1
            return
        dad = a6.is_unspecified(p.src)
        if ns.target not in self.local:
            # A guest's DAD probe (never answered: the address is the guest's to take) or a
            # solicitation for another guest, who answers it itself.
            self.stats["ndp-dad-probe" if dad else "ndp-ns-not-ours"] += 1
            if not dad and ns.source_mac is not None:
                self._learn(p.src, ns.source_mac, now)
            return
        target_mac = self.local[ns.target]
        if dad:  # someone probes one of our addresses: defend it (RFC 4862 §5.4.3)
            na = ndp.build_na(ns.target, target_mac, router=True, solicited=False)
            self._emit_icmp(ns.target, a6.ALL_NODES, na, a6.multicast_mac(a6.ALL_NODES))
            self.stats["ndp-dad-defended"] += 1
            return
        mac = ns.source_mac or p.src_mac
        self._learn(p.src, mac, now)
        na = ndp.build_na(ns.target, target_mac, router=True, solicited=True)
        self._emit_icmp(ns.target, p.src, na, mac)
        self.stats["ndp-na-sent"] += 1

    def _emit_icmp(self, src: bytes, dst: bytes, msg: bytes, dst_mac: bytes) -> None:
        """An NDP message (hop limit 255) straight onto the link."""
        body = pk.with_checksum(src, dst, pk.IPPROTO_ICMPV6, msg, 2)
        packet = pk.ipv6_header(src, dst, pk.IPPROTO_ICMPV6, len(body), ndp.HOP_LIMIT) + body
        self._out.append(pk.frame(dst_mac, self.local.get(src, self.mac), packet))

    def _send_ra(
        self, router_lifetime: int | None = None, dst: bytes = a6.ALL_NODES,
        dst_mac: bytes | None = None,
    ) -> None:  # fmt: skip
        msg = ndp.build_ra(self._ra_params, router_lifetime=router_lifetime)
        mac = dst_mac if dst_mac is not None else a6.multicast_mac(dst)
        self._emit_icmp(self.cfg.router_link_local, dst, msg, mac)
        self.stats["ndp-ra-sent" if dst == a6.ALL_NODES else "ndp-ra-unicast"] += 1

    def solicit(self, target: bytes) -> None:
        """Send a Neighbor Solicitation for guest address ``target`` (for the NAT's hostfwd,
        which needs a guest's MAC before it opens a connection to it); the answer is learnt
        into :attr:`neighbors`."""
        if a6.is_unicast(target) and target not in self.local:
            self._solicit(target)

    def _solicit(self, target: bytes) -> None:
        src = self.cfg.router_link_local if a6.is_link_local(target) else self.cfg.host
        group = a6.solicited_node(target)
        msg = ndp.build_ns(target, self.local[src])
        self._emit_icmp(src, group, msg, a6.multicast_mac(group))
        self.stats["ndp-ns-sent"] += 1

    def _learn(self, address: bytes, mac: bytes, now: float, *, override: bool = True) -> None:
        for held in self.neighbors.learn(address, mac, now, override=override):
            self._out.append(pk.frame(mac, self.local.get(pk.source_of(held), self.mac), held))

    def _used_by_other(self, address: bytes, mac: bytes) -> bool:
        known = self.neighbors.lookup(address)
        return known is not None and known != mac

    # -- UDP and the rest ------------------------------------------------------------------

    def _udp_in(self, p: Packet6, now: float) -> None:
        m = p.payload
        if len(m) < pk.UDP_HLEN:
            self.stats["udp6-malformed"] += 1
            return
        sport, dport, ulen, csum = pk.UDP.unpack_from(m)
        if ulen < pk.UDP_HLEN or ulen > len(m):
            self.stats["udp6-malformed"] += 1
            return
        if ulen < len(m):
            m = m[:ulen]
        if csum == 0 or not pk.checksum_ok(p.src, p.dst, pk.IPPROTO_UDP, m):
            self.stats["udp6-bad-checksum"] += 1
            return
        if dport == SERVER_PORT and (p.dst == a6.ALL_DHCP or p.dst in self.local):
            self._dhcp_in(p, sport, m[pk.UDP_HLEN :], now)
            return
        if a6.is_multicast(p.dst):
            self.stats["udp6-multicast-ignored"] += 1
            return
        handler = self.ip_handlers.get(pk.IPPROTO_UDP)
        if handler is None:
            self._unhandled(p, icmp6.UNREACH_PORT, now)
        elif self._forwardable(p, now):
            handler(p._replace(payload=m), now)

    def _dhcp_in(self, p: Packet6, sport: int, data: bytes, now: float) -> None:
        for reply in self.dhcp.handle(data, p.src, sport, p.dst, p.src_mac, now):
            src = reply.src or self.cfg.router_link_local
            self.udp_to_guest(src, SERVER_PORT, reply.dst, reply.dport, reply.payload, now,
                              mac=p.src_mac)  # fmt: skip

    def _other_in(self, p: Packet6, proto_at: int, now: float) -> None:
        if a6.is_multicast(p.dst):
            self.stats["ip6-multicast-ignored"] += 1
            return
        handler = self.ip_handlers.get(p.proto)
        if handler is not None:
            if self._forwardable(p, now):
                handler(p, now)
        elif p.proto != pk.IPPROTO_TCP and p.dst in self.local:
            self.stats["ip6-protocol-unsupported"] += 1
            if proto_at >= 0:  # not for a reassembled packet: the pointer names no octet
                self.icmp_error(p, icmp6.PARAM_PROBLEM, pk.PARAM_NEXT_HEADER, proto_at, now=now)
        else:
            self._unhandled(p, icmp6.UNREACH_PORT, now)

    def _unhandled(self, p: Packet6, local_code: int, now: float) -> None:
        """No handler: Port Unreachable from our addresses, else the NAT will not relay it."""
        self.stats[NO_HANDLER.key(p.proto)] += 1
        code = local_code if p.dst in self.local else icmp6.UNREACH_ADMIN
        self.icmp_error(p, icmp6.DST_UNREACH, code, now=now)

    # -- output (also the NAT's interface) -------------------------------------------------

    def send(
        self, src: bytes, dst: bytes, proto: int, l4: bytes, now: float, *,
        hop_limit: int = pk.DEFAULT_HOP_LIMIT, tclass: int = 0, mac: bytes | None = None,
    ) -> None:  # fmt: skip
        """Send an upper-layer message (checksum done) to the guest side: fragmented to the
        link MTU, to ``mac`` or the neighbor table's MAC for ``dst`` (held and solicited
        when unknown), or the group's MAC for a multicast ``dst``."""
        self._ident = (self._ident + 1) & 0xFFFFFFFF
        try:
            pkts = pk.packets(src, dst, proto, l4, self.cfg.link_mtu, self._ident,
                              hop_limit, tclass)  # fmt: skip
        except ValueError:
            self.stats["ip6-send-too-large"] += 1
            return
        if mac is None and a6.is_multicast(dst):
            mac = a6.multicast_mac(dst)
        if mac is None:
            mac = self.neighbors.lookup(dst)
            if mac is None and not a6.is_unicast(dst):
                self.stats["ip6-send-bad-destination"] += 1
                return
        src_mac = self.local.get(src, self.mac)
        if mac is not None:
            self._out.extend(pk.frame(mac, src_mac, x) for x in pkts)
            return
        for x in pkts:
            if self.neighbors.hold(dst, x, now):
                self._solicit(dst)

    def udp_to_guest(
        self, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes, now: float, *,
        mac: bytes | None = None,
    ) -> None:  # fmt: skip
        self.send(src, dst, pk.IPPROTO_UDP, pk.udp_segment(src, dst, sport, dport, payload),
                  now, mac=mac)  # fmt: skip

    def icmp_error(
        self, p: Packet6, icmp_type: int, code: int, param: int = 0, *,
        src: bytes | None = None, now: float,
    ) -> None:  # fmt: skip
        """An ICMPv6 error about guest packet ``p`` (RFC 4443 §2.4: suppressed about errors,
        multicast and non-unicast sources; rate-limited). The source is ``src``, else the
        address ``p`` was sent to if it is ours, else one of ours of ``p.src``'s scope."""
        about_error = icmp6.is_error_or_redirect(p.proto, p.payload)
        if not icmp6.may_send_error(
            icmp_type, code, src=p.src, dst=p.dst, link_multicast=p.link_multicast,
            about_error=about_error,
        ):  # fmt: skip
            self.stats["icmp6-error-suppressed"] += 1
            return
        if src is None:
            src = p.dst if p.dst in self.local else self._source_for(p.src)
        self.icmp_error_to(p.src, icmp_type, code, param, p.packet, src=src, now=now,
                           mac=p.src_mac)  # fmt: skip

    def icmp_error_to(
        self, guest: bytes, icmp_type: int, code: int, param: int, quote: bytes, *,
        src: bytes | None = None, now: float, mac: bytes | None = None,
    ) -> None:  # fmt: skip
        """An ICMPv6 error to ``guest`` quoting ``quote`` (e.g.
        :func:`netstack.proto.ipv6.quote_udp` for an error the host reported on a NAT socket); only
        rate-limited here."""
        if not self.error_limit.allow(now):
            self.stats["icmp6-error-rate-limited"] += 1
            return
        source = src if src is not None else self._source_for(guest)
        msg = pk.icmp6_message(source, guest, icmp_type, code, icmp6.error_body(param, quote))
        self.send(source, guest, pk.IPPROTO_ICMPV6, msg, now, mac=mac)
        self.stats[ICMP6_ERROR_SENT.key(icmp_type, code)] += 1

    def _source_for(self, dst: bytes) -> bytes:
        return self.cfg.router_link_local if a6.is_link_local(dst) else self.cfg.host

    def ping_reply(
        self, key: tuple[bytes, int], host: str, seq: int, payload: bytes, now: float
    ) -> None:
        """An echo reply from ``host`` for relayed flow ``key``."""
        src = self.echo.reply(key, host)
        if src is None:
            return
        body = key[1].to_bytes(2, "big") + seq.to_bytes(2, "big") + payload
        self.send(src, key[0], pk.IPPROTO_ICMPV6,
                  pk.icmp6_message(src, key[0], icmp6.ECHO_REPLY, 0, body), now)  # fmt: skip

    # -- timers, lifecycle, views ----------------------------------------------------------

    def link_up(self, now: float) -> None:
        """The link came (back) up: advertise again with the initial burst."""
        self.advertiser.restart(now)

    def tick(self, now: float) -> None:
        """Run every timer due at ``now``."""
        if self.advertiser.due(now):
            self._send_ra()
        for target in self.neighbors.tick(now):
            self._solicit(target)
        for first in self.reassembly.expire(now):
            guest, dst = pk.source_of(first), pk.destination_of(first)
            if a6.is_unicast(guest) and not a6.is_multicast(dst):
                src = dst if dst in self.local else None
                self.icmp_error_to(guest, icmp6.TIME_EXCEEDED, icmp6.TIME_EXCEEDED_REASSEMBLY,
                                   0, first, src=src, now=now)  # fmt: skip
        self.dhcp.expire(now)
        self._actions.extend(self.echo.expire(now))

    def next_deadline(self) -> float | None:
        """When :meth:`tick` is next due (the RA schedule always has one)."""
        times = [t for t in (
            self.advertiser.next_deadline(), self.neighbors.next_deadline(),
            self.reassembly.next_deadline(), self.dhcp.next_deadline(),
            self.echo.next_deadline(),
        ) if t is not None]  # fmt: skip
        return min(times)

    def final_advertisement(self) -> list[bytes]:
        """Frames announcing that this router stops (an RA with router lifetime 0, RFC 4861
        §6.2.5) - for the adapter to send when the netdev goes away."""
        out = self._out
        before = len(out)
        self._send_ra(router_lifetime=0)
        frames = out[before:]
        del out[before:]
        return frames

    def counters(self) -> dict[str, int]:
        """Every counter of the router and its parts (drops by reason, work done)."""
        total: Counter[str] = Counter(by_name(self.stats))
        for part in (
            by_name(self.neighbors.counters), by_name(self.reassembly.counters),
            by_name(self.dhcp.counters), by_name(self.echo.counters),
        ):  # fmt: skip
            total.update(part)
        return dict(total)

    def leases(self, now: float) -> list[dict[str, Any]]:
        return self.dhcp.leases(now)

    def leases_for(self, mac: bytes) -> list[tuple[str, int]]:
        return self.dhcp.leases_for(mac)

    def addresses_for(self, mac: bytes) -> list[tuple[str, int]]:
        """The IPv6 addresses ``mac`` uses (seen in its traffic, or leased), with prefix
        lengths - for ``guest-network-get-interfaces``-style views."""
        found = dict(self.dhcp.leases_for(mac))
        for address in self.neighbors.addresses_for(mac):
            length = 64 if a6.is_link_local(address) else (
                self.cfg.prefixlen if self.cfg.in_prefix(address) else 128)  # fmt: skip
            found.setdefault(a6.text(address), length)
        return sorted(found.items())


__all__ = ["CLIENT_PORT", "SERVER_PORT", "Action", "Handler", "Ipv6Router", "Packet6"]
