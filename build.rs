//! Sets `cfg(direct_epoll)` where the selector waits with its own `epoll_wait` (see
//! `src/poller.rs`): Linux and Android, unless built with `--cfg selreactor_portable_wait`.
//! That flag selects the path every other OS takes (`polling`'s own `wait`), so that it is
//! compiled and tested on Linux too:
//!
//! ```text
//! RUSTFLAGS="--cfg selreactor_portable_wait" cargo test
//! ```

fn main() {
    println!("cargo::rustc-check-cfg=cfg(direct_epoll)");
    println!("cargo::rustc-check-cfg=cfg(selreactor_portable_wait)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let portable = std::env::var_os("CARGO_CFG_SELREACTOR_PORTABLE_WAIT").is_some();
    if (os == "linux" || os == "android") && !portable {
        println!("cargo::rustc-cfg=direct_epoll");
    }
}
