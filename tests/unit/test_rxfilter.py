"""Unit tests for netstack.net.rxfilter: the receive_filter branches, with the state set
through :meth:`RxFilter.program` (the management API; a vhost-user back end never sees the
guest's control queue).

Query, change notification and program()'s own rules are in ``test_rxfilter_query.py``.
"""

from __future__ import annotations

import struct

import pytest

from netstack.net.rxfilter import MAX_VLAN, RX_MODES, RxFilter

OWN = bytes.fromhex("525400123456")
OTHER = bytes.fromhex("525400abcdef")
UNI1 = bytes.fromhex("020000000001")
UNI2 = bytes.fromhex("020000000002")
MC1 = bytes.fromhex("01005e000001")
MC2 = bytes.fromhex("333300000001")
BCAST = b"\xff" * 6
PROMISC, ALLMULTI, ALLUNI, NOMULTI, NOUNI, NOBCAST = range(6)


def frame(
    dst: bytes,
    *,
    vid: int | None = None,
    tci: int | None = None,
    tpid: int = 0x8100,
    length: int = 64,
    hdr: bytes = b"",
) -> bytes:
    """A frame of ``length`` bytes after the vnet header ``hdr``, optionally 802.1Q-tagged."""
    body = dst + OTHER
    if vid is not None or tci is not None:
        body += struct.pack(">HH", tpid, vid if tci is None else tci)
    body += b"\x08\x00"
    body = body.ljust(length, b"\xaa")[:length]
    return hdr + body


def mode(f: RxFilter, cmd: int, on: bool) -> None:
    """Set rx mode ``cmd`` (virtio's numbering: PROMISC .. NOBCAST)."""
    f.program(rx_modes={RX_MODES[cmd]: on})


def set_table(f: RxFilter, uni: list[bytes], multi: list[bytes]) -> None:
    f.program(unicast=uni, multicast=multi)


def set_mac(f: RxFilter, mac: bytes) -> None:
    f.program(mac=mac)


def allowed_vlans(f: RxFilter) -> list[int]:
    return [v for v in range(MAX_VLAN) if f.vlan_allowed(v)]


def allow_vlan(f: RxFilter, vid: int) -> None:
    f.program(vlans=[*allowed_vlans(f), vid])


def deny_vlan(f: RxFilter, vid: int) -> None:
    f.program(vlans=[v for v in allowed_vlans(f) if v != vid])


def make(*, promisc: bool = False, negotiated: bool = False) -> RxFilter:
    f = RxFilter(OWN, vlan_negotiated=negotiated)
    mode(f, PROMISC, promisc)
    return f


# ---------------------------------------------------------------------------- reset state


def test_reset_values_are_qemus() -> None:
    f = RxFilter(OWN)
    assert f.rx_modes == {
        "promisc": True,
        "allmulti": False,
        "alluni": False,
        "nomulti": False,
        "nouni": False,
        "nobcast": False,
    }
    assert f.mac == OWN
    assert (f.in_use, f.first_multi, f.uni_overflow, f.multi_overflow) == (0, 0, False, False)
    assert f.vlan_bitmap == b"\x01" * MAX_VLAN
    assert not f.vlan_negotiated
    assert f.event_enabled


# ---------------------------------------------------------------------------- receive_filter


def test_promisc_accepts_everything_even_truncated() -> None:
    f = make(promisc=True, negotiated=True)  # and no VLAN allowed
    mode(f, NOBCAST, True)
    mode(f, NOUNI, True)
    mode(f, NOMULTI, True)
    for fr in (b"", b"\x01", frame(OTHER, length=13), frame(BCAST), frame(MC1), frame(OWN, vid=5)):
        assert f.accepts(fr)
    assert f.filter_batch([b"", b"x"]) == [b"", b"x"]


