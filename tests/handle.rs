//! The cross-thread handle: wake-ups that are never lost, queued closures, stopping the loop,
//! coalescing, what happens after the selector is gone, and descriptor hygiene.
//!
//! Every test holds [`util::serial`], so the descriptor count in
//! `dropping_everything_returns_the_descriptor_count_to_baseline` sees no other test's fds.

mod util;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use selreactor::{Handle, Interest, Selector};
use util::*;

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_handle_is_send_sync_clone_and_debug() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    assert_traits::<Handle>();
}

#[test]
fn cross_thread_calls_racing_with_sleep_are_never_lost() -> io::Result<()> {
    let _serial = serial();
    const THREADS: usize = 4;
    let per_thread = scaled(10_000, 500);
    // Long enough that a lost wake-up shows as a stall, short enough to fail in bounded time.
    const LONG: Duration = Duration::from_secs(3);

    let mut sel = Selector::new()?;
    let received = Arc::new(AtomicUsize::new(0));
    let last_seen: Arc<Vec<AtomicUsize>> = Arc::new((0..THREADS).map(|_| 0.into()).collect());
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = sel.handle();
            let (received, last_seen) = (Arc::clone(&received), Arc::clone(&last_seen));
            thread::spawn(move || -> io::Result<()> {
                for i in 1..=per_thread {
                    let (received, last_seen) = (Arc::clone(&received), Arc::clone(&last_seen));
                    handle.call_soon(move |_| {
                        // Calls from one thread run in the order queued.
                        let previous = last_seen[t].swap(i, Ordering::SeqCst);
                        assert_eq!(previous, i - 1, "thread {t}'s calls ran out of order");
                        received.fetch_add(1, Ordering::SeqCst);
                    })?;
                    // Vary the pace so some calls land while the loop is about to sleep.
                    if i % 64 == t {
                        thread::sleep(Duration::from_micros(50));
                    } else if i % 7 == 0 {
                        thread::yield_now();
                    }
                }
                Ok(())
            })
        })
        .collect();

    let total = THREADS * per_thread;
    let mut iterations = 0usize;
    let mut slowest = Duration::ZERO;
    while received.load(Ordering::SeqCst) < total {
        let before = received.load(Ordering::SeqCst);
        let start = Instant::now();
        sel.run_once(Some(LONG))?;
        let took = start.elapsed();
        slowest = slowest.max(took);
        iterations += 1;
        assert!(
            took < LONG - 500 * MS,
            "run_once slept {took:?} with work queued (after {before} of {total} calls): \
             a wake-up was lost"
        );
    }
    for sender in senders {
        sender.join().expect("sender thread")?;
    }
    assert_eq!(received.load(Ordering::SeqCst), total);
    for t in 0..THREADS {
        assert_eq!(last_seen[t].load(Ordering::SeqCst), per_thread);
    }
    // The last handle's drop wakes the loop once (so `run` could see none are left)...
    sel.run_once(Some(Duration::ZERO))?;
    // ...and then nothing is left: a further wait sleeps (no notification left over, no spin).
    let start = Instant::now();
    assert_eq!(sel.run_once(Some(20 * MS))?, 0);
    assert!(start.elapsed() >= 20 * MS);
    eprintln!("{total} calls in {iterations} iterations; slowest iteration {slowest:?}");
    Ok(())
}

#[test]
fn a_wake_before_run_once_makes_it_return_at_once() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let handle = sel.handle();
    for _ in 0..3 {
        handle.wake()?;
        let start = Instant::now();
        assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 0);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        // The wake-up was consumed: the next wait sleeps its full timeout.
        let start = Instant::now();
        sel.run_once(Some(20 * MS))?;
        assert!(
            start.elapsed() >= 20 * MS,
            "a consumed wake-up woke the loop again"
        );
    }
    Ok(())
}

#[test]
fn a_wake_from_another_thread_ends_a_blocked_wait() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let handle = sel.handle();
    let waker = thread::spawn(move || {
        thread::sleep(50 * MS);
        handle.wake()
    });
    let start = Instant::now();
    sel.run_once(Some(Duration::from_secs(5)))?;
    let elapsed = start.elapsed();
    waker.join().expect("waker thread")?;
    assert!(
        elapsed >= 40 * MS && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    Ok(())
}

