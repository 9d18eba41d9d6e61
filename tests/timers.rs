//! Timers and deferred calls: ordering, cancellation by checked keys, never firing early, waiting
//! without spinning, repeating without drift, and fairness between I/O, timers and calls.

mod util;

use std::cell::Cell;
use std::io::{self, Write};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

use selreactor::{Interest, Registry, Selector, TimerKey};
use util::*;

const MS: Duration = Duration::from_millis(1);

/// A small deterministic generator, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// The slab index a timer key names, from its `Debug` form `TimerKey(#<index>v<seq>)`.
fn slot(key: TimerKey) -> String {
    let text = format!("{key:?}");
    text.split('v')
        .next()
        .expect("TimerKey(#<index>v<seq>)")
        .to_owned()
}

/// Runs single iterations until `done` or `limit` passes; returns how many iterations it took.
fn run_until(sel: &mut Selector, limit: Duration, done: impl Fn() -> bool) -> io::Result<usize> {
    let start = Instant::now();
    let mut iterations = 0;
    while !done() {
        assert!(start.elapsed() < limit, "not done after {limit:?}");
        sel.run_once(Some(limit))?;
        iterations += 1;
    }
    Ok(iterations)
}

#[test]
fn timers_with_equal_deadlines_fire_in_scheduling_order() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let fired = log();
    let deadline = Instant::now() + 20 * MS;
    for name in 0..50 {
        let fired = Rc::clone(&fired);
        sel.call_at(deadline, move |_| fired.borrow_mut().push(name));
    }
    sel.run()?;
    assert_eq!(take(&fired), (0..50).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn timers_with_different_deadlines_fire_in_deadline_order() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let fired = log();
    let base = Instant::now() + 5 * MS;
    // Scheduled latest-first, and interleaved, so insertion order is no help.
    let offsets = [40u32, 0, 30, 10, 35, 5, 25, 15, 20];
    for offset in offsets {
        let fired = Rc::clone(&fired);
        sel.call_at(base + offset * MS, move |_| fired.borrow_mut().push(offset));
    }
    sel.run()?;
    let mut sorted = offsets;
    sorted.sort_unstable();
    assert_eq!(take(&fired), sorted);
    Ok(())
}

#[test]
fn a_timer_can_cancel_another_due_in_the_same_iteration() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let fired = log();
    let deadline = Instant::now() + 10 * MS;
    let victim: Rc<Cell<Option<TimerKey>>> = Rc::default();
    {
        let (fired, victim) = (Rc::clone(&fired), Rc::clone(&victim));
        sel.call_at(deadline, move |reg| {
            fired.borrow_mut().push("first");
            let key = victim.get().expect("scheduled before the loop ran");
            reg.cancel(key).expect("the second timer is still pending");
        });
    }
    let fired2 = Rc::clone(&fired);
    victim.set(Some(
        sel.call_at(deadline, move |_| fired2.borrow_mut().push("second")),
    ));
    let fired3 = Rc::clone(&fired);
    sel.call_at(deadline, move |_| fired3.borrow_mut().push("third"));

    // All three are due in the same iteration.
    std::thread::sleep(15 * MS);
    sel.run_once(Some(Duration::ZERO))?;
    assert_eq!(take(&fired), ["first", "third"]);
    assert_eq!(sel.timer_count(), 0);
    sel.run_once(Some(20 * MS))?;
    assert!(take(&fired).is_empty(), "a cancelled timer fired late");
    Ok(())
}

