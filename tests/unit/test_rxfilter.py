"""Unit tests for netstack.net.rxfilter: receive_filter branches and control-queue commands.

Query, change notification and the management API are in ``test_rxfilter_query.py``.
"""

from __future__ import annotations

import struct

import pytest

from netstack.errors import RemoteInputError
from netstack.net.rxfilter import (
    MAX_VLAN,
    RX_MODES,
    VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_VLAN,
    VIRTIO_NET_CTRL_VLAN_ADD,
    VIRTIO_NET_CTRL_VLAN_DEL,
    VIRTIO_NET_ERR,
    VIRTIO_NET_OK,
    RxFilter,
)

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


def table(uni: list[bytes], multi: list[bytes], *, little: bool = True) -> bytes:
    fmt = "<I" if little else ">I"
    return (
        struct.pack(fmt, len(uni)) + b"".join(uni) + struct.pack(fmt, len(multi)) + b"".join(multi)
    )


def vid_payload(vid: int, *, little: bool = True) -> bytes:
    return struct.pack("<H" if little else ">H", vid)


def make(*, promisc: bool = False, negotiated: bool = False) -> RxFilter:
    f = RxFilter(OWN, vlan_negotiated=negotiated)
    assert f.set_rx_mode(PROMISC, bytes([promisc])) == VIRTIO_NET_OK
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


def test_reset_restores_modes_mac_and_table_but_not_vlans() -> None:
    f = make(negotiated=True)
    f.set_mac(OTHER)
    f.set_rx_mode(NOBCAST, b"\x01")
    f.mac_table_set(table([UNI1], [MC1]))
    f.vlan_add(vid_payload(7))
    f.reset()
    assert f.promisc and not f.nobcast
    assert f.mac == OWN
    assert f.in_use == 0
    assert f.vlan_negotiated
    assert [v for v in range(MAX_VLAN) if f.vlan_allowed(v)] == [7]


# ---------------------------------------------------------------------------- receive_filter


def test_promisc_accepts_everything_even_truncated() -> None:
    f = make(promisc=True, negotiated=True)  # and no VLAN allowed
    f.set_rx_mode(NOBCAST, b"\x01")
    f.set_rx_mode(NOUNI, b"\x01")
    f.set_rx_mode(NOMULTI, b"\x01")
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
    assert f.vlan_add(vid_payload(100)) == VIRTIO_NET_OK
    assert f.accepts(frame(OWN, vid=100))
    assert not f.accepts(frame(OWN, vid=101))
    assert f.accepts(frame(OWN))  # untagged frames never consult the bitmap


def test_vlan_id_ignores_pcp_and_dei() -> None:
    f = make(negotiated=True)
    f.vlan_add(vid_payload(100))
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
    f.set_rx_mode(NOMULTI, b"\x01")
    assert f.accepts(frame(BCAST))  # broadcast is decided before nomulti
    f.set_rx_mode(NOBCAST, b"\x01")
    assert not f.accepts(frame(BCAST))
    f.set_rx_mode(NOMULTI, b"\x00")
    f.set_rx_mode(ALLMULTI, b"\x01")
    assert not f.accepts(frame(BCAST))  # nor does allmulti rescue it
    f.mac_table_set(table([], [BCAST]))
    assert not f.accepts(frame(BCAST))  # nor a table entry


def test_nobcast_does_not_touch_multicast() -> None:
    f = make()
    f.set_rx_mode(NOBCAST, b"\x01")
    f.set_rx_mode(ALLMULTI, b"\x01")
    assert f.accepts(frame(MC1))


def test_tagged_broadcast_on_unknown_vlan_is_dropped() -> None:
    f = make(negotiated=True)
    assert not f.accepts(frame(BCAST, vid=3))
    f.vlan_add(vid_payload(3))
    assert f.accepts(frame(BCAST, vid=3))


def test_multicast_rules() -> None:
    f = make()
    assert not f.accepts(frame(MC1))  # empty table
    f.mac_table_set(table([], [MC1]))
    assert f.accepts(frame(MC1))
    assert not f.accepts(frame(MC2))
    f.set_rx_mode(ALLMULTI, b"\x01")
    assert f.accepts(frame(MC2))
    f.set_rx_mode(NOMULTI, b"\x01")  # nomulti wins over allmulti and the table
    assert not f.accepts(frame(MC1))
    assert not f.accepts(frame(MC2))


