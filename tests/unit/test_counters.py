"""Declared counter names: families of numbered names, and the names the user netdev's
machines report for per-type and per-code counts (``query-netdev`` shows them as is)."""

from __future__ import annotations

from collections import Counter

from drivers.user.v4.dhcp import _RX, _TX
from drivers.user.v6.dhcpv6 import _RX as _RX6
from drivers.user.v6.dhcpv6 import _TX as _TX6
from netstack.counters import Family, FamilyKey, by_name


def test_family_key_joins_prefix_and_numbers() -> None:
    fam = Family("icmp-error-sent")
    assert fam.key(3, 1) == "icmp-error-sent-3-1"
    assert Family("ip6-no-handler").key(58) == "ip6-no-handler-58"
    table: Counter[FamilyKey] = Counter()
    table[fam.key(3, 3)] += 1
    table[fam.key(3, 3)] += 1
    assert by_name(table) == {"icmp-error-sent-3-3": 2}


def test_dhcp_type_names_unchanged() -> None:
    assert sorted(_RX.values()) == sorted(
        f"dhcp-rx-{n}"
        for n in ("discover", "offer", "request", "decline", "ack", "nak", "release", "inform")
    )
    assert _TX == {2: "dhcp-tx-offer", 5: "dhcp-tx-ack", 6: "dhcp-tx-nak"}
    assert _RX6[1] == "dhcpv6-rx-solicit" and _RX6[11] == "dhcpv6-rx-information-request"
    assert _TX6 == {2: "dhcpv6-tx-advertise", 7: "dhcpv6-tx-reply"}
