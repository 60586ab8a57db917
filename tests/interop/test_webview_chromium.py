"""The live web view, end to end in Debian's headless chromium (:mod:`tests.chromium`).

A real ``netstackd`` runs with ``-webview tcp:127.0.0.1:0``: a ``user`` NAT and a tap
into a network namespace joined on hub 0 (a filter-dump on the tap, a spare hub port on
hub 1 for the picture). The namespace's kernel takes a DHCP lease with busybox
``udhcpc`` and pings the NAT's gateway while the page is open. The page talks QMP over
the websocket chardev the web view created; the test drives it as a person would (real
mouse clicks and typing through the DevTools protocol) and checks:

* the topology picture names every client, the hubs and the filter; the link state shows;
  a ``stream`` netdev added over another monitor is drawn (link down, then up once a
  client connects), its ``NETDEV_STREAM_CONNECTED`` event is listed, and it goes when
  deleted;
* the tap's rx frame counter on the page rises while the namespace pings, its plot shows
  a non-zero rate (frames and bytes), and the namespace's lease appears with its MAC and
  address, the ``DHCP_LEASE_GRANTED`` event is listed, and the host name the client chose
  (markup) is shown as text;
* ``set_link`` clicked on the page is what ``query-netdev`` (over the daemon's unix QMP
  socket, an independent client: ``qemu.qmp``) reports, both ways;
* a hostfwd added from the page's form carries a TCP connection from 127.0.0.1 to a
  server in the namespace, shows in the NAT connections table while held, and the
  remove button takes it away (``query-user-forwards`` empty, the port refused);
* a capture started and stopped on the page downloads as a pcapng file that ``tshark``
  reads: ICMP echo frames, on an interface named after the netdev;
* at 1280x800 and at 390x844 (phone) the page has no horizontal overflow; screenshots of
  both (viewport and full page) are kept under ``build/test-artifacts/webview/`` (or
  ``$NETSTACK_ARTIFACTS/webview``) for a person to look at;
* the page threw no exception, and the daemon logged no error.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from tests.chromium import Browser, Page
from tests.daemon_proc import Daemon, running_daemon
from tests.interop.tls_pki import make_pki
from tests.kit.netns import ip, netns, require_root, unique_name

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "10.0.2.2"
GUEST_PORT = 8080
BANNER = b"hello through the web view's hostfwd\n"
#: The guest picks its DHCP host name: the page must show it as text, never as markup.
HOSTILE_NAME = "<img/src=x/onerror=window.pwned=1>"
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}"
    ;;
esac
exit 0
"""
#: A one-connection TCP server for the namespace: sends the banner, waits for EOF.
SERVER = f"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {GUEST_PORT})); s.listen(1); s.settimeout(60)
print("listening", flush=True)
c, _ = s.accept(); c.settimeout(60)
c.sendall({BANNER!r})
while c.recv(4096):
    pass
"""


def artifact_dir() -> Path:
    base = os.environ.get("NETSTACK_ARTIFACTS")
    root = Path(base) if base else REPO / "build" / "test-artifacts"
    path = root / "webview"
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_view_url(daemon: Daemon, timeout: float = 20, scheme: str = "http") -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = daemon.output()
        m = re.search(rf"(?:web view at|Web view:) +({scheme}://127\.0\.0\.1:\d+/)", text)
        if m:
            return m.group(1)
        if daemon.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"no web view address printed:\n{daemon.output()}")


@contextlib.asynccontextmanager
async def qmp_client(daemon: Daemon) -> AsyncIterator[QMPClient]:
    client = QMPClient("webview-test")
    await client.connect(str(daemon.qmp))
    try:
        yield client
    finally:
        await client.disconnect()


async def run(*cmd: str, timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {out.decode()}")
    return out.decode(errors="replace")


@contextlib.asynccontextmanager
async def background(*cmd: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A bounded helper process (ping, the namespace's server), killed by pid on exit."""
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def count_of(page: Page, selector: str) -> str:
    return f"Number((document.querySelector({json.dumps(selector)}) || {{}}).textContent || -1)"


async def netdev_row(qmp: QMPClient, name: str) -> dict[str, Any]:
    rows = await qmp.execute("query-netdev")
    (row,) = [r for r in rows if r["id"] == name]
    return dict(row)


async def no_overflow(page: Page, width: int) -> None:
    got = await page.eval("document.documentElement.scrollWidth")
    assert got <= width, f"page is {got}px wide on a {width}px screen"


