//! Lifecycle: descriptors and closures released exactly once, however a registration ends, and
//! descriptor-number reuse inside a batch.
//!
//! Every test here counts or reuses descriptor numbers, so each takes [`serial`] first.

mod util;

use std::cell::RefCell;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::thread;
use std::time::Duration;

use selreactor::{Interest, Key, Selector};
use util::*;

const WAIT: Option<Duration> = Some(Duration::from_secs(5));

/// A socket that, when dropped, records whether the selector still polled its descriptor.
struct Probe {
    stream: UnixStream,
    epoll: RawFd,
    still_polled_at_drop: Rc<RefCell<Vec<bool>>>,
}

impl AsFd for Probe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let fd = self.stream.as_raw_fd();
        let polled = epoll_fds(&self.epoll).expect("fdinfo").contains(&fd);
        self.still_polled_at_drop.borrow_mut().push(polled);
    }
}

#[test]
fn dropping_the_selector_releases_every_registration_once_and_leaks_no_descriptor() -> io::Result<()>
{
    let _serial = serial();
    let baseline = fd_count()?;
    let mut sel = Selector::new()?;
    let epoll = sel.as_raw_fd();
    let polled_at_drop = Rc::new(RefCell::new(Vec::new()));
    let drops = DropCounter::new();
    let mut peers = Vec::new();
    let mut register = |sel: &mut Selector, interest| -> io::Result<Key<Probe>> {
        let (stream, peer) = readable_pair()?;
        peers.push(peer);
        let probe = Probe {
            stream,
            epoll,
            still_polled_at_drop: Rc::clone(&polled_at_drop),
        };
        let guard = drops.guard();
        Ok(sel.register(probe, interest, move |_, _, _| {
            let _keep = &guard;
            Ok(())
        })?)
    };
    let live = register(&mut sel, Interest::READ)?;
    let paused = register(&mut sel, Interest::BOTH)?;
    sel.modify(paused, Interest::NONE)?;
    let _writer = register(&mut sel, Interest::WRITE)?;
    let removed = register(&mut sel, Interest::READ)?;
    sel.remove(removed)?;
    assert_eq!(drops.count(), 1);
    sel.run_once(WAIT)?; // the live ones have run, so they have been taken out and put back
    assert!(sel.contains(live));
    // Work that never runs is dropped too.
    let timer_guard = drops.guard();
    sel.call_later(Duration::from_secs(3600), move |_| drop(timer_guard));
    let call_guard = drops.guard();
    sel.call_soon(move |_| drop(call_guard));
    let handle_guard = drops.guard();
    sel.handle().call_soon(move |_| drop(handle_guard))?;

    drop(sel);
    assert_eq!(drops.count(), 7, "every closure dropped exactly once");
    assert_eq!(
        *polled_at_drop.borrow(),
        [false; 4],
        "each source left the poller before it was closed"
    );
    drop(peers);
    assert_eq!(fd_count()?, baseline);
    Ok(())
}

#[test]
fn a_selector_dropped_while_a_callback_panic_unwinds_releases_everything_once() -> io::Result<()> {
    let _serial = serial();
    let baseline = fd_count()?;
    let drops = DropCounter::new();
    let counter = drops.clone();
    let unwound = thread::spawn(move || -> io::Result<()> {
        let mut sel = Selector::new()?;
        for _ in 0..3 {
            let (idle, peer) = pair()?;
            let guard = counter.guard();
            sel.register(idle, Interest::READ, move |_, _, _| {
                let _keep = (&guard, &peer);
                Ok(())
            })?;
        }
        let (bad, peer) = readable_pair()?;
        let guard = counter.guard();
        sel.register(bad, Interest::READ, move |_, _, _| {
            let _keep = (&guard, &peer);
            panic!("unwinding through the selector's owner")
        })?;
        sel.run_once(WAIT)?;
        unreachable!("the callback panics");
    })
    .join();
    assert!(unwound.is_err(), "the panic reached the thread's top");
    assert_eq!(drops.count(), 4);
    assert_eq!(fd_count()?, baseline);
    Ok(())
}

