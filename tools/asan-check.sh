#!/usr/bin/env bash
# The compiled parts of netstack under AddressSanitizer.
#
# Builds every C extension of the tree (every tracked *.c; its module is its path) with
# -fsanitize=address into a private copy of the sources and runs there, with libasan
# preloaded into the interpreter (CPython itself is not instrumented; leaks are not
# checked, since CPython's own allocations at exit would drown them):
#   - the tests that drive each extension: the table TESTS below (source -> test files),
#     plus every test marked `compiled` (pytest -m compiled), so an extension whose
#     tests carry the marker needs no entry here;
#   - the coverage-guided fuzzers of the table FUZZERS (atheris; module -> the source it
#     is for), for FUZZ_SECONDS in all (default 60, split between them). atheris takes its
#     coverage from libFuzzer's hooks, which libasan would take over, so each fuzzer runs
#     first on a plain -O2 build and grows a corpus, and the corpus is then replayed once
#     under ASan.
# The vhost-user extension installs its own SIGBUS handler, so ASan is told to leave
# SIGBUS alone and to let user handlers be installed.
#
# Usage: tools/asan-check.sh [PYTHON]   (default: the repository's .venv python)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
py=${1:-$repo/.venv/bin/python}
py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"  # absolute, not resolved
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# source -> the test files that drive it (besides the tests marked `compiled`)
declare -A TESTS=(
    [drivers/vhost_user/_memguard.c]="tests/unit/test_vhost_user_memguard.py tests/interop/test_vhost_user_memory.py"
    [drivers/tap/_fasttap.c]="tests/unit/test_tap_client.py"
    [drivers/vhost_user/_vring.c]="tests/property/test_vhost_user_vring_diff.py tests/unit/test_vhost_user_device.py tests/unit/test_vhost_user_dirtylog.py tests/property/test_vhost_user_props.py tests/unit/test_vhost_user_packed.py tests/property/test_vhost_user_packed_props.py"
    [drivers/user/tcp/_tcpfast.c]="tests/unit/test_user_tcp_lending.py tests/property/test_user_tcpfast_differential.py tests/property/test_user_tcpfast_machine_diff.py"
    [netstack/net/_fastnet.c]="tests/unit/test_net_core.py tests/unit/test_hub_switch.py tests/unit/test_filter_buffer.py tests/unit/test_filter_mirror.py tests/unit/test_rxfilter.py"
)
# fuzzer module (python -m) -> the extension source it is for
declare -A FUZZERS=(
    [tests.fuzz.fuzz_fastcore]=netstack/net/_fastnet.c
    [tests.fuzz.fuzz_vring]=drivers/vhost_user/_vring.c
    [tests.fuzz.fuzz_tcpfast]=drivers/user/tcp/_tcpfast.c
)

plain=$work/plain
asan=$work/asan
mkdir -p "$plain" "$asan" "$work/corpus"
for dir in "$plain" "$asan"; do
    cp -r "$repo/netstack" "$repo/drivers" "$repo/tools" "$repo/tests" "$repo/bench" "$repo/pyproject.toml" "$dir/"
    find "$dir" -name '*.so' -delete
done
inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
suffix=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
libasan=$(gcc -print-file-name=libasan.so)
tests=()
modules=()
for src in $(git -C "$repo" ls-files '*.c'); do
    [ -f "$asan/$src" ] || continue
    gcc -shared -fPIC -O1 -g -fno-omit-frame-pointer -fsanitize=address -I"$inc" \
        "$asan/$src" -o "$asan/${src%.c}$suffix"
    gcc -shared -fPIC -O2 -g -I"$inc" "$plain/$src" -o "$plain/${src%.c}$suffix"
    modules+=("$(echo "${src%.c}" | tr / .)")
    if [ -n "${TESTS[$src]:-}" ]; then
        read -r -a more <<<"${TESTS[$src]}"
        tests+=("${more[@]}")
        echo "asan: built $src (tests: ${TESTS[$src]} and those marked compiled)"
    else
        echo "asan: built $src (tests: those marked compiled; no entry in TESTS)"
    fi
done

status=0
fuzzers=()
total=${FUZZ_SECONDS:-60}
if ((${#FUZZERS[@]})) && ! "$py" -c 'import atheris' 2>/dev/null; then
    echo "asan: atheris is not installed: fuzzers skipped" >&2
    status=1
elif ((${#FUZZERS[@]})); then
    for fuzzer in "${!FUZZERS[@]}"; do
        [ -f "$plain/${FUZZERS[$fuzzer]}" ] && fuzzers+=("$fuzzer")
    done
fi
for fuzzer in "${fuzzers[@]}"; do
    seconds=$((total / ${#fuzzers[@]}))
    echo "asan: fuzzing ${FUZZERS[$fuzzer]} with $fuzzer for $seconds s (plain build)"
    mkdir -p "$work/corpus/$fuzzer"
    (cd "$plain" && PYTHONPATH=$plain "$py" -m "$fuzzer" -max_total_time="$seconds" \
        -print_final_stats=1 -artifact_prefix="$repo/fuzz-" "$work/corpus/$fuzzer" 2>&1 |
        grep -E '^(Done|stat::(number_of_executed_units|new_units_added)|==|Traceback|  File|[A-Za-z]*Error)' ||
        true; exit "${PIPESTATUS[0]}") || status=1
done

cd "$asan"
export LD_PRELOAD=$libasan
export ASAN_OPTIONS=detect_leaks=0:handle_sigbus=0:allow_user_segv_handler=1:abort_on_error=1
export PYTHONPATH=$asan
for mod in "${modules[@]}"; do  # the instrumented build is the one imported
    "$py" -c 'import importlib, sys; m = importlib.import_module(sys.argv[2]); assert m.__file__.startswith(sys.argv[1]), m.__file__' "$asan" "$mod"
done
for fuzzer in "${fuzzers[@]}"; do
    n=$(find "$work/corpus/$fuzzer" -type f | wc -l)
    echo "asan: replaying the $n inputs of $fuzzer's corpus"
    "$py" -m "$fuzzer" -runs=0 "$work/corpus/$fuzzer" 2>&1 |
        grep -E '^(==|Traceback|  File|[A-Za-z]*Error|#[0-9]+.*INITED)' || true
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
if ((${#tests[@]})); then
    "$py" -m pytest -p no:cacheprovider -q "${tests[@]}" || status=1
fi
# every test marked `compiled` (in the fast directories) outside the files already run
deselect=()
for t in "${tests[@]}"; do deselect+=("--deselect=$t"); done
"$py" -m pytest -p no:cacheprovider -q -m compiled tests/unit tests/property "${deselect[@]}" || {
    rc=$?
    [ $rc -eq 5 ] || status=1  # 5: none marked
}
exit $status
