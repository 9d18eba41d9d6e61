#!/usr/bin/env bash
# Cost per echo round trip for every server of the echo benchmark, in one run:
#
#   syscalls/rtt      counted natively by `perf stat` on the kernel's syscall tracepoints,
#                     attached to the server around exactly N round trips (no setup, no
#                     teardown inside); `strace -c -f -p` instead when perf cannot
#   cpu ns/rtt        the server's utime+stime (/proc/PID/stat) over the same N round trips
#   instructions/rtt  user-space instructions under `valgrind --tool=callgrind`: two runs of
#                     N1 and N2 round trips, (Ir(N2) - Ir(N1)) / (N2 - N1), so start-up, accept
#                     and teardown cancel out. The client pauses --think-us between batches so
#                     that the slowed-down server meets the same order of events as natively.
#
# usage: lab/scripts/cost-per-rtt.sh [SERVER...]     (default: all; see lab/scripts/echo-servers.sh)
# env:   CONNS="1 16"  RTTS_1=100000 RTTS_16=200000  CG_N1=500 CG_N2=2500 (per connection)
#        SKIP_CALLGRIND=1  OUT=lab/results/cost.tsv (chart: OUT minus .tsv, plus -per-rtt.svg)
# Server on CPU 0, client on CPU 1 (taskset). Loopback only. Prints a table at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
source lab/scripts/echo-servers.sh

SERVERS=${*:-$ALL_SERVERS}
CONNS=${CONNS:-"1 16"}
PORT=${PORT:-18300}
OUT=${OUT:-lab/results/cost.tsv}
CG_N1=${CG_N1:-500}
CG_N2=${CG_N2:-2500}
THINK_US=${THINK_US:-500}
WORK=$(mktemp -d /tmp/cost-per-rtt.XXXXXX)
mkdir -p "$(dirname "$OUT")"

children=()
cleanup() {
    for pid in "${children[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

build_release

USE_PERF=1
if ! perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
    USE_PERF=0
    echo "perf cannot count syscall tracepoints here: falling back to strace (slows the server," >&2
    echo "which changes how events batch; treat the counts as approximate)" >&2
fi
# Per-syscall tracepoints that exist on this kernel, for the breakdown.
EVENTS=raw_syscalls:sys_enter
for name in epoll_wait epoll_pwait epoll_pwait2 recvfrom sendto read write epoll_ctl futex; do
    if perf list "syscalls:sys_enter_$name" 2>/dev/null | grep -q "sys_enter_$name"; then
        EVENTS="$EVENTS,syscalls:sys_enter_$name"
    fi
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# native NAME CONNS RTTS: syscalls and CPU time over exactly RTTS round trips.
native() {
    local name=$1 conns=$2 rtts=$3 addr="127.0.0.1:$PORT"
    PORT=$((PORT + 1))
    # shellcheck disable=SC2046
    taskset -c 0 $(server_cmd "$name" "$addr") >/dev/null 2>&1 &
    local server=$!
    children+=("$server")
    coproc LOAD { taskset -c 1 "$BIN_DIR/echo_load" "$addr" --conns "$conns" \
        --warmup-rtts $((conns * 200)) --rtts "$rtts" --sync 2>/dev/null; }
    children+=("$LOAD_PID")
    local line
    read -r line <&"${LOAD[0]}"
    [ "$line" = READY ] || { echo "load generator failed for $name" >&2; return 1; }
    local counter
    if [ $USE_PERF = 1 ]; then
        perf stat -x, -e "$EVENTS" -p "$server" -o "$WORK/sys" &
    else
        strace -c -f -p "$server" -o "$WORK/sys" 2>/dev/null &
    fi
    counter=$!
    sleep 0.5
    local before after
    before=$(cpu_ticks "$server")
    echo go >&"${LOAD[1]}"
    read -r line <&"${LOAD[0]}"
    after=$(cpu_ticks "$server")
    kill -INT "$counter"
    wait "$counter" || true
    echo done >&"${LOAD[1]}"
    wait "$LOAD_PID" || true
    kill "$server"
    wait "$server" 2>/dev/null || true
    local hz
    hz=$(getconf CLK_TCK)
    local cpu_ns
    cpu_ns=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$rtts" 'BEGIN{printf "%.0f", t * 1e9 / hz / n}')
    if [ $USE_PERF = 1 ]; then
        # perf -x, lines: count,unit,event,...
        awk -F, -v n="$rtts" -v cpu="$cpu_ns" '
            $3 == "raw_syscalls:sys_enter" { total = $1 }
            $3 ~ /sys_enter_epoll_(p?wait2?)$/ { waits += $1 }
            $3 ~ /sys_enter_(recvfrom|read)$/ { reads += $1 }
            $3 ~ /sys_enter_(sendto|write)$/ { writes += $1 }
            $3 ~ /sys_enter_epoll_ctl$/ { ctl += $1 }
            END { printf "%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%s", total/n, waits/n, reads/n, writes/n, ctl/n, cpu }
        ' "$WORK/sys"
    else
        awk -v n="$rtts" -v cpu="$cpu_ns" '
            $NF == "total" { total = $(NF-2) }
            $NF ~ /^epoll_(p?wait2?)$/ { waits += $4 }
            $NF ~ /^(recvfrom|read)$/ { reads += $4 }
            $NF ~ /^(sendto|write)$/ { writes += $4 }
            $NF == "epoll_ctl" { ctl += $4 }
            END { printf "%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t%s", total/n, waits/n, reads/n, writes/n, ctl/n, cpu }
        ' "$WORK/sys"
    fi
}

# instructions NAME CONNS RTTS: user-space instructions for a whole server run of RTTS.
instructions() {
    local name=$1 conns=$2 rtts=$3 addr="127.0.0.1:$PORT"
    PORT=$((PORT + 1))
    # shellcheck disable=SC2046
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
        $(server_cmd "$name" "$addr") >/dev/null 2>&1 &
    local server=$!
    children+=("$server")
    taskset -c 1 "$BIN_DIR/echo_load" "$addr" --conns "$conns" --rtts "$rtts" \
        --think-us "$THINK_US" >/dev/null 2>&1
    # Valgrind writes its profile when the server dies of the signal.
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
    awk '/^summary:/ { print $2 }' "$WORK/cg.out"
}

printf 'server\tconns\tsyscalls_per_rtt\twaits_per_rtt\treads_per_rtt\twrites_per_rtt\tctl_per_rtt\tcpu_ns_per_rtt\tinstructions_per_rtt\n' >"$OUT"
for conns in $CONNS; do
    var=RTTS_$conns
    rtts=${!var:-$((conns == 1 ? 100000 : 200000))}
    for name in $SERVERS; do
        echo "== $name, $conns connection(s)" >&2
        counts=$(native "$name" "$conns" "$rtts")
        instr=NA
        if [ -z "${SKIP_CALLGRIND:-}" ]; then
            small=$(instructions "$name" "$conns" $((CG_N1 * conns)))
            large=$(instructions "$name" "$conns" $((CG_N2 * conns)))
            instr=$(awk -v a="$small" -v b="$large" -v n=$(((CG_N2 - CG_N1) * conns)) \
                'BEGIN{printf "%.0f", (b - a) / n}')
        fi
        printf '%s\t%s\t%s\t%s\n' "$name" "$conns" "$counts" "$instr" | tee -a "$OUT" >&2
    done
done
echo "wrote $OUT" >&2
python3 lab/scripts/chart.py cost "$OUT" --svg "${OUT%.tsv}-per-rtt.svg"
