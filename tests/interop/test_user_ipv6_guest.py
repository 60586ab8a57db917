"""A real QEMU 7.2 guest (vhost-user, joined on hub 0 with the user netdev) over IPv6, all in
one boot:

* the guest kernel configures itself by SLAAC from the netdev's Router Advertisements (an
  address in fec0::/64, the default route via fe80::2);
* busybox ``ping6 fec0::2`` is answered by the gateway;
* busybox ``wget http://[fec0::2]:PORT/file`` downloads a random file from an HTTP server
  the test runs on the host's ``::1``, through guest TCP over IPv6 and the NAT, and the MD5
  equals the host's; busybox ``nc fec0::2 PORT`` uploads a random file to a sink on ``::1``
  (the guest's TSO super-frames over IPv6, if it sends any, pass whole: no Packet Too Big),
  and the sink's byte count and MD5 equal the guest's;
* hostfwd over IPv6 (netstack's bracketed syntax, added at run time through HMP
  ``hostfwd_add``): the host connects to ``[::1]:PORT`` and reaches busybox ``nc -l`` on the
  guest's SLAAC address;
* the guest's SLAAC address is in the netdev's lease view (``guest-network-get-interfaces``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.user import control as user_control
from drivers.user.client import UserNetClient
from tests.kit.daemon import in_process
from tests.kit.guests import (
    Sink,
    attach_user_over_vhost_user,
    serve_directory,
    tcp_sink,
    vhost_user_qemu_args,
)
from tools.guest import (
    Guest,
    GuestImage,
)

pytestmark = [pytest.mark.qemu, pytest.mark.slow, pytest.mark.timeout(240)]
MAC = "52:54:00:12:34:56"
SIZE = 4 << 20
UPLOAD_KIB = 4096
GREETING = "HELLO-OVER-IPV6"


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """An HTTP server on ``::1`` serving ``file`` (random); yields (port, md5)."""
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(SIZE)
    (root / "file").write_bytes(data)
    with serve_directory(root, "::1") as port:
        yield port, hashlib.md5(data).hexdigest()


@pytest.fixture
def sink() -> Iterator[Sink]:
    with tcp_sink("::1", accept_timeout=150, read_timeout=60) as result:
        yield result


SCRIPT = """
ip link set eth0 up
addr=""
for i in $(seq 1 150); do
    addr=$(ip -6 addr show dev eth0 | grep -v -e tentative -e 'scope link' \
        | awk '/inet6/ {{print $2}}')
    [ -n "$addr" ] && break
    usleep 100000
done
echo "ADDR $addr"
echo "ROUTE $(ip -6 route show default)"
ping6 -c 2 fec0::2 >/dev/null && echo PING-OK
wget -q -O - "http://[fec0::2]:{port}/file" | md5sum | sed 's/^/GOT /'
dd if=/dev/urandom of=/tmp/up bs=1k count={upload} 2>/dev/null
md5sum /tmp/up | sed 's/^/UP /'
nc fec0::2 {sink} < /tmp/up
echo LISTENING
echo {greeting} | timeout 60 nc -l -p 5000
echo NC-DONE
"""


async def hostfwd_greeting(port: int, timeout: float = 30) -> bytes:
    """Connect to the forwarded ``[::1]:port`` until the guest's ``nc -l`` answers (before it
    listens the guest resets the connection and the host sees EOF)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + timeout
    while loop.time() < until:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("::1", port), 5)
        except (OSError, TimeoutError):
            await asyncio.sleep(0.2)
            continue
        try:
            data = await asyncio.wait_for(reader.read(100), 10)
        except (OSError, TimeoutError):
            data = b""
        finally:
            writer.close()
        if data:
            return data
        await asyncio.sleep(0.3)
    raise AssertionError("the guest's nc never answered through the IPv6 hostfwd")


async def test_guest_slaac_ping6_wget_and_hostfwd_over_ipv6(
    image: GuestImage, tmp_path: Path, http_root: tuple[int, str], sink: Sink
) -> None:
    port, md5 = http_root
    sock = tmp_path / "vhost.sock"
    async with in_process(tmp_path) as ns:
        await attach_user_over_vhost_user(ns, sock, mac=MAC)
        user = ns.find_netdev("nat0")
        assert isinstance(user, UserNetClient)

        args = vhost_user_qemu_args(sock, MAC)
        script = SCRIPT.format(port=port, greeting=GREETING, upload=UPLOAD_KIB, sink=sink.port)
        async with Guest(image, script, args, name="userv6", timeout=180) as g:
            found = await g.wait_for(r"ADDR (\S+)/64", timeout=120)
            address = found.group(1)
            await g.wait_for("LISTENING", timeout=120, since=found.end())
            rule = f"tcp:[::1]:0-[{address}]:5000"
            assert user_control.hostfwd(user, "hostfwd_add", [rule]) == ""
            fwd_port = user_control.forwards(user)[-1]["host-port"]
            greeting = await hostfwd_greeting(fwd_port)
            result = await g.wait()
        result.check()
        out = result.output
        assert address.startswith("fec0::"), out
        assert "ROUTE default via fe80::2 dev eth0" in out, out
        assert "PING-OK" in out, out
        assert f"GOT {md5}" in out, out
        assert greeting.decode().strip() == GREETING and "NC-DONE" in out, out
        up = re.search(r"^UP ([0-9a-f]{32})", out, re.M)
        assert up is not None and (sink.received, sink.md5) == (UPLOAD_KIB << 10, up.group(1))
        assert f"UPLOAD {UPLOAD_KIB << 10} {sink.md5}" in out, out
        assert (address, 64) in user_control.addresses_for(
            user, bytes.fromhex(MAC.replace(":", ""))
        )
        counters = user.counters()
        assert counters["icmp6-echo-local"] >= 2 and counters["ndp-ra-sent"] >= 1, counters
        assert counters["tcp-connects"] >= 1 and user.fwd.stats["hostfwd-tcp-forwarded"] >= 1
        assert counters.get("internal-error", 0) == 0, counters
        assert counters.get("ip6-too-big", 0) == 0 and counters.get("tcp-bad-checksum", 0) == 0
