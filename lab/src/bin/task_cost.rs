//! A task workload for counting instructions (callgrind), where the machine is too noisy for
//! timings: the same-thread wakes of `benches/tasks.rs`, as a process that does a given number
//! of rounds, so that two runs differing only in rounds give the cost of one wake.
//!
//! ```text
//! cargo run --release -p selreactor-lab --bin task_cost -- <selreactor|tokio|async-executor> <wake|yield|cross> ROUNDS
//! ```
//!
//! - `wake`: 1,000 tasks park on flags; each round, the `block_on` future wakes all of them from
//!   the loop's thread and yields until each has run again. Per round: 1,000 wakes and polls.
//! - `yield`: 1,000 tasks each yield (wake themselves) once per round. Per round: 1,000
//!   self-wakes and polls.
//! - `cross`: a task hands its waker to a helper thread, which wakes it; 1,000 times per round.
//!   Per round: 1,000 cross-thread wakes, each with the loop's wake-up and a poll.
//!
//! `lab/scripts/task-cost.sh` runs it under callgrind and prints instructions per wake.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures_lite::future::yield_now;

const TASKS: usize = 1_000;

type Boxed = Pin<Box<dyn Future<Output = ()>>>;

fn main() {
    let usage = "usage: task_cost <selreactor|tokio|async-executor> <wake|yield|cross> ROUNDS";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [peer, workload, rounds] = &args[..] else {
        panic!("{usage}");
    };
    let rounds: usize = rounds.parse().expect(usage);
    let driver = match workload.as_str() {
        "wake" => wake(peer.clone(), rounds),
        "yield" => yields(peer.clone(), rounds),
        "cross" => cross(peer.clone(), rounds),
        _ => panic!("{usage}"),
    };
    match peer.as_str() {
        "selreactor" => {
            let mut sel = selreactor::Selector::new().expect("selector");
            sel.block_on(driver).expect("block_on");
        }
        "tokio" => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            tokio::task::LocalSet::new().block_on(&runtime, driver);
        }
        "async-executor" => {
            let executor = Rc::new(async_executor::LocalExecutor::new());
            SMOL.set(Some(Rc::clone(&executor)));
            async_io::block_on(executor.run(driver));
        }
        _ => panic!("{usage}"),
    }
}

thread_local! {
    static SMOL: RefCell<Option<Rc<async_executor::LocalExecutor<'static>>>> = const { RefCell::new(None) };
}

fn spawn(peer: &str, future: Boxed) {
    match peer {
        "selreactor" => selreactor::task::spawn(future).detach(),
        "tokio" => drop(tokio::task::spawn_local(future)),
        _ => SMOL.with_borrow(|executor| {
            executor.as_ref().expect("running").spawn(future).detach();
        }),
    }
}

/// The driver of `wake`: park every task, then wake them all `rounds` times.
fn wake(peer: String, rounds: usize) -> Boxed {
    Box::pin(async move {
        let parked: Rc<RefCell<Vec<Option<Waker>>>> = Rc::new(RefCell::new(vec![None; TASKS]));
        let flags: Rc<Vec<Cell<bool>>> = Rc::new((0..TASKS).map(|_| Cell::new(false)).collect());
        let runs = Rc::new(Cell::new(0usize));
        for i in 0..TASKS {
            let (p, f, r) = (Rc::clone(&parked), Rc::clone(&flags), Rc::clone(&runs));
            spawn(
                &peer,
                Box::pin(async move {
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
                }),
            );
        }
        while parked.borrow().iter().any(Option::is_none) {
            yield_now().await;
        }
        for round in 1..=rounds {
            let wakers: Vec<Waker> = parked
                .borrow_mut()
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            for (i, waker) in wakers.into_iter().enumerate() {
                flags[i].set(true);
                waker.wake();
            }
            while runs.get() < round * TASKS {
                yield_now().await;
            }
        }
    })
}

/// The driver of `yield`: every task yields `rounds` times.
fn yields(peer: String, rounds: usize) -> Boxed {
    Box::pin(async move {
        let done = Rc::new(Cell::new(0usize));
        for _ in 0..TASKS {
            let d = Rc::clone(&done);
            spawn(
                &peer,
                Box::pin(async move {
                    for _ in 0..rounds {
                        yield_now().await;
                    }
                    d.set(d.get() + 1);
                }),
            );
        }
        while done.get() < TASKS {
            yield_now().await;
        }
    })
}

/// The driver of `cross`: a task that waits `rounds` × 1,000 times for a helper thread to
/// wake it; the driver waits for that task.
fn cross(peer: String, rounds: usize) -> Boxed {
    Box::pin(async move {
        let finished: Rc<RefCell<(bool, Option<Waker>)>> = Rc::default();
        let f = Rc::clone(&finished);
        spawn(
            &peer,
            Box::pin(async move {
                let (tx, rx) = std::sync::mpsc::channel::<Waker>();
                let helper = std::thread::spawn(move || rx.into_iter().for_each(Waker::wake));
                for _ in 0..rounds * TASKS {
                    let mut sent = false;
                    poll_fn(|cx| {
                        if sent {
                            return Poll::Ready(());
                        }
                        sent = true;
                        tx.send(cx.waker().clone()).expect("the helper is alive");
                        Poll::Pending
                    })
                    .await;
                }
                drop(tx);
                helper.join().expect("the helper panicked");
                let mut finished = f.borrow_mut();
                finished.0 = true;
                if let Some(waker) = finished.1.take() {
                    waker.wake();
                }
            }),
        );
        poll_fn(|cx| {
            let mut finished = finished.borrow_mut();
            if finished.0 {
                return Poll::Ready(());
            }
            finished.1 = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    })
}
