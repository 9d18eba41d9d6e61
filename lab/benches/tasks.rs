//! Task costs, against tokio's `LocalSet` (current-thread runtime) and async-executor's
//! `LocalExecutor` (smol's executor, driven by async-io's `block_on`) in the same groups:
//!
//! - `tasks/spawn_complete`: spawn N tasks that finish at once, run them all. Per task.
//! - `tasks/wake_same_thread`: N tasks parked on flags; the driver wakes all N from the loop's
//!   thread and yields until each has run again. Per wake (wake + poll).
//! - `tasks/wake_cross_thread`: one task hands its waker to a helper thread, which wakes it; the
//!   loop wakes from its wait and polls it. Per round trip (a send, a wake, a loop wake-up).
//! - `tasks/sleep_fire`: N tasks each sleep 1 ms from their first poll, on the runtime's own
//!   timer, and finish. Per timer; the 1 ms itself is in the figure (small against N = 100,000).
//!
//! N = 1,000 (and 100,000 for `sleep_fire`). Each driver runs inside the runtime's own
//! `block_on`, so the three do the same work in the same shape.
//!
//! Run: `cargo bench -p selreactor-lab --bench tasks` (about two minutes on two cores).

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::hint::black_box;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::task::{Poll, Waker};
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use futures_lite::future::yield_now;

/// The peers, as benchmark ids.
#[derive(Clone, Copy, PartialEq)]
enum Which {
    Selreactor,
    Tokio,
    AsyncExecutor,
}

const PEERS: [(Which, &str); 3] = [
    (Which::Selreactor, "selreactor"),
    (Which::Tokio, "tokio"),
    (Which::AsyncExecutor, "async-executor"),
];

/// One peer's runtime, made fresh (outside the measurement) for each iteration.
enum Peer {
    Selreactor(Box<selreactor::Selector>),
    Tokio(tokio::runtime::Runtime, tokio::task::LocalSet),
    AsyncExecutor(Rc<async_executor::LocalExecutor<'static>>),
}

thread_local! {
    /// The peer whose `block_on` is running: what `spawn_dyn` and `sleep_dyn` use.
    static CURRENT: Cell<Which> = const { Cell::new(Which::Selreactor) };
    static SMOL: RefCell<Option<Rc<async_executor::LocalExecutor<'static>>>> = const { RefCell::new(None) };
}

type Boxed = Pin<Box<dyn Future<Output = ()>>>;

impl Peer {
    fn new(which: Which) -> Peer {
        match which {
            Which::Selreactor => {
                Peer::Selreactor(Box::new(selreactor::Selector::new().expect("selector")))
            }
            Which::Tokio => Peer::Tokio(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime"),
                tokio::task::LocalSet::new(),
            ),
            Which::AsyncExecutor => {
                Peer::AsyncExecutor(Rc::new(async_executor::LocalExecutor::new()))
            }
        }
    }

    /// Drives `future` to completion with this peer's own `block_on`.
    fn block_on_dyn(&mut self, future: Boxed) {
        match self {
            Peer::Selreactor(sel) => {
                CURRENT.set(Which::Selreactor);
                sel.block_on(future).expect("block_on");
            }
            Peer::Tokio(runtime, local) => {
                CURRENT.set(Which::Tokio);
                local.block_on(runtime, future);
            }
            Peer::AsyncExecutor(executor) => {
                CURRENT.set(Which::AsyncExecutor);
                SMOL.set(Some(Rc::clone(executor)));
                async_io::block_on(executor.run(future));
                SMOL.set(None);
            }
        }
    }
}

/// Spawns a detached local task on the running peer.
fn spawn_dyn(future: Boxed) {
    match CURRENT.get() {
        Which::Selreactor => selreactor::task::spawn(future).detach(),
        Which::Tokio => drop(tokio::task::spawn_local(future)),
        Which::AsyncExecutor => SMOL.with_borrow(|executor| {
            executor.as_ref().expect("running").spawn(future).detach();
        }),
    }
}

/// Sleeps on the running peer's own timer.
async fn sleep_dyn(duration: Duration) {
    match CURRENT.get() {
        Which::Selreactor => selreactor::task::sleep(duration).await,
        Which::Tokio => tokio::time::sleep(duration).await,
        Which::AsyncExecutor => drop(async_io::Timer::after(duration).await),
    }
}

/// Benchmarks `body` once per peer, each iteration on a fresh runtime.
fn bench_each(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
    body: impl Fn(&mut Peer),
) {
    for (which, name) in PEERS {
        group.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter_batched_ref(|| Peer::new(which), &body, BatchSize::PerIteration)
        });
    }
}

