//! Registration semantics: what `register`, `modify`, `unregister` and `remove` accept, refuse
//! and leave behind, checked against the kernel's own interest list.

mod util;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use selreactor::{Interest, Selector, Token};
use util::*;

fn temp_file(name: &str) -> io::Result<(std::path::PathBuf, File)> {
    let path = std::env::temp_dir().join(format!(
        "selreactor-{}-{name}-{}",
        std::process::id(),
        std::thread::current()
            .name()
            .unwrap_or("t")
            .replace("::", "-")
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    Ok((path, file))
}

#[test]
fn register_with_none_interest_is_refused_and_the_source_handed_back() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, mut peer) = pair()?;
    let fd = ours.as_raw_fd();
    let refused = sel
        .register(ours, Interest::NONE, noop())
        .expect_err("NONE must be refused at register");
    assert_eq!(refused.error.kind(), io::ErrorKind::InvalidInput);
    assert_eq!(refused.source.as_raw_fd(), fd);
    (&refused.source).write_all(b"still usable")?;
    let mut buf = [0; 12];
    peer.read_exact(&mut buf)?;
    assert_eq!(&buf, b"still usable");
    assert!(sel.is_empty());
    assert_eq!(epoll_entries(&sel)?, []);
    Ok(())
}

#[test]
fn regular_file_is_refused_with_eperm_handed_back_open_and_no_slot_is_used() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (path, mut file) = temp_file("regular")?;
    file.write_all(b"contents")?;
    let refused = sel
        .register(file, Interest::READ, noop())
        .expect_err("epoll cannot poll a regular file");
    assert_eq!(refused.error.raw_os_error(), Some(libc::EPERM));
    let mut file = refused.source;
    file.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    assert_eq!(text, "contents");
    drop(file);
    std::fs::remove_file(path)?;
    assert!(sel.is_empty());
    assert_eq!(epoll_entries(&sel)?, []);

    // The refusal consumed nothing: the next registration gets the first slot.
    let (ours, _peer) = pair()?;
    let key = sel.register(ours, Interest::READ, noop())?;
    assert_eq!(key.token().index(), 0);
    Ok(())
}

#[test]
fn registering_the_selectors_own_descriptor_is_refused() -> io::Result<()> {
    let mut sel = Selector::new()?;
    // A duplicate names the same epoll instance, which epoll refuses to watch itself.
    let own = sel.as_fd().try_clone_to_owned()?;
    let own_fd = own.as_raw_fd();
    let refused = sel
        .register(own, Interest::READ, noop())
        .expect_err("an epoll instance cannot poll itself");
    assert_eq!(refused.error.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(refused.source.as_raw_fd(), own_fd);
    assert!(
        is_open(own_fd),
        "the refused descriptor is handed back open"
    );
    assert!(sel.is_empty());
    assert_eq!(epoll_entries(&sel)?, []);
    Ok(())
}

#[test]
fn second_registration_of_one_descriptor_is_refused_and_changes_nothing() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, mut peer) = pair()?;
    let shared = Rc::new(ours);
    let fd = shared.as_raw_fd();
    let log = log();
    let key = sel.register(
        Rc::clone(&shared),
        Interest::READ,
        recorder(&log, "original"),
    )?;
    let before = epoll_entries(&sel)?;

    for interest in [Interest::READ, Interest::WRITE] {
        let drops = DropCounter::new();
        let guard = drops.guard();
        let refused = sel
            .register(Rc::clone(&shared), interest, move |_, _, _| {
                let _keep = &guard;
                panic!("a refused registration's callback must never run")
            })
            .expect_err("the same descriptor twice");
        assert_eq!(refused.error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(drops.count(), 1, "the refused closure is dropped, once");
        assert!(
            Rc::ptr_eq(&refused.source, &shared),
            "the source comes back"
        );
        drop(refused);
        assert_eq!(sel.len(), 1);
        assert_eq!(epoll_entries(&sel)?, before);
        assert!(is_open(fd));
    }

    // Paused, the original is out of the kernel's list, which would take the descriptor again;
    // the selector still refuses it: the number is the original's until it is removed.
    sel.modify(key, Interest::NONE)?;
    let refused = sel
        .register(Rc::clone(&shared), Interest::READ, noop())
        .expect_err("the same descriptor while the first is paused");
    assert_eq!(refused.error.kind(), io::ErrorKind::AlreadyExists);
    drop(refused);
    assert_eq!(sel.len(), 1);
    assert_eq!(epoll_entries(&sel)?, []);
    sel.modify(key, Interest::READ)?;
    assert_eq!(epoll_entries(&sel)?, before);

    peer.write_all(b"x")?;
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    assert_eq!(names(&log), ["original"]);
    assert!(sel.contains(key));
    Ok(())
}

