//! Signals delivered as loop callbacks (`Registry::on_signals`): the right signal, on the loop's
//! thread, coalesced per wake-up; removal in every way uninstalls the watch and closes its
//! descriptors, leaving other handlers of the same signal working.
//!
//! Signal dispositions and descriptor counts are process-wide, so this binary is separate from
//! the others and every test holds `util::serial()`.

mod util;

use std::cell::{Cell, RefCell};
use std::ffi::c_int;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use selreactor::{Key, Selector, Signals};
use signal_hook::consts::{SIGALRM, SIGKILL, SIGSTOP, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};
use signal_hook::low_level::raise;

use util::{fd_count, serial, watchdog, HUNG_AFTER};

type Seen = Rc<RefCell<Vec<c_int>>>;

/// A watch that records each delivery.
fn watch(sel: &mut Selector, signals: &[c_int]) -> io::Result<(Key<Signals>, Seen)> {
    let seen = Seen::default();
    let log = Rc::clone(&seen);
    let key = sel.on_signals(signals, move |_, signal| {
        log.borrow_mut().push(signal);
        Ok(())
    })?;
    Ok((key, seen))
}

#[test]
fn signal_from_another_thread_runs_the_callback_on_the_loop_thread() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let loop_thread = thread::current().id();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let log = Rc::clone(&seen);
    sel.on_signals(&[SIGUSR1, SIGUSR2], move |_, signal| {
        log.borrow_mut().push((signal, thread::current().id()));
        Ok(())
    })?;

    // Raised on the helper, the handler runs there; the callback must still run here.
    let raiser = thread::spawn(|| {
        thread::sleep(Duration::from_millis(50));
        raise(SIGUSR2)
    });
    let start = Instant::now();
    while seen.borrow().is_empty() && start.elapsed() < Duration::from_secs(5) {
        sel.run_once(Some(Duration::from_millis(500)))?;
    }
    raiser.join().expect("raiser panicked")?;
    assert_eq!(*seen.borrow(), [(SIGUSR2, loop_thread)]);
    Ok(())
}

#[test]
fn signals_between_wakeups_arrive_once_each_in_watch_order() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let (_key, seen) = watch(&mut sel, &[SIGUSR1, SIGUSR2, SIGUSR1])?;

    raise(SIGUSR2)?;
    raise(SIGUSR1)?;
    raise(SIGUSR1)?;
    raise(SIGUSR2)?;
    let ran = sel.run_once(Some(Duration::from_secs(2)))?;
    assert_eq!(ran, 1, "one wake-up, one dispatch of the watch");
    assert_eq!(*seen.borrow(), [SIGUSR1, SIGUSR2]);

    // The pipe was drained: nothing is left to wake the loop.
    assert_eq!(sel.run_once(Some(Duration::from_millis(50)))?, 0);
    assert_eq!(seen.borrow().len(), 2);

    raise(SIGUSR2)?;
    sel.run_once(Some(Duration::from_secs(2)))?;
    assert_eq!(*seen.borrow(), [SIGUSR1, SIGUSR2, SIGUSR2]);
    Ok(())
}

#[test]
fn sigterm_callback_stops_run() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let _serial = serial();
    let mut sel = Selector::new()?;
    let stopped_by = Rc::new(Cell::new(None));
    let by = Rc::clone(&stopped_by);
    sel.on_signals(&[SIGTERM], move |reg, signal| {
        by.set(Some(signal));
        reg.stop();
        Ok(())
    })?;
    // A watch keeps `run` going; the guard timer ends a broken test instead of hanging it.
    let timed_out = Rc::new(Cell::new(false));
    let flag = Rc::clone(&timed_out);
    let guard = sel.call_later(Duration::from_secs(5), move |reg| {
        flag.set(true);
        reg.stop();
    });

    let raiser = thread::spawn(|| {
        thread::sleep(Duration::from_millis(50));
        raise(SIGTERM)
    });
    sel.run()?;
    raiser.join().expect("raiser panicked")?;
    assert!(!timed_out.get(), "SIGTERM did not stop the loop within 5 s");
    assert_eq!(stopped_by.get(), Some(SIGTERM));
    sel.cancel(guard)?;
    Ok(())
}

