"""Feature bits a vhost-user virtio-net back end negotiates, and the set this one offers.

Values from ``include/standard-headers/linux/virtio_net.h``, ``virtio_config.h``,
``virtio_ring.h`` and ``docs/interop/vhost-user.rst`` (``VHOST_USER_F_PROTOCOL_FEATURES``
is the otherwise unused bit 30). QEMU forwards to the guest only those device bits the back
end offers among its vhost-user list; control features (``CTRL_VQ``,
``CTRL_RX``, ``STATUS``, ``MAC``...) are QEMU's own.

Offered: ``VERSION_1``, ``ANY_LAYOUT``, ``MRG_RXBUF``, ``CSUM``/``GUEST_CSUM``,
``HOST_TSO4/6``/``GUEST_TSO4/6``, ``EVENT_IDX``, ``INDIRECT_DESC``, ``IN_ORDER``, ``MQ``,
``MTU``, ``STATUS``, ``GUEST_ANNOUNCE`` (QEMU passes it to the guest, which then announces
itself after a migration; QEMU sends ``SEND_RARP`` to the back end only when the guest did not
take it), ``VHOST_F_LOG_ALL`` (bit 26: dirty logging for live migration, see
:mod:`.dirtylog`), ``RING_PACKED`` (:mod:`.packed`). Not offered: UFO/USO and ECN,
``ACCESS_PLATFORM`` (no IOTLB).
"""

from __future__ import annotations

F_CSUM = 0
F_GUEST_CSUM = 1
F_MTU = 3
F_GUEST_TSO4 = 7
F_GUEST_TSO6 = 8
F_HOST_TSO4 = 11
F_HOST_TSO6 = 12
F_MRG_RXBUF = 15
F_STATUS = 16
F_GUEST_ANNOUNCE = 21
F_MQ = 22
F_LOG_ALL = 26
F_ANY_LAYOUT = 27
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_PROTOCOL_FEATURES = 30
F_VERSION_1 = 32
F_RING_PACKED = 34
F_IN_ORDER = 35

DEVICE_FEATURES = sum(
    1 << bit
    for bit in (
        F_CSUM,
        F_GUEST_CSUM,
        F_MTU,
        F_GUEST_TSO4,
        F_GUEST_TSO6,
        F_HOST_TSO4,
        F_HOST_TSO6,
        F_MRG_RXBUF,
        F_STATUS,
        F_GUEST_ANNOUNCE,
        F_MQ,
        F_LOG_ALL,
        F_ANY_LAYOUT,
        F_INDIRECT_DESC,
        F_EVENT_IDX,
        F_VERSION_1,
        F_RING_PACKED,
        F_IN_ORDER,
    )
)
