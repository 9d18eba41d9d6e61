//! The root package's `churn` bench with mio and calloop in the same groups; see
//! `benches/churn.rs` at the root for what it measures.
//!
//! Run: `cargo bench -p selreactor-lab --bench churn`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use selreactor_lab::peers::{build_any, config, register_unregister, ALL_PEERS};

fn churn(c: &mut Criterion) {
    register_unregister(c, &ALL_PEERS, build_any);
}

criterion_group! {
    name = benches;
    config = config(Duration::from_secs(1));
    targets = churn
}
criterion_main!(benches);