#[test]
fn a_stale_timer_key_is_rejected_and_never_cancels_the_slots_new_timer() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let fired = log();

    // Stale because it fired.
    let first = sel.call_later(Duration::ZERO, |_| {});
    sel.run()?;
    let f = Rc::clone(&fired);
    let second = sel.call_later(5 * MS, move |_| f.borrow_mut().push("second"));
    assert_eq!(slot(first), slot(second), "the test needs the slot reused");
    assert_eq!(
        sel.cancel(first).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(sel.timer_count(), 1);

    // Stale because it was cancelled.
    sel.cancel(second)?;
    let f = Rc::clone(&fired);
    let third = sel.call_later(5 * MS, move |_| f.borrow_mut().push("third"));
    assert_eq!(slot(second), slot(third), "the test needs the slot reused");
    assert_eq!(
        sel.cancel(second).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        sel.cancel(first).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );

    sel.run()?;
    assert_eq!(take(&fired), ["third"]);
    assert_eq!(
        sel.cancel(third).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    Ok(())
}

#[test]
fn another_selectors_timer_key_is_rejected() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut ours = Selector::new()?;
    let mut theirs = Selector::new()?;
    let fired = Rc::new(Cell::new(false));
    let f = Rc::clone(&fired);
    // Same slot and, both being first, the same sequence number: only the owner differs.
    let our_key = ours.call_later(5 * MS, move |_| f.set(true));
    let their_key = theirs.call_later(5 * MS, |_| {});
    assert_eq!(format!("{our_key:?}"), format!("{their_key:?}"));
    assert_ne!(our_key, their_key);

    let err = ours.cancel(their_key).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert_eq!(ours.timer_count(), 1);
    ours.run()?;
    assert!(fired.get(), "a foreign key cancelled our timer");
    theirs.cancel(their_key)?;
    Ok(())
}

#[test]
fn timers_never_fire_before_their_deadline() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let count = scaled(300, 60);
    let early = Rc::new(Cell::new(0usize));
    let fired = log();
    let start = Instant::now();
    for i in 0..count {
        let delay = Duration::from_micros(rng.below(40_000));
        let (early, fired) = (Rc::clone(&early), Rc::clone(&fired));
        if i % 2 == 0 {
            let deadline = start + delay;
            sel.call_at(deadline, move |_| {
                let now = Instant::now();
                early.set(early.get() + usize::from(now < deadline));
                fired.borrow_mut().push(deadline);
            });
        } else {
            // `call_later` measures from its own call, which is no earlier than this.
            let not_before = Instant::now() + delay;
            sel.call_later(delay, move |_| {
                let now = Instant::now();
                early.set(early.get() + usize::from(now < not_before));
                fired.borrow_mut().push(not_before);
            });
        }
    }
    sel.run()?;
    assert_eq!(early.get(), 0, "timers fired before their deadline");
    let fired = take(&fired);
    assert_eq!(fired.len(), count);
    Ok(())
}

#[test]
fn waiting_for_a_timer_sleeps_instead_of_spinning() -> io::Result<()> {
    for timeout in [None, Some(Duration::from_secs(5))] {
        let mut sel = Selector::new()?;
        let fired = Rc::new(Cell::new(false));
        let f = Rc::clone(&fired);
        let start = Instant::now();
        sel.call_later(100 * MS, move |_| f.set(true));
        let mut iterations = 0;
        while !fired.get() {
            sel.run_once(timeout)?;
            iterations += 1;
            assert!(
                iterations < 20,
                "{iterations} wake-ups for one 100 ms timer"
            );
        }
        let elapsed = start.elapsed();
        assert!(elapsed >= 100 * MS, "fired early, after {elapsed:?}");
        // The wait targets the deadline, not the caller's 5 s.
        assert!(
            elapsed < Duration::from_millis(800),
            "overslept: {elapsed:?}"
        );
    }
    Ok(())
}

#[test]
fn the_wait_is_cut_short_by_the_nearest_deadline_only() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let fired = log();
    let start = Instant::now();
    for (name, delay) in [("far", 200 * MS), ("near", 30 * MS)] {
        let f = Rc::clone(&fired);
        sel.call_later(delay, move |_| f.borrow_mut().push((name, start.elapsed())));
    }
    // A single wait returns for the near timer, well before the far one.
    sel.run_once(Some(Duration::from_secs(5)))?;
    let first = take(&fired);
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].0, "near");
    assert!(first[0].1 >= 30 * MS && first[0].1 < 150 * MS, "{first:?}");
    sel.run()?;
    let second = take(&fired);
    assert_eq!(second[0].0, "far");
    assert!(second[0].1 >= 200 * MS, "{second:?}");
    Ok(())
}

/// How many tries a check that a stalled machine can spoil gets. Each try has an absolute lower
/// bound that a broken timer cannot meet by luck (it can only ever be later); a stall can only
/// make a correct timer look late too, so one clean try out of a few proves the behaviour.
const TRIES: usize = 4;