def test_multicast_overflow_accepts_all_multicast() -> None:
    f = make()
    f.mac_table_set(table([UNI1] * 60, [MC1] * 5))
    assert f.multi_overflow
    assert f.accepts(frame(MC2))
    f.set_rx_mode(NOMULTI, b"\x01")
    assert not f.accepts(frame(MC2))


def test_unicast_rules() -> None:
    f = make()
    assert f.accepts(frame(OWN))
    assert not f.accepts(frame(UNI1))
    f.mac_table_set(table([UNI1], []))
    assert f.accepts(frame(UNI1))
    assert not f.accepts(frame(UNI2))
    f.set_rx_mode(ALLUNI, b"\x01")
    assert f.accepts(frame(UNI2))
    f.set_rx_mode(NOUNI, b"\x01")  # nouni wins, even for the NIC's own MAC
    assert not f.accepts(frame(OWN))
    assert not f.accepts(frame(UNI1))


def test_unicast_overflow_accepts_all_unicast() -> None:
    f = make()
    f.mac_table_set(table([UNI1] * 65, []))
    assert f.uni_overflow
    assert f.accepts(frame(UNI2))


def test_entries_in_the_wrong_half_never_match() -> None:
    f = make()
    f.mac_table_set(table([MC1], [UNI1]))
    assert not f.accepts(frame(MC1))
    assert not f.accepts(frame(UNI1))


def test_own_mac_follows_mac_addr_set() -> None:
    f = make()
    f.set_mac(OTHER)
    assert f.accepts(frame(OTHER))
    assert not f.accepts(frame(OWN))


@pytest.mark.parametrize("hdr_len", [0, 10, 12])
def test_hdr_len_offsets(hdr_len: int) -> None:
    f = make(negotiated=True)
    f.vlan_add(vid_payload(9))
    hdr = BCAST + b"\x81\x00\x0f\xff\x00\x00"[: hdr_len - 6] if hdr_len else b""
    assert f.accepts(frame(OWN, hdr=hdr), hdr_len)
    assert f.accepts(frame(OWN, vid=9, hdr=hdr), hdr_len)
    assert not f.accepts(frame(OWN, vid=8, hdr=hdr), hdr_len)
    assert not f.accepts(frame(UNI1, hdr=hdr), hdr_len)
    f.set_rx_mode(NOBCAST, b"\x01")
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


# ---------------------------------------------------------------------------- RX class


@pytest.mark.parametrize("cmd", range(len(RX_MODES)))
def test_rx_mode_commands(cmd: int) -> None:
    f = RxFilter(OWN)
    name = RX_MODES[cmd]
    assert f.handle_ctrl(VIRTIO_NET_CTRL_RX, cmd, b"\x02") == VIRTIO_NET_OK
    assert getattr(f, name) is True
    assert f.handle_ctrl(VIRTIO_NET_CTRL_RX, cmd, b"\x00") == VIRTIO_NET_OK
    assert getattr(f, name) is False


def test_rx_mode_payload_rules() -> None:
    f = make()
    before = f.version
    assert f.set_rx_mode(ALLMULTI, b"") == VIRTIO_NET_ERR
    assert f.version == before
    # QEMU copies at most one byte and only checks that it got one: extra bytes are ignored.
    assert f.set_rx_mode(ALLMULTI, b"\x01\x00") == VIRTIO_NET_OK
    assert f.allmulti
    assert f.set_rx_mode(6, b"\x01") == VIRTIO_NET_ERR
    assert f.set_rx_mode(255, b"\x01") == VIRTIO_NET_ERR


# ---------------------------------------------------------------------------- MAC class


def test_mac_addr_set_needs_exactly_six_bytes() -> None:
    f = make()
    assert f.handle_ctrl(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, OTHER[:5]) == 1
    assert f.handle_ctrl(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, OTHER + b"\0") == 1
    assert f.mac == OWN
    assert f.handle_ctrl(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, OTHER) == 0
    assert f.mac == OTHER
    assert f.configured_mac == OWN


def test_mac_table_set_normal() -> None:
    f = make()
    assert f.mac_table_set(table([UNI1, UNI2], [MC1])) == VIRTIO_NET_OK
    assert f.unicast_table == (UNI1, UNI2)
    assert f.multicast_table == (MC1,)
    assert (f.first_multi, f.in_use) == (2, 3)
    assert not f.uni_overflow and not f.multi_overflow


