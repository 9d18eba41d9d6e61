//! Tasks on the selector: spawning from every place, lifetime, wakes from this and other
//! threads, fairness, panics, `block_on` and its refusal to nest.

mod util;

use std::cell::{Cell, RefCell};
use std::future::{pending, poll_fn};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use futures_lite::future::yield_now;
use selreactor::task::{self, Task};
use selreactor::{Interest, Selector};
use util::*;

#[test]
fn tasks_spawn_from_the_owner_a_callback_and_a_task_and_run_returns_when_all_are_done(
) -> io::Result<()> {
    let mut sel = Selector::new()?;
    let log = log::<&'static str>();

    let l = Rc::clone(&log);
    sel.spawn(async move {
        l.borrow_mut().push("owner");
        let l2 = Rc::clone(&l);
        task::spawn(async move { l2.borrow_mut().push("from a task") }).await;
    })
    .detach();
    let l = Rc::clone(&log);
    sel.call_soon(move |reg| {
        reg.spawn(async move { l.borrow_mut().push("from a callback") })
            .detach();
    });
    let (a, _b) = readable_pair()?;
    let l = Rc::clone(&log);
    sel.register(a, Interest::READ, move |reg, _, event| {
        let l = Rc::clone(&l);
        reg.spawn(async move { l.borrow_mut().push("from an I/O callback") })
            .detach();
        reg.remove(event.key())
    })?;
    sel.run()?;
    let mut seen = take(&log);
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            "from a callback",
            "from a task",
            "from an I/O callback",
            "owner"
        ]
    );
    assert!(sel.is_empty());
    Ok(())
}

#[test]
fn run_keeps_running_while_a_task_is_pending() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let start = Instant::now();
    let done = Rc::new(Cell::new(false));
    let d = Rc::clone(&done);
    sel.spawn(async move {
        task::sleep(Duration::from_millis(30)).await;
        d.set(true);
    })
    .detach();
    sel.run()?;
    assert!(done.get());
    assert!(start.elapsed() >= Duration::from_millis(30));
    Ok(())
}

#[test]
fn the_handle_is_a_future_of_the_output_and_dropping_it_cancels() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let dropped = DropCounter::new();
    let guard = dropped.guard();
    let cancelled = sel.spawn(async move {
        let _guard = guard;
        pending::<()>().await;
    });
    let answer = sel.spawn(async { 42 });
    assert_eq!(sel.block_on(answer)?, 42);
    assert_eq!(
        dropped.count(),
        0,
        "a pending task lives while its handle does"
    );
    drop(cancelled);
    sel.run()?; // the cancelled future is dropped on the next iteration; then nothing is left
    assert_eq!(dropped.count(), 1);
    Ok(())
}

#[test]
fn a_detached_task_runs_to_completion() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let finished = Rc::new(Cell::new(false));
    let f = Rc::clone(&finished);
    sel.spawn(async move {
        task::sleep(Duration::from_millis(5)).await;
        f.set(true);
    })
    .detach();
    sel.run()?;
    assert!(finished.get());
    Ok(())
}

#[test]
fn cancel_waits_for_the_future_to_be_dropped() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let dropped = DropCounter::new();
    let guard = dropped.guard();
    let d = dropped.clone();
    let output = sel.block_on(async move {
        let t = task::spawn(async move {
            let _guard = guard;
            pending::<u8>().await
        });
        yield_now().await; // let it start
        let output = t.cancel().await;
        (output, d.count())
    })?;
    assert_eq!(output, (None, 1));
    Ok(())
}

/// B1: a task's waker handed to another thread, which wakes it at random moments relative to
/// the loop going to sleep. A lost wake-up shows as a `run_once` that sleeps its whole 2 s.
#[test]
fn a_wake_from_another_thread_racing_the_loop_to_sleep_is_never_lost() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let rounds = scaled(2_000, 100);
    let (tx, rx) = std::sync::mpsc::channel::<Gate>();
    let waker_thread = thread::spawn(move || {
        let mut spin = 0u64;
        for (i, gate) in rx.into_iter().enumerate() {
            // Vary the moment: at once, after a spin, after a short sleep.
            match i % 3 {
                0 => {}
                1 => (0..(i % 500) as u64).for_each(|n| spin = spin.wrapping_add(n)),
                _ => thread::sleep(Duration::from_micros((i % 200) as u64)),
            }
            gate.open();
        }
        spin
    });
    for round in 0..rounds {
        let gate = Gate::new();
        let waiter = gate.clone();
        let t = sel.spawn(async move { waiter.wait().await });
        let finished = Rc::new(Cell::new(false));
        let f = Rc::clone(&finished);
        sel.spawn(async move {
            t.await;
            f.set(true);
        })
        .detach();
        sel.run_once(Some(Duration::ZERO))?; // both tasks start and wait
        tx.send(gate).expect("the waker thread is alive");
        while !finished.get() {
            let start = Instant::now();
            sel.run_once(Some(Duration::from_secs(2)))?;
            assert!(
                finished.get() || start.elapsed() < Duration::from_secs(2),
                "round {round}: the cross-thread wake was lost"
            );
        }
    }
    drop(tx);
    waker_thread.join().expect("the waker thread panicked");
    Ok(())
}