#[test]
fn a_repeating_timer_stays_on_its_grid_over_many_periods() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    // Every iteration is made 2 ms slow by an always-ready source dispatched before the timers,
    // and each tick's callback takes 2 ms as well: a timer re-armed from the time it fired, or
    // from the time its callback returned, moves off its grid by that much on every tick.
    const PERIOD: Duration = Duration::from_millis(30);
    const TICKS: u32 = 40;
    let mut phases_seen = Vec::new();
    for _ in 0..TRIES {
        let mut sel = Selector::new()?;
        let busy = sel.register(ready_eventfd()?, Interest::READ, |_, _, _| {
            std::thread::sleep(2 * MS);
            Ok(())
        })?;
        let ticks = log();
        let t = Rc::clone(&ticks);
        let start = Instant::now();
        sel.call_every(PERIOD, move |reg, key| {
            t.borrow_mut().push(Instant::now());
            std::thread::sleep(2 * MS);
            if t.borrow().len() == TICKS as usize {
                reg.cancel(key)
                    .expect("a repeating timer may cancel itself");
                reg.remove(busy).expect("still registered");
            }
        });
        sel.run()?;
        let ticks = take(&ticks);
        assert_eq!(ticks.len(), TICKS as usize);
        // Never early, whatever happened: the k-th tick is at or after the k-th grid point
        // (missed ticks are skipped, never made up).
        for (k, tick) in (1..).zip(&ticks) {
            assert!(*tick >= start + PERIOD * k, "tick {k} came early");
        }
        // On the grid: a tick lands just after a grid point `start + k * PERIOD` (an iteration
        // or two late), so its phase within the period is small. A stall makes the tick after
        // it late, and only that one; a timer re-armed from "now" drifts 2-4 ms a tick, so its
        // phases spread over the whole period and at most about half are small.
        let on_grid = ticks
            .iter()
            .filter(|tick| {
                let since = tick.duration_since(start).as_nanos();
                since % PERIOD.as_nanos() < PERIOD.as_nanos() / 2
            })
            .count();
        if on_grid * 10 >= ticks.len() * 8 {
            return Ok(());
        }
        phases_seen.push(on_grid);
    }
    panic!(
        "off the grid: of {TICKS} ticks, {phases_seen:?} landed in the first half of their \
         period in {TRIES} tries (at least 80% expected)"
    );
}

#[test]
fn a_repeating_timer_that_falls_behind_fires_once_not_in_a_burst() -> io::Result<()> {
    const PERIOD: Duration = Duration::from_millis(40);
    let mut lateness = Vec::new();
    for _ in 0..TRIES {
        let mut sel = Selector::new()?;
        let ticks = Rc::new(Cell::new(0u32));
        let t = Rc::clone(&ticks);
        let start = Instant::now();
        let repeating = sel.call_every(PERIOD, move |_, _| t.set(t.get() + 1));
        let blocked = Rc::new(Cell::new(false));
        let b = Rc::clone(&blocked);
        sel.call_later(MS, move |_| {
            // Five and a half periods pass with the loop stuck here: it resumes mid-period.
            std::thread::sleep(PERIOD * 11 / 2);
            b.set(true);
        });
        run_until(&mut sel, Duration::from_secs(10), || blocked.get())?;
        assert_eq!(ticks.get(), 0, "the repeating timer was not yet due");

        sel.run_once(Some(Duration::ZERO))?;
        assert_eq!(ticks.get(), 1, "missed ticks should collapse into one");
        sel.run_once(Some(Duration::ZERO))?;
        assert_eq!(ticks.get(), 1, "the next tick is on the grid, not now");

        // Back on the grid: the next tick at the next grid point after the stuck call, six
        // periods in (or later, on a stalled machine). A timer re-armed from "now" would put it
        // a whole period after the late one, at 6.5 periods or later.
        run_until(&mut sel, Duration::from_secs(10), || ticks.get() == 2)?;
        let next = Instant::now();
        sel.cancel(repeating)?;
        let grid_point = start + PERIOD * 6;
        assert!(next >= grid_point, "came early");
        if next < grid_point + PERIOD / 4 {
            return Ok(());
        }
        lateness.push(next - grid_point);
    }
    panic!("the tick after the late one was off the grid by {lateness:?} in {TRIES} tries");
}

