#!/usr/bin/env bash
# Soaks the echo example at full size: 100,000 connect -> echo -> close cycles, and 10,000
# connections held open at once, in a release build. Same tests as `cargo test --test
# echo_soak` (tests/echo_soak.rs), which runs 10,000 cycles by default; only the counts differ.
#
#   scripts/soak.sh                       # 100,000 cycles, 10,000 connections
#   scripts/soak.sh 200000 15000          # other counts: CYCLES [CONNECTIONS]
#
# What it prints (the tests write these lines to stderr themselves):
#   churn: the wall time of the measured cycles (all but the 10% warm-up) and cycles/s;
#          descriptors, VmRSS and live heap bytes after the warm-up and at the end;
#          the server's counters (accepted == closed == cycles).
#   scale: VmRSS of the server process before, with N idle connections held, after the echo
#          rounds, and after all closed, with the RSS delta per connection; descriptors and
#          registrations before / at the peak / after.
#
# Ports: a client that closes first keeps a TIME_WAIT entry for 60 s, and one source address
# has 28,232 ephemeral ports (32768-60999) towards one server port. Half the churn cycles close
# with a reset (SO_LINGER 0: no TIME_WAIT at all), the other half close in order, spread over
# eight source addresses 127.0.0.10-17, so 100,000 cycles leave about 6,250 TIME_WAIT entries
# per source address. The server's port is new on every run.
#
# Bounded: each test fails by itself if any step stalls (10-20 s timeouts), and the whole run
# is killed after 10 minutes. Needs a hard descriptor limit of at least CONNECTIONS + 64; the
# test raises its soft limit to the hard one, and says SKIPPED if that is not enough.
set -euo pipefail
cd "$(dirname "$0")/.."

cycles=${1:-100000}
connections=${2:-10000}

# Build first, so the build is not inside the time limit or the figures.
cargo test --release --test echo_soak --no-run >/dev/null 2>&1 \
    || cargo test --release --test echo_soak --no-run

echo "soak.sh: $(nproc) CPUs, $(uname -r), descriptor limit soft $(ulimit -Sn) hard $(ulimit -Hn)"
echo "soak.sh: SELREACTOR_SOAK_CYCLES=$cycles SELREACTOR_SOAK_CONNECTIONS=$connections"
echo "soak.sh: TCP sockets before: $(grep '^TCP:' /proc/net/sockstat)"
start=$(date +%s.%N)
status=0
SELREACTOR_SOAK_CYCLES=$cycles SELREACTOR_SOAK_CONNECTIONS=$connections \
    timeout 600 cargo test --release --test echo_soak -- --test-threads=1 || status=$?
end=$(date +%s.%N)
echo "soak.sh: TCP sockets after: $(grep '^TCP:' /proc/net/sockstat)"
echo "soak.sh: finished in $(echo "$end - $start" | bc) s with status $status"
exit "$status"