/// Code that breaks I/O safety (FFI, `unsafe`) closes a registered descriptor behind the
/// selector's back and the OS reuses the number. The number stays claimed by the stale
/// registration, so the newcomer is refused (handed back, open) instead of sharing a kernel
/// entry that the stale registration's `modify`, `remove` or drop would then change or delete.
#[test]
fn a_number_closed_behind_the_selectors_back_stays_claimed_until_its_registration_goes(
) -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (stale, _stale_peer) = pair()?;
    let number = stale.as_raw_fd();
    let log = log();
    let stale_key = sel.register(stale, Interest::READ, recorder(&log, "stale"))?;

    // The foreign close and the reuse of the number, in one step (no other thread can take
    // the number in between).
    let (newcomer, mut peer) = pair()?;
    // SAFETY: dup2 takes no pointers. It closes `number` under the registered stream, which is
    // the I/O-safety breach this test simulates; that stream is never dropped afterwards (it is
    // unregistered and forgotten below).
    let fd = unsafe { libc::dup2(newcomer.as_raw_fd(), number) };
    assert_eq!(fd, number, "dup2: {}", io::Error::last_os_error());
    drop(newcomer);
    // SAFETY: `number` now refers to the new socket, and only this stream will close it.
    let newcomer = unsafe { UnixStream::from_raw_fd(number) };
    assert_eq!(
        epoll_entries(&sel)?,
        [],
        "the kernel dropped the stale entry with its file"
    );

    let refused = match sel.register(newcomer, Interest::READ, recorder(&log, "newcomer")) {
        Err(refused) => refused,
        Ok(_) => {
            // Dropping the selector would close the number twice (an abort, in debug builds).
            std::mem::forget(sel);
            panic!("a claimed number was registered again");
        }
    };
    assert_eq!(refused.error.kind(), io::ErrorKind::AlreadyExists);
    assert!(
        refused
            .error
            .to_string()
            .contains(&stale_key.token().to_string()),
        "the error names the holder: {}",
        refused.error
    );
    let newcomer = refused.source;
    assert_eq!(newcomer.as_raw_fd(), number);
    assert!(is_open(number));
    assert_eq!(epoll_entries(&sel)?, []);

    // Removing the stale registration frees the number; its stream is not dropped, since
    // dropping it would close the newcomer's descriptor.
    std::mem::forget(sel.unregister(stale_key)?);
    let key = sel.register(newcomer, Interest::READ, recorder(&log, "newcomer"))?;
    let entries = epoll_entries(&sel)?;
    assert_eq!(entries.len(), 1);
    assert!(entries[0].fd == number && entries[0].is_for(key.token()));
    peer.write_all(b"x")?;
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    assert_eq!(names(&log), ["newcomer"]);
    Ok(())
}

#[test]
fn a_duplicated_descriptor_is_a_distinct_registration() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, mut peer) = pair()?;
    let clone = ours.try_clone()?;
    let log = log();
    let first = sel.register(ours, Interest::READ, recorder(&log, "first"))?;
    let second = sel.register(clone, Interest::READ, recorder(&log, "second"))?;
    assert_eq!(epoll_entries(&sel)?.len(), 2);

    peer.write_all(b"x")?;
    sel.run_once(Some(Duration::from_secs(5)))?;
    let mut seen = names(&log);
    seen.sort();
    assert_eq!(seen, ["first", "second"]);

    let clone = sel.unregister(second)?;
    assert_eq!(epoll_entries(&sel)?.len(), 1);
    drain(&clone)?;
    peer.write_all(b"y")?;
    sel.run_once(Some(Duration::from_secs(5)))?;
    assert_eq!(names(&log), ["first"]);
    assert!(sel.contains(first));
    Ok(())
}

