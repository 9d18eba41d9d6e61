//! Scale: batches larger than one wait collects, thousands of registrations, long churn, and a
//! registration storm inside one callback (S14, S29b, S32, S33).
//!
//! Every test counts descriptors, so each takes [`serial`] first. Wall times are printed for
//! the record (`--nocapture`), never asserted.

mod util;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use selreactor::{Interest, Key, Selector};
use util::*;

/// `Ok(None)` (the test is skipped, with a message) when the machine runs out of descriptors
/// or epoll watches before `count` sources exist.
fn open_pairs(count: usize) -> io::Result<Option<Vec<(UnixStream, UnixStream)>>> {
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        match readable_pair() {
            Ok(p) => pairs.push(p),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                eprintln!("skipped: only {} socket pairs before {e}", pairs.len());
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Some(pairs))
}

#[test]
fn more_ready_sources_than_one_wait_collects_are_all_dispatched_within_a_few_iterations(
) -> io::Result<()> {
    let _serial = serial();
    let count = scaled(3_000, 1_500);
    let Some(pairs) = open_pairs(count)? else {
        return Ok(());
    };
    let mut sel = Selector::new()?; // collects up to 1024 events per wait
    let hits = Rc::new(RefCell::new(vec![0usize; count]));
    let mut peers = Vec::with_capacity(count);
    for (i, (ours, peer)) in pairs.into_iter().enumerate() {
        peers.push(peer);
        let hits = Rc::clone(&hits);
        // Never drained: each stays ready, and the kernel rotates through them.
        sel.register(ours, Interest::READ, move |_, _, _| {
            hits.borrow_mut()[i] += 1;
            Ok(())
        })?;
    }
    let bound = count.div_ceil(1024) + 1;
    let mut iterations = 0;
    while hits.borrow().contains(&0) {
        assert!(
            iterations < bound,
            "not all dispatched within {bound} iterations"
        );
        let ran = sel.run_once(Some(Duration::ZERO))?;
        assert_eq!(ran, count.min(1024), "a full batch each iteration");
        iterations += 1;
        assert!(
            hits.borrow().iter().all(|&h| h <= iterations),
            "a source ran twice in one iteration"
        );
    }
    eprintln!("{count} always-ready sources: all dispatched in {iterations} iterations");
    Ok(())
}

#[test]
fn thousands_registered_then_removed_leave_no_trace() -> io::Result<()> {
    let _serial = serial();
    let count = scaled(5_000, 1_000);
    let baseline = fd_count()?;
    let mut sel = Selector::new()?;
    let with_selector = fd_count()?;
    let Some(pairs) = open_pairs(count)? else {
        return Ok(());
    };
    let drops = DropCounter::new();
    let mut keys = Vec::with_capacity(count);
    let mut peers = Vec::with_capacity(count);
    let start = Instant::now();
    for (i, (ours, peer)) in pairs.into_iter().enumerate() {
        peers.push(peer);
        let interest = [Interest::READ, Interest::WRITE, Interest::BOTH][i % 3];
        let guard = drops.guard();
        keys.push(sel.register(ours, interest, move |_, _, _| {
            let _keep = &guard;
            Ok(())
        })?);
    }
    assert_eq!(sel.len(), count);
    assert_eq!(epoll_entries(&sel)?.len(), count);
    for (i, key) in keys.into_iter().enumerate() {
        if i % 2 == 0 {
            sel.remove(key)?;
        } else {
            drop(sel.unregister(key)?);
        }
    }
    let took = start.elapsed();
    assert!(sel.is_empty());
    assert_eq!(epoll_entries(&sel)?, []);
    assert_eq!(drops.count(), count);
    drop(peers);
    assert_eq!(fd_count()?, with_selector);
    drop(sel);
    assert_eq!(fd_count()?, baseline);
    eprintln!("{count} registered and removed in {took:?}");
    Ok(())
}