#[test]
fn stop_from_another_thread_ends_a_blocked_run() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let _serial = serial();
    let mut sel = Selector::new()?;
    // A source that never becomes ready, so `run` has no reason to return by itself.
    let (ours, _peer) = pair()?;
    sel.register(ours, Interest::READ, noop())?;
    let handle = sel.handle();
    let stopper = thread::spawn(move || {
        thread::sleep(50 * MS);
        handle.stop()
    });
    let start = Instant::now();
    sel.run()?;
    let elapsed = start.elapsed();
    stopper.join().expect("stopper thread")?;
    assert!(
        elapsed >= 40 * MS && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert_eq!(sel.len(), 1, "stopping leaves registrations in place");
    Ok(())
}

#[test]
fn wakes_coalesce_into_one_wake_up() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let handle = sel.handle();
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..1_000 {
        handle.wake()?;
        let ran = Arc::clone(&ran);
        handle.call_soon(move |_| {
            ran.fetch_add(1, Ordering::SeqCst);
        })?;
    }
    // One iteration collects all of it...
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1_000);
    assert_eq!(ran.load(Ordering::SeqCst), 1_000);
    // ...and leaves no wake-up behind.
    let start = Instant::now();
    assert_eq!(sel.run_once(Some(30 * MS))?, 0);
    assert!(
        start.elapsed() >= 30 * MS,
        "leftover wake-ups: {:?}",
        start.elapsed()
    );
    Ok(())
}

#[test]
fn a_closure_sent_through_a_handle_gets_the_whole_registry() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let _serial = serial();
    let mut sel = Selector::new()?;
    let handle = sel.handle();
    let read = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&read);
    let sender = thread::spawn(move || -> io::Result<std::os::unix::net::UnixStream> {
        let (ours, mut peer) = pair()?;
        handle.call_soon(move |reg| {
            reg.register(ours, Interest::READ, move |reg, stream, event| {
                r.fetch_add(drain(stream)?, Ordering::SeqCst);
                reg.remove(event.key())?;
                reg.call_later(MS, |reg| reg.stop());
                Ok(())
            })
            .expect("register from a handle's closure");
        })?;
        io::Write::write_all(&mut peer, b"hello")?;
        Ok(peer)
    });
    sel.run()?;
    let _peer = sender.join().expect("sender thread")?;
    assert_eq!(read.load(Ordering::SeqCst), 5);
    Ok(())
}

#[test]
fn a_handle_outliving_its_selector_reports_an_error() -> io::Result<()> {
    let _serial = serial();
    let sel = Selector::new()?;
    let handle = sel.handle();
    let queued = DropCounter::new();
    let guard = queued.guard();
    handle.call_soon(move |_| drop(guard))?; // never runs: the selector goes first
    drop(sel);
    assert_eq!(
        queued.count(),
        1,
        "calls still queued are dropped with the selector"
    );

    let dropped = DropCounter::new();
    let guard = dropped.guard();
    let ran = Arc::new(AtomicBool::new(false));
    let r = Arc::clone(&ran);
    let err = handle
        .call_soon(move |_| {
            drop(guard);
            r.store(true, Ordering::SeqCst);
        })
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    assert_eq!(dropped.count(), 1, "a refused closure is dropped, not kept");
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(
        handle.wake().unwrap_err().kind(),
        io::ErrorKind::NotConnected
    );
    assert_eq!(
        handle.stop().unwrap_err().kind(),
        io::ErrorKind::NotConnected
    );
    let clone = handle.clone();
    assert_eq!(
        clone.wake().unwrap_err().kind(),
        io::ErrorKind::NotConnected
    );
    Ok(())
}

/// Runs `body` on a thread of its own and waits up to `limit` for it: a hang fails the test
/// instead of stalling the suite. The selector is not `Send`, so `body` creates its own.
fn within<T: Send + 'static>(
    limit: Duration,
    body: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(body());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

