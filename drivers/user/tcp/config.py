"""Settings, states and events of the guest-side TCP endpoint.

:class:`TcpConfig` holds every tunable with the default the user netdev should use and the
reason for it; :class:`State` names RFC 9293's states plus ``CONNECTING`` (a guest SYN is
held while the host socket connects, so the guest sees SYN-ACK only once the far end
accepted - libslirp does the same); :class:`Event` is what the machine reports to its
adapter (each with an ``int`` detail: an errno or 0).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """Tunables of every endpoint of one user netdev."""

    #: MTU of the guest link; our MSS offer is this minus 40 (IPv4) or 60 (IPv6).
    mtu: int = 1500
    #: Guest -> host bytes we hold (unwritten to the host socket): our largest window.
    rcvbuf: int = 4 << 20
    #: Host -> guest bytes we hold (unacknowledged plus unsent): the read budget.
    sndbuf: int = 4 << 20
    #: Out-of-order guest data kept for reassembly: bytes and pieces (beyond: dropped).
    ooo_max: int = 1 << 20
    ooo_segs: int = 256
    #: Emit virtio-net headers: checksum-partial frames and TSO super-frames.
    vnet: bool = False
    #: Offer/accept SACK (RFC 2018) in both directions.
    sack: bool = True
    #: RFC 6298 parameters (min_rto below the RFC's 1 s: see rto.py).
    rto_initial: float = 1.0
    rto_min: float = 0.2
    rto_max: float = 60.0
    #: Retransmissions of a SYN (hostfwd) before giving up: ~1+2+4+8+16+32 s.
    syn_retries: int = 6
    #: Retransmissions (or unanswered zero-window probes) of data/FIN before RST.
    max_retries: int = 12
    #: Host connect still pending after this: reported as ETIMEDOUT.
    connect_timeout: float = 75.0
    #: No segment from the guest and no host data for this long: RST, reported.
    idle_timeout: float = 7200.0
    #: TIME_WAIT length (2*MSL would be 60-240 s; the guest link has no old duplicates
    #: in flight after a few ms, so a short wait that absorbs retransmitted FINs is
    #: enough).
    time_wait: float = 2.0
    #: Delayed-ACK timeout for adapters that do not call ``flush`` after a batch.
    delack: float = 0.005
    #: Initial congestion window in MSS (RFC 6928: 10).
    initial_window: int = 10

    def mss_for(self, v6: bool) -> int:
        """The MSS we offer on a link of :attr:`mtu`."""
        return max(self.mtu - (60 if v6 else 40), 88)

    def wscale(self) -> int:
        """Our window shift: the smallest that lets :attr:`rcvbuf` be advertised."""
        shift = 0
        while (0xFFFF << shift) < self.rcvbuf and shift < 14:
            shift += 1
        return shift


class State(enum.IntEnum):
    CONNECTING = 0
    SYN_SENT = 1
    SYN_RCVD = 2
    ESTABLISHED = 3
    FIN_WAIT_1 = 4
    FIN_WAIT_2 = 5
    CLOSING = 6
    TIME_WAIT = 7
    CLOSE_WAIT = 8
    LAST_ACK = 9
    CLOSED = 10


class Event(enum.Enum):
    #: The three-way handshake completed.
    ESTABLISHED = "established"
    #: The host connect failed (detail: errno; ETIMEDOUT after ``connect_timeout``): the
    #: adapter closes the socket and picks the guest's answer (``reject``/``refuse``/
    #: ``unreachable``).
    CONNECT_FAILED = "connect-failed"
    #: The guest answered our SYN (hostfwd) with RST.
    REFUSED = "refused"
    #: The guest reset the connection.
    GUEST_RESET = "guest-reset"
    #: Retransmissions or probes exhausted; RST sent to the guest.
    TIMEOUT = "timeout"
    #: ``idle_timeout`` passed without traffic; RST sent to the guest.
    IDLE = "idle"
    #: The host socket failed (detail: errno); RST sent to the guest.
    HOST_ERROR = "host-error"
    #: Orderly end: both FINs exchanged and acknowledged, all data delivered.
    CLOSED = "closed"


#: States where the guest may still send data (its FIN not yet received).
RECEIVING = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})
#: States where host data may still be queued and sent.
SENDING = frozenset({State.SYN_SENT, State.SYN_RCVD, State.ESTABLISHED, State.CLOSE_WAIT})
#: States where queued data and our FIN are transmitted.
TRANSMITTING = frozenset(
    {State.ESTABLISHED, State.CLOSE_WAIT, State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK}
)


#: The names a TCP machine counts under (``query-netdev`` counters, ``tcp-`` prefixed).
TcpCounter = Literal[
    "ack-unsent",
    "after-close",
    "beyond-window",
    "challenge-acks-suppressed",
    "data-after-fin",
    "dupacks",
    "duplicate",
    "fast-retransmits",
    "host-data-over-room",
    "no-ack",
    "out-of-order",
    "out-of-order-dropped",
    "retransmits",
    "rst-after-guest-fin",
    "rst-challenged",
    "segment-while-connecting",
    "syn-challenged",
    "syn-retransmit-held",
    "timeouts",
    "unacceptable",
    "window-probes",
    "window-updates",
]
