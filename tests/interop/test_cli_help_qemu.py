"""netstackd's ``help`` answers side by side with Debian's real QEMU 7.2 binary.

For every help form both understand, the text has QEMU's shape: the same header line, the
same ``  name=<type>`` entry shape, and every entry netstackd prints is one QEMU prints
(netstackd lists only what it provides; its few extra entries are named below). The exit
status is QEMU's, except for option tables, where QEMU exits 1 and netstackd 0
(``netstack/clihelp.py``). Help-shaped errors (``-netdev user,help``) give QEMU's text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None,
        reason="qemu-system-x86 is installed by tools/setup-deps.sh",
    ),
]

QEMU = ["qemu-system-x86_64", "-nodefaults", "-machine", "none", "-display", "none"]
NETSTACKD = [sys.executable, "-m", "netstack"]

#: Entries netstackd prints that QEMU 7.2 does not: the vxlan netdev, filter-dump's pcapng
#: ``format`` and wire-sized ``segment`` (beyond QEMU), QEMU 10.0's chardev ``input-path``
#: and ``reconnect-ms``.
EXTRA: dict[str, set[str]] = {
    "Available netdev backend types:": {"vxlan"},
    "filter-dump options:": {"format=<string>", "segment=<bool>"},
    "chardev options:": {"input-path=<str>", "reconnect-ms=<num>"},
}
#: Option tables: QEMU exits 1 after printing them.
TABLES = ("chardev options:", "mon options:", "name options:")

HELP_FORMS = [
    ["-netdev", "help"],
    ["-netdev", "?"],
    ["-netdev", "type=help"],
    ["-netdev", "help,id=x"],
    ["-chardev", "help"],
    ["-chardev", "backend=help"],
    ["-chardev", "socket,help"],
    ["-chardev", "socket,id=x,?"],
    ["-object", "help"],
    ["-object", "help,id=x"],
    ["-object", "filter-dump,help"],
    ["-object", "filter-buffer,help"],
    ["-object", "filter-mirror,help"],
    ["-object", "filter-redirector,help"],
    ["-object", "qom-type=filter-dump,help"],
    ["-object", "filter-dump,id=x,help=on"],
    ["-mon", "chardev=x,help"],
    ["-name", "guest=x,help"],
]

ERROR_FORMS = [
    ["-netdev", "user,help"],
    ["-netdev", "id=x,help"],
    ["-netdev", "user,id=a,help"],
    ["-object", "foo,help"],
    ["-object", "id=x,help"],
    ["-mon", ""],
    ["-mon", "chardev=x"],
    ["-readconfig", "help"],
    ["-netdev"],
]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def entries(text: str) -> list[str]:
    """The entries of a help text: list items, or ``name=<type>`` (descriptions dropped)."""
    lines = text.splitlines()
    if lines[0] == "Available netdev backend types:":  # one unindented name a line
        return lines[1:]
    out = []
    for line in lines[1:]:
        if not line.startswith(" "):
            continue  # continuation lines of a description
        out.append(line.strip().split(" - ", 1)[0].strip())
    return out


_ENTRY = re.compile(r"^(  [a-z][a-z0-9_-]*(=<[^>]+>( +- .*)?)?|[a-z][a-z0-9-]*)$")


@pytest.mark.parametrize("form", HELP_FORMS, ids=[" ".join(f) for f in HELP_FORMS])
def test_help_text_has_qemus_shape(form: list[str]) -> None:
    qemu, ours = run(QEMU + form), run(NETSTACKD + form)
    assert ours.stderr == "" and "Traceback" not in ours.stdout
    q_lines, o_lines = qemu.stdout.splitlines(), ours.stdout.splitlines()
    header = o_lines[0]
    assert header == q_lines[0], (qemu.stdout, ours.stdout)
    for line in o_lines[1:]:
        if line.startswith("  ") or "=" not in line:
            assert _ENTRY.match(line), line
    extra = set(entries(ours.stdout)) - set(entries(qemu.stdout)) - EXTRA.get(header, set())
    assert not extra, f"netstackd lists what QEMU does not: {extra}"
    assert entries(ours.stdout), ours.stdout
    expected_status = 0 if header in TABLES else qemu.returncode
    assert ours.returncode == expected_status
    if header in TABLES:
        assert qemu.returncode == 1  # the documented difference


def _error(stderr: str, prog: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if not ln.startswith("qemu: module ")]
    return [ln.replace(prog, "PROG", 1) for ln in lines]


@pytest.mark.parametrize("form", ERROR_FORMS, ids=[" ".join(f) or "''" for f in ERROR_FORMS])
def test_help_shaped_errors_are_qemus(form: list[str]) -> None:
    qemu, ours = run(QEMU + form), run(NETSTACKD + form)
    assert (qemu.returncode, ours.returncode) == (1, 1)
    assert ours.stdout == ""
    assert _error(ours.stderr, "netstackd") == _error(qemu.stderr, "qemu-system-x86_64")


def test_qemu_7_2_has_no_writeconfig_so_netstackd_has_its_own() -> None:
    """QEMU removed ``-writeconfig`` in 6.0 (docs/config-files.md: netstackd's design)."""
    qemu = run([*QEMU, "-writeconfig", "-"])
    assert qemu.returncode == 1
    assert "qemu-system-x86_64: -writeconfig: invalid option" in qemu.stderr
    ours = run([*NETSTACKD, "-writeconfig", "-", "-netdev", "hubport,id=h,hubid=0", "-bogus"])
    assert ours.stderr == "netstackd: -bogus: invalid option\n"
