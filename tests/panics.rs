//! Panics and re-entrancy: a panicking callback or error handler unwinds out of `run_once`,
//! and the selector it leaves behind is consistent and usable.

mod util;

use std::cell::Cell;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::time::Duration;

use selreactor::{Handle, Interest, Key, Selector};
use util::*;

const WAIT: Option<Duration> = Some(Duration::from_secs(5));

/// Runs one iteration and returns the panic message it unwound with, if any.
fn run_once_catching(sel: &mut Selector) -> Option<String> {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| sel.run_once(WAIT)));
    match outcome {
        Ok(result) => {
            result.expect("the wait itself failed");
            None
        }
        Err(payload) => Some(
            payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default(),
        ),
    }
}

/// Registers a source that counts its (draining) runs.
fn counting(
    sel: &mut Selector,
    runs: &Rc<Cell<usize>>,
) -> io::Result<(Key<UnixStream>, UnixStream)> {
    let (ours, peer) = readable_pair()?;
    let runs = Rc::clone(runs);
    let key = sel.register(ours, Interest::READ, move |_, stream, _| {
        runs.set(runs.get() + 1);
        drain(stream).map(drop)
    })?;
    Ok((key, peer))
}

#[test]
fn a_panicking_callback_is_removed_once_and_the_rest_keeps_working() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let runs = Rc::new(Cell::new(0));
    let (b_key, mut b_peer) = counting(&mut sel, &runs)?;
    let (bad, mut bad_peer) = readable_pair()?;
    let bad_fd = bad.as_raw_fd();
    let drops = DropCounter::new();
    let guard = drops.guard();
    let bad_key = sel.register(bad, Interest::READ, move |_, _, _| {
        let _keep = &guard;
        panic!("callback boom")
    })?;
    let (c_key, mut c_peer) = counting(&mut sel, &runs)?;

    // Whatever ran before the panic in that batch, the panicking callback runs once.
    let mut message = None;
    for _ in 0..3 {
        message = run_once_catching(&mut sel);
        if message.is_some() {
            break;
        }
    }
    assert_eq!(message.as_deref(), Some("callback boom"));
    assert_eq!(drops.count(), 1, "its closure is dropped exactly once");
    assert!(!sel.contains(bad_key));
    assert_eq!(sel.len(), 2);
    assert_eq!(epoll_entry(&sel, bad_fd)?, None);
    assert_eq!(epoll_entries(&sel)?.len(), 2);
    assert!(peer_closed(&mut bad_peer)?, "its source is closed");

    // The others still dispatch, each once per iteration, in later iterations.
    sel.run_once(WAIT)?;
    let before = runs.get();
    b_peer.write_all(b"b")?;
    c_peer.write_all(b"c")?;
    sel.run_once(WAIT)?;
    if runs.get() - before < 2 {
        sel.run_once(WAIT)?;
    }
    assert_eq!(runs.get() - before, 2);
    assert!(sel.contains(b_key) && sel.contains(c_key));
    assert_eq!(drops.count(), 1);
    Ok(())
}

#[test]
fn run_works_again_after_a_panic_unwound_out_of_it() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let (bad, _bad_peer) = readable_pair()?;
    sel.register(bad, Interest::READ, |_, _, _| panic!("once"))?;
    assert!(panic::catch_unwind(AssertUnwindSafe(|| sel.run())).is_err());
    assert!(sel.is_empty());

    let (good, _peer) = readable_pair()?;
    let ran = Rc::new(Cell::new(false));
    let flag = Rc::clone(&ran);
    sel.register(good, Interest::READ, move |reg, _, event| {
        flag.set(true);
        reg.remove(event.key())
    })?;
    sel.run()?;
    assert!(ran.get());
    assert!(sel.is_empty());
    Ok(())
}

#[test]
fn a_panic_after_changing_its_own_interest_leaves_no_kernel_entry() -> io::Result<()> {
    for next in [Interest::WRITE, Interest::NONE, Interest::BOTH] {
        let mut sel = Selector::new()?;
        let (ours, _peer) = readable_pair()?;
        let drops = DropCounter::new();
        let guard = drops.guard();
        sel.register(ours, Interest::READ, move |reg, _, event| {
            let _keep = &guard;
            reg.modify(event.key(), next)?;
            panic!("after modify")
        })?;
        assert_eq!(run_once_catching(&mut sel).as_deref(), Some("after modify"));
        assert_eq!(drops.count(), 1, "{next:?}");
        assert!(sel.is_empty(), "{next:?}");
        assert_eq!(epoll_entries(&sel)?, [], "{next:?}");
    }
    Ok(())
}

#[test]
fn a_panic_after_removing_itself_drops_it_once() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, _peer) = readable_pair()?;
    let drops = DropCounter::new();
    let guard = drops.guard();
    sel.register(ours, Interest::READ, move |reg, _, event| {
        let _keep = &guard;
        reg.remove(event.key())?;
        panic!("after remove")
    })?;
    assert_eq!(run_once_catching(&mut sel).as_deref(), Some("after remove"));
    assert_eq!(drops.count(), 1);
    assert!(sel.is_empty());
    assert_eq!(epoll_entries(&sel)?, []);
    Ok(())
}

