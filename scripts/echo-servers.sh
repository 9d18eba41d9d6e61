# Sourced by scripts/echo-bench.sh and scripts/cost-per-rtt.sh: the servers under test and how
# to start them. Each server takes its listening address as its last argument.
#
#   epoll            raw level-triggered epoll floor (examples/peer_echo.rs)
#   selreactor       the crate's own server, examples/echo.rs
#   selreactor-step  selreactor with the floor's exact I/O per event (examples/peer_echo.rs)
#   polling mio tokio calloop   peers (examples/peer_echo.rs)
#   python           the seed's Python `selectors` echo server (scripts/selectors_echo.py)

BIN_DIR="${CARGO_TARGET_DIR:-target}/release/examples"
ALL_SERVERS="epoll selreactor selreactor-step polling mio tokio calloop python"

# server_cmd NAME ADDR: prints the command line that runs server NAME on ADDR.
server_cmd() {
    case "$1" in
        selreactor) echo "$BIN_DIR/echo --quiet $2" ;;
        selreactor-step) echo "$BIN_DIR/peer_echo selreactor $2" ;;
        epoll | polling | mio | tokio | calloop) echo "$BIN_DIR/peer_echo $1 $2" ;;
        python) echo "$(python_bin) scripts/selectors_echo.py $2" ;;
        *) echo "unknown server $1" >&2; return 1 ;;
    esac
}

# The interpreter itself, not a wrapper (pyenv's `python3` is a shell script that execs it):
# valgrind and perf must be attached to the process that serves.
python_bin() { python3 -c 'import sys; print(sys.executable)'; }

build_release() {
    cargo build --release --example echo --example peer_echo --example echo_load \
        --example echo_reuseport >&2
}
