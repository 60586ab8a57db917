"""The driver cases the conformance suite runs (one or more per driver)."""

from __future__ import annotations

from tests.conformance.case_l2tpv3 import L2tpv3Case
from tests.conformance.case_sockets import (
    DgramUnixCase,
    SocketListenCase,
    SocketUdpCase,
    StreamClientCase,
)
from tests.conformance.case_tap import TapCase, TapPlainCase
from tests.conformance.case_vde import VdeCase
from tests.conformance.case_vhost_user import VhostUserCase
from tests.conformance.case_vxlan import VxlanCase
from tests.conformance.harness import DriverCase

CASES: list[type[DriverCase]] = [
    L2tpv3Case,
    SocketListenCase,
    SocketUdpCase,
    StreamClientCase,
    DgramUnixCase,
    TapCase,
    TapPlainCase,
    VhostUserCase,
    VdeCase,
    VxlanCase,
]