#[test]
fn a_repeating_timer_can_cancel_itself() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let ticks = Rc::new(Cell::new(0));
    let own_key: Rc<Cell<Option<TimerKey>>> = Rc::default();
    let (t, k) = (Rc::clone(&ticks), Rc::clone(&own_key));
    let key = sel.call_every(2 * MS, move |reg, key| {
        assert_eq!(Some(key), k.get(), "the callback gets its own key");
        t.set(t.get() + 1);
        if t.get() == 3 {
            reg.cancel(key).expect("cancelling itself works");
            assert_eq!(reg.cancel(key).unwrap_err().kind(), io::ErrorKind::NotFound);
        }
    });
    own_key.set(Some(key));
    sel.run()?; // returns: nothing is left once it cancels itself
    assert_eq!(ticks.get(), 3);
    assert_eq!(sel.timer_count(), 0);
    assert_eq!(sel.cancel(key).unwrap_err().kind(), io::ErrorKind::NotFound);
    Ok(())
}

#[test]
fn a_timer_cancelled_from_outside_between_ticks_stops_repeating() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let ticks = Rc::new(Cell::new(0));
    let t = Rc::clone(&ticks);
    let key = sel.call_every(5 * MS, move |_, _| t.set(t.get() + 1));
    run_until(&mut sel, Duration::from_secs(2), || ticks.get() == 2)?;
    sel.cancel(key)?;
    sel.run_once(Some(30 * MS))?;
    assert_eq!(ticks.get(), 2);
    assert_eq!(sel.timer_count(), 0);
    Ok(())
}

#[test]
fn a_duration_max_delay_neither_fires_nor_panics() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let fired = Rc::new(Cell::new(0));
    let (f1, f2) = (Rc::clone(&fired), Rc::clone(&fired));
    let once = sel.call_later(Duration::MAX, move |_| f1.set(f1.get() + 1));
    let every = sel.call_every(Duration::MAX, move |_, _| f2.set(f2.get() + 1));
    let start = Instant::now();
    assert_eq!(sel.run_once(Some(20 * MS))?, 0);
    assert!(
        start.elapsed() >= 20 * MS,
        "the far deadline shortened the wait"
    );
    assert_eq!(sel.run_once(Some(Duration::ZERO))?, 0);
    assert_eq!(fired.get(), 0);
    assert_eq!(sel.timer_count(), 2);
    sel.cancel(once)?;
    sel.cancel(every)?;
    sel.run()?; // nothing left
    Ok(())
}

#[test]
#[should_panic(expected = "non-zero period")]
fn a_zero_period_is_rejected_with_a_panic() {
    let mut sel = Selector::new().expect("selector");
    sel.call_every(Duration::ZERO, |_, _| {});
}

#[test]
fn a_timer_scheduled_for_the_past_fires_on_the_next_iteration_not_the_current_one() -> io::Result<()>
{
    let mut sel = Selector::new()?;
    let fired = log();
    let f = Rc::clone(&fired);
    sel.call_later(Duration::ZERO, move |reg| {
        f.borrow_mut().push("outer");
        let f = Rc::clone(&f);
        let past = Instant::now() - 10 * MS;
        reg.call_at(past, move |_| f.borrow_mut().push("inner"));
    });
    sel.run_once(Some(Duration::ZERO))?;
    assert_eq!(take(&fired), ["outer"]);
    sel.run_once(Some(Duration::from_secs(1)))?;
    assert_eq!(take(&fired), ["inner"]);
    Ok(())
}

#[test]
fn deferred_calls_run_in_fifo_order_on_the_next_iteration() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let ran = log();
    for i in 0..100 {
        let ran = Rc::clone(&ran);
        sel.call_soon(move |reg| {
            ran.borrow_mut().push(i);
            if i == 0 {
                // Queued during the iteration: waits for the next one, behind all of 1..100.
                let ran = Rc::clone(&ran);
                reg.call_soon(move |_| ran.borrow_mut().push(1000));
            }
        });
    }
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 100);
    assert_eq!(take(&ran), (0..100).collect::<Vec<_>>());
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    assert_eq!(take(&ran), [1000]);
    Ok(())
}

#[test]
fn a_deferred_call_can_do_what_an_io_callback_can() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let (ours, mut peer) = pair()?;
    let got = Rc::new(Cell::new(0));
    let g = Rc::clone(&got);
    sel.call_soon(move |reg| {
        let g = Rc::clone(&g);
        reg.register(ours, Interest::READ, move |reg, stream, event| {
            g.set(g.get() + drain(stream)?);
            reg.remove(event.key())?;
            let g = Rc::clone(&g);
            reg.call_later(MS, move |reg| {
                g.set(g.get() + 100);
                reg.stop();
            });
            Ok(())
        })
        .expect("register from a deferred call");
    });
    peer.write_all(b"abc")?;
    sel.run()?;
    assert_eq!(got.get(), 103);
    Ok(())
}

