//! Dispatch cost: what one event costs from the wait to the callback, against raw `polling` and
//! raw epoll with a hand-written key dispatch, in the same groups.
//!
//! - `dispatch/ready`: M always-readable eventfds, every one ready on every turn
//!   (M = 1, 16, 256, 1024). Throughput is per dispatched event.
//! - `dispatch/one_ready_among`: one ready source among 10 or 10,000 registered idle ones; the
//!   cost must not grow with the idle population.
//!
//! A turn is one zero-timeout wait plus the dispatch of what it found. Before each turn every
//! peer's ready sources get an eventfd write, outside the timed part.
//!
//! Run: `cargo bench --bench dispatch` (about two minutes on two cores). The same groups with
//! mio and calloop added: `cargo bench -p selreactor-lab --bench dispatch`.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

fn dispatch(c: &mut Criterion) {
    common::ready_sources(c, &common::PEERS, common::build);
    common::one_ready_among_idle(c, &common::PEERS, common::build);
}

criterion_group! {
    name = benches;
    config = common::config(Duration::from_secs(2));
    targets = dispatch
}
criterion_main!(benches);
