//! Timeouts (S18): a zero timeout still dispatches, waits are never early, and unbounded waits
//! end when a handle wakes the loop.

mod util;

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use selreactor::{Interest, Selector};
use util::*;

/// The latest an idle wait may end past its timeout: generous for a loaded 2-core machine,
/// more so under valgrind.
fn slack() -> Duration {
    if under_valgrind() {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(1)
    }
}

#[test]
fn a_zero_timeout_with_nothing_registered_returns_at_once() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let start = Instant::now();
    assert_eq!(sel.run_once(Some(Duration::ZERO))?, 0);
    assert!(start.elapsed() < slack() / 10, "{:?}", start.elapsed());
    Ok(())
}

#[test]
fn a_zero_timeout_still_dispatches_ready_sources() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let log = log();
    let mut peers = Vec::new();
    for name in ["a", "b", "c"] {
        let (ours, peer) = readable_pair()?;
        peers.push(peer);
        sel.register(ours, Interest::READ, recorder(&log, name))?;
    }
    let (idle, _idle_peer) = pair()?;
    sel.register(idle, Interest::READ, recorder(&log, "idle"))?;
    assert_eq!(sel.run_once(Some(Duration::ZERO))?, 3);
    let mut seen = names(&log);
    seen.sort_unstable();
    assert_eq!(seen, ["a", "b", "c"]);
    Ok(())
}

#[test]
fn an_idle_wait_lasts_its_whole_timeout_and_not_much_more() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (idle, _peer) = pair()?;
    sel.register(idle, Interest::READ, noop())?;
    let one_second = Duration::from_secs(1);
    let start = Instant::now();
    assert_eq!(sel.run_once(Some(one_second))?, 0);
    let waited = start.elapsed();
    assert!(waited >= one_second, "woke early: {waited:?}");
    assert!(waited < one_second + slack(), "overslept: {waited:?}");
    Ok(())
}

#[test]
fn short_waits_are_never_early() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (idle, _peer) = pair()?;
    sel.register(idle, Interest::READ, noop())?;
    let micros = [100, 900, 1_000, 1_500, 5_000, 20_000];
    for timeout in micros.map(Duration::from_micros) {
        let start = Instant::now();
        assert_eq!(sel.run_once(Some(timeout))?, 0);
        let waited = start.elapsed();
        assert!(waited >= timeout, "{timeout:?} wait ended after {waited:?}");
        assert!(
            waited < timeout + slack(),
            "{timeout:?} wait took {waited:?}"
        );
    }
    Ok(())
}

#[test]
fn unbounded_waits_end_when_a_handle_wakes_the_loop() -> io::Result<()> {
    for timeout in [None, Some(Duration::MAX)] {
        let mut sel = Selector::new()?;
        let (idle, _peer) = pair()?;
        sel.register(idle, Interest::READ, noop())?;
        let handle = sel.handle();
        let start = Instant::now();
        let waker = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            handle.wake()
        });
        assert_eq!(sel.run_once(timeout)?, 0, "a bare wake-up runs nothing");
        let waited = start.elapsed();
        waker.join().expect("waker thread")?;
        assert!(
            waited >= Duration::from_millis(200),
            "{timeout:?}: {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(200) + slack(),
            "{timeout:?}: {waited:?}"
        );
    }
    Ok(())
}

#[test]
fn a_wake_before_the_wait_makes_it_return_at_once_then_waits_block_again() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (idle, _peer) = pair()?;
    sel.register(idle, Interest::READ, noop())?;
    sel.handle().wake()?;
    let start = Instant::now();
    sel.run_once(Some(Duration::from_secs(5)))?;
    assert!(start.elapsed() < slack(), "{:?}", start.elapsed());
    // The wake-up was consumed: the next wait sleeps its timeout.
    let start = Instant::now();
    assert_eq!(sel.run_once(Some(Duration::from_millis(50)))?, 0);
    assert!(start.elapsed() >= Duration::from_millis(50));
    Ok(())
}
