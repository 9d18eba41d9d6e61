//! Dispatch within one batch: what callbacks may do to themselves and to each other, stopping,
//! and how callback errors are contained.

mod util;

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::{Mutex, Once, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use selreactor::{Interest, Key, Registry, Selector, Token};
use util::*;

type Slot = Rc<Cell<Option<Key<UnixStream>>>>;

fn slot() -> Slot {
    Rc::new(Cell::new(None))
}

/// Reads what is there; end of stream and `WouldBlock` both count as "nothing".
fn read_some(mut stream: &UnixStream) -> io::Result<usize> {
    let mut buf = [0; 256];
    match stream.read(&mut buf) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

#[test]
fn a_callback_removing_itself_runs_once_and_is_dropped_after_it_returns() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let errors = log::<String>();
    let seen = Rc::clone(&errors);
    sel.set_error_handler(move |_, token, e| seen.borrow_mut().push(format!("{token}: {e}")));
    let (ours, _peer) = readable_pair()?;
    let fd = ours.as_raw_fd();
    let drops = DropCounter::new();
    let guard = drops.guard();
    let watcher = drops.clone();
    let runs = Rc::new(Cell::new(0));
    let counted = Rc::clone(&runs);
    let key = sel.register(ours, Interest::READ, move |reg, _, event| {
        let _keep = &guard;
        counted.set(counted.get() + 1);
        reg.remove(event.key())?;
        assert!(!reg.contains(event.key()));
        assert_eq!(watcher.count(), 0, "dropped while still running");
        Ok(())
    })?;

    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    assert_eq!(runs.get(), 1);
    assert_eq!(drops.count(), 1);
    assert!(!sel.contains(key));
    assert_eq!(epoll_entry(&sel, fd)?, None);
    assert_eq!(sel.run_once(Some(Duration::from_millis(50)))?, 0);
    assert_eq!(runs.get(), 1);
    assert_eq!(
        take(&errors),
        [] as [String; 0],
        "no error from re-arming a removed source"
    );
    Ok(())
}

#[test]
fn removing_another_source_drops_its_pending_event_whichever_runs_first() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (a, _pa) = readable_pair()?;
    let (b, _pb) = readable_pair()?;
    let (a_key, b_key) = (slot(), slot());
    let ran = log();
    let mut register = |source, name: &'static str, other: &Slot| {
        let (ran, other) = (Rc::clone(&ran), Rc::clone(other));
        sel.register(source, Interest::READ, move |reg, _, _| {
            ran.borrow_mut().push(name);
            reg.remove(other.get().expect("both registered"))
        })
    };
    a_key.set(Some(register(a, "a", &b_key)?));
    b_key.set(Some(register(b, "b", &a_key)?));

    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    let ran = take(&ran);
    assert_eq!(ran.len(), 1, "exactly one of them runs: {ran:?}");
    assert_eq!(sel.len(), 1);
    let survivor = if ran[0] == "a" {
        a_key.get()
    } else {
        b_key.get()
    };
    assert!(sel.contains(survivor.expect("set")));
    Ok(())
}

#[test]
fn removing_another_and_registering_into_its_slot_never_misdelivers() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (a, _pa) = readable_pair()?;
    let (b, _pb) = readable_pair()?;
    let (a_key, b_key) = (slot(), slot());
    let ran = log();
    let newcomer: Slot = slot();
    let mut register = |source, name: &'static str, other: &Slot| {
        let (ran, other, newcomer) = (Rc::clone(&ran), Rc::clone(other), Rc::clone(&newcomer));
        sel.register(source, Interest::READ, move |reg, stream, _| {
            ran.borrow_mut().push(name);
            read_some(stream)?;
            let Some(victim) = other.get() else {
                return Ok(());
            };
            other.set(None);
            reg.remove(victim)?;
            let (fresh, mut fresh_peer) = pair()?;
            fresh_peer.write_all(b"ready at once")?;
            let ran = Rc::clone(&ran);
            let key = reg
                .register(fresh, Interest::READ, move |_, stream, _| {
                    let _peer = &fresh_peer;
                    ran.borrow_mut().push("newcomer");
                    read_some(stream).map(drop)
                })
                .map_err(io::Error::from)?;
            assert_eq!(key.token().index(), victim.token().index(), "slot reused");
            newcomer.set(Some(key));
            Ok(())
        })
    };
    a_key.set(Some(register(a, "a", &b_key)?));
    b_key.set(Some(register(b, "b", &a_key)?));

    sel.run_once(Some(Duration::from_secs(5)))?;
    let first = take(&ran);
    assert_eq!(
        first.len(),
        1,
        "the victim's stale event went nowhere: {first:?}"
    );
    assert!(newcomer.get().is_some());
    sel.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(names_sorted(take(&ran)), ["newcomer"]);
    Ok(())
}

