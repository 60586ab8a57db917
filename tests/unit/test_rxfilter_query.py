"""Unit tests for netstack.net.rxfilter: query-rx-filter, the change gate, program()."""

from __future__ import annotations

import pytest

from netstack.errors import GenericError
from netstack.net import rxfilter
from netstack.net.rxfilter import MAX_VLAN, RxFilter, format_mac, parse_mac
from tests.unit.test_rxfilter import (
    ALLMULTI,
    ALLUNI,
    BCAST,
    MC1,
    MC2,
    NOBCAST,
    NOMULTI,
    NOUNI,
    OTHER,
    OWN,
    PROMISC,
    UNI1,
    UNI2,
    allow_vlan,
    deny_vlan,
    frame,
    make,
    mode,
    set_mac,
    set_table,
)

# ---------------------------------------------------------------------------- query-rx-filter


def test_info_defaults_exactly() -> None:
    info = RxFilter(OWN).info("net0")
    assert list(info) == [
        "name",
        "promiscuous",
        "multicast",
        "unicast",
        "vlan",
        "broadcast-allowed",
        "multicast-overflow",
        "unicast-overflow",
        "main-mac",
        "vlan-table",
        "unicast-table",
        "multicast-table",
    ]
    assert info == {
        "name": "net0",
        "promiscuous": True,
        "multicast": "normal",
        "unicast": "normal",
        "vlan": "all",
        "broadcast-allowed": True,
        "multicast-overflow": False,
        "unicast-overflow": False,
        "main-mac": "52:54:00:12:34:56",
        "vlan-table": list(range(4095, -1, -1)),
        "unicast-table": [],
        "multicast-table": [],
    }


def test_info_broadcast_allowed_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    f = make()
    assert f.info("n")["broadcast-allowed"] is True
    mode(f, NOBCAST, True)
    assert f.info("n")["broadcast-allowed"] is False
    monkeypatch.setattr(rxfilter, "QEMU_INVERTED_BROADCAST_ALLOWED", True)
    assert f.info("n")["broadcast-allowed"] is True
    mode(f, NOBCAST, False)
    assert f.info("n")["broadcast-allowed"] is False  # QEMU's report for the default


def test_info_tables_reverse_order_and_vlans_descending() -> None:
    f = make(negotiated=True)
    assert f.info("n")["vlan"] == "none"
    assert f.info("n")["vlan-table"] == []
    for vid in (5, 4095, 0, 300):
        allow_vlan(f, vid)
    mac_a = bytes.fromhex("02AB000000AA")
    set_table(f, [UNI1, mac_a, UNI2], [MC1, MC2])
    set_mac(f, bytes.fromhex("52540000BEEF"))
    info = f.info("n")
    assert info["vlan"] == "normal"
    assert info["vlan-table"] == [4095, 300, 5, 0]
    assert info["unicast-table"] == [
        "02:00:00:00:00:02",
        "02:ab:00:00:00:aa",
        "02:00:00:00:00:01",
    ]
    assert info["multicast-table"] == ["33:33:00:00:00:01", "01:00:5e:00:00:01"]
    assert info["main-mac"] == "52:54:00:00:be:ef"
    assert info["promiscuous"] is False


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        ((), "normal"),
        ((ALLUNI,), "all"),
        ((NOUNI,), "none"),
        ((NOUNI, ALLUNI), "none"),
    ],
)
def test_info_unicast_state(modes: tuple[int, ...], expected: str) -> None:
    f = make()
    for m in modes:
        mode(f, m, True)
    assert f.info("n")["unicast"] == expected
    multi = {ALLUNI: ALLMULTI, NOUNI: NOMULTI}
    g = make()
    for m in modes:
        mode(g, multi[m], True)
    assert g.info("n")["multicast"] == expected


def test_info_overflow_does_not_change_state_names() -> None:
    f = make()
    set_table(f, [UNI1] * 65, [MC1] * 65)
    info = f.info("n")
    assert (info["unicast"], info["multicast"]) == ("normal", "normal")
    assert info["unicast-overflow"] and info["multicast-overflow"]
    assert info["unicast-table"] == [] and info["multicast-table"] == []


# ---------------------------------------------------------------------------- change hooks


class Recorder:
    def __init__(self) -> None:
        self.changes = 0
        self.events = 0

    def on_change(self) -> None:
        self.changes += 1

    def notify(self) -> None:
        self.events += 1


def recorded() -> tuple[RxFilter, Recorder]:
    rec = Recorder()
    return RxFilter(OWN, on_change=rec.on_change, notify=rec.notify), rec


def test_notify_gate_is_one_shot_until_info() -> None:
    f, rec = recorded()
    mode(f, PROMISC, False)
    assert rec.events == 1 and not f.event_enabled
    mode(f, ALLMULTI, True)
    set_mac(f, OTHER)
    set_table(f, [UNI1], [])
    allow_vlan(f, 1)
    assert rec.events == 1
    assert rec.changes == 5
    f.info("n")
    assert f.event_enabled
    deny_vlan(f, 1)
    assert rec.events == 2


