//! Time for tasks: sleeps, timeouts and intervals never end early, do not drift, and leave
//! nothing behind when dropped.

mod util;

use std::future::{pending, poll_fn, ready};
use std::io;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future::yield_now;
use selreactor::task;
use selreactor::Selector;
use util::*;

/// B12: many short sleeps, each checked against its deadline when it wakes, with few
/// iterations per sleep (no millisecond-truncation spin).
#[test]
fn sleeps_never_end_early_and_do_not_spin() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let sleeps = scaled(1_000, 100) as u64;
    let t = sel.spawn(async move {
        for i in 0..sleeps {
            let duration = Duration::from_micros(i * 37 % 3_000);
            let deadline = Instant::now() + duration;
            task::sleep(duration).await;
            let now = Instant::now();
            assert!(now >= deadline, "sleep {i} of {duration:?} woke early");
        }
    });
    let mut iterations = 0;
    while !t.is_finished() {
        sel.run_once(None)?;
        iterations += 1;
    }
    sel.block_on(t)?;
    assert!(
        iterations <= 3 * sleeps + 3,
        "{iterations} iterations for {sleeps} sleeps"
    );
    Ok(())
}

/// B12: a deadline already past resolves without waiting; so does now.
#[test]
fn sleep_until_a_past_instant_or_now_is_ready_at_once() -> io::Result<()> {
    task::block_on(async {
        let past = Instant::now() - Duration::from_secs(1);
        let start = Instant::now();
        task::sleep_until(past).await;
        task::sleep_until(Instant::now()).await;
        task::sleep(Duration::ZERO).await;
        assert!(start.elapsed() < Duration::from_secs(1));
    })
}

/// B13: `Duration::MAX` never fires and never panics, in a sleep, a timeout and an interval.
#[test]
fn a_duration_beyond_instant_never_fires_and_never_panics() -> io::Result<()> {
    task::block_on(async {
        let never = task::timeout(Duration::from_millis(20), task::sleep(Duration::MAX)).await;
        assert!(never.is_err());
        assert_eq!(
            task::timeout(Duration::MAX, async { 3 }).await,
            Ok(3),
            "a ready future under an endless timeout"
        );
        let mut endless = task::interval(Duration::MAX);
        let tick = task::timeout(Duration::from_millis(20), endless.tick()).await;
        assert!(tick.is_err());
    })
}

/// Dropping a sleep cancels its timer: the selector's heap does not keep it.
#[test]
fn dropping_a_sleep_cancels_its_timer() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let t = sel.spawn(async {
        let _ = task::timeout(
            Duration::from_millis(1),
            task::sleep(Duration::from_secs(3600)),
        )
        .await;
    });
    sel.block_on(t)?;
    assert_eq!(
        sel.timer_count(),
        0,
        "the hour-long sleep's timer was left behind"
    );
    // And a cancelled task's sleep too.
    let sleeper = sel.spawn(task::sleep(Duration::from_secs(3600)));
    sel.run_once(Some(Duration::ZERO))?;
    assert_eq!(sel.timer_count(), 1);
    drop(sleeper);
    sel.run_once(Some(Duration::ZERO))?;
    assert_eq!(sel.timer_count(), 0);
    Ok(())
}

/// B13: many timeouts around ready futures schedule nothing, so the heap stays empty.
#[test]
fn timeouts_of_ready_futures_leave_the_timer_heap_empty() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let rounds = scaled(200_000, 10_000);
    let t = sel.spawn(async move {
        for i in 0..rounds {
            let out = task::timeout(Duration::from_secs(60), ready(i)).await;
            assert_eq!(out, Ok(i));
        }
    });
    sel.block_on(t)?;
    assert_eq!(sel.timer_count(), 0);
    Ok(())
}