fn names_sorted(mut names: Vec<&'static str>) -> Vec<&'static str> {
    names.sort_unstable();
    names
}

#[test]
fn changing_anothers_interest_filters_its_pending_event() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (a, _pa) = readable_pair()?;
    let (b, _pb) = readable_pair()?;
    let (a_key, b_key) = (slot(), slot());
    let ran = log();
    let mut register = |source, name: &'static str, other: &Slot| {
        let (ran, other) = (Rc::clone(&ran), Rc::clone(other));
        sel.register(source, Interest::READ, move |reg, _, event| {
            ran.borrow_mut().push((name, event.readiness()));
            let other = other.get().expect("both registered");
            if reg.interest(other) == Some(Interest::READ)
                && reg.interest(event.key()) == Some(Interest::READ)
            {
                reg.modify(other, Interest::WRITE)?;
            }
            Ok(())
        })
    };
    a_key.set(Some(register(a, "a", &b_key)?));
    b_key.set(Some(register(b, "b", &a_key)?));

    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    let first = take(&ran);
    assert_eq!(
        first.len(),
        1,
        "the other's READ event was filtered: {first:?}"
    );
    let (winner, other) = if first[0].0 == "a" {
        ("a", "b")
    } else {
        ("b", "a")
    };

    // Next iteration: the winner is still readable; the other now waits for WRITE only.
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 2);
    let mut second = take(&ran);
    second.sort_by_key(|(name, _)| *name);
    for (name, readiness) in second {
        if name == winner {
            assert!(readiness.is_readable() && !readiness.is_writable());
        } else {
            assert_eq!(name, other);
            assert!(readiness.is_writable() && !readiness.is_readable());
        }
    }
    Ok(())
}

#[test]
fn pausing_another_filters_its_pending_event_until_resumed() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (a, _pa) = readable_pair()?;
    let (b, _pb) = readable_pair()?;
    let (a_key, b_key) = (slot(), slot());
    let ran = log();
    let paused_once = Rc::new(Cell::new(false));
    let mut register = |source, name: &'static str, other: &Slot| {
        let (ran, other, paused_once) =
            (Rc::clone(&ran), Rc::clone(other), Rc::clone(&paused_once));
        sel.register(source, Interest::READ, move |reg, _, _| {
            ran.borrow_mut().push(name);
            if !paused_once.replace(true) {
                reg.modify(other.get().expect("both registered"), Interest::NONE)?;
            }
            Ok(())
        })
    };
    a_key.set(Some(register(a, "a", &b_key)?));
    b_key.set(Some(register(b, "b", &a_key)?));

    sel.run_once(Some(Duration::from_secs(5)))?;
    let first = take(&ran);
    assert_eq!(first.len(), 1, "{first:?}");
    for _ in 0..3 {
        sel.run_once(Some(SETTLE))?;
        assert_eq!(take(&ran), first, "only the one still readable runs");
    }
    let paused = if first[0] == "a" {
        b_key.get()
    } else {
        a_key.get()
    };
    sel.modify(paused.expect("set"), Interest::READ)?;
    sel.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(names_sorted(take(&ran)), ["a", "b"]);
    Ok(())
}

