#!/usr/bin/env bash
# Every side-by-side comparison of the lab in one command: selreactor against raw polling, raw
# epoll, mio, calloop, tokio and Python's selectors, on the same machine in the same run.
#
#   lab/compare.sh            # everything (about 40 minutes on two cores)
#   lab/compare.sh benches    # in-process: dispatch, churn, memory, timers, instruction counts
#   lab/compare.sh echo       # TCP echo servers: throughput and latency, cost per round trip,
#                             # accept churn at a low descriptor limit
#
# The instruction counts need valgrind (and strace for syscalls), the echo runs taskset, perf
# (or strace) and python3; what is missing is reported and skipped by the step that needs it.
# BENCHMARKS.md describes each measurement and its last results.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-all}
case "$what" in
    all | benches | echo) ;;
    *) echo "usage: lab/compare.sh [all|benches|echo]" >&2; exit 2 ;;
esac
if [ "$what" != echo ]; then
    cargo bench -p selreactor-lab
fi
if [ "$what" != benches ]; then
    lab/scripts/echo-bench.sh
    lab/scripts/cost-per-rtt.sh
    lab/scripts/accept-churn.sh
fi