#[test]
fn modify_before_running_changes_what_is_dispatched() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, _peer) = readable_pair()?;
    let fd = ours.as_raw_fd();
    let log = log();
    let key = sel.register(ours, Interest::READ, recorder(&log, "s"))?;

    sel.modify(key, Interest::WRITE)?;
    let entry = epoll_entry(&sel, fd)?.expect("still polled");
    assert!(entry.wants_write() && !entry.wants_read(), "{entry:?}");
    assert_eq!(sel.run_once(Some(Duration::ZERO))?, 1);
    let seen = take(&log);
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].1.is_writable() && !seen[0].1.is_readable(),
        "{seen:?}"
    );

    sel.modify(key, Interest::BOTH)?;
    assert_eq!(
        epoll_entry(&sel, fd)?.map(|e| e.interest()),
        Some(Interest::BOTH)
    );
    sel.run_once(Some(Duration::ZERO))?;
    let seen = take(&log);
    assert_eq!(seen.len(), 1, "one dispatch per source per iteration");
    assert!(
        seen[0].1.is_writable() && seen[0].1.is_readable(),
        "{seen:?}"
    );

    // Asking for what it already has is accepted and changes nothing.
    let before = epoll_entries(&sel)?;
    sel.modify(key, Interest::BOTH)?;
    assert_eq!(epoll_entries(&sel)?, before);
    assert_eq!(sel.interest(key), Some(Interest::BOTH));
    Ok(())
}

#[test]
fn pausing_with_none_stops_dispatch_and_a_hung_up_paused_socket_does_not_spin() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, peer) = readable_pair()?;
    let fd = ours.as_raw_fd();
    let log = log();
    let key = sel.register(ours, Interest::READ, recorder(&log, "paused"))?;
    sel.modify(key, Interest::NONE)?;
    drop(peer); // a hang-up: epoll would report it on every wait, whatever the mask

    assert_eq!(
        epoll_entry(&sel, fd)?,
        None,
        "a paused source leaves the kernel's list"
    );
    assert_eq!(sel.len(), 1, "paused, not removed");
    assert_eq!(sel.interest(key), Some(Interest::NONE));
    let start = Instant::now();
    assert_eq!(sel.run_once(Some(Duration::from_millis(50)))?, 0);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(50),
        "woke early: {waited:?}"
    );
    assert_eq!(take(&log), []);

    // Resuming delivers what accumulated meanwhile, hang-up included.
    sel.modify(key, Interest::READ)?;
    assert!(epoll_entry(&sel, fd)?.is_some());
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    let seen = take(&log);
    assert!(seen[0].1.is_readable() && seen[0].1.is_hangup(), "{seen:?}");
    Ok(())
}

#[test]
fn a_stale_key_is_rejected_after_its_slot_is_reused() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (a, _a_peer) = pair()?;
    let stale = sel.register(a, Interest::READ, noop())?;
    sel.remove(stale)?;

    let (b, mut b_peer) = pair()?;
    let b_fd = b.as_raw_fd();
    let log = log();
    let fresh = sel.register(b, Interest::READ, recorder(&log, "b"))?;
    assert_eq!(
        fresh.token().index(),
        stale.token().index(),
        "the slot is reused"
    );
    assert_ne!(fresh.token(), stale.token());
    let before = epoll_entries(&sel)?;

    let kind = |r: io::Result<()>| r.expect_err("stale key accepted").kind();
    assert_eq!(
        kind(sel.modify(stale, Interest::WRITE)),
        io::ErrorKind::NotFound
    );
    assert_eq!(kind(sel.remove(stale)), io::ErrorKind::NotFound);
    assert_eq!(
        sel.unregister(stale).map(drop).map_err(|e| e.kind()),
        Err(io::ErrorKind::NotFound)
    );
    assert!(!sel.contains(stale));
    assert_eq!(sel.interest(stale), None);
    assert!(sel.get(stale).is_none());

    assert_eq!(epoll_entries(&sel)?, before);
    assert_eq!(sel.interest(fresh), Some(Interest::READ));
    assert_eq!(sel.get(fresh).map(|s| s.as_raw_fd()), Some(b_fd));
    b_peer.write_all(b"x")?;
    assert_eq!(sel.run_once(Some(Duration::from_secs(5)))?, 1);
    assert_eq!(names(&log), ["b"]);
    Ok(())
}