#[test]
fn a_callback_changing_its_own_interest_takes_effect_when_it_returns() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, _peer) = readable_pair()?;
    let fd = ours.as_raw_fd();
    let seen = log();
    let record = Rc::clone(&seen);
    let key = sel.register(ours, Interest::READ, move |reg, _, event| {
        record.borrow_mut().push(event.readiness());
        let next = if event.is_readable() {
            Interest::WRITE
        } else {
            Interest::NONE
        };
        reg.modify(event.key(), next)?;
        assert_eq!(reg.interest(event.key()), Some(next));
        Ok(())
    })?;

    sel.run_once(Some(Duration::from_secs(5)))?;
    let entry = epoll_entry(&sel, fd)?.expect("still polled");
    assert_eq!(entry.interest(), Interest::WRITE);
    assert!(entry.is_for(key.token()));
    sel.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(epoll_entry(&sel, fd)?, None, "paused by its own callback");
    assert_eq!(sel.run_once(Some(SETTLE))?, 0);
    let seen = take(&seen);
    assert_eq!(seen.len(), 2);
    assert!(seen[0].is_readable() && !seen[0].is_writable());
    assert!(seen[1].is_writable() && !seen[1].is_readable());
    assert_eq!(sel.interest(key), Some(Interest::NONE));
    Ok(())
}

#[test]
fn a_callback_cannot_unregister_itself_but_can_remove_itself() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, _peer) = readable_pair()?;
    let outcome = log();
    let record = Rc::clone(&outcome);
    let key = sel.register(ours, Interest::READ, move |reg, stream, event| {
        let me = event.key();
        let busy = reg.unregister(me).map(drop).map_err(|e| e.kind());
        record.borrow_mut().push(format!("{busy:?}"));
        assert!(reg.contains(me));
        assert!(
            reg.get(me).is_none(),
            "the callback already holds its source"
        );
        assert_eq!(reg.interest(me), Some(Interest::READ));
        drain(stream)?;
        reg.remove(me)
    })?;
    sel.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(take(&outcome), ["Err(ResourceBusy)"]);
    assert!(!sel.contains(key));
    assert!(sel.is_empty());
    Ok(())
}

#[test]
fn a_callback_sees_its_own_key_and_source_and_others_sources() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (idle, _idle_peer) = pair()?;
    let idle_fd = idle.as_raw_fd();
    let idle_key = sel.register(idle, Interest::READ, noop())?;
    let (ours, _peer) = readable_pair()?;
    let our_fd = ours.as_raw_fd();
    let own = slot();
    let expected = Rc::clone(&own);
    let checked = Rc::new(Cell::new(false));
    let done = Rc::clone(&checked);
    own.set(Some(sel.register(
        ours,
        Interest::READ,
        move |reg, stream, event| {
            assert_eq!(Some(event.key()), expected.get());
            assert_eq!(stream.as_raw_fd(), our_fd);
            assert_eq!(reg.get(idle_key).map(|s| s.as_raw_fd()), Some(idle_fd));
            done.set(true);
            drain(stream).map(drop)
        },
    )?));
    sel.run_once(Some(Duration::from_secs(5)))?;
    assert!(checked.get());
    Ok(())
}

#[test]
fn stop_from_a_callback_finishes_the_iteration_then_run_returns_and_runs_again() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let (a, mut pa) = readable_pair()?;
    let (b, _pb) = readable_pair()?;
    let ran = log();
    for (source, name) in [(a, "a"), (b, "b")] {
        let ran = Rc::clone(&ran);
        sel.register(source, Interest::READ, move |reg, stream, _| {
            ran.borrow_mut().push(name);
            drain(stream)?;
            reg.stop();
            Ok(())
        })?;
    }
    let deferred = Rc::clone(&ran);
    sel.call_soon(move |_| deferred.borrow_mut().push("deferred"));
    let timer = Rc::clone(&ran);
    sel.call_at(Instant::now(), move |_| timer.borrow_mut().push("timer"));

    sel.run()?;
    assert_eq!(
        names_sorted(take(&ran)),
        ["a", "b", "deferred", "timer"],
        "the whole iteration ran, and only one"
    );

    pa.write_all(b"more")?;
    sel.run()?;
    assert_eq!(take(&ran), ["a"]);
    assert_eq!(sel.len(), 2);
    Ok(())
}