async def shots(page: Page, name: str) -> None:
    out = artifact_dir()
    await page.eval("window.scrollTo(0, 0)")
    await page.screenshot(out / f"{name}.png")
    await page.screenshot(out / f"{name}-full.png", full_page=True)


async def test_webview_in_chromium(tmp_path: Path) -> None:
    require_root()
    for tool in ("busybox", "tshark", "ping"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (tools/setup-deps.sh)")
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("chromium not installed (tools/setup-deps.sh)")
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    ifname = unique_name("wvt")
    with netns("wvns", ipv6=False) as ns:
        args = [
            "-name", "webview-test",
            "-netdev", "user,id=nat0",
            "-netdev", f"tap,id=t0,ifname={ifname},script=no,downscript=no,x-netns={ns}",
            "-netdev", "hubport,id=h0,hubid=0,netdev=nat0",
            "-netdev", "hubport,id=h1,hubid=0,netdev=t0",
            "-netdev", "hubport,id=spare,hubid=1",
            "-object", f"filter-dump,id=f0,netdev=t0,file={tmp_path / 't0.pcap'}",
            "-webview", "tcp:127.0.0.1:0",
        ]  # fmt: skip
        with running_daemon(tmp_path, args) as daemon:
            url = web_view_url(daemon)
            ip("-n", ns, "link", "set", ifname, "up")
            mac = json.loads(ip("-n", ns, "-j", "link", "show", ifname))[0]["address"]
            async with (
                qmp_client(daemon) as qmp,
                Browser.launch(tmp_path) as browser,
                contextlib.AsyncExitStack() as stack,
            ):
                downloads = tmp_path / "downloads"
                await browser.allow_downloads(downloads)
                page = await browser.new_page()
                await page.viewport(1280, 800)
                await page.goto(url)
                await page.wait_for(
                    "document.getElementById('conn').dataset.state === 'up'", what="connected"
                )
                await page.wait_for(
                    "!!document.querySelector('#leases tr.empty')", what="no lease yet"
                )
                await run(
                    "ip", "netns", "exec", ns, "busybox", "udhcpc", "-i", ifname,
                    "-q", "-n", "-t", "6", "-T", "2", "-s", str(script),
                    "-x", f"hostname:{HOSTILE_NAME}",
                )  # fmt: skip
                addr = json.loads(ip("-n", ns, "-j", "-4", "addr", "show", ifname))
                guest_ip = addr[0]["addr_info"][0]["local"]
                ping = ("ping", "-q", "-c", "300", "-i", "0.2", GATEWAY)
                await stack.enter_async_context(background("ip", "netns", "exec", ns, *ping))
                await desktop_checks(page, mac, guest_ip)
                await live_topology_checks(page, qmp)
                await set_link_checks(page, qmp)
                await hostfwd_checks(page, qmp, ns, guest_ip)
                await capture_checks(page, browser, downloads)
                await page.viewport(1280, 800)
                await asyncio.sleep(1.5)
                await no_overflow(page, 1280)
                await shots(page, "desktop-1280x800")
                await page.viewport(390, 844, mobile=True)
                await page.wait_for(
                    "document.querySelector('#topology').getAttribute('width') <= 390",
                    what="topology redrawn for the phone width",
                )
                await asyncio.sleep(1.5)
                await no_overflow(page, 390)
                await shots(page, "phone-390x844")
                assert page.exceptions == []
        log = daemon.output()
        assert "Traceback" not in log and " ERROR " not in log, log


async def desktop_checks(page: Page, mac: str, guest_ip: str) -> None:
    for sel in (
        '#topology [data-netdev="nat0"]',
        '#topology [data-netdev="t0"]',
        '#topology [data-netdev="spare"]',
        '#topology [data-hub="0"]',
        '#topology [data-hub="1"]',
        '#topology [data-netdev="t0"] [data-filter="f0"]',
    ):
        await page.wait_for(f"!!document.querySelector({json.dumps(sel)})", what=sel)
    t0_box = "document.querySelector('#topology [data-netdev=\"t0\"]')"
    assert await page.eval(f"{t0_box}.dataset.link") == "up"
    # Frames the tap receives (the NAT's echo replies) rise while the namespace pings.
    rx = '#netdevs tr[data-netdev="t0"] [data-field="rx-frames"]'
    first = await page.wait_for(count_of(page, rx), what="t0 rx frames")
    await page.wait_for(f"{count_of(page, rx)} >= {first + 5}", what="t0 rx frames rising")
    rate = '#plots [data-netdev="t0"] [data-field="rx-rate"]'
    await page.wait_for(
        f"!/^rx 0 /.test(document.querySelector({json.dumps(rate)}).textContent)",
        what="a non-zero rx rate on t0's plot",
    )
    await page.wait_for(
        "document.querySelector('#plots [data-netdev=\"t0\"] polyline.rx')"
        ".getAttribute('points').split(' ').length >= 3",
        what="t0's rx plot line",
    )
    await page.select_option("#plot-unit", "bytes")
    await page.wait_for(
        "/^rx [1-9][0-9.]*[kM]? B\\/s$/"
        f".test(document.querySelector({json.dumps(rate)}).textContent)",
        what="t0's plot in bytes per second",
    )
    await page.select_option("#plot-unit", "frames")
    lease = f'#leases tr[data-mac="{mac}"] [data-field="ip-address"]'
    got = await page.wait_for(
        f"(document.querySelector({json.dumps(lease)}) || {{}}).textContent",
        what="the namespace's lease",
    )
    assert got == guest_ip
    name = f'#leases tr[data-mac="{mac}"] [data-field="hostname"]'
    assert await page.eval(f"document.querySelector({json.dumps(name)}).textContent") == (
        HOSTILE_NAME
    )
    await page.wait_for(
        "!!document.querySelector('#events li[data-event=\"DHCP_LEASE_GRANTED\"]')",
        what="the DHCP_LEASE_GRANTED event listed",
    )
    assert await page.eval("document.querySelectorAll('img').length + (window.pwned || 0)") == 0


async def live_topology_checks(page: Page, qmp: QMPClient) -> None:
    """A netdev added over another monitor appears; its event is listed; deleted, it goes."""
    port = free_port()
    addr = {"type": "inet", "host": "127.0.0.1", "port": str(port)}
    await qmp.execute("netdev_add", {"id": "s0", "type": "stream", "server": True, "addr": addr})
    box = "document.querySelector('#topology [data-netdev=\"s0\"]')"
    assert await page.wait_for(f"{box} && {box}.dataset.link", what="s0 drawn") == "down"
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await page.wait_for(
            "!!document.querySelector('#events li[data-event=\"NETDEV_STREAM_CONNECTED\"]')",
            what="the NETDEV_STREAM_CONNECTED event listed",
        )
        await page.wait_for(f"{box}.dataset.link === 'up'", what="s0 drawn link-up")
    finally:
        writer.close()
    await qmp.execute("netdev_del", {"id": "s0"})
    await page.wait_for(f"!{box}", what="s0 gone from the picture")


async def set_link_checks(page: Page, qmp: QMPClient) -> None:
    button = '#netdevs tr[data-netdev="t0"] button[data-action="set-link"]'
    await page.click(button)
    await page.wait_for(
        "document.querySelector('#topology [data-netdev=\"t0\"]').dataset.link === 'down'",
        what="t0 drawn link-down",
    )
    assert (await netdev_row(qmp, "t0"))["link-up"] is False
    assert await page.eval(f"document.querySelector({json.dumps(button)}).textContent") == "down"
    await shots(page, "desktop-link-down")
    await page.click(button)
    await page.wait_for(
        f"document.querySelector({json.dumps(button)}).textContent === 'up'", what="t0 up again"
    )
    assert (await netdev_row(qmp, "t0"))["link-up"] is True


async def hostfwd_checks(page: Page, qmp: QMPClient, ns: str, guest_ip: str) -> None:
    host_port = free_port()
    async with background("ip", "netns", "exec", ns, "python3", "-c", SERVER) as server:
        assert server.stdout is not None
        assert await asyncio.wait_for(server.stdout.readline(), 30) == b"listening\n"
        await page.select_option("#fwd-netdev", "nat0")
        await page.type_into('#fwd-form input[name="hostport"]', str(host_port))
        await page.type_into('#fwd-form input[name="guestaddr"]', guest_ip)
        await page.type_into('#fwd-form input[name="guestport"]', str(GUEST_PORT))
        await page.click("#fwd-add")
        row = f'#forwards tr[data-host-port="{host_port}"]'
        await page.wait_for(f"!!document.querySelector({json.dumps(row)})", what="the forward")
        forwards = await qmp.execute("query-user-forwards")
        assert [(f["host-port"], f["guest-addr"], f["guest-port"]) for f in forwards] == [
            (host_port, guest_ip, GUEST_PORT)
        ]
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", host_port), 20)
        try:
            assert await asyncio.wait_for(reader.readexactly(len(BANNER)), 20) == BANNER
            held = '#connections tr[data-direction="hostfwd"] [data-field="guest"]'
            got = await page.wait_for(
                f"(document.querySelector({json.dumps(held)}) || {{}}).textContent",
                what="the held connection in the NAT table",
            )
            assert got == f"{guest_ip}:{GUEST_PORT}"
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    await page.click(f'{row} button[data-action="remove-forward"]')
    await page.wait_for(f"!document.querySelector({json.dumps(row)})", what="forward removed")
    assert await qmp.execute("query-user-forwards") == []
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", host_port)


async def capture_checks(page: Page, browser: Browser, downloads: Path) -> None:
    # Picking the tap in the picture selects it everywhere, the capture form included.
    await page.click('#topology [data-netdev="t0"]')
    await page.wait_for(
        "document.querySelector('#netdevs tr[data-netdev=\"t0\"]').classList.contains('selected')",
        what="t0 selected",
    )
    assert await page.eval("document.getElementById('capture-netdev').value") == "t0"
    await page.click("#capture-start")
    running = '#captures tr[data-state="running"]'
    await page.wait_for(f"!!document.querySelector({json.dumps(running)})", what="capture running")
    frames = f'{running} [data-field="frames"]'
    await page.wait_for(f"{count_of(page, frames)} >= 6", what="frames captured")
    done = asyncio.ensure_future(
        browser.wait_event("Browser.downloadProgress", lambda p: p["state"] == "completed")
    )
    try:
        await page.click(f'{running} button[data-action="stop-capture"]')
        link = '#captures tr[data-state="stopped"] a[data-action="download"]'
        await page.wait_for(f"!!document.querySelector({json.dumps(link)})", what="download link")
        await page.click(link)
        await asyncio.wait_for(done, 30)
    finally:
        done.cancel()
    (path,) = [p for p in downloads.iterdir() if p.suffix == ".pcapng"]
    assert path.name.startswith("netstack-t0-")
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields",
         "-e", "frame.interface_name", "-e", "icmp.type"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows = [line.split("\t") for line in out.stdout.splitlines()]
    assert rows and {r[0] for r in rows} == {"t0"}
    types = {r[1] for r in rows}
    assert {"8", "0"} <= types, rows[:10]


async def test_webview_reconnects_after_daemon_restart(tmp_path: Path) -> None:
    """The page shows a lost daemon, and finds it again once it is back on its address
    (with a new websocket port, read again from ``config.json``)."""
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("chromium not installed (tools/setup-deps.sh)")
    port = free_port()
    args = ["-netdev", "hubport,id=first,hubid=0", "-webview", f"tcp:127.0.0.1:{port}"]
    async with Browser.launch(tmp_path) as browser:
        page = await browser.new_page()
        with running_daemon(tmp_path, args) as daemon:
            url = web_view_url(daemon)
            assert url == f"http://127.0.0.1:{port}/"
            await page.goto(url)
            await page.wait_for("!!document.querySelector('#topology [data-netdev=\"first\"]')")
        await page.wait_for(
            "document.getElementById('conn').dataset.state === 'down'", what="shown as lost"
        )
        (tmp_path / "daemon.log").unlink()
        args[1] = "hubport,id=second,hubid=0"
        with running_daemon(tmp_path, args) as daemon:
            web_view_url(daemon)
            await page.wait_for(
                "!!document.querySelector('#topology [data-netdev=\"second\"]')",
                timeout=60,
                what="reconnected to the new daemon",
            )
            assert await page.eval("document.getElementById('conn').dataset.state") == "up"
        assert page.exceptions == []


async def test_webview_over_https_and_wss(tmp_path: Path) -> None:
    """``-webview ...,tls-creds=ID``: chromium, told to accept exactly the test server's
    key (``--ignore-certificate-errors-spki-list``), loads the page over HTTPS and
    drives QMP over ``wss:``."""
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("chromium not installed (tools/setup-deps.sh)")
    pki = make_pki(tmp_path)
    spki = spki_hash(pki.server / "server-cert.pem")
    args = [
        "-object", f"tls-creds-x509,id=tls0,dir={pki.server},endpoint=server,verify-peer=off",
        "-netdev", "hubport,id=secure,hubid=0",
        "-webview", "tcp:127.0.0.1:0,tls-creds=tls0",
    ]  # fmt: skip
    with running_daemon(tmp_path, args) as daemon:
        url = web_view_url(daemon, scheme="https")
        async with Browser.launch(tmp_path, f"--ignore-certificate-errors-spki-list={spki}") as b:
            page = await b.new_page()
            await page.goto(url)
            await page.wait_for("!!document.querySelector('#topology [data-netdev=\"secure\"]')")
            assert await page.eval("location.protocol") == "https:"
            assert page.exceptions == []
    assert "Traceback" not in daemon.output() and " ERROR " not in daemon.output()


def spki_hash(cert: Path) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of a certificate, as chromium pins keys."""
    pem = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"],
        capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"],
        input=pem, capture_output=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


#: query-netdev rows the daemon cannot be made to produce from the command line: a NIC
#: and its netdev joined directly, a two-queue netdev, a counter that went backwards.
MODEL_CHECK = """
(async () => {
  const m = await import('./model.js');
  const p = await import('./plots.js');
  const t = await import('./topology.js');
  const stats = (rf, tf) => ({'rx-frames': rf, 'tx-frames': tf, 'rx-bytes': rf * 100,
                              'tx-bytes': tf * 100, 'rx-dropped': 0, 'tx-dropped': 0,
                              'rx-filtered': 0, malformed: 0});
  const rows = (n) => [
    {id: 'vu0', type: 'vhost-user', 'queue-index': 0, 'link-up': true, netdev: true,
     peer: 'nic0', statistics: stats(10 * n, 20 * n),
     filters: [{id: 'f0', 'qom-type': 'filter-mirror', queue: 'tx', status: 'off'}]},
    {id: 'vu0', type: 'vhost-user', 'queue-index': 1, 'link-up': true, netdev: true,
     peer: 'nic0', statistics: stats(5 * n, 0)},
    {id: 'nic0', type: 'nic', 'queue-index': 0, 'link-up': false, netdev: false,
     peer: 'vu0', statistics: stats(1, 1)},
    {id: 'lone', type: 'socket', 'queue-index': 0, 'link-up': true, netdev: true,
     statistics: stats(n === 3 ? 0 : n, 0)},
  ];
  const h = new p.History();
  let e;
  for (const [n, time] of [[1, 10], [2, 11], [3, 12], [4, 12.1]]) {
    e = m.foldNetdevs(rows(n));
    h.add(time, e);
  }
  const topo = m.buildTopology(e);
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  t.drawTopology(svg, topo, m.filtersOf(e), 800, () => {}, null);
  return {
    keys: [...e.keys()],
    vu0: e.get('vu0').stats['rx-frames'],
    queues: e.get('vu0').queues,
    filters: e.get('vu0').filters,
    pairs: topo.pairs.map(([a, b]) => [a.key, b.key]),
    singles: topo.singles.map((x) => x.key),
    rates: h.series.get('vu0').map((s) => s.rf),
    lone: h.series.get('lone').map((s) => s.rf),
    drawn: [...svg.querySelectorAll('[data-netdev]')]
      .map((g) => g.dataset.netdev + ':' + g.dataset.link),
    off: svg.querySelectorAll('.filter.off').length,
  };
})()
"""


async def test_page_modules_on_shapes_the_cli_cannot_make(tmp_path: Path) -> None:
    """The page's own modules, imported in chromium, on synthetic query-netdev rows: a
    NIC paired with a two-queue netdev (summed, drawn as a pair), a filter that is off,
    rates from counters (a counter going backwards is a new baseline, a poll 0.1 s after
    the last is not a sample)."""
    if not os.access("/usr/bin/chromium", os.X_OK):
        pytest.skip("chromium not installed (tools/setup-deps.sh)")
    with running_daemon(tmp_path, ["-webview", "tcp:127.0.0.1:0"], qmp=False) as daemon:
        url = web_view_url(daemon)
        async with Browser.launch(tmp_path) as browser:
            page = await browser.new_page()
            await page.goto(url)
            got = await page.eval(MODEL_CHECK)
    assert got["keys"] == ["vu0", "nic0 (nic)", "lone"]
    assert (got["vu0"], got["queues"]) == (60, 2)
    assert got["filters"] == [{"id": "f0", "type": "filter-mirror", "queue": "tx", "status": "off"}]
    assert got["pairs"] == [["vu0", "nic0 (nic)"]] and got["singles"] == ["lone"]
    assert got["rates"] == [15, 15]
    assert got["lone"] == [1, 0]
    assert got["drawn"] == ["vu0:up", "nic0:down", "lone:up"] and got["off"] == 1
