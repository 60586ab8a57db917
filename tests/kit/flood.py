"""A guest that floods: 64-byte Ethernet frames written to an interface in a network
namespace from an ``AF_PACKET`` socket, as fast as one Python process can.

The frames are IPv4/UDP from 10.0.2.101. ``other`` sends them to a MAC and an address
nobody owns (a hub repeats each to every port; every receiver drops it), ``gateway`` to
the user netdev's gateway (52:55:0a:00:02:02, 10.0.2.2) and a chosen UDP port, so each
crosses the NAT to the host. The program stops at SIGTERM or after its time limit and
prints one JSON line: ``{"sent": N, "failed": F, "seconds": S}`` (``failed``: sends the
kernel refused, e.g. ``ENOBUFS``).

Used by the isolation test and ``bench/bench_isolation.py``; the caller makes the
namespace and stops the process by PID.
"""

from __future__ import annotations

import sys

#: ``python -c FLOODER IFNAME other|gateway PORT SECONDS``
FLOODER = r"""
import json, signal, socket, struct, sys, time
ifname, dst, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
src_mac = s.getsockname()[4]
if dst == "gateway":
    dst_mac, dst_ip = bytes.fromhex("52550a000202"), "10.0.2.2"
else:
    dst_mac, dst_ip = bytes.fromhex("02a5a5a5a5a5"), "10.0.2.99"
def csum(b):
    t = sum(struct.unpack("!10H", b))
    t = (t & 0xFFFF) + (t >> 16)
    return ~((t & 0xFFFF) + (t >> 16)) & 0xFFFF
payload = b"f" * (64 - 14 - 20 - 8)
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                  socket.inet_aton("10.0.2.101"), socket.inet_aton(dst_ip))
iph = iph[:10] + struct.pack("!H", csum(iph)) + iph[12:]
frame = dst_mac + src_mac + b"\x08\x00" + iph + udp
assert len(frame) == 64
stopped = []
signal.signal(signal.SIGTERM, lambda *a: stopped.append(1))
send = s.send
sent = failed = 0
t0 = time.perf_counter()
end = t0 + seconds
while not stopped:
    for _ in range(256):
        try:
            send(frame)
            sent += 1
        except OSError:
            failed += 1
    if time.perf_counter() >= end:
        break
print(json.dumps({"sent": sent, "failed": failed, "seconds": time.perf_counter() - t0}))
"""

FLOODER_ADDR = "10.0.2.101"


def flooder_argv(
    ns: str, ifname: str, *, to: str = "other", port: int = 9, seconds: float = 60, nice: int = 0
) -> list[str]:
    """The command line of a flooder on ``ifname`` in ``ns`` (``nice``: its nice value)."""
    return [
        "ip", "netns", "exec", ns, "nice", "-n", str(nice), sys.executable, "-c", FLOODER,
        ifname, to, str(port), f"{seconds:g}",
    ]  # fmt: skip
