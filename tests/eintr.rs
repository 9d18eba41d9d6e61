//! EINTR (S19): a signal delivered to the loop's thread, whose handler was installed without
//! `SA_RESTART`, neither errors out of the wait nor ends it early.
//!
//! Its own binary, so the handler cannot disturb other tests; its tests take [`serial`] so the
//! delivery counts are their own.

mod util;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use selreactor::{Interest, Selector};
use util::*;

static DELIVERED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    DELIVERED.fetch_add(1, Ordering::SeqCst);
}

/// Installs a SIGURG handler without `SA_RESTART`, so blocking calls fail with `EINTR`.
fn install_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: `action` is zero-initialised and then fully set up before use; the handler
        // only touches an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = count_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = 0;
            libc::sigemptyset(&mut action.sa_mask);
            let installed = libc::sigaction(libc::SIGURG, &action, std::ptr::null_mut());
            assert_eq!(installed, 0, "sigaction: {}", io::Error::last_os_error());
        }
    });
}

/// The calling thread, as `pthread_kill` names it.
fn this_thread() -> libc::pthread_t {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() }
}

/// Sends SIGURG to `target` every `every` from `after` on, until `stop` is set (or 3 s pass).
fn signal_sender(
    target: libc::pthread_t,
    after: Duration,
    every: Option<Duration>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<usize> {
    // The target outlives the sender: every test joins it before returning.
    let target = target as usize;
    thread::spawn(move || {
        thread::sleep(after);
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut sent = 0;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            // SAFETY: `target` is a live thread of this process (see above); SIGURG has a
            // handler installed, so it cannot kill the process.
            let rc = unsafe { libc::pthread_kill(target as libc::pthread_t, libc::SIGURG) };
            assert_eq!(rc, 0, "pthread_kill failed: {rc}");
            sent += 1;
            match every {
                Some(period) => thread::sleep(period),
                None => break,
            }
        }
        sent
    })
}

fn upper_bound() -> Duration {
    if under_valgrind() {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(1)
    }
}

fn idle_selector() -> io::Result<(Selector, std::os::unix::net::UnixStream)> {
    let mut sel = Selector::new()?;
    let (idle, peer) = pair()?;
    sel.register(idle, Interest::READ, noop())?;
    Ok((sel, peer))
}

#[test]
fn one_signal_during_a_wait_neither_errors_nor_shortens_it() -> io::Result<()> {
    let _serial = serial();
    install_handler();
    let (mut sel, _peer) = idle_selector()?;
    let before = DELIVERED.load(Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = signal_sender(this_thread(), Duration::from_millis(100), None, stop);
    let timeout = Duration::from_millis(500);
    let start = Instant::now();
    let ran = sel.run_once(Some(timeout));
    let waited = start.elapsed();
    let sent = sender.join().expect("sender");
    assert_eq!(ran?, 0);
    assert_eq!(sent, 1);
    assert!(
        DELIVERED.load(Ordering::SeqCst) > before,
        "the signal never arrived"
    );
    assert!(waited >= timeout, "ended early: {waited:?}");
    assert!(waited < timeout + upper_bound(), "overslept: {waited:?}");
    Ok(())
}

#[test]
fn a_signal_storm_neither_errors_nor_shortens_nor_stretches_a_wait() -> io::Result<()> {
    let _serial = serial();
    install_handler();
    let (mut sel, _peer) = idle_selector()?;
    let before = DELIVERED.load(Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let sender = signal_sender(
        this_thread(),
        Duration::ZERO,
        Some(Duration::from_millis(1)),
        Arc::clone(&stop),
    );
    let timeout = Duration::from_millis(200);
    let start = Instant::now();
    let ran = sel.run_once(Some(timeout));
    let waited = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    let sent = sender.join().expect("sender");
    assert_eq!(ran?, 0);
    let delivered = DELIVERED.load(Ordering::SeqCst) - before;
    assert!(
        delivered >= 10,
        "only {delivered} of {sent} signals arrived"
    );
    assert!(waited >= timeout, "ended early: {waited:?}");
    assert!(waited < timeout + upper_bound(), "overslept: {waited:?}");
    Ok(())
}

#[test]
fn a_signal_storm_does_not_end_an_unbounded_wait_but_a_wake_does() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let _serial = serial();
    install_handler();
    let (mut sel, _peer) = idle_selector()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = signal_sender(
        this_thread(),
        Duration::ZERO,
        Some(Duration::from_millis(1)),
        Arc::clone(&stop),
    );
    let handle = sel.handle();
    let waker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        handle.wake()
    });
    let start = Instant::now();
    let ran = sel.run_once(None);
    let waited = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    sender.join().expect("sender");
    waker.join().expect("waker")?;
    assert_eq!(ran?, 0);
    assert!(
        waited >= Duration::from_millis(300),
        "ended early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(300) + upper_bound(),
        "{waited:?}"
    );
    Ok(())
}

#[test]
fn a_ready_source_is_still_dispatched_under_a_signal_storm() -> io::Result<()> {
    let _serial = serial();
    install_handler();
    let mut sel = Selector::new()?;
    let (ours, _peer) = readable_pair()?;
    let log = log();
    sel.register(ours, Interest::READ, recorder(&log, "ready"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let sender = signal_sender(
        this_thread(),
        Duration::ZERO,
        Some(Duration::from_micros(200)),
        Arc::clone(&stop),
    );
    let mut dispatched = 0;
    for _ in 0..200 {
        dispatched += sel.run_once(Some(Duration::from_secs(1)))?;
    }
    stop.store(true, Ordering::SeqCst);
    sender.join().expect("sender");
    assert_eq!(
        dispatched, 200,
        "every iteration dispatched the ready source"
    );
    assert_eq!(names(&log).len(), 200);
    Ok(())
}
