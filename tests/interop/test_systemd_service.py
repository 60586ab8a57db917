"""netstackd under systemd's protocols, driven by Debian's real ``systemd-socket-activate``.

``systemd-socket-activate`` (the systemd package) binds the QMP, vhost-user and metrics
sockets, waits for the first connection and then execs the service with ``LISTEN_FDS``,
``LISTEN_FDNAMES`` and our ``NOTIFY_SOCKET``/``WATCHDOG_USEC``. The service here is a
shell that runs netstackd twice in a row with the inherited fds, the way systemd restarts
a service while its socket unit keeps the sockets (each netstackd is exec'd by a shell
that set ``LISTEN_PID`` to its own pid, as systemd does). The test is the notify
listener (a real ``AF_UNIX`` datagram socket) and the clients: ``qemu.qmp``, the vhost-user
front end of ``tools/vhost_user_frontend`` and ``curl``.

Checked: STATUS=starting, then READY=1 with a status line once every chardev, netdev and
monitor is up, the status line following a netdev_add, WATCHDOG=1 pings at half
WATCHDOG_USEC, STOPPING=1 on ``quit``; the daemon used the inherited sockets (no socket
files of its own, none removed at exit);
a QMP client that connects while the daemon restarts is served by the next instance;
the vhost-user front end negotiates and sends frames over the activated socket before and
after the restart; the metrics socket (``FileDescriptorName=metrics``) serves scrapes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from qemu.qmp.legacy import QEMUMonitorProtocol

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        shutil.which("systemd-socket-activate") is None, reason="no systemd-socket-activate"
    ),
]

WATCHDOG_USEC = 1_000_000


class NotifyListener:
    """The service manager's side of NOTIFY_SOCKET: collects every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, dict[str, str]]] = []

    def wait_for(
        self, key: str, value: str | None = None, *, timeout: float = 60
    ) -> dict[str, str]:
        """The first message not yet consumed that sets ``key`` (to ``value``)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, (_t, msg) in enumerate(self.messages):
                if key in msg and (value is None or msg[key] == value):
                    del self.messages[: i + 1]
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value} notification; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append((time.monotonic(), fields))

    def close(self) -> None:
        self.sock.close()


def qmp_client(path: Path, timeout: float = 60) -> QEMUMonitorProtocol:
    client = QEMUMonitorProtocol(str(path))
    client.settimeout(timeout)
    client.connect(negotiate=True)
    return client


def quit_and_close(client: QEMUMonitorProtocol) -> None:
    with contextlib.suppress(EOFError):  # quit closes the connection, as QEMU does
        client.cmd("quit")
        client.close()


def frontend(sock: Path, count: int) -> dict[str, object]:
    """The vhost-user front end sending ``count`` frames over ``sock`` (its summary)."""
    out = subprocess.run(
        [sys.executable, "-m", "tools.vhost_user_frontend", "--socket", str(sock),
         "--mode", "txonly", "--count", str(count), "--seconds", "20", "--json", "-q"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    summary: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return summary


def scrape(sock: Path) -> dict[str, float]:
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "--unix-socket", str(sock), "http://netstack/metrics"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(out.stdout):
        for sample in family.samples:
            key = sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items()))
            values[key] = sample.value
    return values


@contextmanager
def activated(tmp: Path, runs: int) -> Iterator[tuple[subprocess.Popen[bytes], NotifyListener]]:
    qmp, vhost, metrics = tmp / "qmp.sock", tmp / "vhost.sock", tmp / "metrics.sock"
    daemon = [
        sys.executable, "-m", "netstack",
        "-chardev", f"socket,id=vhost0,path={vhost},server=on,wait=off",
        "-netdev", "vhost-user,id=vu0,chardev=vhost0",
        "-netdev", "hubport,id=p0,hubid=0,netdev=vu0",
        "-netdev", "hubport,id=p1,hubid=0",
        "-qmp", f"unix:{qmp},server=on,wait=off",
        "-metrics", f"unix:{metrics}",
        "-D", str(tmp / "daemon.log"),
    ]  # fmt: skip
    # Each run: a shell that sets LISTEN_PID to its own pid and execs netstackd (systemd
    # restarting the service; the outer shell keeps the inherited fds open meanwhile).
    inner = "LISTEN_PID=$$ exec " + shlex.join(daemon)
    script = f"for i in $(seq {runs}); do bash -c {shlex.quote(inner)}; done"
    listener = NotifyListener(tmp / "notify")
    argv = [
        "systemd-socket-activate",
        "-l", str(qmp), "-l", str(vhost), "-l", str(metrics),
        "--fdname=qmp:vhost0:metrics",
        "-E", f"NOTIFY_SOCKET={listener.path}",
        "-E", f"WATCHDOG_USEC={WATCHDOG_USEC}",
        "-E", f"PYTHONPATH={Path(__file__).resolve().parents[2]}",
        "-E", f"XDG_RUNTIME_DIR={tmp}",
        "bash", "-c", script,
    ]  # fmt: skip
    with open(tmp / "activate.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (qmp.exists() and vhost.exists() and metrics.exists()):
            assert proc.poll() is None, (tmp / "activate.log").read_text()
            assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
            time.sleep(0.05)
        yield proc, listener
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        listener.close()


def test_notify_activation_and_restart(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    qmp, vhost, metrics = tmp_path / "qmp.sock", tmp_path / "vhost.sock", tmp_path / "metrics.sock"
    with activated(tmp_path, runs=2) as (proc, notify):
        sockets = {p: os.stat(p).st_ino for p in (qmp, vhost, metrics)}
        for _run in (1, 2):
            # The connection that activates (run 1) or waits out the restart (run 2).
            client = qmp_client(qmp)
            assert notify.wait_for("STATUS", "starting")
            ready = notify.wait_for("READY", "1")
            assert ready["STATUS"] == "running: 3 netdevs, 2 chardevs, 1 monitors, metrics on " + (
                f"unix:{metrics}"
            )
            first = notify.wait_for("WATCHDOG", "1", timeout=5)
            assert first and notify.wait_for("WATCHDOG", "1", timeout=5)
            chardevs = {c["label"]: c["filename"] for c in client.cmd("query-chardev")}  # type: ignore[union-attr]
            assert chardevs["vhost0"] == f"disconnected:unix:{vhost},server=on"
            summary = frontend(vhost, 200)
            assert summary["tx_frames"] == 200, summary
            netdev = client.cmd("query-netdev", name="vu0")
            assert isinstance(netdev, list)
            assert netdev[0]["statistics"]["tx-frames"] >= 200
            assert netdev[0]["counters"]["connections"] == 1
            values = scrape(metrics)
            assert (
                values["netstack_netdev_tx_frames_total,netdev=vu0,queue=0,type=vhost-user"] >= 200
            )
            assert values["netstack_qmp_sessions"] >= 1
            client.cmd("netdev_add", type="hubport", id="p9", hubid=1)
            status = f"running: 4 netdevs, 2 chardevs, 1 monitors, metrics on unix:{metrics}"
            assert notify.wait_for("STATUS", status, timeout=20)  # kept current
            quit_and_close(client)
            assert notify.wait_for("STOPPING", "1")
            # The socket files are systemd's: the same inodes, still there.
            assert {p: os.stat(p).st_ino for p in sockets} == sockets
        assert proc.wait(30) == 0
    log = (tmp_path / "daemon.log").read_text()
    assert log.count("using inherited socket") == 6, log


def test_unnamed_sockets_by_address_and_unclaimed(tmp_path: Path) -> None:
    """Unnamed sockets matched by address (a unix path, a TCP port); one nothing claims is
    reported and closed."""
    qmp, extra = tmp_path / "qmp.sock", tmp_path / "extra.sock"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inner = "LISTEN_PID=$$ exec " + shlex.join(
        [sys.executable, "-m", "netstack", "-qmp", f"unix:{qmp},server=on,wait=off",
         "-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off",
         "-D", str(tmp_path / "daemon.log")]
    )  # fmt: skip
    listener = NotifyListener(tmp_path / "notify")
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(qmp), "-l", str(extra),
         "-l", f"127.0.0.1:{port}",
         "-E", f"NOTIFY_SOCKET={listener.path}",
         "-E", f"PYTHONPATH={Path(__file__).resolve().parents[2]}",
         "bash", "-c", inner],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not qmp.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        client = QEMUMonitorProtocol(("127.0.0.1", port))
        client.settimeout(60)
        client.connect(negotiate=True)
        assert notify_ready(listener)["STATUS"].startswith("running: 0 netdevs, 2 chardevs")
        chardevs = {c["label"]: c["filename"] for c in client.cmd("query-chardev")}  # type: ignore[union-attr]
        assert chardevs["compat_monitor1"].startswith(f"tcp:127.0.0.1:{port},server=on"), chardevs
        quit_and_close(client)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        listener.close()
    log = (tmp_path / "daemon.log").read_text()
    assert "using inherited socket fd 3 (unknown) for compat_monitor0" in log, log
    assert "using inherited socket fd 5 (unknown) for compat_monitor1" in log, log
    assert "inherited socket fd 4 (unknown) matches no chardev: closed" in log, log


def notify_ready(listener: NotifyListener) -> dict[str, str]:
    return listener.wait_for("READY", "1")


CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "systemd"


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of ``key`` in a unit file (continuation lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    return [
        line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(f"{key}=")
    ]


def test_shipped_units_verify_and_run(tmp_path: Path) -> None:
    """contrib/systemd as shipped: ``systemd-analyze verify`` is silent, and the service's
    ExecStart, under the socket unit's sockets (moved from /run/netstack to a private
    directory), takes all three sockets and reports READY."""
    netstackd = Path(sys.executable).with_name("netstackd")
    if not netstackd.exists():
        pytest.skip("netstackd is not installed next to this interpreter")
    units = tmp_path / "units"
    units.mkdir()
    for name in ("netstackd.service", "netstackd.socket"):
        text = (CONTRIB / name).read_text().replace("/usr/local/bin/netstackd", str(netstackd))
        (units / name).write_text(text)
    if shutil.which("systemd-analyze"):
        done = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", "netstackd.socket", "netstackd.service"],
            cwd=units, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    run = tmp_path / "run"
    run.mkdir()
    listen = unit_values(units / "netstackd.socket", "ListenStream")
    paths = [p.replace("/run/netstack", str(run)) for p in listen]
    exec_start = unit_values(units / "netstackd.service", "ExecStart")[0]
    argv = shlex.split(exec_start.replace("/run/netstack", str(run)))
    listener = NotifyListener(tmp_path / "notify")
    activate = ["systemd-socket-activate"]
    for p in paths:
        activate += ["-l", p]
    proc = subprocess.Popen(
        [*activate, "-E", f"NOTIFY_SOCKET={listener.path}", *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not all(Path(p).exists() for p in paths):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        inodes = {p: os.stat(p).st_ino for p in paths}
        client = qmp_client(run / "qmp.sock")
        ready = listener.wait_for("READY", "1")
        assert ready["STATUS"] == (
            f"running: 4 netdevs, 2 chardevs, 1 monitors, metrics on unix:{run}/metrics.sock"
        )
        assert scrape(run / "metrics.sock")["netstack_netdevs"] == 4
        summary = frontend(run / "vhost-user.sock", 10)
        assert summary["tx_frames"] == 10
        quit_and_close(client)
        assert listener.wait_for("STOPPING", "1")
        assert proc.wait(30) == 0
        assert {p: os.stat(p).st_ino for p in paths} == inodes  # all three were inherited
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        listener.close()


def test_failed_start_reports_status(tmp_path: Path) -> None:
    """A bad -metrics value (or a taken port): one line of error, exit 1, STATUS=failed."""
    listener = NotifyListener(tmp_path / "notify")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        for spec, text in (
            ("bogus", "-metrics bogus: 'bogus': expected unix:PATH or tcp:HOST:PORT"),
            (f"tcp:127.0.0.1:{port}", f"-metrics tcp:127.0.0.1:{port}: metrics endpoint"),
        ):
            done = subprocess.run(
                [sys.executable, "-m", "netstack", "-netdev", "hubport,id=p0,hubid=0",
                 "-metrics", spec],
                capture_output=True, text=True, timeout=60,
                env=dict(os.environ, NOTIFY_SOCKET=str(listener.path)),
            )  # fmt: skip
            assert done.returncode == 1
            lines = done.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"netstackd: {text}"), done.stderr
            assert listener.wait_for("STATUS", "starting")
            status = listener.wait_for("STATUS")["STATUS"]
            assert status.startswith(f"failed: {text}"), status
    finally:
        busy.close()
        listener.close()
