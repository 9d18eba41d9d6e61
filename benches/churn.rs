//! Registration churn: registering one source and unregistering it again (source kept open),
//! with 0, 1,000 and 10,000 other live registrations, against raw `polling` (add/delete) and raw
//! epoll in the same group.
//!
//! Each iteration is two `epoll_ctl` calls for every peer; what differs is the bookkeeping
//! around them (selreactor: a slab slot and a boxed source+callback).
//!
//! Run: `cargo bench --bench churn` (under a minute on two cores). With mio and calloop
//! added: `cargo bench -p selreactor-lab --bench churn`.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

fn churn(c: &mut Criterion) {
    common::register_unregister(c, &common::PEERS, common::build);
}

criterion_group! {
    name = benches;
    config = common::config(Duration::from_secs(1));
    targets = churn
}
criterion_main!(benches);
