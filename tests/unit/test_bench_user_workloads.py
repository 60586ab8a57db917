"""Smoke tests of ``bench/bench_user_workloads.py`` itself: its command line, the verdict and
profile arithmetic, and its UDP client against its echo server on loopback. Nothing timed;
no namespace, no stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import bench_user_workloads as bench
from bench import workload_traffic as traffic

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_the_cases() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_user_workloads.py"), "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "--pure" in out.stdout and "keepalive,conn,udp,bulk-plain,bulk-offload" in out.stdout


def test_unknown_case_is_refused() -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "keepalive,nope"])


def test_ratios_use_same_round_pairs_and_the_targets() -> None:
    peer = [traffic.Sample(100.0, 10.0, p99=1000.0), traffic.Sample(50.0, 10.0, p99=1000.0)]
    ours = [traffic.Sample(110.0, 20.0, p99=1400.0), traffic.Sample(60.0, 20.0, p99=1400.0)]
    line = bench.ratios("keepalive", "netstackd", ours, peer)
    assert "rate 1.15x (rounds 1.10, 1.20)" in line and "p99 1.40x" in line
    assert line.endswith("MET")
    ours[0].errors = 1
    assert bench.ratios("keepalive", "netstackd", ours, peer).endswith("NOT met")
    offload = [traffic.Sample(300.0, 1.0), None]
    assert "rounds 3.00)" in bench.ratios("bulk-offload", "x", offload, peer)
    assert bench.ratios("bulk-offload", "x", offload, peer).endswith("NOT met")  # < 4x


def test_summarize_counts_self_inclusive_and_files() -> None:
    raw = (
        "main (netstack/cli.py:1);Handle._run (asyncio/events.py:80);"
        "TapClient._on_readable (drivers/tap/client.py:197);TapClient._write "
        "(drivers/tap/client.py:250) 3\n"
        "main (netstack/cli.py:1);Handle._run (asyncio/events.py:80);"
        "TapClient._on_readable (drivers/tap/client.py:199) 1\n"
    )
    text = "\n".join(bench.summarize(raw))
    assert "4 samples" in text
    assert "75.0%  TapClient._write (drivers/tap/client.py)" in text
    assert "100.0%  TapClient._on_readable (drivers/tap/client.py)" in text
    assert "100.0%  drivers/tap/client.py" in text
    assert "asyncio/events.py" not in text.split("inclusive:")[1].split("self by file")[0]


def test_udp_client_against_the_echo_server() -> None:
    echo = subprocess.Popen([sys.executable, "-c", traffic.UDP_ECHO], stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None
        port = int(echo.stdout.readline())
        got = traffic.udp(None, None, "127.0.0.1", port, 0.3, 64, 8)
    finally:
        echo.kill()
        echo.wait(10)
    assert got.checked > 0 and got.errors == 0 and got.lost == 0
    assert got.p50 is not None and got.p99 is not None and 0 < got.p50 <= got.p99
