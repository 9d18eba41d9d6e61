# Sourced by lab/scripts/echo-bench.sh and lab/scripts/cost-per-rtt.sh: the servers under test and how
# to start them. Each server takes its listening address as its last argument.
#
#   epoll            raw level-triggered epoll floor (lab/src/bin/peer_echo.rs)
#   selreactor       the crate's own server, examples/echo.rs
#   selreactor-step  selreactor with the floor's exact I/O per event (lab/src/bin/peer_echo.rs)
#   selreactor-async the crate's task-per-connection server, examples/async_echo.rs
#   polling mio tokio smol calloop   peers (lab/src/bin/peer_echo.rs)
#   python           the Python notes' `selectors` echo server (lab/scripts/selectors_echo.py)

# The lab's programs (peer_echo, echo_load) and the crate's examples (echo, echo_reuseport).
BIN_DIR="${CARGO_TARGET_DIR:-target}/release"
EXAMPLE_DIR="$BIN_DIR/examples"
ALL_SERVERS="epoll selreactor selreactor-step selreactor-async polling mio tokio smol calloop python"

# server_cmd NAME ADDR: prints the command line that runs server NAME on ADDR.
server_cmd() {
    case "$1" in
        selreactor) echo "$EXAMPLE_DIR/echo --quiet $2" ;;
        selreactor-step) echo "$BIN_DIR/peer_echo selreactor $2" ;;
        selreactor-async) echo "$EXAMPLE_DIR/async_echo $2" ;;
        epoll | polling | mio | tokio | smol | calloop) echo "$BIN_DIR/peer_echo $1 $2" ;;
        python) echo "$(python_bin) lab/scripts/selectors_echo.py $2" ;;
        *) echo "unknown server $1" >&2; return 1 ;;
    esac
}

# The interpreter itself, not a wrapper (pyenv's `python3` is a shell script that execs it):
# valgrind and perf must be attached to the process that serves.
python_bin() { python3 -c 'import sys; print(sys.executable)'; }

build_release() {
    cargo build --release --example echo --example echo_reuseport --example async_echo >&2
    cargo build --release -p selreactor-lab --bin peer_echo --bin echo_load >&2
}
