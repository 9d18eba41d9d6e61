#!/usr/bin/env bash
# Checks that the library builds with the `rust-version` in Cargo.toml, over both waits (the
# direct epoll one and the portable one, see build.rs). Only the library: the dev-dependencies
# (criterion, tokio, proptest...) need a newer toolchain than the crate itself.
#
# usage: scripts/msrv.sh        (installs the toolchain with rustup if it is missing: network)
set -euo pipefail
cd "$(dirname "$0")/.."
msrv=$(awk -F'"' '/^rust-version/ { print $2; exit }' Cargo.toml)
rustup toolchain list | grep -q "^$msrv" || rustup toolchain install "$msrv" --profile minimal
target=${CARGO_TARGET_DIR:-target}/msrv
echo "== rustc $msrv, direct epoll wait"
CARGO_TARGET_DIR=$target cargo "+$msrv" check --lib
echo "== rustc $msrv, portable wait"
RUSTFLAGS="--cfg selreactor_portable_wait" CARGO_TARGET_DIR=$target-portable \
    cargo "+$msrv" check --lib
echo "the library builds with rustc $msrv"
