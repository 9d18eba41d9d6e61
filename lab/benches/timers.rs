//! Timer cost per operation, against calloop's `Timer` source and tokio's timer in the same
//! groups:
//!
//! - `timers/schedule_fire`: schedule N one-shot timers, all already due, then run the loop until
//!   every callback has run. Throughput is per timer (one schedule + one fire).
//! - `timers/schedule_cancel`: schedule N timers an hour away, then cancel every one. Throughput
//!   is per timer (one schedule + one cancel).
//!
//! N = 1,000, 100,000 and 1,000,000 (calloop: up to 100,000, see [`CALLOOP_MAX`]). Deadlines are spread (a fixed permutation) so the order a timer
//! structure keeps actually has work to do.
//!
//! What each peer does per timer, chosen as the closest equivalent of `call_at(deadline, f)`:
//! - selreactor: `call_at` with a closure holding an `Rc` counter; `cancel(key)`.
//! - calloop: `insert_source(Timer::from_deadline(d), callback)` returning `TimeoutAction::Drop`;
//!   `remove(token)`. Its timers are event sources, so that is its only way to have a callback
//!   at a deadline.
//! - tokio (current-thread runtime): firing is a spawned task `sleep_until(d).await; count()`,
//!   tokio's way to run code at a deadline (a task plays the part of the boxed callback);
//!   cancelling is a `Box::pin(sleep_until(d))` polled once (which enters it in the timer wheel)
//!   and then dropped, the bare timer without a task, which favours tokio.
//!
//! `SELREACTOR_TIMER_MEMORY=1 cargo bench -p selreactor-lab --bench timers` prints the heap bytes each peer keeps
//! per pending timer (a counting allocator, 100,000 timers) instead of benchmarking.
//!
//! Run: `cargo bench -p selreactor-lab --bench timers` (about three minutes on two cores).

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use calloop::timer::{TimeoutAction, Timer};
use calloop::{EventLoop, RegistrationToken};
use criterion::{criterion_group, BenchmarkId, Criterion, SamplingMode, Throughput};
use selreactor::{Selector, TimerKey};
use selreactor_lab::counting::Counting;

const PEERS: [&str; 3] = ["selreactor", "calloop", "tokio"];
const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
/// calloop's largest N: at 1,000,000 a single schedule+fire iteration had not finished its
/// warm-up after three minutes (its per-timer cost grows with N), so it is left out there.
const CALLOOP_MAX: usize = 100_000;

/// The deadlines of N timers: a fixed permutation of N distinct instants a microsecond apart,
/// starting at `base`.
fn deadlines(base: Instant, n: usize) -> Vec<Instant> {
    // 7919 is prime and coprime to every N used here, so `i * 7919 % n` is a permutation.
    (0..n)
        .map(|i| base + Duration::from_micros(((i * 7919) % n) as u64))
        .collect()
}

/// Deadlines that are all due by the time the loop runs.
fn past_deadlines(n: usize) -> Vec<Instant> {
    deadlines(Instant::now() - Duration::from_secs(2), n)
}

fn future_deadlines(n: usize) -> Vec<Instant> {
    deadlines(Instant::now() + Duration::from_secs(3600), n)
}

// --- selreactor ---

fn selreactor_fire(sel: &mut Selector, deadlines: &[Instant]) -> Duration {
    let fired = Rc::new(Cell::new(0usize));
    let start = Instant::now();
    for &deadline in deadlines {
        let fired = Rc::clone(&fired);
        sel.call_at(deadline, move |_| fired.set(fired.get() + 1));
    }
    while fired.get() < deadlines.len() {
        sel.run_once(Some(Duration::ZERO)).expect("run_once");
    }
    let elapsed = start.elapsed();
    assert_eq!(fired.get(), deadlines.len());
    elapsed
}

fn selreactor_cancel(
    sel: &mut Selector,
    deadlines: &[Instant],
    keys: &mut Vec<TimerKey>,
) -> Duration {
    let fired = Rc::new(Cell::new(0usize));
    keys.clear();
    let start = Instant::now();
    for &deadline in deadlines {
        let fired = Rc::clone(&fired);
        keys.push(sel.call_at(deadline, move |_| fired.set(fired.get() + 1)));
    }
    for key in keys.drain(..) {
        sel.cancel(key).expect("pending");
    }
    let elapsed = start.elapsed();
    assert_eq!(sel.timer_count(), 0);
    elapsed
}