#[test]
fn a_key_from_another_selector_is_rejected_even_with_an_equal_token() -> io::Result<()> {
    let mut first = Selector::new()?;
    let mut second = Selector::new()?;
    let (a, _a_peer) = pair()?;
    let (b, _b_peer) = pair()?;
    let a_key = first.register(a, Interest::READ, noop())?;
    let b_key = second.register(b, Interest::WRITE, noop())?;
    assert_eq!(
        a_key.token(),
        b_key.token(),
        "both selectors start at the same token"
    );
    let (first_before, second_before) = (epoll_entries(&first)?, epoll_entries(&second)?);

    assert!(!second.contains(a_key));
    assert_eq!(second.interest(a_key), None);
    assert!(second.get(a_key).is_none());
    assert_eq!(
        second.modify(a_key, Interest::BOTH).map_err(|e| e.kind()),
        Err(io::ErrorKind::NotFound)
    );
    assert_eq!(
        second.remove(a_key).map_err(|e| e.kind()),
        Err(io::ErrorKind::NotFound)
    );
    assert_eq!(
        second.unregister(a_key).map(drop).map_err(|e| e.kind()),
        Err(io::ErrorKind::NotFound)
    );

    assert_eq!((first.len(), second.len()), (1, 1));
    assert_eq!(epoll_entries(&first)?, first_before);
    assert_eq!(epoll_entries(&second)?, second_before);
    assert_eq!(second.interest(b_key), Some(Interest::WRITE));
    assert_eq!(first.interest(a_key), Some(Interest::READ));
    Ok(())
}

#[test]
fn a_key_works_once_then_is_rejected() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (a, _peer_a) = pair()?;
    let (b, _peer_b) = pair()?;
    let removed = sel.register(a, Interest::READ, noop())?;
    let unregistered = sel.register(b, Interest::READ, noop())?;

    sel.remove(removed)?;
    assert_eq!(
        sel.remove(removed).map_err(|e| e.kind()),
        Err(io::ErrorKind::NotFound)
    );
    let b = sel.unregister(unregistered)?;
    assert_eq!(
        sel.unregister(unregistered).map(drop).map_err(|e| e.kind()),
        Err(io::ErrorKind::NotFound)
    );
    assert_eq!(
        sel.modify(unregistered, Interest::READ)
            .map_err(|e| e.kind()),
        Err(io::ErrorKind::NotFound)
    );
    assert!(sel.is_empty());
    assert_eq!(epoll_entries(&sel)?, []);
    drop(b);
    Ok(())
}

#[test]
fn unregister_hands_back_the_typed_source_open_and_drops_the_callback() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, mut peer) = pair()?;
    let fd = ours.as_raw_fd();
    let drops = DropCounter::new();
    let guard = drops.guard();
    let key = sel.register(ours, Interest::READ, move |_, _, _| {
        let _keep = &guard;
        Ok(())
    })?;

    let back: UnixStream = sel.unregister(key)?;
    assert_eq!(drops.count(), 1, "the callback is dropped by unregister");
    assert_eq!(back.as_raw_fd(), fd);
    assert!(is_open(fd));
    assert_eq!(epoll_entry(&sel, fd)?, None);
    (&back).write_all(b"round trip")?;
    let mut buf = [0; 10];
    peer.read_exact(&mut buf)?;
    assert_eq!(&buf, b"round trip");

    // Not polled any more: data for it wakes nothing.
    peer.write_all(b"x")?;
    assert_eq!(sel.run_once(Some(SETTLE))?, 0);

    // And it can be registered again.
    let again = sel.register(back, Interest::READ, noop())?;
    assert!(sel.contains(again));
    Ok(())
}

#[test]
fn remove_closes_the_source_and_drops_the_callback() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (ours, mut peer) = pair()?;
    let fd = ours.as_raw_fd();
    let drops = DropCounter::new();
    let guard = drops.guard();
    let key = sel.register(ours, Interest::READ, move |_, _, _| {
        let _keep = &guard;
        Ok(())
    })?;
    sel.remove(key)?;
    assert_eq!(drops.count(), 1);
    assert_eq!(epoll_entry(&sel, fd)?, None);
    let mut buf = [0; 1];
    peer.set_nonblocking(false)?;
    assert_eq!(
        peer.read(&mut buf)?,
        0,
        "the peer sees end of stream: closed"
    );
    Ok(())
}

