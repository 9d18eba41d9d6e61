#!/usr/bin/env bash
# User-space instructions and atomic read-modify-writes per same-thread task wake (wake +
# poll), under callgrind, for selreactor, tokio's LocalSet and async-executor: two runs of
# `task_cost` that differ only in rounds, (Ir(R2) - Ir(R1)) / ((R2 - R1) * 1000), so start-up
# and spawning cancel out. The atomics column counts the binary's locked instructions
# (lab/scripts/callgrind_atomics.py): each costs tens of cycles where most cost one.
#
# usage: lab/scripts/task-cost.sh [PEER...]   (default: selreactor tokio async-executor)
# env:   WORKLOADS="wake yield cross"  R1=2  R2=12
set -euo pipefail
cd "$(dirname "$0")/../.."

PEERS=${*:-"selreactor tokio async-executor"}
WORKLOADS=${WORKLOADS:-"wake yield cross"}
R1=${R1:-2}
R2=${R2:-12}
WORK=$(mktemp -d /tmp/task-cost.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cargo build --release -q -p selreactor-lab --bin task_cost
BIN=target/release/task_cost

# profile PEER WORKLOAD ROUNDS: a whole run's profile, in $WORK/ROUNDS.out.
profile() {
    valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$WORK/$3.out" \
        "$BIN" "$1" "$2" "$3" >/dev/null 2>&1
}

summary() { awk '/^summary:/ { print $2 }' "$WORK/$1.out"; }

printf 'peer\tworkload\tinstructions_per_wake\tatomics_per_wake\n'
n=$(((R2 - R1) * 1000))
for workload in $WORKLOADS; do
    for peer in $PEERS; do
        profile "$peer" "$workload" "$R1"
        profile "$peer" "$workload" "$R2"
        atomics=$(python3 lab/scripts/callgrind_atomics.py "$WORK/$R1.out" "$WORK/$R2.out" "$n" "$BIN")
        awk -v a="$(summary "$R1")" -v b="$(summary "$R2")" -v n="$n" -v p="$peer" \
            -v w="$workload" -v atomics="$atomics" \
            'BEGIN { printf "%s\t%s\t%.1f\t%s\n", p, w, (b - a) / n, atomics }'
    done
done