#[test]
fn stop_requested_before_run_returns_after_one_iteration_without_blocking() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    let mut sel = Selector::new()?;
    let (idle, _peer) = pair()?;
    sel.register(idle, Interest::READ, noop())?;
    // A safety net, so a broken selector fails the test instead of hanging it.
    let handle = sel.handle();
    let (finished, finish) = std::sync::mpsc::channel::<()>();
    let rescue = thread::spawn(move || {
        if finish.recv_timeout(Duration::from_secs(3)).is_err() {
            let _ = handle.stop();
        }
    });
    sel.stop();
    let start = Instant::now();
    sel.run()?;
    let took = start.elapsed();
    let _ = finished.send(());
    rescue.join().expect("rescue thread");
    assert!(
        took < Duration::from_secs(1),
        "run blocked for {took:?} after stop()"
    );
    Ok(())
}

#[test]
fn spurious_readiness_is_tolerated_and_the_source_keeps_working() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (a, _pa) = readable_pair()?;
    let (b, mut pb) = readable_pair()?;
    let (a_key, b_key) = (slot(), slot());
    let reads = log();
    let mut register = |source, name: &'static str, other: &Slot| {
        let (reads, other) = (Rc::clone(&reads), Rc::clone(other));
        sel.register(source, Interest::READ, move |reg, stream, _| {
            // Drain the other one too, so that if it runs next its readiness is stale.
            if let Some(other) = other.get().and_then(|k| reg.get(k)) {
                drain(other)?;
            }
            reads.borrow_mut().push((name, read_some(stream)?));
            Ok(())
        })
    };
    a_key.set(Some(register(a, "a", &b_key)?));
    b_key.set(Some(register(b, "b", &a_key)?));

    sel.run_once(Some(Duration::from_secs(5)))?;
    let first = take(&reads);
    assert!(!first.is_empty());
    assert_eq!(first[0].1, 1, "the first to run read its byte");
    if let Some(second) = first.get(1) {
        assert_eq!(
            second.1, 0,
            "the second got a spurious wake-up and read nothing"
        );
    }
    assert_eq!(sel.len(), 2, "nobody was removed");
    pb.write_all(b"again")?;
    sel.run_once(Some(Duration::from_secs(5)))?;
    let got: Vec<_> = take(&reads)
        .into_iter()
        .filter(|(n, _)| *n == "b")
        .collect();
    assert_eq!(got, [("b", 5)], "b fires again on new data");
    Ok(())
}

#[test]
fn a_failing_callback_is_removed_reported_with_its_token_and_others_carry_on() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let reported = log::<(Token, io::ErrorKind, String)>();
    let record = Rc::clone(&reported);
    sel.set_error_handler(move |reg, token, e| {
        assert!(
            reg.registrations().all(|(t, _)| t != token),
            "removed before reporting"
        );
        record.borrow_mut().push((token, e.kind(), e.to_string()));
    });
    let (bad, mut bad_peer) = readable_pair()?;
    let bad_fd = bad.as_raw_fd();
    let drops = DropCounter::new();
    let guard = drops.guard();
    let bad_key = sel.register(bad, Interest::READ, move |_, _, _| {
        let _keep = &guard;
        Err(io::Error::new(io::ErrorKind::InvalidData, "boom"))
    })?;
    let (good, mut good_peer) = readable_pair()?;
    let good_runs = Rc::new(Cell::new(0));
    let counter = Rc::clone(&good_runs);
    let good_key = sel.register(good, Interest::READ, move |_, stream, _| {
        counter.set(counter.get() + 1);
        drain(stream).map(drop)
    })?;

    sel.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(
        take(&reported),
        [(
            bad_key.token(),
            io::ErrorKind::InvalidData,
            "boom".to_string()
        )]
    );
    assert!(!sel.contains(bad_key));
    assert_eq!(drops.count(), 1, "its callback is dropped once");
    assert_eq!(epoll_entry(&sel, bad_fd)?, None);
    assert!(peer_closed(&mut bad_peer)?, "its source is closed");

    for round in 1..=3 {
        good_peer.write_all(b"x")?;
        sel.run_once(Some(Duration::from_secs(5)))?;
        assert_eq!(good_runs.get(), 1 + round);
    }
    assert!(sel.contains(good_key));
    assert_eq!(drops.count(), 1);
    assert_eq!(take(&reported).len(), 0);
    Ok(())
}

