"""The retransmission timeout estimator of RFC 6298.

SRTT/RTTVAR smoothing with alpha 1/8 and beta 1/4, RTO = SRTT + max(G, 4 * RTTVAR) with a
clock granularity G of 1 ms, bounded by ``[min_rto, max_rto]``; before the first sample
the RTO is ``initial`` (RFC 6298 §2.1: 1 s). Exponential backoff (§5.5) doubles the RTO up
to ``max_rto``; a new sample after a backoff recomputes it from SRTT/RTTVAR (§5.7 keeps the
backed-off value only until then). Karn's rule - never sample a retransmitted segment - is
the caller's to keep.

Deviation, documented: ``min_rto`` defaults to 200 ms (Linux's TCP_RTO_MIN) rather than
RFC 6298's 1 s, because the guest link is a memory copy away and a 1 s floor would turn
every loss on a busy host into a second-long stall.
"""

from __future__ import annotations

from typing import Final

GRANULARITY: Final = 0.001


class RtoEstimator:
    """SRTT, RTTVAR and the current (possibly backed-off) RTO."""

    __slots__ = ("max_rto", "min_rto", "rto", "rttvar", "srtt")

    def __init__(self, initial: float = 1.0, min_rto: float = 0.2, max_rto: float = 60.0) -> None:
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.rto = min(max(initial, min_rto), max_rto)
        self.srtt: float | None = None
        self.rttvar = 0.0

    def sample(self, rtt: float) -> None:
        """Fold in one round-trip measurement (seconds; negative values are ignored)."""
        if rtt < 0:
            return
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        rto = self.srtt + max(GRANULARITY, 4 * self.rttvar)
        self.rto = min(max(rto, self.min_rto), self.max_rto)

    def reset_backoff(self) -> None:
        """New data was acknowledged after a backoff: back to SRTT + 4 * RTTVAR (what
        Linux does; RFC 6298 §5.7 would wait for the next sample)."""
        if self.srtt is not None:
            rto = self.srtt + max(GRANULARITY, 4 * self.rttvar)
            self.rto = min(max(rto, self.min_rto), self.max_rto)

    def backoff(self) -> None:
        """Double the RTO after a timeout (bounded by ``max_rto``)."""
        self.rto = min(self.rto * 2, self.max_rto)