/// B1: wakes that land while the task is being polled (before it returns `Pending`).
#[test]
fn a_wake_during_the_poll_itself_is_kept() -> io::Result<()> {
    let mut sel = Selector::new()?;
    for _ in 0..scaled(500, 50) {
        let polls = Rc::new(Cell::new(0));
        let p = Rc::clone(&polls);
        let t = sel.spawn(async move {
            poll_fn(|cx| {
                p.set(p.get() + 1);
                if p.get() == 2 {
                    return Poll::Ready(7);
                }
                let waker = cx.waker().clone();
                thread::spawn(move || waker.wake())
                    .join()
                    .expect("the waking thread panicked");
                Poll::Pending
            })
            .await
        });
        let value = sel.block_on(t)?;
        assert_eq!((value, polls.get()), (7, 2));
    }
    Ok(())
}

/// B2: a task that keeps waking itself is polled once per iteration, and I/O and timers
/// beside it still make progress; a thousand wakes per poll queue it once.
#[test]
fn a_self_waking_task_is_polled_once_per_iteration_and_starves_nothing() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let polls = Rc::new(Cell::new(0u32));
    let p = Rc::clone(&polls);
    let spinner = sel.spawn(poll_fn(move |cx| {
        p.set(p.get() + 1);
        for _ in 0..1_000 {
            cx.waker().wake_by_ref();
        }
        Poll::<()>::Pending
    }));
    let slept = Rc::new(Cell::new(false));
    let s = Rc::clone(&slept);
    sel.spawn(async move {
        task::sleep(Duration::from_millis(20)).await;
        s.set(true);
    })
    .detach();
    let (a, mut b) = pair()?;
    let echoed = Rc::new(Cell::new(false));
    let e = Rc::clone(&echoed);
    sel.register(a, Interest::READ, move |reg, _, event| {
        e.set(true);
        reg.remove(event.key())
    })?;
    std::io::Write::write_all(&mut b, b"x")?;

    let start = Instant::now();
    let mut iterations = 0u32;
    while !(slept.get() && echoed.get()) {
        let before = polls.get();
        sel.run_once(None)?;
        iterations += 1;
        assert!(polls.get() - before <= 1, "polled twice in one iteration");
        assert!(start.elapsed() < Duration::from_secs(5), "starved");
    }
    assert!(polls.get() >= iterations - 1);
    drop(spinner);
    sel.run()?;
    Ok(())
}

/// B11: a panicking task unwinds out of `run` like a panicking callback; the other tasks and
/// the selector go on, and awaiting the panicked task panics with a clear message.
#[test]
fn a_panicking_task_unwinds_out_of_run_and_leaves_the_rest_running() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let polls = Rc::new(Cell::new(0));
    let p = Rc::clone(&polls);
    let doomed: Task<()> = sel.spawn(async move {
        loop {
            p.set(p.get() + 1);
            if p.get() == 3 {
                panic!("third poll");
            }
            yield_now().await;
        }
    });
    let survivor_done = Rc::new(Cell::new(false));
    let s = Rc::clone(&survivor_done);
    sel.spawn(async move {
        task::sleep(Duration::from_millis(20)).await;
        s.set(true);
    })
    .detach();
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| sel.run()));
    let message = outcome.expect_err("the panic unwound out of run");
    assert_eq!(message.downcast_ref::<&str>(), Some(&"third poll"));
    assert!(doomed.is_finished());

    sel.run()?; // the survivor still completes
    assert!(survivor_done.get());

    let awaited = panic::catch_unwind(AssertUnwindSafe(|| sel.block_on(doomed)));
    let message = awaited.expect_err("awaiting a panicked task panics");
    let text = message.downcast_ref::<&str>().copied().unwrap_or_default();
    assert!(text.contains("panicked"), "{text}");
    // And the selector is still usable.
    assert_eq!(sel.block_on(async { 5 })?, 5);
    Ok(())
}

