"""The DHCPv6 server: libslirp's stateless answers, stateful IA_NA leases (manual clock),
validation. scapy builds the client messages and decodes the replies."""

from __future__ import annotations

from typing import Any

import pytest
import scapy.layers.dhcp6 as scapy_dhcp6
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_Decline,
    DHCP6_InfoRequest,
    DHCP6_Rebind,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptBootFileUrl,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptIA_NA,
    DHCP6OptIA_PD,
    DHCP6OptIAAddress,
    DHCP6OptOptReq,
    DHCP6OptPref,
    DHCP6OptRapidCommit,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
    dhcp6_cls_by_type,
)
from scapy.packet import Packet, raw

from drivers.user.v6 import addr as a6
from drivers.user.v6 import dhcpv6_codec as d6
from drivers.user.v6.config import Ipv6Config
from drivers.user.v6.dhcpv6 import Dhcpv6Server

ROUTER_MAC = bytes.fromhex("525600000002")
MAC = bytes.fromhex("525400123456")
GUEST_LL = "fe80::5054:ff:fe12:3456"
CLIENT = DHCP6OptClientId(duid=DUID_LL(lladdr="52:54:00:12:34:56"))
SERVER = DHCP6OptServerId(duid=DUID_LL(lladdr="52:56:00:00:00:02"))


def ip(text: str) -> bytes:
    value = a6.parse(text)
    assert value is not None
    return value


def server(**kw: Any) -> Dhcpv6Server:
    return Dhcpv6Server(Ipv6Config(**kw), ROUTER_MAC)


def ask(s: Dhcpv6Server, msg: Packet, now: float = 0.0, dst: str = "ff02::1:2",
        mac: bytes = MAC) -> Packet | None:  # fmt: skip
    replies = s.handle(raw(msg), ip(GUEST_LL), 546, ip(dst), mac, now)
    if not replies:
        return None
    (reply,) = replies
    assert reply.dst == ip(GUEST_LL) and reply.dport == 546
    assert reply.src == (None if dst.startswith("ff") else ip(dst))
    cls = getattr(scapy_dhcp6, dhcp6_cls_by_type[reply.payload[0]])
    return cls(reply.payload)  # type: ignore[no-any-return]


def iaaddr(reply: Packet) -> str:
    return str(reply[DHCP6OptIAAddress].addr)


def test_information_request_like_slirp() -> None:
    s = server(bootfile="pxelinux.0")
    reply = ask(s, DHCP6_InfoRequest(trid=0xABCDEF) / CLIENT / DHCP6OptOptReq(reqopts=[23]))
    assert isinstance(reply, DHCP6_Reply) and reply.trid == 0xABCDEF
    assert reply[DHCP6OptDNSServers].dnsservers == ["fec0::3"]
    assert reply[DHCP6OptServerId].duid.lladdr == "52:56:00:00:00:02"  # libslirp sends none
    assert reply[DHCP6OptClientId].duid.lladdr == "52:54:00:12:34:56"
    assert DHCP6OptBootFileUrl not in reply  # only when asked for, as libslirp
    reply = ask(s, DHCP6_InfoRequest() / DHCP6OptOptReq(reqopts=[23, 59]))
    assert (
        reply is not None and reply[DHCP6OptBootFileUrl].optdata == b"tftp://[fec0::2]/pxelinux.0"
    )
    assert DHCP6OptClientId not in reply
    # an IA in an Information-Request: discarded (RFC 8415 §16.12, libslirp too)
    assert ask(s, DHCP6_InfoRequest() / CLIENT / DHCP6OptIA_NA(iaid=1)) is None
    assert s.counters["dhcpv6-invalid"] == 1


def test_boot_url_kept_when_already_a_url_and_search_list() -> None:
    s = server(bootfile="http://boot.example/x.efi", dnssearch=("a.example", "b.example"))
    reply = ask(s, DHCP6_InfoRequest() / CLIENT / DHCP6OptOptReq(reqopts=[59]))
    assert reply is not None
    assert reply[DHCP6OptBootFileUrl].optdata == b"http://boot.example/x.efi"
    assert reply[DHCP6OptDNSDomains].dnsdomains == ["a.example.", "b.example."]


