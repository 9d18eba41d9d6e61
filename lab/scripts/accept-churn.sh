#!/usr/bin/env bash
# Accept churn at a low descriptor limit: does an echo server that runs out of descriptors keep
# accepting as fast as descriptors free up, without leaving a client waiting?
#
# Each run starts one echo server, holds HOLD idle connections to it (each echoes a byte first,
# so the server really holds them), then runs connect → write 16 bytes → read the echo → close
# cycles from CONCURRENCY client threads for SECS seconds (at most MAX_CYCLES cycles), and
# finally checks that every held connection still echoes (lab/src/bin/accept_churn.rs). Each
# server runs twice per round, under `prlimit --nofile=LIMIT:LIMIT` and with the shell's own
# limit, in alternating order; only the server is limited, never the client. The figure of
# merit is the limited rate over the unlimited rate of the same round, with the slowest cycle
# and the cycles slower than 0.5 s (stalls).
#
# usage: lab/scripts/accept-churn.sh       (about 5 s a run, 16 runs by default: under 2 minutes)
# env:   SERVERS="selreactor epoll tokio mio" (names from lab/scripts/echo-servers.sh)  ROUNDS=2
#        LIMIT=64 HOLD=50 CONCURRENCY=16 SECS=3 MAX_CYCLES=60000  OUT_DIR=lab/results
#        PORT=18600  CARGO_TARGET_DIR
#
# The server runs pinned to CPU 0 and the client to CPU 1 (taskset). Results: one line per run
# in $OUT_DIR/accept-churn.tsv, and a table (a row per server) on stdout. Loopback only; every
# child is stopped on exit. The client closes first, so TIME_WAIT stays on its side; with
# net.ipv4.tcp_tw_reuse=0 a long run can run out of ephemeral ports (failed cycles say so).
set -euo pipefail
cd "$(dirname "$0")/../.."
source lab/scripts/echo-servers.sh

SERVERS=${SERVERS:-"selreactor epoll tokio mio"}
ROUNDS=${ROUNDS:-2}
LIMIT=${LIMIT:-64}
HOLD=${HOLD:-50}
CONCURRENCY=${CONCURRENCY:-16}
SECS=${SECS:-3}
MAX_CYCLES=${MAX_CYCLES:-60000}
OUT_DIR=${OUT_DIR:-lab/results}
PORT=${PORT:-18600}
mkdir -p "$OUT_DIR"

server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release --example echo >&2
cargo build --release -p selreactor-lab --bin peer_echo --bin accept_churn >&2

# cpu_ms PID: the CPU time (user + system) the process has used so far, in milliseconds.
cpu_ms() {
    sed 's/.*) //' "/proc/$1/stat" | awk -v hz="$(getconf CLK_TCK)" '{ printf "%d\n", ($12 + $13) * 1000 / hz }' 2>/dev/null || echo 0
}

field() { tr ' ' '\n' <<<"$2" | awk -F= -v k="$1" '$1 == k { print $2 }'; }

# one_run SERVER LIMITED(0|1): prints "BASE_FDS SERVER_CPU_MS CLIENT_LINE" (or fails).
one_run() {
    local server=$1 limited=$2 addr="127.0.0.1:$PORT" port=$PORT
    PORT=$((PORT + 1))
    local limit=()
    if [ "$limited" = 1 ]; then limit=(prlimit "--nofile=$LIMIT:$LIMIT"); fi
    # The server starts with only descriptors 0-2 open, so that what the limit leaves it does not
    # depend on what the calling shell passes down: its command closes the others (closing them
    # inside a subshell instead can hang a shell that reads its script from one of them).
    local close=() fd
    for fd in /proc/"$BASHPID"/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then close+=("$fd>&-"); fi
    done
    eval "taskset -c 0 \"\${limit[@]}\" $(server_cmd "$server" "$addr") >/dev/null 2>&1 ${close[*]} &"
    server_pid=$!
    local tries=0
    until ss -Hltn "sport = :$port" | grep -q .; do
        tries=$((tries + 1))
        if [ "$tries" -gt 200 ]; then
            echo "$server did not start listening on $addr" >&2
            kill "$server_pid" 2>/dev/null || true
            wait "$server_pid" 2>/dev/null || true
            server_pid=
            return 1
        fi
        sleep 0.05
    done
    local base_fds
    base_fds=$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    local result cpu_before cpu_after
    cpu_before=$(cpu_ms "$server_pid")
    result=$(timeout 120 taskset -c 1 "$BIN_DIR/accept_churn" "$addr" --hold "$HOLD" \
        --concurrency "$CONCURRENCY" --secs "$SECS" --max-cycles "$MAX_CYCLES") || result=
    cpu_after=$(cpu_ms "$server_pid")
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    if [ -z "$result" ]; then
        echo "run failed: $server (limited: $limited)" >&2
        return 1
    fi
    echo "$base_fds $((cpu_after - cpu_before)) $result"
}

