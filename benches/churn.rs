//! Registration churn: registering one source and unregistering it again (source kept open),
//! with 0, 1,000 and 10,000 other live registrations, against raw `polling` (add/delete), raw
//! epoll, mio (register/deregister) and calloop (insert_source/remove) in the same group.
//!
//! Each iteration is two `epoll_ctl` calls for every peer; what differs is the bookkeeping
//! around them (selreactor: a slab slot and a boxed source+callback; calloop: its dispatcher).
//!
//! Run: `cargo bench --bench churn` (about a minute on two cores).

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::{build, sources, PEERS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn register_unregister(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn/register_unregister");
    for live in [0, 1_000, 10_000] {
        for peer in PEERS {
            let mut reactor = build(peer, sources(0, live).expect("eventfds")).expect(peer);
            // A broken churn (a registration left behind) fails here, not in the numbers.
            reactor.churn();
            reactor.churn();
            group.bench_with_input(BenchmarkId::new(peer, live), &live, |b, _| {
                b.iter(|| reactor.churn())
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = register_unregister
}
criterion_main!(benches);
