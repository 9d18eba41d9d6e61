#!/usr/bin/env bash
# End-to-end echo benchmark: selreactor's examples/echo.rs against mio, tokio current-thread,
# calloop, raw polling and a raw level-triggered epoll floor (lab/src/bin/peer_echo.rs), driven by
# lab/src/bin/echo_load.rs.
#
# usage: lab/scripts/echo-bench.sh            (about 12 minutes with the defaults)
# env:   ROUNDS=3 SECS=3 WARMUP=0.5 DEPTH=1 CONFIGS="1:64 16:64 256:64 64:4096" (conns:bytes)
#        SERVERS="..." (default: all but the floor, which always runs)  MULTICORE=1 (0: skip)
#        OUT_DIR=lab/results  CARGO_TARGET_DIR
#
# Each server runs pinned to CPU 0 and the client to CPU 1 (taskset). For each configuration
# and round, the floor runs before and after every other server (F A F B F ...), and the
# order of the others rotates from round to round, so drift and neighbours' load hit every
# server alike. Results: $OUT_DIR/echo.tsv (every run) and Markdown tables from
# lab/scripts/chart.py, which also draws $OUT_DIR/echo-throughput.svg. With MULTICORE=1 it then
# runs examples/echo_reuseport.rs with 1 and 2 threads ($OUT_DIR/multicore.tsv).
set -euo pipefail
cd "$(dirname "$0")/../.."
source lab/scripts/echo-servers.sh

ROUNDS=${ROUNDS:-3}
SECS=${SECS:-3}
WARMUP=${WARMUP:-0.5}
DEPTH=${DEPTH:-1}
CONFIGS=${CONFIGS:-"1:64 16:64 256:64 64:4096"}
SERVERS=${SERVERS:-"selreactor selreactor-step polling mio tokio calloop python"}
MULTICORE=${MULTICORE:-1}
OUT_DIR=${OUT_DIR:-lab/results}
PORT=${PORT:-18400}
mkdir -p "$OUT_DIR"

server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

build_release

# one_run CPUS COMMAND...: starts the server (on CPUS), loads it on CPU 1, prints the client's
# key=value line, stops the server.
one_run() {
    local cpus=$1 conns=$2 size=$3
    shift 3
    local addr="127.0.0.1:$PORT"
    PORT=$((PORT + 1))
    # shellcheck disable=SC2068
    taskset -c "$cpus" $@ "$addr" >/dev/null 2>&1 &
    server_pid=$!
    local result
    result=$(taskset -c 1 "$BIN_DIR/echo_load" "$addr" --conns "$conns" --size "$size" \
        --depth "$DEPTH" --secs "$SECS" --warmup "$WARMUP" 2>/dev/null) || result=
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    if [ -z "$result" ]; then
        echo "run failed: $*" >&2
        return 1
    fi
    echo "$result"
}

field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k { print $2 }'; }

TSV="$OUT_DIR/echo.tsv"
printf 'config\tround\tseq\tserver\tconns\tsize\tdepth\trtt_per_sec\tp50_us\tp99_us\tp999_us\n' >"$TSV"
read -ra others <<<"$SERVERS"
started=$(date -u +%s)
for config in $CONFIGS; do
    conns=${config%%:*}
    size=${config##*:}
    for round in $(seq 1 "$ROUNDS"); do
        # Rotate the order of the non-floor servers each round.
        shift_by=$(((round - 1) % ${#others[@]}))
        order=("${others[@]:shift_by}" "${others[@]:0:shift_by}")
        sequence=(epoll)
        for s in "${order[@]}"; do sequence+=("$s" epoll); done
        seq_no=0
        for server in "${sequence[@]}"; do
            seq_no=$((seq_no + 1))
            # shellcheck disable=SC2046
            line=$(one_run 0 "$conns" "$size" $(server_cmd "$server" "" | sed 's/ *$//'))
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$config" "$round" "$seq_no" \
                "$server" "$conns" "$size" "$DEPTH" "$(field rtt_per_sec "$line")" \
                "$(field p50_us "$line")" "$(field p99_us "$line")" "$(field p999_us "$line")" >>"$TSV"
            printf '%-8s round %s %-16s %s\n' "$config" "$round" "$server" "$line" >&2
        done
    done
done

echo "echo runs took $(($(date -u +%s) - started)) s; machine: $(nproc) CPUs, $(uname -r)" >&2
python3 lab/scripts/chart.py echo "$TSV" --svg "$OUT_DIR/echo-throughput.svg"

if [ "$MULTICORE" = 1 ]; then
    MC="$OUT_DIR/multicore.tsv"
    printf 'round\tthreads\tserver_cpus\tconns\trtt_per_sec\tp50_us\tp99_us\n' >"$MC"
    for round in $(seq 1 "$ROUNDS"); do
        for threads in 1 2; do
            # One thread has CPU 0 to itself; two threads get both CPUs, and so share CPU 1
            # with the client: on a two-CPU machine there is no free CPU to scale into.
            cpus=$([ "$threads" = 1 ] && echo 0 || echo 0,1)
            line=$(one_run "$cpus" 64 64 "$EXAMPLE_DIR/echo_reuseport" --threads "$threads")
            printf '%s\t%s\t%s\t64\t%s\t%s\t%s\n' "$round" "$threads" "$cpus" \
                "$(field rtt_per_sec "$line")" "$(field p50_us "$line")" "$(field p99_us "$line")" >>"$MC"
            printf 'reuseport round %s threads %s: %s\n' "$round" "$threads" "$line" >&2
        done
    done
    python3 lab/scripts/chart.py multicore "$MC"
fi