def test_mac_table_set_entries1_beyond_payload_is_err() -> None:
    f = make()
    f.mac_table_set(table([UNI1], [MC1]))
    bad = struct.pack("<I", 3) + UNI1 + UNI2 + struct.pack("<I", 0)  # 3*6 > 16 bytes left
    assert f.mac_table_set(bad) == VIRTIO_NET_ERR
    assert f.unicast_table == (UNI1,) and f.multicast_table == (MC1,)


def test_mac_table_set_unicast_overflow_stores_none() -> None:
    f = make()
    assert f.mac_table_set(table([UNI1] * 65, [MC1, MC2])) == VIRTIO_NET_OK
    assert f.uni_overflow
    assert f.unicast_table == ()
    assert f.first_multi == 0
    assert f.multicast_table == (MC1, MC2)
    assert not f.multi_overflow


def test_mac_table_set_block2_must_fill_exactly() -> None:
    f = make()
    good = table([UNI1], [MC1, MC2])
    assert f.mac_table_set(good[:-1]) == VIRTIO_NET_ERR  # block 2 short
    assert f.mac_table_set(good + b"\0") == VIRTIO_NET_ERR  # block 2 long
    assert f.mac_table_set(good + b"\0" * 6) == VIRTIO_NET_ERR  # a whole extra entry
    assert f.in_use == 0
    assert f.mac_table_set(good) == VIRTIO_NET_OK


def test_mac_table_set_missing_counts_are_err() -> None:
    f = make()
    assert f.mac_table_set(b"") == VIRTIO_NET_ERR
    assert f.mac_table_set(b"\0\0\0") == VIRTIO_NET_ERR
    assert f.mac_table_set(struct.pack("<I", 1) + UNI1) == VIRTIO_NET_ERR
    assert f.mac_table_set(struct.pack("<I", 1) + UNI1 + b"\0\0") == VIRTIO_NET_ERR
    assert f.mac_table_set(struct.pack("<II", 0, 0)) == VIRTIO_NET_OK


@pytest.mark.parametrize(
    ("n_uni", "n_multi", "overflow"),
    [(60, 4, False), (60, 5, True), (64, 0, False), (64, 1, True), (0, 64, False), (0, 65, True)],
)
def test_mac_table_set_multicast_overflow(n_uni: int, n_multi: int, overflow: bool) -> None:
    f = make()
    assert f.mac_table_set(table([UNI1] * n_uni, [MC1] * n_multi)) == VIRTIO_NET_OK
    assert f.multi_overflow is overflow
    assert len(f.multicast_table) == (0 if overflow else n_multi)
    assert len(f.unicast_table) == n_uni


def test_mac_table_set_multicast_overflow_after_unicast_overflow() -> None:
    f = make()
    # Unicast overflowed and stored nothing, so all 64 slots are left for multicast.
    assert f.mac_table_set(table([UNI1] * 65, [MC1] * 64)) == VIRTIO_NET_OK
    assert f.uni_overflow and not f.multi_overflow
    assert len(f.multicast_table) == 64


def test_mac_table_set_replaces_atomically() -> None:
    f = make()
    f.mac_table_set(table([UNI1] * 65, [MC1] * 70))
    assert f.uni_overflow and f.multi_overflow
    assert f.mac_table_set(table([UNI2], [])) == VIRTIO_NET_OK
    assert not f.uni_overflow and not f.multi_overflow
    assert f.unicast_table == (UNI2,) and f.multicast_table == ()
    assert not f.accepts(frame(UNI1)) and not f.accepts(frame(MC2))


def test_mac_table_set_big_endian() -> None:
    f = make()
    assert f.mac_table_set(table([UNI1], [MC1, MC2], little=False), little_endian=False) == 0
    assert f.unicast_table == (UNI1,) and f.multicast_table == (MC1, MC2)
    assert f.mac_table_set(table([UNI1], [MC1], little=True), little_endian=False) == 1


def test_mac_table_set_reproduces_qemus_u32_wrap() -> None:
    # QEMU computes entries * ETH_ALEN in uint32_t: 715827883 * 6 wraps to 2.
    f = make()
    payload = struct.pack("<I", 715827883) + b"\0\0" + struct.pack("<I", 0)
    assert f.mac_table_set(payload) == VIRTIO_NET_OK
    assert f.uni_overflow and f.in_use == 0