#[test]
fn removing_the_watch_closes_its_fds_and_keeps_earlier_handlers() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    // A handler of our own, installed before the signal's first watch in this process (no
    // other test watches SIGALRM): it must work before, during and after the watch, and the
    // signal, handled, must not take its default action (terminate) once unwatched.
    let flagged = Arc::new(AtomicBool::new(false));
    let own = signal_hook::flag::register(SIGALRM, Arc::clone(&flagged))?;

    let before = fd_count()?;
    let (key, seen) = watch(&mut sel, &[SIGALRM, SIGWINCH])?;
    assert_eq!(
        fd_count()?,
        before + 3,
        "one read end plus one write end per signal"
    );

    raise(SIGALRM)?;
    assert!(flagged.swap(false, Ordering::SeqCst));
    sel.run_once(Some(Duration::from_secs(2)))?;
    assert_eq!(*seen.borrow(), [SIGALRM]);

    sel.remove(key)?;
    assert_eq!(fd_count()?, before, "removal leaked descriptors");
    assert!(sel.is_empty());

    raise(SIGALRM)?;
    raise(SIGWINCH)?; // its default action, given back, is to ignore it
    assert!(
        flagged.load(Ordering::SeqCst),
        "the earlier handler stopped working"
    );
    assert_eq!(sel.run_once(Some(Duration::from_millis(50)))?, 0);
    assert_eq!(*seen.borrow(), [SIGALRM]);

    assert!(signal_hook::low_level::unregister(own));
    Ok(())
}

/// Set in a child run of this binary: which signal [`removing_the_last_watch_gives_the_default_action_back`]
/// plays with, or `ignored` for the `SIG_IGN` case.
const CHILD_VAR: &str = "SELREACTOR_SIGNAL_CHILD";
const CHILD_TEST: &str = "removing_the_last_watch_gives_the_default_action_back";

/// asyncio's `remove_signal_handler` restores the default action; so does dropping the last
/// watch. The check needs a process that may die: this binary runs itself again, with
/// [`CHILD_VAR`] set and only this test, once per signal.
#[test]
fn removing_the_last_watch_gives_the_default_action_back() -> io::Result<()> {
    if let Ok(what) = std::env::var(CHILD_VAR) {
        return child(&what);
    }
    let _serial = serial();
    for (what, dies_by) in [
        ("SIGTERM", Some(SIGTERM)),
        ("SIGUSR1", Some(SIGUSR1)),
        ("ignored", None),
    ] {
        let out = Command::new(std::env::current_exe()?)
            .args([CHILD_TEST, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_VAR, what)
            .stdin(Stdio::null())
            .output()?;
        let said = format!(
            "{what}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.signal(), dies_by, "{said}");
        if dies_by.is_some() {
            assert!(said.contains("removed the last watch"), "{said}");
        } else {
            assert!(out.status.success(), "{said}");
        }
    }
    Ok(())
}

/// Two selectors watch the signal: it stays handled while either watch lives, and takes its
/// old action once both are gone: the default (the process dies here), or `SIG_IGN`.
fn child(what: &str) -> io::Result<()> {
    let signal = match what {
        "SIGTERM" => SIGTERM,
        "SIGUSR1" => SIGUSR1,
        "ignored" => {
            // SAFETY: installs SIG_IGN, no handler code; this process runs no other test.
            let old = unsafe { libc::signal(SIGUSR2, libc::SIG_IGN) };
            assert_ne!(old, libc::SIG_ERR);
            SIGUSR2
        }
        other => panic!("unknown child case {other:?}"),
    };
    let (mut first, mut second) = (Selector::new()?, Selector::new()?);
    let (first_key, first_seen) = watch(&mut first, &[signal])?;
    let (second_key, second_seen) = watch(&mut second, &[signal])?;
    raise(signal)?;
    first.run_once(Some(Duration::from_secs(5)))?;
    second.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(
        (first_seen.take(), second_seen.take()),
        (vec![signal], vec![signal])
    );

    first.remove(first_key)?;
    raise(signal)?; // still watched: handled, not the default action
    second.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(second_seen.take(), [signal]);

    second.remove(second_key)?;
    println!("removed the last watch");
    raise(signal)?; // delivered before `raise` returns
    if what == "ignored" {
        return Ok(());
    }
    thread::sleep(Duration::from_millis(200));
    Err(io::Error::other(format!(
        "survived {what} after its last watch was removed"
    )))
}

#[test]
fn a_watch_can_remove_itself_and_gets_no_further_signal() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let before = fd_count()?;
    let own_key: Rc<Cell<Option<Key<Signals>>>> = Rc::default();
    let seen = Seen::default();
    let (slot, log) = (Rc::clone(&own_key), Rc::clone(&seen));
    let key = sel.on_signals(&[SIGUSR1, SIGUSR2], move |reg, signal| {
        log.borrow_mut().push(signal);
        reg.remove(slot.get().expect("key stored before any signal"))
    })?;
    own_key.set(Some(key));

    raise(SIGUSR1)?;
    raise(SIGUSR2)?;
    sel.run_once(Some(Duration::from_secs(2)))?;
    assert_eq!(*seen.borrow(), [SIGUSR1], "delivered after removing itself");
    assert!(!sel.contains(key));
    assert_eq!(fd_count()?, before, "self-removal leaked descriptors");
    Ok(())
}

#[test]
fn a_failing_callback_removes_the_watch_and_reports_the_error() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let before = fd_count()?;
    let reported = Rc::new(RefCell::new(Vec::new()));
    let report = Rc::clone(&reported);
    sel.set_error_handler(move |_, token, error| report.borrow_mut().push((token, error.kind())));
    let key = sel.on_signals(&[SIGUSR2], |_, _| Err(io::Error::other("refused")))?;

    raise(SIGUSR2)?;
    sel.run_once(Some(Duration::from_secs(2)))?;
    assert_eq!(*reported.borrow(), [(key.token(), io::ErrorKind::Other)]);
    assert!(!sel.contains(key));
    assert_eq!(fd_count()?, before);
    Ok(())
}