#[test]
fn long_churn_with_few_live_keeps_descriptors_and_slots_flat() -> io::Result<()> {
    let _serial = serial();
    const LIVE: usize = 8;
    let cycles = scaled(100_000, 2_000);
    let baseline = fd_count()?;
    let mut sel = Selector::new()?;
    let with_selector = fd_count()?;
    let dispatched = Rc::new(Cell::new(0usize));
    let drops = DropCounter::new();
    let mut live: VecDeque<Key<OwnedFd>> = VecDeque::with_capacity(LIVE + 1);
    let mut highest_slot = 0;
    let start = Instant::now();
    for cycle in 0..cycles {
        let counter = Rc::clone(&dispatched);
        let guard = drops.guard();
        let key = sel.register(ready_eventfd()?, Interest::READ, move |_, _, _| {
            let _keep = &guard;
            counter.set(counter.get() + 1);
            Ok(())
        })?;
        highest_slot = highest_slot.max(key.token().index());
        live.push_back(key);
        sel.run_once(Some(Duration::ZERO))?;
        if live.len() == LIVE {
            let oldest = live.pop_front().expect("full");
            if cycle % 2 == 0 {
                sel.remove(oldest)?;
            } else {
                drop(sel.unregister(oldest)?);
            }
        }
        if cycle % 10_000 == 0 {
            assert!(fd_count()? <= with_selector + LIVE, "descriptors pile up");
        }
    }
    for key in live.drain(..) {
        sel.remove(key)?;
    }
    let took = start.elapsed();
    assert!(sel.is_empty());
    assert!(
        highest_slot < LIVE,
        "slots are reused: highest {highest_slot}"
    );
    assert_eq!(drops.count(), cycles);
    // Each source is ready in the LIVE iterations it lives through, except the last few,
    // removed at the end after 1..LIVE - 1 of them.
    assert_eq!(dispatched.get(), cycles * LIVE - LIVE * (LIVE - 1) / 2);
    assert_eq!(fd_count()?, with_selector);
    drop(sel);
    assert_eq!(fd_count()?, baseline);
    eprintln!("{cycles} register/run/remove cycles in {took:?}");
    Ok(())
}

#[test]
fn a_callback_registering_thousands_and_removing_half_in_one_go() -> io::Result<()> {
    let _serial = serial();
    let count = scaled(5_000, 1_000);
    let baseline = fd_count()?;
    let mut sel = Selector::new()?;
    let with_selector = fd_count()?;
    let runs = Rc::new(RefCell::new(vec![0usize; count]));
    let drops = DropCounter::new();
    let (trigger, _peer) = readable_pair()?;
    let (record, counter) = (Rc::clone(&runs), drops.clone());
    sel.register(trigger, Interest::READ, move |reg, _, event| {
        let mut keys = Vec::with_capacity(count);
        for i in 0..count {
            let (record, guard) = (Rc::clone(&record), counter.guard());
            keys.push(
                reg.register(ready_eventfd()?, Interest::READ, move |reg, _, event| {
                    let _keep = &guard;
                    record.borrow_mut()[i] += 1;
                    reg.remove(event.key())
                })
                .map_err(io::Error::from)?,
            );
        }
        for key in keys.into_iter().step_by(2) {
            reg.remove(key)?;
        }
        reg.remove(event.key())
    })?;

    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    assert_eq!(
        drops.count(),
        count.div_ceil(2),
        "the removed half is gone at once"
    );
    let mut iterations = 0;
    while !sel.is_empty() {
        iterations += 1;
        assert!(
            iterations <= count.div_ceil(1024) + 1,
            "too many iterations"
        );
        sel.run_once(Some(Duration::ZERO))?;
    }
    let runs = runs.borrow();
    for (i, &n) in runs.iter().enumerate() {
        assert_eq!(n, i % 2, "source {i} ran {n} times");
    }
    assert_eq!(drops.count(), count);
    assert_eq!(epoll_entries(&sel)?, []);
    assert_eq!(
        fd_count()?,
        with_selector + 1,
        "only the trigger's peer is left"
    );
    drop(sel);
    drop(_peer);
    assert_eq!(fd_count()?, baseline);
    Ok(())
}