#[test]
fn a_live_handle_keeps_run_going_until_it_is_dropped_on_another_thread() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let _serial = serial();
    let elapsed = within(Duration::from_secs(5), || {
        let mut sel = Selector::new()?;
        let handle = sel.handle();
        let holder = thread::spawn(move || {
            thread::sleep(100 * MS);
            drop(handle);
        });
        let start = Instant::now();
        sel.run()?; // nothing registered, but a handle may still send work
        let elapsed = start.elapsed();
        holder.join().expect("holder thread");
        Ok(elapsed)
    })?;
    assert!(
        elapsed >= 90 * MS,
        "run returned while a handle lived: {elapsed:?}"
    );
    Ok(())
}

#[test]
fn a_live_handle_keeps_run_going_until_a_callback_drops_it() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let _serial = serial();
    within(Duration::from_secs(5), || {
        let mut sel = Selector::new()?;
        let handle = sel.handle();
        let start = Instant::now();
        sel.call_later(50 * MS, move |_| drop(handle));
        sel.run()?;
        assert!(start.elapsed() >= 50 * MS);
        Ok(())
    })
}

#[test]
fn dropping_everything_returns_the_descriptor_count_to_baseline() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let _serial = serial();
    let baseline = fd_count()?;
    for _ in 0..3 {
        let mut sel = Selector::new()?;
        let mut handles: Vec<Handle> = (0..8).map(|_| sel.handle()).collect();
        let (ours, mut peer) = pair()?;
        sel.register(ours, Interest::READ, |reg, stream, event| {
            drain(stream)?;
            reg.remove(event.key())
        })?;
        io::Write::write_all(&mut peer, b"x")?;
        sel.call_every(MS, |_, _| {});
        sel.call_later(Duration::from_secs(60), |_| {});
        let workers: Vec<_> = handles
            .iter()
            .cloned()
            .map(|handle| {
                thread::spawn(move || {
                    handle.wake()?;
                    handle.call_soon(|reg| reg.stop())
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker thread")?;
        }
        sel.run()?;
        assert!(fd_count()? > baseline);
        drop(peer);
        // Handles dropped before and after the selector: both orders release everything.
        let outliving = handles.split_off(4);
        drop(handles);
        drop(sel);
        for handle in &outliving {
            assert_eq!(
                handle.wake().unwrap_err().kind(),
                io::ErrorKind::NotConnected
            );
        }
        drop(outliving);
        assert_eq!(fd_count()?, baseline, "descriptors leaked");
    }
    Ok(())
}

/// asyncio's `call_soon` and `call_soon_threadsafe` feed one queue; so do `Registry::call_soon`
/// and `Handle::call_soon`: calls run in the order they were queued, whichever way, whether
/// queued before the loop runs or from inside an iteration.
#[test]
fn handle_calls_and_call_soon_run_in_the_order_queued() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let handle = sel.handle();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let push = |name: &'static str| {
        let order = Arc::clone(&order);
        move |_: &mut selreactor::Registry| order.lock().unwrap().push(name)
    };

    handle.call_soon(push("handle 1"))?;
    sel.call_soon(push("soon 1"));
    handle.call_soon(push("handle 2"))?;
    handle.call_soon(push("handle 3"))?;
    sel.call_soon(push("soon 2"));
    let queue_more = {
        let handle = handle.clone();
        let (h4, s3, h5) = (push("handle 4"), push("soon 3"), push("handle 5"));
        move |reg: &mut selreactor::Registry| {
            // From inside an iteration: the same order, in the next one.
            handle.call_soon(h4).expect("selector alive");
            reg.call_soon(s3);
            handle.call_soon(h5).expect("selector alive");
        }
    };
    sel.call_soon(queue_more);
    assert_eq!(sel.run_once(Some(Duration::ZERO))?, 6);
    assert_eq!(
        *order.lock().unwrap(),
        ["handle 1", "soon 1", "handle 2", "handle 3", "soon 2"]
    );
    order.lock().unwrap().clear();
    assert_eq!(sel.run_once(Some(Duration::ZERO))?, 3);
    assert_eq!(*order.lock().unwrap(), ["handle 4", "soon 3", "handle 5"]);
    drop(handle);
    assert!(sel.run_once(Some(Duration::ZERO))? == 0);
    Ok(())
}
