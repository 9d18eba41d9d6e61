//! The root package's `dispatch` bench with mio and calloop in the same groups; see
//! `benches/dispatch.rs` at the root for what it measures.
//!
//! Run: `cargo bench -p selreactor-lab --bench dispatch`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use selreactor_lab::peers::{build_any, config, one_ready_among_idle, ready_sources, ALL_PEERS};

fn dispatch(c: &mut Criterion) {
    ready_sources(c, &ALL_PEERS, build_any);
    one_ready_among_idle(c, &ALL_PEERS, build_any);
}

criterion_group! {
    name = benches;
    config = config(Duration::from_secs(2));
    targets = dispatch
}
criterion_main!(benches);
