"""The vhost-user test front end (:mod:`tests.kit.vhost_user`) checked on its own."""

from __future__ import annotations

import struct

from tests.kit.vhost_user import DriverRing, GuestRam, GuestSetup


def test_ring_layout_and_used_reading() -> None:
    ram = GuestRam(1 << 20)
    try:
        ring = DriverRing(ram, 8)
        assert ring.desc % 16 == 0 and ring.avail % 2 == 0 and ring.used % 4 == 0
        head = ring.add_chain([(0x2000, 10, 0), (0x3000, 20, 0)])
        ring.publish(head)
        assert ring.avail_idx == 1
        ram.write(ring.used + 4, struct.pack("<II", head, 30))
        ram.write(ring.used + 2, struct.pack("<H", 1))
        assert ring.take_used() == [(head, 30)]
        ring.release(head)
        assert len(ring._free) == 8
    finally:
        ram.close()


def test_start_messages_follow_qemu_order() -> None:
    guest = GuestSetup()
    try:
        names = [m.name for m in guest.start_messages()]
        assert names[:6] == [
            "GET_FEATURES",
            "GET_PROTOCOL_FEATURES",
            "SET_PROTOCOL_FEATURES",
            "SET_OWNER",
            "SET_FEATURES",
            "SET_MEM_TABLE",
        ]
        assert names.count("SET_VRING_KICK") == 2 and names[-1] == "SET_VRING_ENABLE"
        for m in guest.start_messages():
            m.close_fds()
    finally:
        guest.close()
