#!/usr/bin/env bash
# Runs every test binary while another process keeps stopping and continuing it, as a loaded CI
# host, a Ctrl-Z then `fg`, or a debugger attaching would: SIGSTOP to the binary's process group
# (its child processes included), 35 ms later SIGCONT, again every 80-220 ms (random). A test
# that bounds wall-clock time too tightly fails; one whose helper thread dies on EINTR hangs.
# Each binary gets a time limit, after which it is killed and reported as HUNG.
#
#   scripts/stall-test.sh                  # every test binary (unit tests included), once
#   scripts/stall-test.sh echo timers      # chosen binaries (`lib`: the unit tests)
#   ROUNDS=3 scripts/stall-test.sh         # repeat the whole set
#   TEST_ARGS=--test-threads=1 scripts/stall-test.sh   # arguments for every test binary
#
# Environment: ROUNDS (1), LIMIT_S per binary and round (300), STOP_MS (35), EVERY_MIN_MS (80),
# EVERY_MAX_MS (220), RELEASE=1 for a release build. Logs go to target/stall-test/. Exits 1 if
# anything failed or hung. It is slow (every binary runs under stops), so CI does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-1}
limit_s=${LIMIT_S:-300}
stop_ms=${STOP_MS:-35}
every_min=${EVERY_MIN_MS:-80}
every_max=${EVERY_MAX_MS:-220}
profile=()
[ "${RELEASE:-0}" = 1 ] && profile=(--release)
logs=target/stall-test
mkdir -p "$logs"

# Build first, and learn each binary's path from cargo's "Executable" lines.
declare -A binaries
while read -r name path; do
    binaries[$name]=$path
done < <(cargo test "${profile[@]}" --no-run 2>&1 | sed -nE \
    -e 's/^ *Executable unittests src\/lib\.rs \((.*)\)$/lib \1/p' \
    -e 's/^ *Executable tests\/([a-z0-9_]+)\.rs \((.*)\)$/\1 \2/p')

if [ $# -eq 0 ]; then
    set -- $(printf '%s\n' "${!binaries[@]}" | sort)
fi
for name in "$@"; do
    [ -n "${binaries[$name]:-}" ] || { echo "no test binary named $name" >&2; exit 2; }
done

millis() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

# Stops and continues process group $1 until it is gone, counting the stops into file $2.
stall() {
    local group=$1 count=0
    # The first stop comes early (5 ms to the shortest interval), so that binaries that finish
    # in a fraction of a second are stopped too.
    local pause=$((5 + RANDOM % every_min))
    while kill -0 "$group" 2>/dev/null; do
        sleep "$(millis "$pause")"
        pause=$((every_min + RANDOM % (every_max - every_min + 1)))
        kill -STOP -- "-$group" 2>/dev/null || break
        count=$((count + 1))
        echo "$count" >"$2"
        sleep "$(millis "$stop_ms")"
        kill -CONT -- "-$group" 2>/dev/null || break
    done
}

# Job control: every background job gets a process group of its own, in this session.
set -m
failed=0
summary=()
for round in $(seq 1 "$rounds"); do
    for name in "$@"; do
        log=$logs/$name.$round.log
        start=$(date +%s.%N)
        # Its own process group (job control, `set -m` above), so the stops reach its children
        # too and nothing else. Not a session of its own (setsid): such a group has no parent
        # in its session outside it, so it counts as orphaned, and the kernel sends SIGHUP to
        # an orphaned group with stopped members when one of its processes exits (a test's
        # child, say), which killed a test binary once.
        # shellcheck disable=SC2086 # TEST_ARGS is split on purpose
        "${binaries[$name]}" ${TEST_ARGS:-} >"$log" 2>&1 </dev/null &
        group=$!
        echo 0 >"$log.stops"
        stall "$group" "$log.stops" &
        stopper=$!
        verdict=""
        while kill -0 "$group" 2>/dev/null; do
            if (($(date +%s) - ${start%.*} >= limit_s)); then
                kill -CONT -- "-$group" 2>/dev/null || true
                kill -KILL -- "-$group" 2>/dev/null || true
                verdict="HUNG (killed after ${limit_s} s)"
                break
            fi
            sleep 0.2
        done
        status=0
        wait -f "$group" || status=$?
        kill "$stopper" 2>/dev/null || true
        wait "$stopper" 2>/dev/null || true
        took=$(echo "$(date +%s.%N) - $start" | bc)
        if [ -z "$verdict" ]; then
            if [ "$status" = 0 ]; then verdict=ok; else verdict="FAILED (status $status)"; fi
        fi
        line=$(printf 'round %s  %-14s %-28s %6.1f s, %4d stops' "$round" "$name" "$verdict" \
            "$took" "$(cat "$log.stops")")
        echo "$line"
        if [ "$verdict" != ok ]; then
            failed=1
            grep -E '^test .* FAILED|panicked at|^    [a-z0-9_:]+$' "$log" | sed 's/^/    /' | head -20
            echo "    log: $log"
        fi
        summary+=("$line")
    done
done

echo
echo "stops of ${stop_ms} ms every ${every_min}-${every_max} ms; ${rounds} round(s)"
printf '%s\n' "${summary[@]}" | grep -cv ' ok ' | sed 's/^/not ok: /'
exit "$failed"
