"""Coverage-guided fuzzing of the compiled TCP fast path against its Python twin.

atheris (libFuzzer for Python) mutates byte strings; :func:`decode` turns each into a
script for :func:`tests.property.tcpfast_rig.play` - guest frames near the lent
connection's sequence space with fuzzed fields and overwritten bytes, raw frames of any
length (with and without virtio-net header), host bytes and read wake-ups, peer reads,
ends of batches, time, reclaims and re-lends, batches mixing two flows, a raising
``on_deadline``, an ``on_slow`` that changes the batch, the host peer ending (EOF, EPIPE,
ECONNRESET) - which is played on ``_tcpfast`` and on ``fastflow``; any difference, or
any exception but the script's own ``on_deadline`` failure, is a finding. Coverage guidance comes
from the instrumented twin and rig; the C code runs in the same process and, in
``./dev test``, is built with AddressSanitizer by tools/asan-check.sh, which runs this
for a bounded time:

    python -m tests.fuzz.fuzz_tcpfast -max_total_time=60 [-seed=N]
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# Nothing of netstack is imported at the top: main() imports it under atheris's
# instrumentation.
FLAGS = (0x10, 0x18, 0x11, 0x12, 0x14, 0x19, 0x30, 0x02, 0x00, 0x50, 0x90, 0x58)
SEQ_OFFSETS = (0, 0, 0, 1, -1, 1000, -70000, 1 << 31)
WINDOWS = (0, 1, 512, 65535, 32768)
LENGTHS = (0, 1, 7, 1448, 3000, 40000)
CORRUPT = ("", "csum", "byte", "trunc", "opts", "mac", "vnet-off", "gso", "gso0")
HOST = (0, 1, 5, 1448, 5000, 70000)
#: The one exception a script may see: its own raising ``on_deadline``.
DEADLINE = ("RuntimeError", "on_deadline failed")


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


def _pick(r: _Reader, options: tuple[Any, ...]) -> Any:
    return options[r.byte() % len(options)]


def decode(data: bytes) -> list[tuple[Any, ...]]:
    """The script a fuzz input stands for (at most 48 operations)."""
    r = _Reader(data)
    ops: list[tuple[Any, ...]] = []
    while r.left() and len(ops) < 48:
        kind = r.byte() % 11
        if kind <= 2:
            ops.append((
                "guest", _pick(r, SEQ_OFFSETS), r.byte() % 12 - 3, _pick(r, FLAGS),
                _pick(r, WINDOWS), _pick(r, LENGTHS), bool(r.byte() & 1), _pick(r, CORRUPT),
                r.byte() | (r.byte() << 8), r.byte(),
            ))  # fmt: skip
        elif kind == 3:
            ops.append(("raw", r.take(r.byte() % 96), bool(r.byte() & 1)))
        elif kind == 4:
            ops.append(("host", _pick(r, HOST), r.byte() & 1))
        elif kind == 5:
            ops.append((_pick(r, ("flush", "peer-read", "relend")),))
        elif kind == 6:
            ops.append(("time", _pick(r, (0.0001, 0.004, 0.3))))
        elif kind == 7:
            ops.append(("batch", [_segment(r) for _ in range(1 + r.byte() % 6)]))
        elif kind == 8:
            ops.append(("deadline-raises", bool(r.byte() & 1)))
        elif kind == 9:
            ops.append(("mutate", _pick(r, ("", "clear", "pop", "extend"))))
        else:
            ops.append(("peer-end", _pick(r, ("shut", "close", "reset")), r.byte() & 1))
    return ops


def _segment(r: _Reader) -> tuple[Any, ...]:
    """One frame of a batch: which flow, then a ``guest`` operation's fields."""
    return (
        r.byte() & 1, _pick(r, SEQ_OFFSETS), r.byte() % 12 - 3, _pick(r, FLAGS),
        _pick(r, WINDOWS), _pick(r, LENGTHS), bool(r.byte() & 1), _pick(r, CORRUPT), r.byte(),
        r.byte(),
    )  # fmt: skip


def main() -> None:
    import atheris  # the fuzzer is a test extra; imported here, not at import time

    with atheris.instrument_imports(include=["drivers.user.tcp", "tests.property"]):
        from drivers.user.tcp import fastflow, lending  # noqa: F401 (instrumented)
        from tests.property import tcpfast_rig
    mod = importlib.import_module("drivers.user.tcp._tcpfast")

    def one_input(data: bytes) -> None:
        script = decode(data)
        compiled = tcpfast_rig.play(mod, script)
        python = tcpfast_rig.play(fastflow, script)
        if compiled != python:
            raise AssertionError(f"compiled and Python fast paths differ on {script!r}")
        for entry in python["log"]:
            if isinstance(entry, tuple) and entry[:1] == ("raised",) and entry[1:] != DEADLINE:
                raise AssertionError(f"{entry!r} on {script!r}")

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