def test_restrict_has_no_dns() -> None:
    reply = ask(server(dns_relay=False), DHCP6_InfoRequest() / CLIENT)
    assert reply is not None and DHCP6OptDNSServers not in reply


def test_solicit_advertise_request_reply_renew_release() -> None:
    s = server()
    adv = ask(s, DHCP6_Solicit(trid=1) / CLIENT / DHCP6OptIA_NA(iaid=7), now=10.0)
    assert isinstance(adv, DHCP6_Advertise) and adv[DHCP6OptPref].prefval == 255
    offered = iaaddr(adv)
    assert a6.in_prefix(ip(offered), ip("fec0::"), 64)
    assert offered not in ("fec0::", "fec0::2", "fec0::3")
    assert adv[DHCP6OptIA_NA].T1 == 7200 and adv[DHCP6OptIA_NA].T2 == 11520
    assert s.leases(10.0)[0]["state"] == "offered" and s.events == []
    # Request without our server id: invalid; with another server's: not for us
    assert ask(s, DHCP6_Request(trid=2) / CLIENT / DHCP6OptIA_NA(iaid=7)) is None
    other = DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:00:09"))
    assert ask(s, DHCP6_Request(trid=2) / CLIENT / other / DHCP6OptIA_NA(iaid=7)) is None
    reply = ask(s, DHCP6_Request(trid=2) / CLIENT / SERVER / DHCP6OptIA_NA(iaid=7), now=11.0)
    assert isinstance(reply, DHCP6_Reply) and iaaddr(reply) == offered
    assert reply[DHCP6OptIAAddress].preflft == 14400 and reply[DHCP6OptIAAddress].validlft == 86400
    lease = s.leases(11.0)[0]
    assert lease["state"] == "bound" and lease["expires-in"] == 86400 and lease["iaid"] == 7
    assert s.leases_for(MAC) == [(offered, 64)]
    assert s.events == [("DHCP_LEASE_GRANTED", {
        "mac-address": "52:54:00:12:34:56", "ip-address": offered,
        "client-id": "00030001525400123456", "iaid": 7, "lease-time": 86400, "renewal": False,
    })]  # fmt: skip
    s.events.clear()
    renew = ask(s, DHCP6_Renew(trid=3) / CLIENT / SERVER / DHCP6OptIA_NA(
        iaid=7, ianaopts=[DHCP6OptIAAddress(addr=offered)]), now=5000.0)  # fmt: skip
    assert isinstance(renew, DHCP6_Reply) and iaaddr(renew) == offered
    assert s.events[0][1]["renewal"] is True and s.leases(5000.0)[0]["expires-in"] == 86400
    s.events.clear()
    rel = ask(s, DHCP6_Release(trid=4) / CLIENT / SERVER / DHCP6OptIA_NA(
        iaid=7, ianaopts=[DHCP6OptIAAddress(addr=offered)]), now=6000.0)  # fmt: skip
    assert isinstance(rel, DHCP6_Reply) and rel[DHCP6OptStatusCode].statuscode == 0
    assert DHCP6OptDNSServers not in rel
    assert s.leases(6000.0) == [] and s.events[0][1]["reason"] == "release"
    # the same client gets the same address again: allocation is a hash of DUID and IAID
    again = ask(s, DHCP6_Solicit(trid=5) / CLIENT / DHCP6OptIA_NA(iaid=7), now=7000.0)
    assert again is not None and iaaddr(again) == offered


def test_rapid_commit() -> None:
    s = server()
    reply = ask(s, DHCP6_Solicit() / CLIENT / DHCP6OptRapidCommit() / DHCP6OptIA_NA(iaid=1))
    assert isinstance(reply, DHCP6_Reply) and DHCP6OptRapidCommit in reply
    assert s.leases(0.0)[0]["state"] == "bound" and s.events[0][0] == "DHCP_LEASE_GRANTED"


def test_addresses_are_stable_across_servers_and_distinct_per_ia() -> None:
    a, b = server(), server()
    first = ask(a, DHCP6_Solicit() / CLIENT / DHCP6OptIA_NA(iaid=1) / DHCP6OptIA_NA(iaid=2))
    again = ask(b, DHCP6_Solicit() / CLIENT / DHCP6OptIA_NA(iaid=1))
    assert first is not None and again is not None
    ias = [x for x in first.iterpayloads() if isinstance(x, DHCP6OptIA_NA)]
    addrs = [str(x[DHCP6OptIAAddress].addr) for x in ias]
    assert len(set(addrs)) == 2 and iaaddr(again) == addrs[0]