#[test]
fn dropping_the_selector_or_the_unregistered_watch_uninstalls_it() -> io::Result<()> {
    let _serial = serial();
    let before = fd_count()?;
    let mut sel = Selector::new()?;
    watch(&mut sel, &[SIGUSR1])?;
    drop(sel);
    assert_eq!(
        fd_count()?,
        before,
        "dropping the selector leaked descriptors"
    );

    let mut sel = Selector::new()?;
    let with_selector = fd_count()?;
    let (key, seen) = watch(&mut sel, &[SIGUSR1, SIGUSR2])?;
    let signals = sel.unregister(key)?;
    assert_eq!(signals.signals().collect::<Vec<_>>(), [SIGUSR1, SIGUSR2]);
    assert!(format!("{signals:?}").contains("SIGUSR2"));
    raise(SIGUSR1)?; // still installed, nobody listening: harmless
    assert_eq!(sel.run_once(Some(Duration::from_millis(50)))?, 0);
    drop(signals);
    assert_eq!(
        fd_count()?,
        with_selector,
        "dropping the watch leaked descriptors"
    );
    assert!(seen.borrow().is_empty());
    Ok(())
}

#[test]
fn unhandleable_or_empty_signal_lists_are_refused_without_leaks() -> io::Result<()> {
    let _serial = serial();
    let mut sel = Selector::new()?;
    let before = fd_count()?;
    let cases: [&[c_int]; 5] = [&[], &[SIGKILL], &[SIGUSR1, SIGSTOP], &[0], &[SIGUSR1, 4096]];
    for signals in cases {
        let err = sel
            .on_signals(signals, |_, _| Ok(()))
            .expect_err(&format!("{signals:?} accepted"));
        assert_eq!(
            err.kind(),
            io::ErrorKind::InvalidInput,
            "{signals:?}: {err}"
        );
        assert_eq!(fd_count()?, before, "{signals:?} leaked descriptors");
        assert!(sel.is_empty());
    }
    Ok(())
}
