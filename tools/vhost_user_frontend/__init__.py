"""A Python vhost-user-net *front end*: it plays the VM (QEMU plus a virtio-net guest
driver) against any vhost-user back end -- DPDK's vhost PMD, netstack's
``drivers/vhost_user``, libvhost-user -- for interop tests, fuzzing and benches.

Layers (each module's docstring has the details and the spec it follows):

* :mod:`.protocol` -- wire format (sans-IO): request ids, feature bits, payload encoders,
  :class:`~.protocol.ReplyParser`, QEMU's reply checks (flags must be exactly 0x5);
* :mod:`.session` -- the conversation as sans-IO plans (generators of steps): QEMU's init,
  start and stop sequences, REPLY_ACK / barrier rules, negotiation;
* :mod:`.channel` -- the asyncio socket adapter: client (connect) or server (listen and
  accept), SCM_RIGHTS, bounded reply waits;
* :mod:`.memory` -- guest RAM in memfds (one or more regions, optional mmap offsets),
  address translation, a bump allocator;
* :mod:`.virtqueue` -- split virtqueues, driver side (numpy views on guest memory), the
  event-idx notify rule, used-ring validation;
* :mod:`.net` -- virtio-net TX/RX queues: 10/12-byte headers, mergeable RX buffers,
  offload header fields, a numpy fast path for benches;
* :mod:`.frontend` -- :class:`VhostUserFrontend`, tying it together;
* :mod:`.traffic` -- txonly / rxonly / io / ping modes (used by the CLI);
* :mod:`.hostile_rings`, :mod:`.hostile_msgs`, :mod:`.hostile_memory` -- hostile mode:
  catalogues of broken rings, malformed messages and damaged guest-memory files with the
  defence each expects;
* :mod:`.testpmd` -- running ``dpdk-testpmd`` as a peer and parsing its statistics.

Typical use::

    async with await VhostUserFrontend.connect("/tmp/vhost.sock") as fe:   # or .listen()
        await fe.start()                       # features, memory table, vrings, RX buffers
        fe.tx[0].send([frame], [VnetHeader(...)])       # header fields optional (TSO, csum)
        frames = fe.rx[0].receive()            # [RxFrame(header, data)]
        await fe.stop()                        # GET_VRING_BASE per vring

CLI: ``python -m tools.vhost_user_frontend --socket PATH [--server] --mode
txonly|rxonly|io|ping --size 64 --seconds 5``.

Rings: split, or packed (``FrontendConfig(features=PACKED_FEATURES)``). Limits: no
IOMMU/IOTLB, no dirty-page logging or migration messages, no back-end request channel
(BACKEND_REQ is never acked), no in-band notifications; x86-64 hosts only (ring memory
ordering relies on TSO).
"""

from .channel import Channel, ChannelClosed, ReplyTimeout
from .frontend import FrontendConfig, VhostUserFrontend
from .hostile_memory import MEMORY_CASES, damage
from .hostile_msgs import MSG_CASES, send_case
from .hostile_rings import RING_CASES, Crafted, RingCrafter
from .memory import AddressError, GuestMemory, Region
from .net import RxFrame, RxQueue, TxQueue, VnetHeader, header_len
from .packed import PackedQueue
from .protocol import (
    BackendFailure,
    DeviceStatus,
    Feature,
    MemRegion,
    Message,
    ProtocolFeature,
    Reply,
    ReplyError,
    Request,
)
from .session import (
    PACKED_FEATURES,
    SUPPORTED_FEATURES,
    SUPPORTED_PROTOCOL,
    NegotiationError,
    Session,
    SessionConfig,
)
from .traffic import Report, run_mode, udp_frame
from .virtqueue import Segment, SplitQueue, need_event

__all__ = [
    "MEMORY_CASES",
    "MSG_CASES",
    "PACKED_FEATURES",
    "RING_CASES",
    "SUPPORTED_FEATURES",
    "SUPPORTED_PROTOCOL",
    "AddressError",
    "BackendFailure",
    "Channel",
    "ChannelClosed",
    "Crafted",
    "DeviceStatus",
    "Feature",
    "FrontendConfig",
    "GuestMemory",
    "MemRegion",
    "Message",
    "NegotiationError",
    "PackedQueue",
    "ProtocolFeature",
    "Region",
    "Reply",
    "ReplyError",
    "ReplyTimeout",
    "Report",
    "Request",
    "RingCrafter",
    "RxFrame",
    "RxQueue",
    "Segment",
    "Session",
    "SessionConfig",
    "SplitQueue",
    "TxQueue",
    "VhostUserFrontend",
    "VnetHeader",
    "damage",
    "header_len",
    "need_event",
    "run_mode",
    "send_case",
    "udp_frame",
]
