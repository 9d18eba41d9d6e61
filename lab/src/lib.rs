//! The benchmark lab: selreactor side by side with mio, tokio, calloop, raw `polling`, raw epoll
//! and Python's `selectors`. Nothing here is part of the published crate; see `lab/README.md`.

pub mod counting;
pub mod epoll;
pub mod peers;

/// The root package's bench helpers (selreactor, raw `polling`, raw epoll), shared as they are.
#[path = "../../benches/common/mod.rs"]
pub mod baseline;