#[test]
fn accessors_report_live_registrations_only() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let (a, _pa) = pair()?;
    let (b, _pb) = pair()?;
    let (c, _pc) = pair()?;
    let fds = [a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd()];
    let ka = sel.register(a, Interest::READ, noop())?;
    let kb = sel.register(b, Interest::WRITE, noop())?;
    let kc = sel.register(c, Interest::BOTH, noop())?;
    assert_eq!(sel.len(), 3);
    assert_eq!(
        sel.registrations().collect::<Vec<_>>(),
        [
            (ka.token(), Interest::READ),
            (kb.token(), Interest::WRITE),
            (kc.token(), Interest::BOTH)
        ]
    );
    for (key, fd) in [ka, kb, kc].into_iter().zip(fds) {
        assert!(sel.contains(key));
        assert_eq!(sel.get(key).map(|s| s.as_raw_fd()), Some(fd));
    }

    sel.modify(kb, Interest::NONE)?;
    sel.remove(ka)?;
    assert_eq!(
        sel.registrations().collect::<Vec<_>>(),
        [(kb.token(), Interest::NONE), (kc.token(), Interest::BOTH)]
    );
    assert_eq!(sel.len(), 2, "a paused registration still counts");
    assert!(!sel.is_empty());
    assert_eq!(sel.get(kb).map(|s| s.as_raw_fd()), Some(fds[1]));
    assert!(sel.get(ka).is_none());
    Ok(())
}

/// Compares the kernel's interest list with what `registrations()` says, through the fds the
/// test recorded for each token.
fn assert_kernel_view(sel: &Selector, fds: &BTreeMap<Token, RawFd>) -> io::Result<()> {
    let expected: Vec<(RawFd, Interest, Token)> = sel
        .registrations()
        .filter(|(_, interest)| !interest.is_none())
        .map(|(token, interest)| (fds[&token], interest, token))
        .collect();
    let entries = epoll_entries(sel)?;
    assert_eq!(entries.len(), expected.len(), "{entries:?} vs {expected:?}");
    for (fd, interest, token) in expected {
        let entry = entries
            .iter()
            .find(|e| e.fd == fd)
            .unwrap_or_else(|| panic!("fd {fd} ({token:?}) missing from {entries:?}"));
        assert_eq!(entry.interest(), interest, "{entry:?}");
        assert!(entry.is_for(token), "{entry:?} does not carry {token:?}");
    }
    Ok(())
}

#[test]
fn the_kernels_interest_list_tracks_every_change() -> io::Result<()> {
    let mut sel = Selector::new()?;
    let mut fds = BTreeMap::new();
    let mut keys = Vec::new();
    let mut peers = Vec::new();
    for interest in [
        Interest::READ,
        Interest::WRITE,
        Interest::BOTH,
        Interest::READ,
    ] {
        let (ours, peer) = pair()?;
        let fd = ours.as_raw_fd();
        let key = sel.register(ours, interest, noop())?;
        fds.insert(key.token(), fd);
        keys.push(key);
        peers.push(peer);
        assert_kernel_view(&sel, &fds)?;
    }
    sel.modify(keys[0], Interest::WRITE)?;
    assert_kernel_view(&sel, &fds)?;
    sel.modify(keys[1], Interest::NONE)?;
    assert_kernel_view(&sel, &fds)?;
    sel.modify(keys[1], Interest::BOTH)?;
    assert_kernel_view(&sel, &fds)?;
    sel.modify(keys[2], Interest::NONE)?;
    sel.remove(keys[2])?; // removing a paused registration
    assert_kernel_view(&sel, &fds)?;
    let _back = sel.unregister(keys[3])?;
    assert_kernel_view(&sel, &fds)?;
    // A new registration reuses slot 3 under a new token.
    let (ours, _peer) = pair()?;
    let fd = ours.as_raw_fd();
    let key = sel.register(ours, Interest::READ, noop())?;
    fds.insert(key.token(), fd);
    assert_kernel_view(&sel, &fds)?;
    sel.remove(keys[0])?;
    sel.remove(keys[1])?;
    sel.remove(key)?;
    assert_eq!(epoll_entries(&sel)?, []);
    assert!(sel.is_empty());
    Ok(())
}