@pytest.mark.parametrize("hdr_len", [0, 10, 12])
def test_short_frames_are_dropped(hdr_len: int) -> None:
    f = make()
    hdr = b"\xff" * hdr_len
    assert not f.accepts(frame(OWN, length=13, hdr=hdr), hdr_len)
    assert f.accepts(frame(OWN, length=14, hdr=hdr), hdr_len)
    assert not f.accepts(hdr[: hdr_len // 2], hdr_len)


def test_tagged_frames_need_16_bytes() -> None:
    f = make()  # not negotiated: every vid allowed
    tagged = frame(OWN, vid=1, length=16)
    assert f.accepts(tagged)
    assert not f.accepts(tagged[:15])
    assert not f.accepts(tagged[:14])


def test_vlan_allowed_and_blocked() -> None:
    f = make(negotiated=True)
    assert not f.accepts(frame(OWN, vid=100))
    allow_vlan(f, 100)
    assert f.accepts(frame(OWN, vid=100))
    assert not f.accepts(frame(OWN, vid=101))
    assert f.accepts(frame(OWN))  # untagged frames never consult the bitmap


def test_vlan_id_ignores_pcp_and_dei() -> None:
    f = make(negotiated=True)
    allow_vlan(f, 100)
    assert f.accepts(frame(OWN, tci=0xF000 | 100))
    assert not f.accepts(frame(OWN, tci=0xF000 | 101))


def test_qinq_tpid_is_not_vlan() -> None:
    f = make(negotiated=True)  # no vid allowed
    assert f.accepts(frame(OWN, tpid=0x88A8, vid=100))
    assert f.accepts(frame(OWN, tpid=0x9100, vid=100))
    assert not f.accepts(frame(OWN, tpid=0x8100, vid=100))


def test_not_negotiated_allows_every_vlan() -> None:
    f = make()
    assert all(f.accepts(frame(OWN, vid=v)) for v in (0, 1, 100, 4095))


def test_broadcast() -> None:
    f = make()
    assert f.accepts(frame(BCAST))
    mode(f, NOMULTI, True)
    assert f.accepts(frame(BCAST))  # broadcast is decided before nomulti
    mode(f, NOBCAST, True)
    assert not f.accepts(frame(BCAST))
    mode(f, NOMULTI, False)
    mode(f, ALLMULTI, True)
    assert not f.accepts(frame(BCAST))  # nor does allmulti rescue it
    set_table(f, [], [BCAST])
    assert not f.accepts(frame(BCAST))  # nor a table entry


def test_nobcast_does_not_touch_multicast() -> None:
    f = make()
    mode(f, NOBCAST, True)
    mode(f, ALLMULTI, True)
    assert f.accepts(frame(MC1))


def test_tagged_broadcast_on_unknown_vlan_is_dropped() -> None:
    f = make(negotiated=True)
    assert not f.accepts(frame(BCAST, vid=3))
    allow_vlan(f, 3)
    assert f.accepts(frame(BCAST, vid=3))


def test_multicast_rules() -> None:
    f = make()
    assert not f.accepts(frame(MC1))  # empty table
    set_table(f, [], [MC1])
    assert f.accepts(frame(MC1))
    assert not f.accepts(frame(MC2))
    mode(f, ALLMULTI, True)
    assert f.accepts(frame(MC2))
    mode(f, NOMULTI, True)  # nomulti wins over allmulti and the table
    assert not f.accepts(frame(MC1))
    assert not f.accepts(frame(MC2))


def test_multicast_overflow_accepts_all_multicast() -> None:
    f = make()
    set_table(f, [UNI1] * 60, [MC1] * 5)
    assert f.multi_overflow
    assert f.accepts(frame(MC2))
    mode(f, NOMULTI, True)
    assert not f.accepts(frame(MC2))


def test_unicast_rules() -> None:
    f = make()
    assert f.accepts(frame(OWN))
    assert not f.accepts(frame(UNI1))
    set_table(f, [UNI1], [])
    assert f.accepts(frame(UNI1))
    assert not f.accepts(frame(UNI2))
    mode(f, ALLUNI, True)
    assert f.accepts(frame(UNI2))
    mode(f, NOUNI, True)  # nouni wins, even for the NIC's own MAC
    assert not f.accepts(frame(OWN))
    assert not f.accepts(frame(UNI1))


def test_unicast_overflow_accepts_all_unicast() -> None:
    f = make()
    set_table(f, [UNI1] * 65, [])
    assert f.uni_overflow
    assert f.accepts(frame(UNI2))


def test_own_mac_follows_the_programmed_mac() -> None:
    f = make()
    set_mac(f, OTHER)
    assert f.accepts(frame(OTHER))
    assert not f.accepts(frame(OWN))


@pytest.mark.parametrize("hdr_len", [0, 10, 12])
def test_hdr_len_offsets(hdr_len: int) -> None:
    f = make(negotiated=True)
    allow_vlan(f, 9)
    hdr = BCAST + b"\x81\x00\x0f\xff\x00\x00"[: hdr_len - 6] if hdr_len else b""
    assert f.accepts(frame(OWN, hdr=hdr), hdr_len)
    assert f.accepts(frame(OWN, vid=9, hdr=hdr), hdr_len)
    assert not f.accepts(frame(OWN, vid=8, hdr=hdr), hdr_len)
    assert not f.accepts(frame(UNI1, hdr=hdr), hdr_len)
    mode(f, NOBCAST, True)
    assert not f.accepts(frame(BCAST, hdr=hdr), hdr_len)


def test_memoryview_and_bytearray_frames() -> None:
    f = make()
    assert f.accepts(memoryview(frame(OWN)))
    assert not f.accepts(bytearray(frame(UNI1)))
    assert f.accepts(memoryview(b"\0" * 10 + frame(OWN))[10:])


def test_filter_batch_keeps_order() -> None:
    f = make()
    frames = [frame(OWN, length=60), frame(UNI1), frame(BCAST), b"short", frame(OWN, length=61)]
    assert f.filter_batch(frames) == [frames[0], frames[2], frames[4]]