TSV="$OUT_DIR/accept-churn.tsv"
printf 'round\tserver\tnofile\tbase_fds\tserver_cpu_ms\thold\tconcurrency\tcycles\tfailed\tsecs\tcycles_per_sec\tp50_ms\tp99_ms\tmax_ms\tstalls\theld_ok\n' >"$TSV"
started=$(date -u +%s)
for round in $(seq 1 "$ROUNDS"); do
    for server in $SERVERS; do
        # Alternate which run goes first, so that drift hits both alike.
        order=$([ $((round % 2)) = 1 ] && echo "1 0" || echo "0 1")
        for limited in $order; do
            nofile=$([ "$limited" = 1 ] && echo "$LIMIT" || ulimit -n)
            if ! out=$(one_run "$server" "$limited"); then
                printf '%s\t%s\t%s\t\t\t%s\t%s\t\t\t\t\t\t\t\t\tfalse\n' "$round" "$server" \
                    "$nofile" "$HOLD" "$CONCURRENCY" >>"$TSV"
                continue
            fi
            read -r base cpu line <<<"$out"
            printf '%s\t%s\t%s\t%s\t%s' "$round" "$server" "$nofile" "$base" "$cpu" >>"$TSV"
            for key in hold concurrency cycles failed secs cycles_per_sec p50_ms p99_ms max_ms \
                stalls held_ok; do
                printf '\t%s' "$(field "$key" "$line")" >>"$TSV"
            done
            printf '\n' >>"$TSV"
            printf 'round %s %-10s nofile %-7s base fds %-3s server cpu %5s ms %s\n' "$round" \
                "$server" "$nofile" "$base" "$cpu" "$line" >&2
        done
    done
done
echo "accept churn took $(($(date -u +%s) - started)) s; machine: $(nproc) CPUs, $(uname -r)" >&2

# The table: per server, medians over rounds; the ratio is the median of each round's ratio.
python3 - "$TSV" "$LIMIT" <<'EOF'
import csv, statistics, sys
path, limit = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(path), delimiter="\t"))
servers = list(dict.fromkeys(r["server"] for r in rows))
def num(r, k):
    return float(r[k]) if r[k] else None
print(f"| server | limit {limit}: cycles/s | unlimited: cycles/s | ratio | slowest cycle (ms) | stalls > 0.5 s | failed cycles | server CPU per cycle (µs) | held connections kept | ratio ≥ 0.25, no stall |")
print("|---|---|---|---|---|---|---|---|---|---|")
for s in servers:
    runs = [r for r in rows if r["server"] == s]
    lim = [r for r in runs if r["nofile"] == limit]
    unl = [r for r in runs if r["nofile"] != limit]
    def med(rs, k):
        xs = [num(r, k) for r in rs if num(r, k) is not None]
        return statistics.median(xs) if xs else float("nan")
    def worst(rs, k):
        xs = [num(r, k) for r in rs if num(r, k) is not None]
        return max(xs) if xs else float("nan")
    ratios = []
    for rnd in sorted({r["round"] for r in runs}):
        a = [num(r, "cycles_per_sec") for r in lim if r["round"] == rnd]
        b = [num(r, "cycles_per_sec") for r in unl if r["round"] == rnd]
        if a and b and a[0] is not None and b[0]:
            ratios.append(a[0] / b[0])
    ratio = f"{statistics.median(ratios):.2f}" if ratios else "n/a"
    stalls = f"{sum(int(num(r, 'stalls') or 0) for r in lim)} / {sum(int(num(r, 'stalls') or 0) for r in unl)}"
    failed = f"{sum(int(num(r, 'failed') or 0) for r in lim)} / {sum(int(num(r, 'failed') or 0) for r in unl)}"
    def cpu_per_cycle(rs):
        xs = [num(r, "server_cpu_ms") * 1000 / (num(r, "cycles") + num(r, "failed"))
              for r in rs if num(r, "cycles")]
        return statistics.median(xs) if xs else float("nan")
    cpu = f"{cpu_per_cycle(lim):,.0f} / {cpu_per_cycle(unl):,.0f}"
    kept = "yes" if all(r["held_ok"] == "true" for r in runs) else "NO"
    met = (len(ratios) == len({r["round"] for r in runs}) and min(ratios, default=0) >= 0.25
           and all(r["stalls"] == "0" and r["failed"] == "0" for r in lim))
    target = "yes" if met else "NO"
    print(f"| {s} | {med(lim, 'cycles_per_sec'):,.0f} | {med(unl, 'cycles_per_sec'):,.0f} | {ratio} "
          f"| {worst(lim, 'max_ms'):,.0f} / {worst(unl, 'max_ms'):,.0f} | {stalls} | {failed} | {cpu} | {kept} | {target} |")
print(f"(limited / unlimited where two figures; slowest cycle, stalls and failures over every round, the rest medians; the last column asks it of every round)")
EOF