def test_notify_even_when_nothing_changed() -> None:
    f, rec = recorded()
    mode(f, PROMISC, True)  # already on
    assert rec.events == 1 and rec.changes == 1


def test_no_callbacks_is_fine() -> None:
    f = RxFilter(OWN)
    mode(f, PROMISC, False)
    assert not f.event_enabled


# ---------------------------------------------------------------------------- program()


def test_program_modes_mac_and_tables() -> None:
    f, rec = recorded()
    f.program(
        rx_modes={"promisc": False, "nobcast": True},
        mac="52:54:00:AA:BB:CC",
        unicast=[UNI1, "02:00:00:00:00:02"],
        multicast=["01:00:5e:00:00:01"],
    )
    assert (rec.changes, rec.events) == (1, 1)
    assert not f.promisc and f.nobcast
    assert f.mac == bytes.fromhex("525400aabbcc")
    assert f.unicast_table == (UNI1, UNI2)
    assert f.multicast_table == (MC1,)
    assert f.accepts(frame(UNI2)) and f.accepts(frame(MC1)) and not f.accepts(frame(BCAST))


def test_program_replaces_one_half_and_keeps_the_other() -> None:
    f = make()
    f.program(unicast=[UNI1], multicast=[MC1, MC2])
    f.program(unicast=[UNI2])
    assert f.unicast_table == (UNI2,) and f.multicast_table == (MC1, MC2)
    f.program(multicast=[])
    assert f.unicast_table == (UNI2,) and len(f.multicast_table) == 0


def test_program_overflow_rules() -> None:
    f = make()
    f.program(unicast=[UNI1] * 65, multicast=[MC1])
    assert f.uni_overflow and f.unicast_table == () and f.multicast_table == (MC1,)
    f.program(unicast=[UNI1] * 64)
    assert not f.uni_overflow and f.multi_overflow and f.multicast_table == ()
    f.program(unicast=[])
    assert f.multi_overflow  # the overflowed multicast list is gone; the flag is kept
    f.program(multicast=[MC2])
    assert not f.multi_overflow and f.multicast_table == (MC2,)


def test_program_vlans() -> None:
    f = make()
    f.program(vlans=[10, 20, 10])
    assert f.vlan_negotiated
    assert [v for v in range(MAX_VLAN) if f.vlan_allowed(v)] == [10, 20]
    assert f.info("n")["vlan"] == "normal"
    f.program(vlans=[])
    assert f.info("n")["vlan"] == "none"
    assert not f.accepts(frame(OWN, vid=10))
    f.program(vlan_filtering=False)
    assert f.info("n")["vlan"] == "all"
    assert f.accepts(frame(OWN, vid=10))
    f.program(vlan_filtering=True)
    assert f.vlan_bitmap == bytes(MAX_VLAN)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rx_modes": {"promiscuous": True}},
        {"rx_modes": {"promisc": 1}},
        {"mac": "52:54:00:12:34"},
        {"mac": "52:54:00:12:34:5g"},
        {"mac": "52:54-00:12:34:56"},
        {"mac": b"\x52\x54"},
        {"mac": "01:00:5e:00:00:01"},
        {"unicast": [MC1]},
        {"multicast": [UNI1]},
        {"multicast": [MC1, "nonsense"]},
        {"vlans": [4096]},
        {"vlans": [-1]},
        {"vlans": [True]},
        {"vlans": [1], "vlan_filtering": False},
    ],
)
def test_program_rejects_bad_input_atomically(kwargs: dict[str, object]) -> None:
    f, rec = recorded()
    args: dict[str, object] = {"rx_modes": {"promisc": False}, "unicast": [UNI1], **kwargs}
    with pytest.raises(GenericError):
        f.program(**args)  # type: ignore[arg-type]
    assert f.promisc and f.in_use == 0
    assert (rec.changes, rec.events, f.version) == (0, 0, 0)


def test_program_without_arguments_changes_nothing() -> None:
    f, rec = recorded()
    f.program()
    f.program(rx_modes={})
    assert (rec.changes, rec.events) == (0, 0)


# ---------------------------------------------------------------------------- MAC text


def test_mac_text_round_trip() -> None:
    assert format_mac(bytes.fromhex("0A1B2C3D4E5F")) == "0a:1b:2c:3d:4e:5f"
    assert parse_mac("0A:1b:2C:3d:4E:5f") == bytes.fromhex("0a1b2c3d4e5f")
    assert parse_mac("0a-1b-2c-3d-4e-5f") == bytes.fromhex("0a1b2c3d4e5f")
    with pytest.raises(GenericError):
        parse_mac("0a:1b:2c:3d:4e:5f:00")


def test_constructor_rejects_bad_mac() -> None:
    with pytest.raises(ValueError):
        RxFilter(b"\x00" * 5)
