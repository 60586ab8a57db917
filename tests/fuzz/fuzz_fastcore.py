"""Coverage-guided fuzzing of the compiled forwarding core against the Python reference.

atheris (libFuzzer for Python) mutates byte strings; :func:`decode` turns each into a
script of core operations (:mod:`tests.property.fastcore_scripts`), which is played on
the compiled path (``netstack.net._fastnet``) and on the pure-Python reference; any
difference, or any exception other than the scripted receivers' own, is a finding.
Coverage guidance comes from the instrumented Python (the reference core and the
scripts); the C code is exercised in the same process and, in ``./dev test``, built
with AddressSanitizer by tools/asan-check.sh, which runs this for a bounded time:

    python -m tests.fuzz.fuzz_fastcore -max_total_time=60 [-seed=N]
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# Nothing of netstack is imported at the top: main() imports it under atheris's
# instrumentation (coverage comes from the modules imported there).
N_CLIENTS = 7  # tests.property.fastcore_scripts.N_CLIENTS
N_TARGETS = 12  # and N_TARGETS: clients plus hub ports
MAC_A = bytes.fromhex("525400000001")
MAC_B = bytes.fromhex("525400000002")
BCAST = b"\xff" * 6

#: Operations a script may hold (by the first byte of each, modulo their number).
KINDS = (
    "send",
    "send",
    "send",
    "link",
    "take",
    "flush",
    "purge",
    "maxlen",
    "fail",
    "delete",
    "filter",
    "unfilter",
    "rxfilter",
)
MACS = (MAC_A, MAC_B, BCAST)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def left(self) -> int:
        return len(self.data) - self.at

    def byte(self) -> int:
        if self.at >= len(self.data):
            return 0
        self.at += 1
        return self.data[self.at - 1]

    def take(self, n: int) -> bytes:
        chunk = self.data[self.at : self.at + n]
        self.at += len(chunk)
        return chunk


def _frame(r: _Reader, vnet: bool) -> bytes:
    shape = r.byte()
    if shape & 3 == 0:  # any bytes, short or odd
        body = r.take(r.byte() % 24)
    else:
        body = MACS[shape % 3] + MACS[(shape >> 2) % 2] + b"\x08\x00" + r.take(r.byte() % 8)
    return bytes(12) + body if vnet else body


def decode(data: bytes) -> list[tuple[Any, ...]]:
    """The script a fuzz input stands for (at most 64 operations)."""
    r = _Reader(data)
    ops: list[tuple[Any, ...]] = []
    while r.left() and len(ops) < 64:
        head = r.byte()
        kind = KINDS[head % len(KINDS)]
        arg = r.byte()
        who = arg % N_CLIENTS
        if kind == "send":
            flags = r.byte()
            vnet = bool(flags & 1)
            frames = [_frame(r, vnet) for _ in range((flags >> 1) % 5)]
            batch: Any = tuple(frames) if flags & 8 else frames
            ops.append(("send", who, batch, vnet, bool(flags & 16)))
        elif kind == "link":
            ops.append(("link", arg % N_TARGETS, bool(head & 0x80)))
        elif kind == "take":
            ops.append(("take", who, None if head & 0x80 else r.byte() % 4))
        elif kind == "maxlen":
            ops.append(("maxlen", arg % N_TARGETS, r.byte() % 5))
        elif kind == "fail":
            ops.append(("fail", who, bool(head & 0x80)))
        elif kind == "filter":
            ops.append(("filter", who, ("all", "rx", "tx")[r.byte() % 3]))
        elif kind == "rxfilter":
            ops.append(("rxfilter", arg % 2, bool(head & 0x80)))
        else:
            ops.append((kind, who))
    return ops


def main() -> None:
    import atheris  # the fuzzer is a test extra; imported here, not at import time

    with atheris.instrument_imports(include=["netstack.net", "tests.property"]):
        from netstack.net import client, filter, hub, queue  # noqa: F401 (instrumented)
        from tests.property import fastcore_scripts
    assert (fastcore_scripts.N_CLIENTS, fastcore_scripts.N_TARGETS) == (N_CLIENTS, N_TARGETS)
    mod = importlib.import_module("netstack.net._fastnet")

    def one_input(data: bytes) -> None:
        script = decode(data)
        compiled = fastcore_scripts.run(mod, script)
        python = fastcore_scripts.run(None, script)
        if compiled != python:
            raise AssertionError(f"compiled and Python cores differ on {script!r}")

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