#[test]
fn one_iteration_runs_io_then_timers_then_calls() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let order = log();
    let (ours, mut peer) = pair()?;
    let o = Rc::clone(&order);
    sel.register(ours, Interest::READ, move |_, stream, _| {
        drain(stream)?;
        o.borrow_mut().push("io");
        Ok(())
    })?;
    let o = Rc::clone(&order);
    sel.call_soon(move |_| o.borrow_mut().push("call"));
    let o = Rc::clone(&order);
    sel.call_at(Instant::now(), move |_| o.borrow_mut().push("timer"));
    peer.write_all(b"x")?;
    sel.run_once(Some(Duration::from_secs(1)))?;
    assert_eq!(take(&order), ["io", "timer", "call"]);
    Ok(())
}

/// The shared check of the two starvation tests: with `hog` installed, I/O from a socket pair
/// and an ordinary timer still run promptly, and the hog runs at most once per iteration.
fn assert_not_starved(sel: &mut Selector, hog_runs: &Rc<Cell<usize>>) -> io::Result<()> {
    let (ours, mut peer) = pair()?;
    let got_io = Rc::new(Cell::new(false));
    let g = Rc::clone(&got_io);
    sel.register(ours, Interest::READ, move |reg, stream, event| {
        drain(stream)?;
        g.set(true);
        reg.remove(event.key())
    })?;
    let timer_fired = Rc::new(Cell::new(false));
    let t = Rc::clone(&timer_fired);
    let start = Instant::now();
    sel.call_later(20 * MS, move |_| t.set(true));
    peer.write_all(b"x")?;

    let mut iterations = 0;
    let mut io_iteration = None;
    while !timer_fired.get() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the timer was starved"
        );
        let before = hog_runs.get();
        sel.run_once(Some(Duration::from_secs(1)))?;
        iterations += 1;
        let runs = hog_runs.get() - before;
        assert!(
            runs <= 1,
            "the self-rescheduling callback ran {runs} times in one iteration"
        );
        if got_io.get() && io_iteration.is_none() {
            io_iteration = Some(iterations);
        }
    }
    let io_iteration = io_iteration.expect("I/O was starved");
    assert!(io_iteration <= 2, "I/O waited {io_iteration} iterations");
    assert!(start.elapsed() >= 20 * MS);
    assert!(hog_runs.get() > 0, "the hog should have run too");
    Ok(())
}

#[test]
fn a_self_rescheduling_deferred_call_does_not_starve_io_or_timers() -> io::Result<()> {
    fn hog(runs: Rc<Cell<usize>>) -> impl FnOnce(&mut Registry) + 'static {
        move |reg| {
            runs.set(runs.get() + 1);
            reg.call_soon(hog(runs));
        }
    }
    let mut sel = Selector::new()?;
    let runs = Rc::new(Cell::new(0));
    sel.call_soon(hog(Rc::clone(&runs)));
    assert_not_starved(&mut sel, &runs)
}

#[test]
fn a_self_rescheduling_zero_delay_timer_does_not_starve_io_or_timers() -> io::Result<()> {
    fn hog(runs: Rc<Cell<usize>>) -> impl FnOnce(&mut Registry) + 'static {
        move |reg| {
            runs.set(runs.get() + 1);
            reg.call_later(Duration::ZERO, hog(runs));
        }
    }
    let mut sel = Selector::new()?;
    let runs = Rc::new(Cell::new(0));
    sel.call_later(Duration::ZERO, hog(Rc::clone(&runs)));
    assert_not_starved(&mut sel, &runs)
}