def test_rebind_recreates_a_binding_and_withdraws_foreign_addresses() -> None:
    s = server()  # a restarted daemon: it knows no binding
    reply = ask(s, DHCP6_Rebind() / CLIENT / DHCP6OptIA_NA(
        iaid=7, ianaopts=[DHCP6OptIAAddress(addr="2001:db8::99")]), now=1.0)  # fmt: skip
    assert isinstance(reply, DHCP6_Reply)
    addrs = {str(x.addr): (x.preflft, x.validlft) for x in reply[DHCP6OptIA_NA].ianaopts}
    assert addrs["2001:db8::99"] == (0, 0) and len(addrs) == 2
    assert s.leases(1.0)[0]["state"] == "bound"
    assert ask(s, DHCP6_Rebind() / CLIENT / SERVER / DHCP6OptIA_NA(iaid=7)) is None  # invalid


def test_decline_quarantines_the_address() -> None:
    s = server()
    first = ask(s, DHCP6_Solicit() / CLIENT / DHCP6OptRapidCommit() / DHCP6OptIA_NA(iaid=1))
    assert first is not None
    bad = iaaddr(first)
    dec = ask(s, DHCP6_Decline() / CLIENT / SERVER / DHCP6OptIA_NA(
        iaid=1, ianaopts=[DHCP6OptIAAddress(addr=bad)]), now=1.0)  # fmt: skip
    assert isinstance(dec, DHCP6_Reply) and dec[DHCP6OptStatusCode].statuscode == 0
    assert s.events[-1][1]["reason"] == "decline"
    second = ask(s, DHCP6_Solicit() / CLIENT / DHCP6OptIA_NA(iaid=1), now=2.0)
    assert second is not None and iaaddr(second) != bad
    s.expire(2.0 + 3600.0)
    assert s.next_deadline() is None


def test_confirm() -> None:
    s = server()
    ok = ask(s, DHCP6_Confirm() / CLIENT / DHCP6OptIA_NA(
        iaid=1, ianaopts=[DHCP6OptIAAddress(addr="fec0::1234")]))  # fmt: skip
    assert ok is not None and ok[DHCP6OptStatusCode].statuscode == d6.STATUS_SUCCESS
    moved = ask(s, DHCP6_Confirm() / CLIENT / DHCP6OptIA_NA(
        iaid=1, ianaopts=[DHCP6OptIAAddress(addr="2001:db8::1")]))  # fmt: skip
    assert moved is not None and moved[DHCP6OptStatusCode].statuscode == d6.STATUS_NOT_ON_LINK
    assert ask(s, DHCP6_Confirm() / CLIENT / DHCP6OptIA_NA(iaid=1)) is None  # nothing to judge


def test_lease_and_offer_expiry() -> None:
    s = server()
    ask(s, DHCP6_Solicit() / CLIENT / DHCP6OptIA_NA(iaid=1), now=0.0)
    assert s.next_deadline() == 60.0
    s.expire(60.0)
    assert s.leases(60.0) == [] and s.events == []  # an offer ends silently
    ask(s, DHCP6_Solicit() / CLIENT / DHCP6OptRapidCommit() / DHCP6OptIA_NA(iaid=1), now=100.0)
    s.events.clear()
    s.expire(100.0 + 86399.0)
    assert len(s.leases(0.0)) == 1
    s.expire(100.0 + 86400.0)
    assert s.leases(0.0) == [] and s.events[0][1]["reason"] == "expired"
    assert s.counters["dhcpv6-expired"] == 2


