#!/usr/bin/env bash
# User-space instructions per same-thread task wake (wake + poll), under callgrind, for
# selreactor, tokio's LocalSet and async-executor: two runs of `task_cost` that differ only in
# rounds, (Ir(R2) - Ir(R1)) / ((R2 - R1) * 1000), so start-up and spawning cancel out.
#
# usage: lab/scripts/task-cost.sh [PEER...]   (default: selreactor tokio async-executor)
# env:   WORKLOADS="wake yield"  R1=2  R2=12
set -euo pipefail
cd "$(dirname "$0")/../.."

PEERS=${*:-"selreactor tokio async-executor"}
WORKLOADS=${WORKLOADS:-"wake yield"}
R1=${R1:-2}
R2=${R2:-12}
WORK=$(mktemp -d /tmp/task-cost.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

cargo build --release -q -p selreactor-lab --bin task_cost
BIN=target/release/task_cost

# instructions PEER WORKLOAD ROUNDS: user-space instructions of a whole run.
instructions() {
    valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$BIN" "$1" "$2" "$3" \
        >/dev/null 2>&1
    awk '/^summary:/ { print $2 }' "$WORK/cg.out"
}

printf 'peer\tworkload\tinstructions_per_wake\n'
for workload in $WORKLOADS; do
    for peer in $PEERS; do
        few=$(instructions "$peer" "$workload" "$R1")
        many=$(instructions "$peer" "$workload" "$R2")
        awk -v a="$few" -v b="$many" -v n=$(((R2 - R1) * 1000)) -v p="$peer" -v w="$workload" \
            'BEGIN { printf "%s\t%s\t%.1f\n", p, w, (b - a) / n }'
    done
done