// --- calloop ---

fn calloop_fire(event_loop: &mut EventLoop<'static, usize>, deadlines: &[Instant]) -> Duration {
    let handle = event_loop.handle();
    let mut fired = 0usize;
    let start = Instant::now();
    for &deadline in deadlines {
        handle
            .insert_source(Timer::from_deadline(deadline), |_, _, fired: &mut usize| {
                *fired += 1;
                TimeoutAction::Drop
            })
            .expect("insert timer");
    }
    while fired < deadlines.len() {
        event_loop
            .dispatch(Some(Duration::ZERO), &mut fired)
            .expect("dispatch");
    }
    let elapsed = start.elapsed();
    assert_eq!(fired, deadlines.len());
    elapsed
}

fn calloop_cancel(
    event_loop: &mut EventLoop<'static, usize>,
    deadlines: &[Instant],
    tokens: &mut Vec<RegistrationToken>,
) -> Duration {
    let handle = event_loop.handle();
    tokens.clear();
    let start = Instant::now();
    for &deadline in deadlines {
        let token = handle
            .insert_source(Timer::from_deadline(deadline), |_, _, fired: &mut usize| {
                *fired += 1;
                TimeoutAction::Drop
            })
            .expect("insert timer");
        tokens.push(token);
    }
    for token in tokens.drain(..) {
        handle.remove(token);
    }
    start.elapsed()
}

// --- tokio ---

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

fn tokio_fire(rt: &tokio::runtime::Runtime, deadlines: &[Instant]) -> Duration {
    let n = deadlines.len();
    let fired = Arc::new(AtomicUsize::new(0));
    let all_fired = Arc::new(tokio::sync::Notify::new());
    let start = Instant::now();
    rt.block_on(async {
        for &deadline in deadlines {
            let (fired, all_fired) = (Arc::clone(&fired), Arc::clone(&all_fired));
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline.into()).await;
                if fired.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    all_fired.notify_one();
                }
            });
        }
        all_fired.notified().await;
    });
    let elapsed = start.elapsed();
    assert_eq!(fired.load(Ordering::Relaxed), n);
    elapsed
}

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

type Sleep = Pin<Box<tokio::time::Sleep>>;

fn tokio_cancel(
    rt: &tokio::runtime::Runtime,
    deadlines: &[Instant],
    sleeps: &mut Vec<Sleep>,
) -> Duration {
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    let _runtime = rt.enter();
    sleeps.clear();
    let start = Instant::now();
    for &deadline in deadlines {
        let mut sleep = Box::pin(tokio::time::sleep_until(deadline.into()));
        // The first poll is what enters it in the timer wheel.
        assert!(sleep.as_mut().poll(&mut cx) == Poll::Pending);
        sleeps.push(sleep);
    }
    sleeps.clear(); // dropping a registered `Sleep` cancels it
    start.elapsed()
}

// --- the benchmarks ---

fn configure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
) {
    group.throughput(Throughput::Elements(n as u64));
    if n >= 100_000 {
        // One iteration takes a good fraction of a second: ten flat samples of one each.
        group.sampling_mode(SamplingMode::Flat);
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(3));
    } else {
        group.sampling_mode(SamplingMode::Auto);
        group.sample_size(30);
        group.warm_up_time(Duration::from_millis(300));
        group.measurement_time(Duration::from_secs(1));
    }
}

fn schedule_fire(c: &mut Criterion) {
    let mut group = c.benchmark_group("timers/schedule_fire");
    for n in SIZES {
        configure(&mut group, n);
        for peer in PEERS {
            if peer == "calloop" && n > CALLOOP_MAX {
                continue;
            }
            group.bench_with_input(BenchmarkId::new(peer, n), &n, |b, &n| match peer {
                "selreactor" => {
                    let mut sel = Selector::new().expect("selector");
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| selreactor_fire(&mut sel, &past_deadlines(n)))
                            .sum()
                    })
                }
                "calloop" => {
                    let mut event_loop = EventLoop::try_new().expect("calloop");
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| calloop_fire(&mut event_loop, &past_deadlines(n)))
                            .sum()
                    })
                }
                _ => {
                    let rt = tokio_runtime();
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| tokio_fire(&rt, &past_deadlines(n)))
                            .sum()
                    })
                }
            });
        }
    }
    group.finish();
}