#[test]
fn without_a_handler_errors_go_to_the_log_facade_and_the_loop_goes_on() -> io::Result<()> {
    let _watchdog = watchdog(HUNG_AFTER);
    capture_log();
    let mut sel = Selector::new()?;
    let (bad, _bad_peer) = readable_pair()?;
    let bad_key = sel.register(bad, Interest::READ, |_, _, _| {
        Err(io::Error::other(
            "expected failure, logged by the default handler",
        ))
    })?;
    let (good, mut good_peer) = readable_pair()?;
    let runs = Rc::new(Cell::new(0));
    let counter = Rc::clone(&runs);
    sel.register(good, Interest::READ, move |reg, stream, _| {
        drain(stream)?;
        counter.set(counter.get() + 1);
        if counter.get() == 3 {
            reg.stop();
        }
        Ok(())
    })?;
    let handle = sel.handle();
    let feeder = thread::spawn(move || -> io::Result<()> {
        for _ in 0..2 {
            thread::sleep(SETTLE);
            good_peer.write_all(b"x")?;
        }
        drop(handle);
        Ok(())
    });
    sel.run()?;
    feeder.join().expect("feeder")?;
    assert_eq!(runs.get(), 3);
    assert!(!sel.contains(bad_key));
    assert_eq!(sel.len(), 1);

    let records = CAPTURED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let ours: Vec<_> = records
        .iter()
        .filter(|r| r.message.contains("logged by the default handler"))
        .collect();
    assert_eq!(ours.len(), 1, "one record for one failure: {records:?}");
    let record = ours[0];
    assert_eq!(record.level, ::log::Level::Error);
    assert!(record.target.starts_with("selreactor"), "{record:?}");
    for part in [bad_key.token().to_string().as_str(), "UnixStream"] {
        assert!(record.message.contains(part), "no {part:?} in {record:?}");
    }
    Ok(())
}

#[derive(Clone, Debug)]
struct Record {
    level: ::log::Level,
    target: String,
    message: String,
}

static CAPTURED: Mutex<Vec<Record>> = Mutex::new(Vec::new());

/// A `log` backend that keeps every record, installed once for this binary.
struct Capture;

impl ::log::Log for Capture {
    fn enabled(&self, _: &::log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &::log::Record<'_>) {
        CAPTURED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Record {
                level: record.level(),
                target: record.target().to_owned(),
                message: record.args().to_string(),
            });
    }

    fn flush(&self) {}
}

fn capture_log() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        ::log::set_logger(&Capture).expect("no other logger in this binary");
        ::log::set_max_level(::log::LevelFilter::Trace);
    });
}

#[test]
fn would_block_and_interrupted_are_not_failures() -> io::Result<()> {
    for kind in [io::ErrorKind::WouldBlock, io::ErrorKind::Interrupted] {
        let mut sel = Selector::new()?;
        let reported = log::<String>();
        let report = Rc::clone(&reported);
        sel.set_error_handler(move |_, token, e| report.borrow_mut().push(format!("{token}: {e}")));
        let (ours, mut peer) = readable_pair()?;
        let fd = ours.as_raw_fd();
        let calls = Rc::new(Cell::new(0));
        let count = Rc::clone(&calls);
        let key = sel.register(ours, Interest::READ, move |_, stream, _| {
            count.set(count.get() + 1);
            if count.get() <= 3 {
                return Err(io::Error::from(kind)); // as `read(..)?` would pass it on
            }
            drain(stream)?;
            Ok(())
        })?;
        for call in 1..=3 {
            assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1, "{kind:?}");
            assert_eq!(calls.get(), call, "{kind:?}: dispatched again while ready");
            assert!(sel.contains(key), "{kind:?} removed the registration");
            assert!(
                epoll_entry(&sel, fd)?.is_some(),
                "{kind:?}: left the kernel"
            );
        }
        assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
        assert_eq!(calls.get(), 4);
        // Drained: it sleeps until the peer writes again, then runs.
        assert_eq!(sel.run_once(Some(SETTLE))?, 0);
        peer.write_all(b"more")?;
        assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
        assert_eq!(calls.get(), 5);
        assert!(
            reported.borrow().is_empty(),
            "{kind:?}: {:?}",
            reported.borrow()
        );
    }
    Ok(())
}

