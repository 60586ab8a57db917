"""The whole command-line surface of netstackd: every option with ``help``, empty and
malformed arguments gives either its help text and status 0, or exactly one line of error
text (``netstackd: ...``) and status 1 - never a traceback.

Most cases call :func:`netstack.cli.main` in-process (what the ``netstackd`` script runs);
a few run the real entry point in a subprocess, as a user would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netstack import cli

pytestmark = pytest.mark.timeout(120)

HELP = "help"


def _cases() -> list[tuple[list[str], str, str]]:
    """``(argv, expected, kind)``: kind ``help`` (expected: the first line of stdout) or
    ``error`` (expected: text the one stderr line contains)."""
    h: list[tuple[list[str], str, str]] = []

    def help_(argv: list[str], first: str) -> None:
        h.append((argv, first, HELP))

    def err(argv: list[str], text: str) -> None:
        h.append((argv, text, "error"))

    netdevs = "Available netdev backend types:"
    for spec in ("help", "?", "type=help", "help,id=x"):
        help_(["-netdev", spec], netdevs)
    err(["-netdev", ""], "-netdev : Parameter 'id' is missing")
    err(["-netdev", "user"], "-netdev user: Parameter 'id' is missing")
    err(["-netdev", "user,help"], "-netdev user,help: Parameter 'id' is missing")
    err(["-netdev", "user,id=a,help"], "Invalid parameter 'help'")
    err(["-netdev", "id=x,help"], "-netdev id=x,help: Parameter 'type' is missing")
    err(["-netdev", "nope,id=x"], "Parameter 'type' does not accept value 'nope'")
    err(["-netdev", "user,id=1x"], "Parameter 'id' expects an identifier")
    err(["-netdev", "hubport,id=h,hubid=x"], "-netdev hubport,id=h,hubid=x: ")
    err(["-netdev", "user,id=u,hostfwd=junk"], "Invalid host forwarding rule 'junk'")
    err(["-netdev", "{"], "-netdev {: JSON parse error")
    err(["-netdev", '{"type":"help"}'], "Parameter 'id' is missing")

    for spec in ("help", "?", "backend=help", "help,id=x"):
        help_(["-chardev", spec], "Available chardev backend types: ")
    for spec in ("socket,help", "socket,id=x,?", ",help"):
        help_(["-chardev", spec], "chardev options:")
    err(["-chardev", ""], "-chardev : chardev: no id specified")
    err(["-chardev", "socket"], "chardev: no id specified")
    err(["-chardev", "socket,id=c"], "-chardev socket,id=c: chardev: socket: no host given")
    err(["-chardev", "nope,id=c"], "'nope' is not a valid char driver name")
    err(["-chardev", "null,id=c,server=maybe"], "Parameter 'server' expects 'on' or 'off'")
    err(["-chardev", "null,id=c,bogus=1"], "Invalid parameter 'bogus'")
    err(["-chardev", "vc,id=c"], "chardev backend 'vc' is not available")
    err(["-chardev", "{"], "-chardev {: ")

    for spec in ("help", "?", "help,id=x"):
        help_(["-object", spec], "List of user creatable objects:")
    for spec in ("filter-dump,help", "qom-type=filter-dump,help", "filter-dump,id=x,help=on"):
        help_(["-object", spec], "filter-dump options:")
    for qom_type in ("filter-buffer", "filter-mirror", "filter-redirector"):
        help_(["-object", f"{qom_type},help"], f"{qom_type} options:")
    err(["-object", "foo,help"], "Parameter 'qom-type' does not accept value 'foo'")
    err(["-object", "id=x,help"], "-object id=x,help: Parameter 'qom-type' is missing")
    err(["-object", ""], "-object : Parameter 'qom-type' is missing")
    err(["-object", "filter-dump"], "-object filter-dump: ")
    err(["-object", "{"], "-object {: JSON parse error")
    err(["-object", '{"qom-type":"help"}'], "Parameter 'qom-type' does not accept value 'help'")
    err(
        ["-object", "filter-dump,id=f,netdev=nope,file=/dev/null"],
        "Parameter 'netdev' expects a network backend id",
    )

    for flag in ("-qmp", "-qmp-pretty"):
        err([flag, "help"], f"{flag} help: 'help' is not a valid char driver")
        err([flag, ""], f"{flag} : ")
        err([flag, "tcp:"], f"{flag} tcp:: ")
        err([flag, "unix:"], f"{flag} unix:: ")
    err(["-mon", "help"], '-mon help: chardev "help" not found')
    help_(["-mon", "chardev=x,help"], "mon options:")
    help_(["-mon", "chardev=x,mode=control,help"], "mon options:")
    err(["-mon", ""], "-mon : Parameter 'chardev' is missing")
    err(["-mon", "chardev=x"], '-mon chardev=x: chardev "x" not found')
    err(["-mon", "chardev=x,pretty=maybe"], "Parameter 'pretty' expects 'on' or 'off'")

    help_(["-name", "guest=x,help"], "name options:")
    help_(["-name", "x,?"], "name options:")
    err(["-name", "a,bogus"], "-name a,bogus: Invalid parameter 'bogus'")
    err(["-name", "x,debug-threads=maybe"], "expects 'on' or 'off'")

    err(["-readconfig", "help"], "-readconfig help: Could not open 'help': No such file")
    err(["-readconfig", ""], "-readconfig : Could not open '': No such file or directory")
    err(["-readconfig", "/"], "-readconfig /: Cannot read config file: Is a directory")
    err(["-writeconfig", "", "-netdev", "hubport,id=h,hubid=0"], "-writeconfig : Could not")
    err(["-writeconfig", "/", "-netdev", "hubport,id=h,hubid=0"], "-writeconfig /: Could not")
    err(["-pidfile", "", "-netdev", "x"], "cannot create PID file: Could not create ''")
    err(["-pidfile", "/nonexistent/p", "-netdev", "x"], "cannot create PID file")
    err(["-D", "", "-netdev", "x"], "Error opening logfile : No such file or directory")
    err(["-D", "/nonexistent/log", "-netdev", "x"], "Error opening logfile /nonexistent/log")

    for flag in ("-netdev", "-chardev", "-object", "-qmp", "-qmp-pretty", "-mon", "-name",
                 "-readconfig", "-writeconfig", "-pidfile", "-D"):  # fmt: skip
        err([flag], f"{flag}: requires an argument")
    for bad in ("-bogus", "-", "--", "x", "--netdevx"):
        err([bad], f"{bad}: invalid option")
    for flag in ("-help", "-h", "--help"):
        help_([flag], "usage: netstackd [options]")
    help_(["-version"], "netstackd version ")
    return h


CASES = _cases()


@pytest.mark.parametrize(
    ("argv", "expected", "kind"), CASES, ids=[" ".join(c[0]) or "''" for c in CASES]
)
def test_cli_surface(
    argv: list[str], expected: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = cli.main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if kind == HELP:
        assert (status, err) == (0, ""), err
        assert out.splitlines()[0] == expected.rstrip("\n") or out.startswith(expected)
        assert len(out.splitlines()) >= 1
    else:
        assert status == 1, (out, err)
        assert out == ""
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith("netstackd:"), err
        assert expected in lines[0], err


def test_help_and_empty_values_are_ordinary_values() -> None:
    """QEMU takes ``help`` and the empty string as a name, a file name ...: so does
    netstackd (``-name help`` names the daemon ``help``)."""
    assert cli.parse_argv(["-name", "help"]).name == "help"
    assert cli.parse_argv(["-name", ""]).name == ""
    assert cli.parse_argv(["-name", "guest=vm1,process=p"]).name == "vm1"
    cfg = cli.parse_argv(["-pidfile", "help", "-D", "help", "-writeconfig", "help"])
    assert (cfg.pidfile, cfg.logfile, cfg.writeconfig) == ("help", "help", "help")


@pytest.mark.parametrize(
    ("args", "first"),
    [
        (["-chardev", "help"], "Available chardev backend types: "),
        (["-chardev", "socket,help"], "chardev options:"),
        (["-object", "help"], "List of user creatable objects:"),
        (["-netdev", "help"], "Available netdev backend types:"),
    ],
)
def test_real_entry_point_prints_help(args: list[str], first: str) -> None:
    """The forms that used to end in a traceback, through the installed entry point."""
    out = subprocess.run(
        [sys.executable, "-m", "netstack", *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.splitlines()[0] == first


def test_real_entry_point_one_line_error_when_daemonized(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "netstack", "-daemonize", "-netdev", "user,id=u,hostfwd=junk"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [
        "netstackd: -netdev user,id=u,hostfwd=junk: Invalid host forwarding rule 'junk'"
        " (No : separators)"
    ]
