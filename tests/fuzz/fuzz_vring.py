"""Coverage-guided fuzzing of the compiled vhost-user ring loops against the Python reference.

atheris (libFuzzer for Python) mutates byte strings; :func:`tests.fuzz.vring_target.fuzz_one`
turns each into guest memory and a split or packed ring (valid or hostile), runs one burst
through the compiled loops (``drivers.vhost_user._vring``) and through the pure-Python
ones, and raises when frames, used entries, indices, wrap counters, call decisions,
dirty-log bits or errors differ. In ``./dev test`` tools/asan-check.sh runs this for a
bounded time on a plain build and replays the corpus with the extension built under
AddressSanitizer:

    python -m tests.fuzz.fuzz_vring -max_total_time=30 [-seed=N]
"""

from __future__ import annotations

import sys


def main() -> None:
    import atheris  # the fuzzer is a test extra; imported here, not at import time

    with atheris.instrument_imports(include=["drivers.vhost_user", "tests.fuzz"]):
        from tests.fuzz import vring_target
    atheris.Setup(sys.argv, vring_target.fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