def test_mac_class_unknown_cmd() -> None:
    f = make()
    assert f.handle_ctrl(VIRTIO_NET_CTRL_MAC, 2, OTHER) == VIRTIO_NET_ERR
    assert f.handle_ctrl(VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, table([], [])) == 0


# ---------------------------------------------------------------------------- VLAN class


def test_vlan_add_del_bounds() -> None:
    f = make(negotiated=True)
    add, dele = VIRTIO_NET_CTRL_VLAN_ADD, VIRTIO_NET_CTRL_VLAN_DEL
    assert f.handle_ctrl(VIRTIO_NET_CTRL_VLAN, add, vid_payload(4095)) == VIRTIO_NET_OK
    assert f.handle_ctrl(VIRTIO_NET_CTRL_VLAN, add, vid_payload(0)) == VIRTIO_NET_OK
    assert f.handle_ctrl(VIRTIO_NET_CTRL_VLAN, add, vid_payload(4096)) == VIRTIO_NET_ERR
    assert f.handle_ctrl(VIRTIO_NET_CTRL_VLAN, add, vid_payload(0xFFFF)) == VIRTIO_NET_ERR
    assert f.handle_ctrl(VIRTIO_NET_CTRL_VLAN, add, b"\x05") == VIRTIO_NET_ERR
    assert f.handle_ctrl(VIRTIO_NET_CTRL_VLAN, add, vid_payload(5) + b"\xff") == VIRTIO_NET_OK
    assert f.handle_ctrl(VIRTIO_NET_CTRL_VLAN, 2, vid_payload(6)) == VIRTIO_NET_ERR
    assert [v for v in range(MAX_VLAN) if f.vlan_allowed(v)] == [0, 5, 4095]
    assert f.handle_ctrl(VIRTIO_NET_CTRL_VLAN, dele, vid_payload(5)) == VIRTIO_NET_OK
    assert f.handle_ctrl(VIRTIO_NET_CTRL_VLAN, dele, vid_payload(4096)) == VIRTIO_NET_ERR
    assert [v for v in range(MAX_VLAN) if f.vlan_allowed(v)] == [0, 4095]


def test_vlan_big_endian() -> None:
    f = make(negotiated=True)
    assert f.vlan_add(vid_payload(0x0102, little=False), little_endian=False) == VIRTIO_NET_OK
    assert f.vlan_allowed(0x0102)
    # 0x0010 big-endian read as little-endian is 0x1000 = 4096: out of range.
    assert f.vlan_add(vid_payload(0x0010, little=False)) == VIRTIO_NET_ERR


def test_vlan_commands_work_without_negotiation() -> None:
    f = make()  # QEMU does not gate the commands on CTRL_VLAN
    assert f.vlan_del(vid_payload(7)) == VIRTIO_NET_OK
    assert not f.accepts(frame(OWN, vid=7))
    assert f.info("n")["vlan"] == "all"


def test_negotiation_flips_the_bitmap_only_on_change() -> None:
    f = make()
    f.set_vlan_negotiated(True)
    assert f.vlan_bitmap == bytes(MAX_VLAN)
    f.vlan_add(vid_payload(9))
    f.set_vlan_negotiated(True)  # no flip: the table stays
    assert f.vlan_allowed(9)
    f.set_vlan_negotiated(False)
    assert f.vlan_bitmap == b"\x01" * MAX_VLAN


# ---------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("cls", [3, 4, 5, 6, 8, 255])
def test_other_classes_are_err(cls: int) -> None:
    f = make()
    assert f.handle_ctrl(cls, 0, b"\x00\x00") == VIRTIO_NET_ERR


def test_handle_ctrl_message_parses_header() -> None:
    f = make()
    assert f.handle_ctrl_message(bytes([VIRTIO_NET_CTRL_RX, NOBCAST, 1])) == VIRTIO_NET_OK
    assert f.nobcast
    msg = bytes([VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD]) + vid_payload(3)
    assert f.handle_ctrl_message(memoryview(msg)) == VIRTIO_NET_OK
    assert f.handle_ctrl_message(bytes([VIRTIO_NET_CTRL_RX, NOBCAST])) == VIRTIO_NET_ERR
    with pytest.raises(RemoteInputError):
        f.handle_ctrl_message(b"\x00")
    with pytest.raises(RemoteInputError):
        f.handle_ctrl_message(b"")