/// B10: `block_on` inside a callback, a task, or a `Drop` run by the loop is refused.
#[test]
fn block_on_nested_in_a_callback_or_task_is_refused_and_the_loop_goes_on() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let results = Rc::new(RefCell::new(Vec::new()));
    let r = Rc::clone(&results);
    sel.call_soon(move |_| {
        let nested = task::block_on(async { 1 });
        r.borrow_mut().push(nested.map_err(|e| e.kind()));
    });
    let r = Rc::clone(&results);
    sel.spawn(async move {
        let mut inner = Selector::new().expect("a second selector");
        let nested = inner.block_on(async { 2 });
        r.borrow_mut().push(nested.map_err(|e| e.kind()));
    })
    .detach();
    struct BlockOnInDrop(Rc<RefCell<Vec<Result<i32, io::ErrorKind>>>>);
    impl Drop for BlockOnInDrop {
        fn drop(&mut self) {
            let nested = task::block_on(async { 3 });
            self.0.borrow_mut().push(nested.map_err(|e| e.kind()));
        }
    }
    let in_drop = BlockOnInDrop(Rc::clone(&results));
    sel.call_later(Duration::from_millis(1), move |_| drop(in_drop));
    sel.run()?;
    assert_eq!(
        *results.borrow(),
        [Err(io::ErrorKind::ResourceBusy); 3],
        "every nested block_on is refused"
    );
    // Outside the loop it works again, on this selector and a fresh one.
    assert_eq!(sel.block_on(async { 4 })?, 4);
    assert_eq!(task::block_on(async { 5 })?, 5);
    Ok(())
}

/// B10: a future woken from another thread after 200 ms completes `block_on` promptly.
#[test]
fn block_on_is_woken_by_another_thread() -> io::Result<()> {
    let gate = Gate::new();
    let opener = gate.clone();
    let start = Instant::now();
    let helper = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        opener.open();
    });
    task::block_on(gate.wait())?;
    let elapsed = start.elapsed();
    helper.join().expect("the helper panicked");
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    Ok(())
}

/// B3/B16: dropping the selector drops every task's future on its thread, even two tasks that
/// await each other (a cycle through their handles).
#[test]
fn dropping_the_selector_drops_every_future_on_the_loop_thread() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let drops = Rc::new(RefCell::new(Vec::new()));
    struct Noted(Rc<RefCell<Vec<thread::ThreadId>>>);
    impl Drop for Noted {
        fn drop(&mut self) {
            self.0.borrow_mut().push(thread::current().id());
        }
    }
    let slot_a: Rc<RefCell<Option<Task<()>>>> = Rc::default();
    let slot_b: Rc<RefCell<Option<Task<()>>>> = Rc::default();
    let (na, nb) = (Noted(Rc::clone(&drops)), Noted(Rc::clone(&drops)));
    let (sa, sb) = (Rc::clone(&slot_b), Rc::clone(&slot_a));
    let a = sel.spawn(async move {
        let _noted = na;
        yield_now().await;
        let other = sa.borrow_mut().take();
        if let Some(b) = other {
            b.await;
        }
    });
    let b = sel.spawn(async move {
        let _noted = nb;
        yield_now().await;
        let other = sb.borrow_mut().take();
        if let Some(a) = other {
            a.await;
        }
    });
    *slot_a.borrow_mut() = Some(a);
    *slot_b.borrow_mut() = Some(b);
    // A third, detached, waiting on a gate another thread holds.
    let gate = Gate::new();
    let waiter = gate.clone();
    let nc = Noted(Rc::clone(&drops));
    sel.spawn(async move {
        let _noted = nc;
        waiter.wait().await;
    })
    .detach();
    for _ in 0..4 {
        sel.run_once(Some(Duration::ZERO))?;
    }
    assert!(drops.borrow().is_empty(), "all three are still waiting");
    drop(sel);
    assert_eq!(*drops.borrow(), [thread::current().id(); 3]);
    // A late wake from another thread is a no-op.
    thread::spawn(move || gate.open())
        .join()
        .expect("the late waker panicked");
    Ok(())
}