#[test]
fn an_error_handler_may_register_and_remove_sources() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (victim, mut victim_peer) = pair()?;
    let victim_drops = DropCounter::new();
    let guard = victim_drops.guard();
    let victim_key = sel.register(victim, Interest::READ, move |_, _, _| {
        let _keep = &guard;
        Ok(())
    })?;
    let replacement = slot();
    let ran = log();
    let (record, placed) = (Rc::clone(&ran), Rc::clone(&replacement));
    sel.set_error_handler(move |reg, _, _| {
        reg.remove(victim_key).expect("victim still registered");
        let (fresh, fresh_peer) = readable_pair().expect("socketpair");
        let record = Rc::clone(&record);
        let key = reg
            .register(fresh, Interest::READ, move |_, stream, _| {
                let _peer = &fresh_peer;
                record.borrow_mut().push("replacement");
                drain(stream).map(drop)
            })
            .expect("register from the error handler");
        placed.set(Some(key));
    });
    let (bad, _bad_peer) = readable_pair()?;
    sel.register(bad, Interest::READ, |_, _, _| Err(io::Error::other("fail")))?;

    sel.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(victim_drops.count(), 1);
    assert!(!sel.contains(victim_key));
    assert!(peer_closed(&mut victim_peer)?);
    let replacement = replacement.get().expect("registered by the handler");
    assert!(sel.contains(replacement));
    assert_eq!(sel.len(), 1);
    sel.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(take(&ran), ["replacement"]);
    Ok(())
}

#[test]
fn an_error_handler_may_replace_itself() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let seen = Rc::new(RefCell::new(Vec::new()));
    let first = Rc::clone(&seen);
    sel.set_error_handler(move |reg, _, _| {
        first.borrow_mut().push("first");
        let second = Rc::clone(&first);
        reg.set_error_handler(move |_, _, _| second.borrow_mut().push("second"));
    });
    for _ in 0..3 {
        let (bad, peer) = readable_pair()?;
        sel.register(bad, Interest::READ, move |_, _, _| {
            let _peer = &peer;
            Err(io::Error::other("fail"))
        })?;
        sel.run_once(Some(Duration::from_secs(5)))?;
    }
    assert_eq!(*seen.borrow(), ["first", "second", "second"]);
    Ok(())
}

#[test]
fn callbacks_registered_during_an_iteration_wait_for_the_next() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (a, _pa) = readable_pair()?;
    let ran = log();
    let record = Rc::clone(&ran);
    sel.register(
        a,
        Interest::READ,
        move |reg: &mut Registry, stream, event| {
            drain(stream)?;
            record.borrow_mut().push("spawner");
            let (fresh, peer) = readable_pair()?;
            let inner = Rc::clone(&record);
            reg.register(fresh, Interest::READ, move |reg, _, event| {
                let _peer = &peer;
                inner.borrow_mut().push("spawned");
                reg.remove(event.key())
            })
            .map_err(io::Error::from)?;
            reg.remove(event.key())
        },
    )?;
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    assert_eq!(take(&ran), ["spawner"]);
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    assert_eq!(take(&ran), ["spawned"]);
    assert!(sel.is_empty());
    Ok(())
}

#[test]
fn a_write_only_source_whose_peer_is_gone_is_dispatched_then_closed_without_spinning(
) -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, peer) = pair()?;
    let fd = ours.as_raw_fd();
    let seen = log();
    let record = Rc::clone(&seen);
    let key = sel.register(ours, Interest::WRITE, move |reg, mut stream, event| {
        record.borrow_mut().push(event.readiness());
        match stream.write_all(b"anyone there?") {
            Ok(_) => Ok(()),
            // What a server does with a dead peer: close it.
            Err(e) => {
                record.borrow_mut().push(selreactor::Readiness::default());
                assert!(matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ));
                reg.remove(event.key())
            }
        }
    })?;
    drop(peer);
    sel.run_once(Some(Duration::from_secs(5)))?;
    let seen = take(&seen);
    assert_eq!(seen.len(), 2, "one dispatch, whose write failed: {seen:?}");
    assert!(seen[0].is_writable() && seen[0].is_hangup(), "{seen:?}");
    assert!(!sel.contains(key));
    assert_eq!(epoll_entry(&sel, fd)?, None);
    let start = Instant::now();
    assert_eq!(sel.run_once(Some(Duration::from_millis(50)))?, 0);
    assert!(start.elapsed() >= Duration::from_millis(50));
    Ok(())
}