#[test]
fn every_way_out_closes_the_descriptor_once() -> io::Result<()> {
    let _serial = serial();
    let baseline = fd_count()?;
    let mut sel = Selector::new()?;
    let with_selector = fd_count()?;
    let drops = DropCounter::new();
    let mut peers = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..5 {
        let (ours, peer) = pair()?;
        peers.push(peer);
        let guard = drops.guard();
        keys.push(sel.register(ours, Interest::READ, move |reg, _, event| {
            let _keep = &guard;
            match event.key().token().index() {
                2 => reg.remove(event.key()),
                3 => Err(io::Error::other("callback error")),
                _ => panic!("callback panic"),
            }
        })?);
    }
    sel.set_error_handler(|_, _, _| {});
    assert_eq!(fd_count()?, with_selector + 10);

    sel.remove(keys[0])?;
    let back = sel.unregister(keys[1])?;
    assert_eq!(fd_count()?, with_selector + 9, "unregister keeps it open");
    drop(back);
    for (i, peer) in peers.iter_mut().enumerate().skip(2) {
        peer.write_all(b"x")?;
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| sel.run_once(WAIT)));
        assert_eq!(outcome.is_err(), i == 4, "only the last one panics");
    }
    assert!(sel.is_empty());
    assert_eq!(drops.count(), 5);
    assert_eq!(fd_count()?, with_selector + 5, "only the peers are left");
    drop(peers);
    drop(sel);
    assert_eq!(fd_count()?, baseline);
    Ok(())
}

#[test]
fn a_handle_keeps_the_poller_open_until_it_is_dropped_too() -> io::Result<()> {
    let _serial = serial();
    let baseline = fd_count()?;
    let sel = Selector::new()?;
    let handle = sel.handle();
    drop(sel);
    assert_eq!(
        handle.wake().map_err(|e| e.kind()),
        Err(io::ErrorKind::NotConnected)
    );
    assert_eq!(
        handle.call_soon(|_| {}).map_err(|e| e.kind()),
        Err(io::ErrorKind::NotConnected)
    );
    drop(handle);
    assert_eq!(fd_count()?, baseline);
    Ok(())
}

/// Moves `stream`'s socket onto descriptor number `target` (which must be free) and returns it.
fn move_to_fd(stream: UnixStream, target: RawFd) -> io::Result<UnixStream> {
    // SAFETY: dup2 takes no pointers. `target` is free: its previous owner was just closed,
    // and `serial` keeps this binary's other tests from opening descriptors meanwhile.
    let fd = unsafe { libc::dup2(stream.as_raw_fd(), target) };
    if fd != target {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor from dup2 that nothing else owns.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

#[test]
fn a_newcomer_in_a_removed_sources_slot_and_descriptor_never_gets_its_stale_event() -> io::Result<()>
{
    let _serial = serial();
    let mut sel = Selector::new()?;
    let (a, _pa) = readable_pair()?;
    let (b, _pb) = readable_pair()?;
    let fds = [a.as_raw_fd(), b.as_raw_fd()];
    type Slot = Rc<RefCell<Option<Key<UnixStream>>>>;
    let keys: [Slot; 2] = Default::default();
    let ran = log::<&'static str>();
    let newcomer: Slot = Default::default();
    for (i, source) in [a, b].into_iter().enumerate() {
        let (ran, all_keys, newcomer) = (Rc::clone(&ran), keys.clone(), Rc::clone(&newcomer));
        let name = ["a", "b"][i];
        let key = sel.register(source, Interest::READ, move |reg, stream, _| {
            ran.borrow_mut().push(name);
            drain(stream)?;
            let Some(victim) = all_keys[1 - i].borrow_mut().take() else {
                return Ok(()); // the newcomer is already in place
            };
            let victim_fd = fds[1 - i];
            // Opened first, so that neither end takes the number about to be freed.
            let (fresh, mut fresh_peer) = pair()?;
            reg.remove(victim)?;
            assert!(!is_open(victim_fd));
            let fresh = move_to_fd(fresh, victim_fd)?;
            fresh_peer.write_all(b"ready at once")?;
            let ran = Rc::clone(&ran);
            let key = reg
                .register(fresh, Interest::READ, move |_, stream, _| {
                    let _peer = &fresh_peer;
                    ran.borrow_mut().push("newcomer");
                    drain(stream).map(drop)
                })
                .map_err(io::Error::from)?;
            assert_eq!(key.token().index(), victim.token().index(), "same slot");
            *newcomer.borrow_mut() = Some(key);
            Ok(())
        })?;
        *keys[i].borrow_mut() = Some(key);
    }

    sel.run_once(WAIT)?;
    let first = take(&ran);
    assert_eq!(
        first.len(),
        1,
        "the victim's stale event reached nobody: {first:?}"
    );
    let newcomer = newcomer.borrow().expect("registered");
    let victim_fd = if first[0] == "a" { fds[1] } else { fds[0] };
    let entry = epoll_entry(&sel, victim_fd)?.expect("the newcomer is polled");
    assert!(entry.is_for(newcomer.token()), "{entry:?}");

    sel.run_once(WAIT)?;
    assert_eq!(
        take(&ran),
        ["newcomer"],
        "its own event, to its own closure"
    );
    assert_eq!(sel.len(), 2);
    Ok(())
}