fn schedule_cancel(c: &mut Criterion) {
    let mut group = c.benchmark_group("timers/schedule_cancel");
    for n in SIZES {
        configure(&mut group, n);
        let deadlines = future_deadlines(n);
        for peer in PEERS {
            if peer == "calloop" && n > CALLOOP_MAX {
                continue;
            }
            group.bench_with_input(BenchmarkId::new(peer, n), &n, |b, &n| match peer {
                "selreactor" => {
                    let mut sel = Selector::new().expect("selector");
                    let mut keys = Vec::with_capacity(n);
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| selreactor_cancel(&mut sel, &deadlines, &mut keys))
                            .sum()
                    })
                }
                "calloop" => {
                    let mut event_loop = EventLoop::try_new().expect("calloop");
                    let mut tokens = Vec::with_capacity(n);
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| calloop_cancel(&mut event_loop, &deadlines, &mut tokens))
                            .sum()
                    })
                }
                _ => {
                    let rt = tokio_runtime();
                    let mut sleeps = Vec::with_capacity(n);
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| tokio_cancel(&rt, &deadlines, &mut sleeps))
                            .sum()
                    })
                }
            });
        }
    }
    group.finish();
}

// --- memory per pending timer ---

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes still allocated after `schedule` ran, divided by `n` (the live structure is kept
/// until after the count by returning it).
fn bytes_per_timer<T>(n: usize, schedule: impl FnOnce() -> T) -> f64 {
    Counting::start();
    let kept = schedule();
    Counting::stop();
    let bytes = Counting::snapshot().bytes;
    drop(black_box(kept));
    bytes as f64 / n as f64
}

fn report_memory() {
    const N: usize = 100_000;
    let deadlines = future_deadlines(N);
    let counter = Rc::new(Cell::new(0usize));

    let mut sel = Selector::new().expect("selector");
    let selreactor = bytes_per_timer(N, || {
        for &deadline in &deadlines {
            let counter = Rc::clone(&counter);
            sel.call_at(deadline, move |_| counter.set(counter.get() + 1));
        }
    });
    drop(sel);

    let event_loop: EventLoop<'static, usize> = EventLoop::try_new().expect("calloop");
    let handle = event_loop.handle();
    let calloop = bytes_per_timer(N, || {
        for &deadline in &deadlines {
            handle
                .insert_source(Timer::from_deadline(deadline), |_, _, fired: &mut usize| {
                    *fired += 1;
                    TimeoutAction::Drop
                })
                .expect("insert timer");
        }
    });
    drop((handle, event_loop));

    let rt = tokio_runtime();
    let tokio_sleeps = {
        let waker = Waker::from(Arc::new(NoopWake));
        let mut cx = Context::from_waker(&waker);
        let _runtime = rt.enter();
        bytes_per_timer(N, || {
            let mut sleeps: Vec<Sleep> = Vec::with_capacity(N);
            for &deadline in &deadlines {
                let mut sleep = Box::pin(tokio::time::sleep_until(deadline.into()));
                let _ = sleep.as_mut().poll(&mut cx);
                sleeps.push(sleep);
            }
            sleeps
        })
    };
    let tokio_tasks = bytes_per_timer(N, || {
        rt.block_on(async {
            for &deadline in &deadlines {
                tokio::spawn(async move {
                    tokio::time::sleep_until(deadline.into()).await;
                });
            }
            // Let every task run once, so each has entered its timer in the wheel.
            tokio::time::sleep(Duration::from_millis(10)).await;
        });
    });
    drop(rt);

    println!("live heap bytes per pending timer ({N} timers, counting allocator):");
    println!("  selreactor call_at (closure holding an Rc): {selreactor:.1}");
    println!("  calloop Timer source:                      {calloop:.1}");
    println!(
        "  tokio Box::pin(sleep_until), polled once:   {tokio_sleeps:.1} (incl. the Vec of them)"
    );
    println!("  tokio spawned task awaiting sleep_until:    {tokio_tasks:.1}");
}

criterion_group!(benches, schedule_fire, schedule_cancel);

fn main() {
    if std::env::var_os("SELREACTOR_TIMER_MEMORY").is_some_and(|v| v == "1") {
        report_memory();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
