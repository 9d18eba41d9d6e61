#!/usr/bin/env bash
# Where the reactor's instructions go, per echo round trip, instruction by instruction: runs
# the `selreactor-step` echo server (lab/src/bin/peer_echo.rs) under callgrind for N1 and N2 round
# trips on one connection, and prints, for every function whose name matches PATTERN, each
# machine instruction's Ir per extra round trip ((Ir(N2) - Ir(N1)) / (N2 - N1)) next to its
# source line, from a release build with line tables (in its own target directory).
#
# usage: lab/scripts/hot-path.sh [PATTERN] [SERVER]
#        PATTERN  a regex over demangled function names (default: 'Selector>::run$',
#                 the loop with the wait and the dispatch inlined); 'Registration>::call' is
#                 the boxed callback
#        SERVER   a server of lab/scripts/echo-servers.sh (default: selreactor-step; also
#                 selreactor for examples/echo.rs, epoll, mio, polling...)
# env:   CG_N1=500 CG_N2=2500  THINK_US=500  (as in lab/scripts/cost-per-rtt.sh)
# Needs valgrind, objdump and python3. Server on CPU 0, client on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
source lab/scripts/echo-servers.sh
PATTERN=${1:-'Selector>::run$'}
SERVER=${2:-selreactor-step}
CG_N1=${CG_N1:-500}
CG_N2=${CG_N2:-2500}
THINK_US=${THINK_US:-500}
# A release build with line tables, in its own target directory.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/hot-path
export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
BIN_DIR=$CARGO_TARGET_DIR/release
EXAMPLE_DIR=$BIN_DIR/examples
build_release
WORK=$(mktemp -d /tmp/hot-path.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
port=$((20000 + RANDOM % 10000))
for n in "$CG_N1" "$CG_N2"; do
    port=$((port + 1))
    cmd=$(server_cmd "$SERVER" "127.0.0.1:$port")
    # shellcheck disable=SC2086
    taskset -c 0 valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$WORK/$n.out" \
        $cmd >/dev/null 2>&1 &
    server=$!
    taskset -c 1 "$BIN_DIR/echo_load" "127.0.0.1:$port" --conns 1 --rtts "$n" \
        --think-us "$THINK_US" >/dev/null 2>&1
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
done
python3 lab/scripts/callgrind_instr.py "$WORK/$CG_N1.out" "$WORK/$CG_N2.out" "$PATTERN" \
    $((CG_N2 - CG_N1)) "${cmd%% *}"
