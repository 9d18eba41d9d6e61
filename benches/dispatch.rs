//! Dispatch cost: what one event costs from the wait to the callback, against raw `polling`,
//! raw epoll, mio and calloop in the same groups.
//!
//! - `dispatch/ready`: M always-readable eventfds, every one ready on every turn
//!   (M = 1, 16, 256, 1024). Throughput is per dispatched event.
//! - `dispatch/one_ready_among`: one ready source among 10 or 10,000 registered idle ones; the
//!   cost must not grow with the idle population.
//!
//! A turn is one zero-timeout wait plus the dispatch of what it found. Before each turn every
//! peer's ready sources get an eventfd write (mio is edge-triggered and needs a
//! new edge, as new data would give it); the writes are outside the timed part.
//!
//! Run: `cargo bench --bench dispatch` (about three minutes on two cores).

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::{build, check_turn, sources, time_turns, PEERS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn ready_sources(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch/ready");
    for ready in [1, 16, 256, 1024] {
        group.throughput(Throughput::Elements(ready as u64));
        // The untimed pokes dominate the wall time of large turns: measure those for less.
        let measure = if ready >= 256 { 1 } else { 2 };
        group.measurement_time(Duration::from_secs(measure));
        for peer in PEERS {
            let mut reactor = build(peer, sources(ready, 0).expect("eventfds")).expect(peer);
            check_turn(peer, reactor.as_mut(), ready);
            group.bench_with_input(BenchmarkId::new(peer, ready), &ready, |b, &ready| {
                b.iter_custom(|iters| time_turns(reactor.as_mut(), ready, iters))
            });
        }
    }
    group.finish();
}

fn one_ready_among_idle(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch/one_ready_among");
    group.throughput(Throughput::Elements(1));
    for registered in [10, 10_000] {
        for peer in PEERS {
            let fds = sources(1, registered - 1).expect("eventfds");
            let mut reactor = build(peer, fds).expect(peer);
            check_turn(peer, reactor.as_mut(), 1);
            group.bench_with_input(BenchmarkId::new(peer, registered), &registered, |b, _| {
                b.iter_custom(|iters| time_turns(reactor.as_mut(), 1, iters))
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
        .measurement_time(Duration::from_secs(2));
    targets = ready_sources, one_ready_among_idle
}
criterion_main!(benches);