def test_small_pool_exhaustion_and_table_bound() -> None:
    cfg = dict(prefix=ip("fd00::"), prefixlen=126, host=ip("fd00::2"), dns=ip("fd00::3"))
    s = server(**cfg)
    first = ask(s, DHCP6_Solicit() / CLIENT / DHCP6OptRapidCommit() / DHCP6OptIA_NA(iaid=1))
    assert first is not None and iaaddr(first) == "fd00::1"  # the only free address
    other = DHCP6OptClientId(duid=DUID_LL(lladdr="02:00:00:00:00:01"))
    full = ask(s, DHCP6_Solicit() / other / DHCP6OptIA_NA(iaid=1))
    assert full is not None and DHCP6OptIAAddress not in full
    assert full[DHCP6OptStatusCode].statuscode == d6.STATUS_NO_ADDRS_AVAIL
    small = Dhcpv6Server(Ipv6Config(), ROUTER_MAC, max_leases=1)
    ask(small, DHCP6_Solicit() / CLIENT / DHCP6OptIA_NA(iaid=1))
    ask(small, DHCP6_Solicit() / other / DHCP6OptIA_NA(iaid=1))
    assert small.counters["dhcpv6-table-full"] == 1 and len(small.leases(0.0)) == 1


def test_in_use_addresses_are_skipped() -> None:
    taken: set[bytes] = set()
    s = Dhcpv6Server(Ipv6Config(), ROUTER_MAC, in_use=lambda a, mac: a in taken)
    probe = server()
    want = ask(probe, DHCP6_Solicit() / CLIENT / DHCP6OptIA_NA(iaid=1))
    assert want is not None
    taken.add(ip(iaaddr(want)))
    got = ask(s, DHCP6_Solicit() / CLIENT / DHCP6OptIA_NA(iaid=1))
    assert got is not None and iaaddr(got) != iaaddr(want)


def test_stateless_only_ignores_stateful_messages() -> None:
    s = server(stateful_dhcpv6=False)
    assert ask(s, DHCP6_Solicit() / CLIENT / DHCP6OptIA_NA(iaid=1)) is None
    assert s.counters["dhcpv6-stateful-off"] == 1
    assert ask(s, DHCP6_InfoRequest() / CLIENT) is not None


def test_no_ia_na_and_ia_pd_only() -> None:
    s = server()
    adv = ask(s, DHCP6_Solicit() / CLIENT / DHCP6OptIA_PD(iaid=1))
    assert isinstance(adv, DHCP6_Advertise)
    assert adv[DHCP6OptStatusCode].statuscode == d6.STATUS_NO_ADDRS_AVAIL


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x01\x00\x00",
        b"\x0c" + bytes(40),  # relay-forw
        b"\x01\x00\x00\x01\x00\x01\x00\x10ab",  # option longer than the message
        b"\x63\x00\x00\x01",  # unknown type
        raw(DHCP6_Solicit() / DHCP6OptIA_NA(iaid=1)),  # no client id
        raw(DHCP6_Solicit() / CLIENT / SERVER / DHCP6OptIA_NA(iaid=1)),  # server id in solicit
        raw(DHCP6_Solicit() / CLIENT)[:-1] + b"",
        raw(DHCP6_Request() / CLIENT / SERVER) + b"\x00\x03\x00\x04abcd",  # short IA_NA
        b"\x0b\x00\x00\x01\x00\x01\x00\x00",  # empty client id
    ],
)
def test_malformed_and_invalid_are_dropped(payload: bytes) -> None:
    s = server()
    assert s.handle(payload, ip(GUEST_LL), 546, a6.ALL_DHCP, MAC, 0.0) == []
    assert sum(s.counters.values()) >= 1


def test_unicast_request_is_answered_from_that_address() -> None:
    reply = ask(server(), DHCP6_InfoRequest() / CLIENT, dst="fec0::2")
    assert isinstance(reply, DHCP6_Reply)


def test_codec_helpers() -> None:
    assert d6.duid_mac(d6.duid_ll(MAC)) == MAC
    assert d6.duid_mac(bytes.fromhex("0001000100000000") + MAC) == MAC
    assert d6.duid_mac(b"\x00\x02abcd") is None
    assert d6.parse_oro(b"\x00\x17\x00\x18\x00") == {23, 24}
    assert d6.parse_options(b"\x00\x01\x00\x00" * 3, limit=2) is None
    ia = d6.parse_ia_na(d6.ia_na(1, 2, 3, [d6.ia_address(ip("fec0::9"), 4, 5)])[4:])
    assert ia == d6.IaNa(1, 2, 3, [d6.IaAddress(ip("fec0::9"), 4, 5)])
    assert d6.parse_ia_na(b"short") is None