#[test]
fn a_panicking_timer_leaves_the_selector_usable() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let fired = log();
    sel.call_later(MS, |_| panic!("one-shot boom"));
    let f = Rc::clone(&fired);
    sel.call_later(MS, move |_| f.borrow_mut().push("after the one-shot"));
    let caught = panic::catch_unwind(AssertUnwindSafe(|| sel.run()));
    assert!(caught.is_err(), "the panic should unwind out of run");
    // The timer due with it was not lost.
    sel.run()?;
    assert_eq!(take(&fired), ["after the one-shot"]);

    let repeating = sel.call_every(MS, |_, _| panic!("repeating boom"));
    let caught = panic::catch_unwind(AssertUnwindSafe(|| sel.run()));
    assert!(caught.is_err());
    assert_eq!(
        sel.timer_count(),
        0,
        "a panicking repeating timer is removed"
    );
    assert_eq!(
        sel.cancel(repeating).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );

    let f = Rc::clone(&fired);
    sel.call_later(MS, move |_| f.borrow_mut().push("still works"));
    sel.run()?;
    assert_eq!(take(&fired), ["still works"]);
    Ok(())
}

#[test]
fn a_panicking_deferred_call_leaves_the_selector_usable() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let ran = log();
    let r = Rc::clone(&ran);
    sel.call_soon(move |_| r.borrow_mut().push(1));
    sel.call_soon(|_| panic!("deferred boom"));
    let r = Rc::clone(&ran);
    sel.call_soon(move |_| r.borrow_mut().push(3));
    let caught = panic::catch_unwind(AssertUnwindSafe(|| sel.run_once(Some(Duration::ZERO))));
    assert!(caught.is_err());
    assert_eq!(take(&ran), [1]);
    // The call queued behind the panicking one still runs, once.
    sel.run()?;
    assert_eq!(take(&ran), [3]);
    Ok(())
}

#[test]
fn run_returns_once_the_last_timer_has_fired() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let start = Instant::now();
    sel.call_later(30 * MS, |reg| {
        reg.call_later(20 * MS, |_| {});
    });
    assert_eq!(sel.timer_count(), 1);
    sel.run()?;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= 50 * MS && elapsed < Duration::from_secs(1),
        "{elapsed:?}"
    );
    assert_eq!(sel.timer_count(), 0);
    Ok(())
}

#[test]
fn dropping_a_selector_drops_pending_timers_and_calls_without_running_them() -> io::Result<()> {
    let drops = DropCounter::new();
    let ran = Rc::new(Cell::new(false));
    {
        let mut sel = Selector::new()?;
        let (g1, g2, g3) = (drops.guard(), drops.guard(), drops.guard());
        let (r1, r2, r3) = (Rc::clone(&ran), Rc::clone(&ran), Rc::clone(&ran));
        sel.call_later(Duration::from_secs(60), move |_| {
            drop(g1);
            r1.set(true);
        });
        sel.call_every(Duration::from_secs(60), move |_, _| {
            let _ = &g2;
            r2.set(true);
        });
        sel.call_soon(move |_| {
            drop(g3);
            r3.set(true);
        });
    }
    assert_eq!(drops.count(), 3);
    assert!(!ran.get());
    Ok(())
}

#[test]
fn cancelling_many_timers_keeps_only_the_live_ones() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let fired = Rc::new(Cell::new(0usize));
    let mut keys = Vec::new();
    for i in 0..scaled(20_000, 2_000) {
        let f = Rc::clone(&fired);
        keys.push((
            i,
            sel.call_later(Duration::from_millis(5), move |_| f.set(f.get() + 1)),
        ));
    }
    let mut kept = 0;
    for (i, key) in keys {
        if i % 10 == 0 {
            kept += 1;
        } else {
            sel.cancel(key)?;
        }
    }
    assert_eq!(sel.timer_count(), kept);
    sel.run()?;
    assert_eq!(fired.get(), kept);
    Ok(())
}

#[test]
fn a_due_timer_scheduled_by_an_io_callback_waits_for_the_next_iteration() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let ready = ready_eventfd()?;
    let fired = Rc::new(Cell::new(false));
    let flag = Rc::clone(&fired);
    let past = Instant::now()
        .checked_sub(Duration::from_secs(1))
        .unwrap_or_else(Instant::now);
    sel.register(ready, Interest::READ, move |reg, _, event| {
        let flag = Rc::clone(&flag);
        reg.call_at(past, move |_| flag.set(true));
        reg.remove(event.key())
    })?;
    // The I/O callback runs; the timer it scheduled is already due, but was queued during this
    // iteration, so it waits for the next one.
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    assert!(
        !fired.get(),
        "a timer scheduled during an iteration ran in it"
    );
    assert_eq!(sel.run_once(Some(Duration::ZERO))?, 1);
    assert!(fired.get());
    Ok(())
}
