"""Choosing the forwarding core's path: at first use, reported by -version and at start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netstack import fastpath
from tests.daemon_proc import running_daemon

pytestmark = pytest.mark.compiled


#: What ``-version`` and the start-up log say when every accelerator is built.
COMPILED = (
    "data path: compiled (drivers.tap._fasttap, drivers.user.tcp._tcpfast, "
    "drivers.vhost_user._vring, netstack.net._fastnet)"
)


def _built() -> bool:
    import importlib.util

    return importlib.util.find_spec("netstack.net._fastnet") is not None


def _python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "NETSTACK_PURE_PYTHON"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    ).stdout


def _version(**env: str) -> list[str]:
    code = "import sys; from netstack.cli import main; sys.exit(main(['-version']))"
    return _python(code, **env).splitlines()


def test_version_names_the_data_path() -> None:
    lines = _version()
    assert lines[0].startswith("netstackd version ")
    if _built():
        assert lines[1] == COMPILED
    else:
        assert lines[1].startswith("data path: pure Python (python (not built")
    assert _version(NETSTACK_PURE_PYTHON="1")[1] == (
        "data path: pure Python (python (NETSTACK_PURE_PYTHON set))"
    )


def test_the_choice_is_made_at_first_use_not_at_import() -> None:
    code = (
        "from netstack import fastpath\n"
        "from netstack.net.client import NetClient\n"
        "from netstack.net.hub import Hub\n"
        "import netstack.net.client as c\n"
        "print(fastpath.status(), NetClient.send is c.NetClient.__dict__['send'])\n"
        "NetClient('x')\n"
        "print(fastpath.status(), type(NetClient.send).__name__)\n"
    )
    before, after = _python(code).splitlines()
    assert before == "{} True"
    if _built():
        assert after == "{'netstack.net._fastnet': 'compiled'} FastMethod"
    pure = _python(code, NETSTACK_PURE_PYTHON="1").splitlines()[1]
    assert pure == "{'netstack.net._fastnet': 'python (NETSTACK_PURE_PYTHON set)'} function"


def test_the_daemon_logs_the_data_path_at_start(tmp_path: Path) -> None:
    log = tmp_path / "netstackd.log"
    args = ["-netdev", "hubport,id=h0,hubid=0", "-D", str(log)]
    with running_daemon(tmp_path, args):
        deadline = time.monotonic() + 30
        while "data path:" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, "no data-path line in the log"
            time.sleep(0.05)
    line = next(x for x in log.read_text().splitlines() if "data path:" in x)
    if fastpath.pure_python_forced():  # the daemon inherits the environment
        assert line.endswith("data path: pure Python (python (NETSTACK_PURE_PYTHON set))")
    elif _built():
        assert line.endswith(COMPILED)


def test_compiled_counters_read_and_write_as_the_python_ones() -> None:
    import importlib

    from netstack.net.client import Counters
    from netstack.net.hub import HubCounters

    if not _built():
        pytest.skip("netstack.net._fastnet is not built")
    mod = importlib.import_module("netstack.net._fastnet")
    for py_type, c_type in ((Counters, mod.Counters), (HubCounters, mod.HubCounters)):
        py, c = py_type(), c_type()
        assert list(c.as_dict().items()) == list(py.as_dict().items())
        for name in py_type.__slots__:
            setattr(py, name, getattr(py, name) + len(name))
            setattr(c, name, getattr(c, name) + len(name))
        assert list(c.as_dict().items()) == list(py.as_dict().items())