fn spawn_complete(c: &mut Criterion) {
    const N: usize = 1_000;
    let mut group = c.benchmark_group("tasks/spawn_complete");
    group.throughput(Throughput::Elements(N as u64));
    bench_each(&mut group, N, |rt| {
        let done = Rc::new(Cell::new(0));
        let d = Rc::clone(&done);
        rt.block_on_dyn(Box::pin(async move {
            for _ in 0..N {
                let d = Rc::clone(&d);
                spawn_dyn(Box::pin(async move { d.set(black_box(d.get() + 1)) }));
            }
            while d.get() < N {
                yield_now().await;
            }
        }));
    });
    group.finish();
}

fn wake_same_thread(c: &mut Criterion) {
    const N: usize = 1_000;
    let mut group = c.benchmark_group("tasks/wake_same_thread");
    group.throughput(Throughput::Elements(N as u64));
    bench_each(&mut group, N, |rt| {
        let parked: Rc<RefCell<Vec<Option<Waker>>>> = Rc::new(RefCell::new(vec![None; N]));
        let flags: Rc<Vec<Cell<bool>>> = Rc::new((0..N).map(|_| Cell::new(false)).collect());
        let runs = Rc::new(Cell::new(0usize));
        let (p, f, r) = (Rc::clone(&parked), Rc::clone(&flags), Rc::clone(&runs));
        rt.block_on_dyn(Box::pin(async move {
            for i in 0..N {
                let (p, f, r) = (Rc::clone(&p), Rc::clone(&f), Rc::clone(&r));
                spawn_dyn(Box::pin(async move {
                    loop {
                        poll_fn(|cx| {
                            if f[i].replace(false) {
                                Poll::Ready(())
                            } else {
                                p.borrow_mut()[i] = Some(cx.waker().clone());
                                Poll::Pending
                            }
                        })
                        .await;
                        r.set(r.get() + 1);
                    }
                }));
            }
            // Let every task park, then measure rounds of waking all of them.
            while p.borrow().iter().any(Option::is_none) {
                yield_now().await;
            }
            for round in 1..=10 {
                let wakers: Vec<Waker> =
                    p.borrow_mut().iter_mut().filter_map(Option::take).collect();
                for (i, waker) in wakers.into_iter().enumerate() {
                    f[i].set(true);
                    waker.wake();
                }
                while r.get() < round * N {
                    yield_now().await;
                }
            }
        }));
        black_box(runs.get());
    });
    group.finish();
}

fn wake_cross_thread(c: &mut Criterion) {
    const ROUNDS: usize = 200;
    let mut group = c.benchmark_group("tasks/wake_cross_thread");
    group.throughput(Throughput::Elements(ROUNDS as u64));
    bench_each(&mut group, ROUNDS, |rt| {
        let (tx, rx) = mpsc::channel::<Waker>();
        let helper = thread::spawn(move || {
            for waker in rx {
                waker.wake();
            }
        });
        rt.block_on_dyn(Box::pin(async move {
            for _ in 0..ROUNDS {
                let mut sent = false;
                poll_fn(|cx| {
                    if sent {
                        return Poll::Ready(());
                    }
                    sent = true;
                    tx.send(cx.waker().clone()).expect("helper alive");
                    Poll::Pending
                })
                .await;
            }
        }));
        helper.join().expect("helper");
    });
    group.finish();
}

fn sleep_fire(c: &mut Criterion) {
    const N: usize = 100_000;
    let mut group = c.benchmark_group("tasks/sleep_fire");
    group.throughput(Throughput::Elements(N as u64));
    group.sample_size(10);
    bench_each(&mut group, N, |rt| {
        let done = Rc::new(Cell::new(0));
        let d = Rc::clone(&done);
        rt.block_on_dyn(Box::pin(async move {
            for _ in 0..N {
                let d = Rc::clone(&d);
                spawn_dyn(Box::pin(async move {
                    sleep_dyn(Duration::from_millis(1)).await;
                    d.set(d.get() + 1);
                }));
            }
            while d.get() < N {
                sleep_dyn(Duration::from_millis(1)).await;
            }
        }));
    });
    group.finish();
}

criterion_group!(
    benches,
    spawn_complete,
    wake_same_thread,
    wake_cross_thread,
    sleep_fire
);
criterion_main!(benches);