/// B4: a task's handle dropped on another thread cancels it, and its `!Send` future is still
/// dropped on the loop's thread.
#[test]
fn a_handle_dropped_on_another_thread_cancels_on_the_loop_thread() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let dropped_on = Rc::new(Cell::new(None));
    struct Noted(Rc<Cell<Option<thread::ThreadId>>>);
    impl Drop for Noted {
        fn drop(&mut self) {
            self.0.set(Some(thread::current().id()));
        }
    }
    let noted = Noted(Rc::clone(&dropped_on));
    let t = sel.spawn(async move {
        let _noted = noted;
        pending::<()>().await
    });
    sel.run_once(Some(Duration::ZERO))?;
    let handle = sel.handle();
    let t = Arc::new(Mutex::new(Some(t)));
    // `Task<()>` is `Send`: the output is; the future never leaves the loop.
    thread::spawn(move || {
        drop(t.lock().unwrap().take());
        drop(handle);
    })
    .join()
    .expect("the dropping thread panicked");
    let start = Instant::now();
    while dropped_on.get().is_none() {
        sel.run_once(Some(Duration::from_secs(2)))?;
        assert!(start.elapsed() < Duration::from_secs(5), "never dropped");
    }
    assert_eq!(dropped_on.get(), Some(thread::current().id()));
    Ok(())
}

/// `run` returns exactly when the last task finishes, not before.
#[test]
fn run_returns_when_the_last_task_finishes() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let gate = Gate::new();
    let waiter = gate.clone();
    sel.spawn(async move { waiter.wait().await }).detach();
    let opener = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        gate.open();
    });
    let start = Instant::now();
    sel.run()?;
    assert!(start.elapsed() >= Duration::from_millis(50));
    opener.join().expect("the opener panicked");
    Ok(())
}

/// One loop, two styles: a task registers a callback source through `with_registry`; the
/// callback spawns a task of its own; the first task sees that task's result.
#[test]
fn a_task_registers_a_callback_source_whose_callback_spawns_a_task() -> io::Result<()> {
    let got = task::block_on(async {
        let (ours, mut theirs) = pair()?;
        let got = Rc::new(Cell::new(None));
        let g = Rc::clone(&got);
        task::with_registry(|reg| {
            reg.register(ours, Interest::READ, move |reg, mut source, event| {
                let mut byte = [0; 1];
                std::io::Read::read_exact(&mut source, &mut byte)?;
                let g = Rc::clone(&g);
                reg.spawn(async move { g.set(Some(byte[0])) }).detach();
                reg.remove(event.key())
            })
        })?;
        std::io::Write::write_all(&mut theirs, b"z")?;
        let start = Instant::now();
        while got.get().is_none() {
            assert!(start.elapsed() < Duration::from_secs(5), "never delivered");
            yield_now().await;
        }
        io::Result::Ok(got.get())
    })??;
    assert_eq!(got, Some(b'z'));
    Ok(())
}

/// Wakers of parked tasks, by task number, filled in as each task parks.
type Parked = Rc<RefCell<Vec<Option<Waker>>>>;

/// Spawns `n` detached tasks on `sel` that each, forever, park (leaving their waker in
/// `parked`) and, once woken, log their number.
fn spawn_parked(sel: &mut Selector, n: usize, ran: &Log<usize>) -> Parked {
    let parked: Parked = Rc::new(RefCell::new(vec![None; n]));
    for id in 0..n {
        let (p, r) = (Rc::clone(&parked), Rc::clone(ran));
        sel.spawn(async move {
            loop {
                let mut waiting = false;
                poll_fn(|cx| {
                    if waiting {
                        return Poll::Ready(());
                    }
                    p.borrow_mut()[id] = Some(cx.waker().clone());
                    waiting = true;
                    Poll::Pending
                })
                .await;
                r.borrow_mut().push(id);
            }
        })
        .detach();
    }
    parked
}

fn waker_of(parked: &Parked, id: usize) -> Waker {
    parked.borrow_mut()[id].take().expect("the task is parked")
}

