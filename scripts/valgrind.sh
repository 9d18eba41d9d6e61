#!/usr/bin/env bash
# Runs test binaries under valgrind memcheck: any memory error or definitely-lost block fails
# the run (exit 99 from valgrind, reported by cargo).
#
#   scripts/valgrind.sh                   # the core's behavioural suites and the unit tests
#   scripts/valgrind.sh dispatch model    # chosen integration-test binaries (`lib`: unit tests)
#   scripts/valgrind.sh all               # every test binary in tests/
#
# Tests run one at a time (--test-threads=1). SELREACTOR_UNDER_VALGRIND=1 tells them to scale
# their counts down and widen their timing windows (see tests/util/mod.rs), since code runs
# 20-50x slower under valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }

default=(lib registration dispatch lifecycle panics timeouts eintr scale model)
if [ $# -eq 0 ]; then
    set -- "${default[@]}"
fi

targets=()
for name in "$@"; do
    case "$name" in
        all) targets+=(--lib --tests) ;;
        lib) targets+=(--lib) ;;
        *) targets+=(--test "$name") ;;
    esac
done

# Build first, without valgrind, so build time is not counted below.
cargo test --no-run "${targets[@]}" >/dev/null 2>&1 || cargo test --no-run "${targets[@]}"
# tests/examples.rs runs the examples' binaries (not under valgrind themselves).
cargo build --examples >/dev/null 2>&1 || cargo build --examples

export SELREACTOR_UNDER_VALGRIND=1
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="valgrind -q --error-exitcode=99 \
--leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite"

start=$(date +%s)
status=0
cargo test --no-fail-fast "${targets[@]}" -- --test-threads=1 || status=$?
echo "valgrind.sh: $* finished in $(( $(date +%s) - start )) s with status $status" >&2
exit "$status"