#[test]
fn what_a_callback_did_before_panicking_stays_done() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (victim, mut victim_peer) = pair()?;
    let victim_key = sel.register(victim, Interest::READ, noop())?;
    let (ours, _peer) = readable_pair()?;
    let spawned: Rc<Cell<Option<Key<UnixStream>>>> = Rc::new(Cell::new(None));
    let record = Rc::clone(&spawned);
    sel.register(ours, Interest::READ, move |reg, _, _| {
        reg.remove(victim_key)?;
        let (fresh, _) = pair()?;
        record.set(Some(reg.register(fresh, Interest::WRITE, noop())?));
        panic!("after work")
    })?;
    assert_eq!(run_once_catching(&mut sel).as_deref(), Some("after work"));
    assert!(!sel.contains(victim_key));
    assert!(peer_closed(&mut victim_peer)?);
    let spawned = spawned.get().expect("registered before the panic");
    assert_eq!(sel.interest(spawned), Some(Interest::WRITE));
    assert_eq!(sel.len(), 1);
    Ok(())
}

#[test]
fn a_panicking_error_handler_unwinds_and_stays_installed() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let calls = Rc::new(Cell::new(0));
    let counter = Rc::clone(&calls);
    sel.set_error_handler(move |_, _, _| {
        counter.set(counter.get() + 1);
        if counter.get() == 1 {
            panic!("handler boom");
        }
    });
    let drops = DropCounter::new();
    for _ in 0..2 {
        let (bad, peer) = readable_pair()?;
        let guard = drops.guard();
        sel.register(bad, Interest::READ, move |_, _, _| {
            let _keep = (&guard, &peer);
            Err(io::Error::other("fail"))
        })?;
    }
    assert_eq!(run_once_catching(&mut sel).as_deref(), Some("handler boom"));
    // The other failing source reports on this iteration or the next.
    for _ in 0..2 {
        if calls.get() == 2 {
            break;
        }
        assert_eq!(run_once_catching(&mut sel), None);
    }
    assert_eq!(calls.get(), 2, "the handler survived its own panic");
    assert_eq!(drops.count(), 2);
    assert!(sel.is_empty());
    Ok(())
}

/// Captured by a callback; when dropped, it queues work through a handle: the closest a drop
/// can get to reaching the registry.
struct ReentrantGuard {
    handle: Handle,
    victim: Key<UnixStream>,
    outcome: Rc<Cell<Option<Result<(), io::ErrorKind>>>>,
    queued: DropCounter,
}

impl Drop for ReentrantGuard {
    fn drop(&mut self) {
        let victim = self.victim;
        let queued = self.queued.guard();
        let result = self.handle.call_soon(move |reg| {
            let _keep = &queued;
            reg.remove(victim).expect("the victim is still registered");
            let (fresh, _) = UnixStream::pair().expect("socketpair");
            reg.register(fresh, Interest::WRITE, |_, _, _| Ok(()))
                .expect("register from a call queued by a drop");
        });
        self.outcome.set(Some(result.map_err(|e| e.kind())));
    }
}

#[test]
fn a_drop_that_reenters_through_a_handle_works_or_is_refused() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (victim, _victim_peer) = pair()?;
    let victim_key = sel.register(victim, Interest::READ, noop())?;
    let outcome = Rc::new(Cell::new(None));
    let queued = DropCounter::new();
    let guard = ReentrantGuard {
        handle: sel.handle(),
        victim: victim_key,
        outcome: Rc::clone(&outcome),
        queued: queued.clone(),
    };
    let (holder, _holder_peer) = pair()?;
    let holder_key = sel.register(holder, Interest::READ, move |_, _, _| {
        let _keep = &guard;
        Ok(())
    })?;
    // Another callback removes the holder, dropping the guard in the middle of dispatch.
    let (trigger, _trigger_peer) = readable_pair()?;
    sel.register(trigger, Interest::READ, move |reg, _, event| {
        reg.remove(holder_key)?;
        reg.remove(event.key())
    })?;
    sel.run_once(WAIT)?;
    assert_eq!(outcome.get(), Some(Ok(())), "queued while dispatching");
    sel.run_once(WAIT)?;
    assert_eq!(queued.count(), 1, "the queued call ran");
    assert!(!sel.contains(victim_key));
    assert_eq!(sel.len(), 1, "only the source it registered is left");

    // The same guard dropped with the selector: the handle refuses, nothing runs or leaks.
    let (victim, _victim_peer) = pair()?;
    let victim_key = sel.register(victim, Interest::READ, noop())?;
    let outcome = Rc::new(Cell::new(None));
    let queued = DropCounter::new();
    let guard = ReentrantGuard {
        handle: sel.handle(),
        victim: victim_key,
        outcome: Rc::clone(&outcome),
        queued: queued.clone(),
    };
    let (holder, _holder_peer) = pair()?;
    sel.register(holder, Interest::READ, move |_, _, _| {
        let _keep = &guard;
        Ok(())
    })?;
    drop(sel);
    assert_eq!(outcome.get(), Some(Err(io::ErrorKind::NotConnected)));
    assert_eq!(
        queued.count(),
        1,
        "the refused call was dropped without running"
    );
    Ok(())
}