/// B15: the inner future is polled first, so a ready output is kept even at a zero timeout,
/// and a future that never stops yielding still times out, not early.
#[test]
fn timeout_polls_the_future_first_and_still_fires_against_a_yielding_one() -> io::Result<()> {
    task::block_on(async {
        assert_eq!(task::timeout(Duration::ZERO, ready(7)).await, Ok(7));
        let start = Instant::now();
        let yield_forever = async {
            loop {
                yield_now().await;
            }
        };
        let out: Result<(), _> = task::timeout(Duration::from_millis(10), yield_forever).await;
        let elapsed = start.elapsed();
        assert!(out.is_err());
        assert!(elapsed >= Duration::from_millis(10), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        let error: io::Error = out.unwrap_err().into();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    })
}

/// The clock of a timeout starts when it is created, not when it is first polled.
#[test]
fn a_timeout_counts_from_its_creation() -> io::Result<()> {
    task::block_on(async {
        let start = Instant::now();
        let later = task::timeout(Duration::from_millis(20), pending::<()>());
        task::sleep(Duration::from_millis(50)).await;
        assert!(later.await.is_err());
        // First polled after its deadline: it fires on that first poll.
        assert!(start.elapsed() < Duration::from_secs(2));
    })
}

/// Timeouts never fire early, over a range of short durations.
#[test]
fn timeouts_never_fire_early() -> io::Result<()> {
    task::block_on(async {
        for ms in [1u64, 2, 3, 5, 8, 13, 21] {
            let start = Instant::now();
            let out = task::timeout(Duration::from_millis(ms), pending::<()>()).await;
            let elapsed = start.elapsed();
            assert!(out.is_err());
            assert!(
                elapsed >= Duration::from_millis(ms),
                "{ms} ms fired at {elapsed:?}"
            );
        }
    })
}

/// B14: an interval's ticks stay on their grid (never early, no drift, whatever the load),
/// and after a stall the missed ticks are skipped: one late tick, then the grid resumes.
#[test]
fn interval_ticks_stay_on_the_grid_and_skip_missed_ticks() -> io::Result<()> {
    task::block_on(async {
        let period = Duration::from_millis(5);
        let on_grid =
            |first: Instant, tick: Instant| (tick - first).as_nanos() % period.as_nanos() == 0;
        let start = Instant::now();
        let mut every = task::interval(period);
        let first = every.tick().await;
        assert!(first >= start + period);
        let mut last = first;
        for k in 1..=50 {
            let tick = every.tick().await;
            assert!(on_grid(first, tick), "tick {k} is off the grid");
            assert!(tick > last, "tick {k} repeated or went back");
            assert!(Instant::now() >= tick, "tick {k} came early");
            last = tick;
        }
        // Stall for three periods: the tick due meanwhile comes once, late, then the grid
        // resumes after the stall without a burst of the missed ones.
        let stall_start = Instant::now();
        std::thread::sleep(period * 3);
        let stall_end = Instant::now();
        let late = every.tick().await;
        assert!(
            on_grid(first, late) && late <= stall_start + period,
            "{late:?}"
        );
        let next = every.tick().await;
        assert!(
            on_grid(first, next) && next > stall_end,
            "missed ticks were not skipped"
        );
    })
}

/// A timer can be driven by hand: `poll_tick` through `poll_fn`.
#[test]
fn poll_tick_works_through_poll_fn() -> io::Result<()> {
    task::block_on(async {
        let mut every = task::interval(Duration::from_millis(1));
        let mut ticks = 0;
        poll_fn(|cx| {
            while every.poll_tick(cx).is_ready() {
                ticks += 1;
            }
            if ticks >= 3 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        assert!(ticks >= 3);
    })
}

#[test]
#[should_panic(expected = "no selector is running a task on this thread")]
fn a_sleep_polled_outside_the_loop_panics_clearly() {
    // futures-lite's own `block_on` polls it, with no selector behind it.
    futures_lite::future::block_on(task::sleep(Duration::from_secs(1)));
}
