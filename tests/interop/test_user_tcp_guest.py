"""A real QEMU 7.2 guest (vhost-user, joined on hub 0 with the user netdev) uses guest TCP
through the NAT, all in one boot:

* it downloads a 100 MB generated file with busybox wget from an HTTP server on the host's
  127.0.0.1 (as 10.0.2.2), streaming it into ``md5sum`` (the guest never stores it), and
  gets the same MD5 as the host computed while writing the file; the transfer time is
  measured in the guest (``/proc/uptime``) and printed (``-s`` shows it), never asserted;
* a connect to a closed port is refused at once (RST), not left to time out;
* it uploads a 32 MiB random file with busybox ``nc`` to a TCP sink on the host's
  127.0.0.1: the sink sees EOF (the guest half-closes), and its byte count and MD5 equal
  the guest's; the sink's reply reaches the guest over the half-closed connection.

The daemon's counters show every connection and no internal error.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kit.daemon import in_process
from tests.kit.guests import (
    Sink,
    attach_user_over_vhost_user,
    serve_directory,
    tcp_sink,
    vhost_user_qemu_args,
)
from tools.guest import (
    UDHCPC_SCRIPT_PATH,
    Guest,
    GuestImage,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(420)]
MAC = "52:54:00:12:34:56"
DOWNLOAD = 100 * 1000 * 1000  # "100 MB"
UPLOAD_MIB = 32
CHUNK = 1 << 20


def write_random(path: Path, size: int, seed: int = 7) -> str:
    """Write ``size`` pseudo-random bytes to ``path`` chunk by chunk; their MD5."""
    rng = random.Random(seed)
    digest = hashlib.md5()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = rng.randbytes(min(CHUNK, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """An HTTP server on 127.0.0.1 serving ``file`` (DOWNLOAD bytes); yields (port, md5)."""
    root = tmp_path / "www"
    root.mkdir()
    md5 = write_random(root / "file", DOWNLOAD)
    with serve_directory(root) as port:
        yield port, md5


@pytest.fixture
def sink() -> Iterator[Sink]:
    with tcp_sink() as result:
        yield result


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uptime_span(out: str, tag: str) -> float:
    """Seconds between the two /proc/uptime readings the script printed as ``TAG t0 t1``."""
    match = re.search(rf"^{tag} ([\d.]+) ([\d.]+)$", out, re.M)
    assert match is not None, out
    return float(match.group(2)) - float(match.group(1))


async def test_guest_download_upload_refused_through_user_tcp(
    image: GuestImage, tmp_path: Path, http_root: tuple[int, str], sink: Sink
) -> None:
    port, md5 = http_root
    closed = closed_port()
    sock = tmp_path / "vhost.sock"
    async with in_process(tmp_path) as ns:
        await attach_user_over_vhost_user(ns, sock, mac=MAC)

        script = f"""
set -o pipefail
up() {{ cut -d' ' -f1 /proc/uptime; }}
udhcpc -i eth0 -q -n -t 6 -T 2 -s {UDHCPC_SCRIPT_PATH} && echo DHCP-OK
t0=$(up)
sum=$(wget -q -O - http://10.0.2.2:{port}/file | md5sum) && echo "GOT ${{sum%% *}}"
echo "WGET $t0 $(up)"
t0=$(date +%s)
wget -q -O /tmp/g http://10.0.2.2:{closed}/ 2>&1; echo "CLOSED rc=$? took=$(( $(date +%s) - t0 ))"
dd if=/dev/urandom of=/tmp/up bs=1M count={UPLOAD_MIB} 2>/dev/null
sum=$(md5sum < /tmp/up) && echo "UPMD5 ${{sum%% *}}"
t0=$(up)
nc 10.0.2.2 {sink.port} < /tmp/up; echo "NC rc=$?"
echo "NCTIME $t0 $(up)"
"""
        args = vhost_user_qemu_args(sock, MAC)
        async with Guest(image, script, args, name="usertcp", timeout=360) as g:
            result = await g.wait()
        result.check()
        out = result.output
        assert "DHCP-OK" in out, out

        # 100 MB download, streamed into md5sum
        assert f"GOT {md5}" in out, out
        seconds = uptime_span(out, "WGET")
        print(
            f"\nwget {DOWNLOAD / 1e6:.0f} MB through the user netdev (TCG guest): "
            f"{seconds:.1f} s, {DOWNLOAD * 8 / seconds / 1e6:.0f} Mbit/s"
        )

        # closed port: refused at once
        closed_line = next(line for line in out.splitlines() if line.startswith("CLOSED"))
        assert "rc=0" not in closed_line, out
        assert "refused" in out.lower(), out
        took = int(closed_line.rsplit("took=", 1)[1].strip())
        assert took <= 3, out

        # upload with busybox nc: the host saw every byte, and the guest got the reply
        assert sink.done.is_set() and not sink.error, sink
        up_md5 = re.search(r"^UPMD5 ([0-9a-f]{32})$", out, re.M)
        assert up_md5 is not None, out
        assert (sink.received, sink.md5) == (UPLOAD_MIB << 20, up_md5.group(1)), (sink, out)
        assert f"UPLOAD {UPLOAD_MIB << 20} {sink.md5}" in out, out
        assert "NC rc=0" in out, out
        up_seconds = uptime_span(out, "NCTIME")
        print(
            f"nc upload {UPLOAD_MIB} MiB: {up_seconds:.1f} s, "
            f"{(UPLOAD_MIB << 20) * 8 / up_seconds / 1e6:.0f} Mbit/s"
        )

        client = ns.find_netdev("nat0")
        assert client is not None
        counters = client.counters()  # type: ignore[attr-defined]
        assert counters["tcp-connects"] >= 3, counters
        assert counters.get("tcp-event-connect-failed", 0) >= 1, counters
        assert counters.get("internal-error", 0) == 0, counters
