#!/usr/bin/env bash
# The compiled parts of netstack under AddressSanitizer.
#
# Builds every C extension of the tree with -fsanitize=address into a private copy of the
# sources and runs the tests that drive them there, with libasan preloaded into the
# interpreter (CPython itself is not instrumented; leaks are not checked, since CPython's
# own allocations at exit would drown them). The extension installs its own SIGBUS handler,
# so ASan is told to leave SIGBUS alone and to let user handlers be installed.
#
# Usage: tools/asan-check.sh [PYTHON]   (default: the repository's .venv python)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
py=${1:-$repo/.venv/bin/python}
py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"  # absolute, not resolved
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp -r "$repo/netstack" "$repo/drivers" "$repo/tools" "$repo/tests" "$repo/pyproject.toml" "$work/"
find "$work" -name '*.so' -delete
inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
libasan=$(gcc -print-file-name=libasan.so)
for src in $(cd "$work" && git -C "$repo" ls-files '*.c'); do
    out="$work/${src%.c}$suffix"
    gcc -shared -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address -I"$inc" \
        "$work/$src" -o "$out"
    echo "asan: built $src"
done

cd "$work"
export LD_PRELOAD=$libasan
export ASAN_OPTIONS=detect_leaks=0:handle_sigbus=0:allow_user_segv_handler=1:abort_on_error=1
export PYTHONPATH=$work
"$py" -c 'import drivers.vhost_user._memguard as m, sys; assert m.__file__.startswith(sys.argv[1]), m.__file__' "$work"
"$py" -m pytest -p no:cacheprovider -q tests/unit/test_vhost_user_memguard.py \
    tests/interop/test_vhost_user_memory.py