/// Wakes from the loop's thread and from other threads run in one FIFO: in the order they
/// happened, all in the next iteration.
#[test]
fn tasks_woken_from_this_and_other_threads_run_in_the_order_woken() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let ran = log();
    let parked = spawn_parked(&mut sel, 6, &ran);
    sel.run_once(Some(Duration::ZERO))?; // every task parks
    assert!(take(&ran).is_empty());

    let order = [3, 0, 5, 1, 4, 2];
    let from_another_thread = [5, 4];
    for id in order {
        let waker = waker_of(&parked, id);
        if from_another_thread.contains(&id) {
            // Joined before the next wake: this wake happens before it.
            thread::spawn(move || waker.wake())
                .join()
                .expect("the waking thread panicked");
        } else {
            waker.wake();
        }
    }
    sel.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(take(&ran), order);
    Ok(())
}

/// Tasks woken by a running task wait for the next iteration, and then run in the order woken.
#[test]
fn tasks_woken_by_a_running_task_run_in_the_next_iteration_in_order() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let ran = log();
    let parked = spawn_parked(&mut sel, 4, &ran);
    let p = Rc::clone(&parked);
    let waker_task = sel.spawn(async move {
        yield_now().await; // the others park first
        for id in [2, 0, 3, 1] {
            waker_of(&p, id).wake();
        }
    });
    sel.run_once(Some(Duration::ZERO))?; // every task parks; the waker yields
    sel.run_once(Some(Duration::ZERO))?; // the waker wakes them
    assert!(waker_task.is_finished());
    assert!(take(&ran).is_empty(), "woken during the step, run in it");
    sel.run_once(Some(Duration::ZERO))?;
    assert_eq!(take(&ran), [2, 0, 3, 1]);
    Ok(())
}

/// Two selectors on one thread: a task of one wakes a task of the other, which runs on its own
/// selector only, and that selector's next wait does not block.
#[test]
fn a_wake_across_two_selectors_on_one_thread_reaches_the_right_one() -> io::Result<()> {
    let (mut first, mut second) = (Selector::new()?, Selector::new()?);
    let ran = log();
    let parked = spawn_parked(&mut second, 1, &ran);
    second.run_once(Some(Duration::ZERO))?; // it parks
    let waker = waker_of(&parked, 0);
    first.spawn(async move { waker.wake() }).detach();
    first.run_once(Some(Duration::ZERO))?;
    assert!(take(&ran).is_empty(), "run by the wrong selector");
    let start = Instant::now();
    second.run_once(Some(Duration::from_secs(30)))?;
    assert_eq!(take(&ran), [0]);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the queued task did not stop the wait"
    );
    Ok(())
}

/// Wakes from the loop's thread and from helper threads at once, round after round: every
/// woken task runs, and a loop blocked in its wait is always woken by the helpers' wakes.
#[test]
fn wakes_from_this_and_other_threads_at_once_are_never_lost() -> io::Result<()> {
    const TASKS: usize = 32;
    const HELPERS: usize = 2;
    let mut sel = Selector::new()?;
    let ran = log();
    let parked = spawn_parked(&mut sel, TASKS, &ran);
    sel.run_once(Some(Duration::ZERO))?;
    let (senders, helpers): (Vec<_>, Vec<_>) = (0..HELPERS)
        .map(|_| {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<Waker>>();
            let helper = thread::spawn(move || {
                for wakers in rx {
                    wakers.into_iter().for_each(Waker::wake);
                }
            });
            (tx, helper)
        })
        .unzip();
    for round in 0..scaled(500, 50) {
        // Tasks 0, 3, 6... are woken here; the others by the helpers, at the same time.
        let mut batches = vec![Vec::new(); HELPERS];
        let mut ours = Vec::new();
        for id in 0..TASKS {
            let waker = waker_of(&parked, id);
            match id % (HELPERS + 1) {
                0 => ours.push(waker),
                helper => batches[helper - 1].push(waker),
            }
        }
        for (tx, batch) in senders.iter().zip(batches) {
            tx.send(batch).expect("the helper is alive");
        }
        ours.into_iter().for_each(Waker::wake);
        let mut seen = 0;
        while seen < TASKS {
            let start = Instant::now();
            sel.run_once(Some(Duration::from_secs(5)))?;
            seen += take(&ran).len();
            assert!(
                seen == TASKS || start.elapsed() < Duration::from_secs(5),
                "round {round}: a wake was lost ({seen} of {TASKS} ran)"
            );
        }
        assert_eq!(seen, TASKS, "round {round}: a task ran twice");
    }
    drop(senders);
    for helper in helpers {
        helper.join().expect("a helper panicked");
    }
    Ok(())
}
