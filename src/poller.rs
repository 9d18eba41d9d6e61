//! The one boundary to the OS: registration through `polling`, the wait, and the wake-up.
//!
//! `polling` 3 is the registration layer (and needs one of the crate's two `unsafe` calls, below;
//! the other reads a signal's disposition in `signal.rs`).
//! Its `Poller::wait` costs five syscalls on Linux (arm a timerfd, re-arm it in epoll, wait,
//! read the notification eventfd, re-arm that), where a level-triggered reactor needs one. So on
//! Linux and Android the selector waits with a plain `epoll_wait` on polling's own epoll
//! descriptor, which `polling` exposes through `AsFd`. That relies on two facts about polling's
//! epoll backend, each checked by a test in this file that fails loudly if a release changes it:
//!
//! 1. the key given to `add` comes back verbatim as the epoll event's `u64` data;
//! 2. its internal timerfd and notification eventfd stay quiet, since the selector never calls
//!    `Poller::wait` or `Poller::notify` there.
//!
//! The cross-thread wake-up is then the selector's own: an eventfd in the same epoll set,
//! edge-triggered, so that each `write` to it is reported once, under [`WAKE_KEY`], by the wait
//! it ends, and the loop never reads it. A wake-up from another thread costs the waker one
//! `write` and the loop nothing beyond the `epoll_wait` it ends; `Poller::notify` would add
//! polling's clearing wait (five more syscalls) per wake-up.
//! Elsewhere the portable `Poller::wait` and `Poller::notify` are used; `--cfg
//! selreactor_portable_wait` selects them on Linux too, so that they are compiled and tested
//! here (see `build.rs`).

use std::io;
#[cfg(direct_epoll)]
use std::os::fd::OwnedFd;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::interest::{Interest, Readiness};

/// The longest single wait. Longer timeouts wait in several rounds; a wake-up a few weeks in is
/// harmless, and it keeps the millisecond count inside the `c_int` that `epoll_pwait` takes.
const MAX_WAIT: Duration = Duration::from_millis(i32::MAX as u64 - 1);

/// The key the wake-up is reported under. No registration's key equals it (see `key.rs`), and
/// `polling` reserves it for its own notifications, which the Linux wait never arms.
#[cfg(direct_epoll)]
pub(crate) const WAKE_KEY: usize = usize::MAX;

pub(crate) struct Poller {
    poller: polling::Poller,
    /// The wake-up: a non-blocking eventfd in `poller`'s epoll set, edge-triggered for reading,
    /// keyed [`WAKE_KEY`]. Each [`wake`](Poller::wake) adds one to its counter, which puts it on
    /// epoll's ready list (once, however many writes come before a wait takes it off); the
    /// counter itself is never read down, except when it is full. Only the selector's epoll set
    /// holds it, and it closes with the poller.
    #[cfg(direct_epoll)]
    wake: OwnedFd,
}

impl Poller {
    pub(crate) fn new() -> io::Result<Poller> {
        let poller = polling::Poller::new()?;
        #[cfg(direct_epoll)]
        let wake = {
            use rustix::event::{epoll, eventfd, EventfdFlags};
            let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
            epoll::add(
                poller.as_fd(),
                &wake,
                epoll::EventData::new_u64(WAKE_KEY as u64),
                epoll::EventFlags::IN | epoll::EventFlags::ET,
            )?;
            wake
        };
        Ok(Poller {
            poller,
            #[cfg(direct_epoll)]
            wake,
        })
    }

    /// Starts polling `fd` for `interest`, level-triggered, reporting `key`.
    ///
    /// The caller must [`delete`](Poller::delete) `fd` before the source that owns it is
    /// dropped; the selector does so in `unregister`, `remove` and its own `Drop`.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, key: usize, interest: Interest) -> io::Result<()> {
        // SAFETY: `polling::Poller::add_with_mode` requires a valid descriptor that is deleted
        // from the poller before it is closed. `fd` is borrowed, so it is open for this call.
        // Every caller passes the descriptor of a source the selector owns for as long as the
        // registration lives, and deletes it before dropping that source (`Registry::discard`
        // and `Registry::drop` are the only places a registered source is dropped). A source
        // whose `AsFd` hands out a different descriptor later (interior mutability) can at worst
        // leave a stale entry in this poller's own epoll set, which epoll removes when that
        // descriptor is closed: no memory is touched through it.
        unsafe {
            self.poller.add_with_mode(
                fd.as_raw_fd(),
                event(key, interest),
                polling::PollMode::Level,
            )
        }
    }

    pub(crate) fn modify(
        &self,
        fd: BorrowedFd<'_>,
        key: usize,
        interest: Interest,
    ) -> io::Result<()> {
        self.poller
            .modify_with_mode(fd, event(key, interest), polling::PollMode::Level)
    }

    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.poller.delete(fd)
    }

    /// Wakes the current or next wait (from any thread): it reports [`WAKE_KEY`], once.
    #[cfg(direct_epoll)]
    pub(crate) fn wake(&self) -> io::Result<()> {
        use rustix::io::{read, write, Errno};
        match write(&self.wake, &1u64.to_ne_bytes()) {
            Ok(_) => Ok(()),
            // The counter is full (after 2⁶⁴ - 2 wake-ups): empty it, which makes no edge, and
            // write again, which does.
            Err(Errno::AGAIN) => {
                match read(&self.wake, &mut [0; 8]) {
                    Ok(_) | Err(Errno::AGAIN) => {}
                    Err(e) => return Err(e.into()),
                }
                write(&self.wake, &1u64.to_ne_bytes())?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Wakes the current or next wait (from any thread).
    #[cfg(not(direct_epoll))]
    pub(crate) fn wake(&self) -> io::Result<()> {
        self.poller.notify()
    }

    /// Waits for events or until `timeout` passes, whichever is first. Signals (`EINTR`) never
    /// end the wait early: it resumes with the time that is left.
    #[inline(always)]
    pub(crate) fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        // Only a finite, non-zero wait needs to know when it started, to resume after a signal.
        let start = match timeout {
            Some(t) if !t.is_zero() => Some(Instant::now()),
            _ => None,
        };
        events.clear();
        match self.wait_once(events, timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                self.resume_after_signal(events, timeout, start)
            }
            other => other,
        }
    }

    #[cold]
    fn resume_after_signal(
        &self,
        events: &mut Events,
        timeout: Option<Duration>,
        start: Option<Instant>,
    ) -> io::Result<()> {
        loop {
            events.clear();
            let left = match (timeout, start) {
                (Some(t), Some(start)) => {
                    let left = t.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return Ok(());
                    }
                    Some(left)
                }
                _ => timeout,
            };
            match self.wait_once(events, left) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    #[cfg(direct_epoll)]
    #[inline(always)]
    fn wait_once(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        use rustix::buffer::spare_capacity;
        use rustix::event::{epoll, Timespec};
        let epoll = self.poller.as_fd();
        let list = &mut events.list;
        // Three calls rather than one with a computed timeout: in the first two the timeout is a
        // constant, so rustix's conversion to milliseconds folds away (polling with a zero
        // timeout would otherwise pay for it on every call).
        match timeout {
            None => epoll::wait(epoll, spare_capacity(list), None)?,
            Some(t) if t.is_zero() => {
                epoll::wait(epoll, spare_capacity(list), Some(&Timespec::default()))?
            }
            Some(t) => {
                let timeout = Timespec::try_from(t.min(MAX_WAIT)).unwrap_or_default();
                epoll::wait(epoll, spare_capacity(list), Some(&timeout))?
            }
        };
        Ok(())
    }

    #[cfg(not(direct_epoll))]
    fn wait_once(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        self.poller
            .wait(&mut events.list, timeout.map(|t| t.min(MAX_WAIT)))
            .map(drop)
    }
}

impl AsFd for Poller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.poller.as_fd()
    }
}

fn event(key: usize, interest: Interest) -> polling::Event {
    polling::Event::new(key, interest.is_readable(), interest.is_writable())
}

/// The buffer one wait fills.
pub(crate) struct Events {
    #[cfg(direct_epoll)]
    list: Vec<rustix::event::epoll::Event>,
    #[cfg(not(direct_epoll))]
    list: polling::Events,
}

impl Events {
    pub(crate) fn with_capacity(capacity: usize) -> Events {
        let capacity = capacity.max(1);
        Events {
            #[cfg(direct_epoll)]
            list: Vec::with_capacity(capacity),
            #[cfg(not(direct_epoll))]
            list: polling::Events::with_capacity(
                std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
        }
    }

    pub(crate) fn clear(&mut self) {
        self.list.clear();
    }

    /// The events as (poller key, readiness before interest filtering).
    #[cfg(direct_epoll)]
    #[inline]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, Readiness)> + '_ {
        self.list.iter().map(|&event| translate(event))
    }

    #[cfg(not(direct_epoll))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, Readiness)> + '_ {
        self.list.iter().map(|event| {
            let mut bits = 0;
            if event.readable {
                bits |= Readiness::READABLE;
            }
            if event.writable {
                bits |= Readiness::WRITABLE;
            }
            if event.is_interrupt() {
                bits |= Readiness::HANGUP;
            }
            if event.is_err() == Some(true) {
                bits |= Readiness::ERROR;
            }
            (event.key, Readiness::from_bits(bits))
        })
    }
}

/// An epoll event as (poller key, readiness before interest filtering). A hang-up or error
/// counts as readable and writable, so whichever the source waits for, its callback learns of
/// it from its next read or write.
#[cfg(direct_epoll)]
#[inline(always)]
fn translate(event: rustix::event::epoll::Event) -> (usize, Readiness) {
    let flags = { event.flags }.bits();
    // The five low flags (IN, PRI, OUT, ERR, HUP) plus RDHUP (0x2000) moved down to 0x20: one
    // table load instead of a branch-free chain of tests per event.
    let index = (flags & 0x1f) | ((flags >> 8) & 0x20);
    let bits = READINESS_OF_EPOLL[index as usize];
    (event.data.u64() as usize, Readiness::from_bits(bits))
}

/// [`translate`]'s table, indexed by the six epoll flags it packs.
#[cfg(direct_epoll)]
static READINESS_OF_EPOLL: [u8; 64] = {
    let mut table = [0; 64];
    let mut index = 0;
    while index < 64 {
        let flags = (index as u32 & 0x1f) | ((index as u32 & 0x20) << 8);
        table[index] = readiness_bits(flags);
        index += 1;
    }
    table
};

/// The readiness bits for a set of epoll flags: the definition the table is built from.
#[cfg(direct_epoll)]
const fn readiness_bits(flags: u32) -> u8 {
    use rustix::event::epoll::EventFlags as F;
    const READABLE: u32 = F::IN
        .union(F::PRI)
        .union(F::HUP)
        .union(F::ERR)
        .union(F::RDHUP)
        .bits();
    const WRITABLE: u32 = F::OUT.union(F::HUP).union(F::ERR).bits();
    const HANGUP: u32 = F::HUP.union(F::RDHUP).bits();
    let mut bits = 0;
    if flags & READABLE != 0 {
        bits |= Readiness::READABLE;
    }
    if flags & WRITABLE != 0 {
        bits |= Readiness::WRITABLE;
    }
    if flags & HANGUP != 0 {
        bits |= Readiness::HANGUP;
    }
    if flags & F::ERR.bits() != 0 {
        bits |= Readiness::ERROR;
    }
    bits
}

#[cfg(all(test, direct_epoll))]
mod tests {
    //! Guards for what the Linux wait relies on in `polling` (see the module docs).
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn keys(events: &Events) -> Vec<usize> {
        events.iter().map(|(key, _)| key).collect()
    }

    #[test]
    fn polling_passes_our_key_through_epoll_verbatim() -> io::Result<()> {
        let poller = Poller::new()?;
        let (a, mut b) = UnixStream::pair()?;
        let key = 0x1234_5678_9abc;
        poller.add(a.as_fd(), key, Interest::READ)?;
        b.write_all(b"x")?;
        let mut events = Events::with_capacity(8);
        poller.wait(&mut events, Some(Duration::from_secs(5)))?;
        assert_eq!(keys(&events), [key]);
        assert!(events.iter().all(|(_, readiness)| readiness.is_readable()));
        // Level-triggered: still reported, no re-arm needed.
        poller.wait(&mut events, Some(Duration::ZERO))?;
        assert_eq!(keys(&events), [key]);
        poller.delete(a.as_fd())
    }

    #[test]
    fn pollings_internal_descriptors_stay_quiet() -> io::Result<()> {
        let poller = Poller::new()?;
        let mut events = Events::with_capacity(8);
        let start = Instant::now();
        poller.wait(&mut events, Some(Duration::from_millis(30)))?;
        assert_eq!(keys(&events), [] as [usize; 0]);
        assert!(start.elapsed() >= Duration::from_millis(30));
        Ok(())
    }

    #[test]
    fn a_wake_up_is_reported_once_and_needs_no_clearing() -> io::Result<()> {
        let poller = Poller::new()?;
        let mut events = Events::with_capacity(8);
        for _ in 0..3 {
            // Two wake-ups before the loop looks are reported as one.
            poller.wake()?;
            poller.wake()?;
            poller.wait(&mut events, Some(Duration::from_secs(5)))?;
            assert_eq!(keys(&events), [WAKE_KEY]);
            // Taken off the ready list by that wait: the next one sleeps its full timeout
            // instead of spinning, with nothing read.
            let start = Instant::now();
            poller.wait(&mut events, Some(Duration::from_millis(20)))?;
            assert_eq!(keys(&events), [] as [usize; 0]);
            assert!(start.elapsed() >= Duration::from_millis(20));
        }
        Ok(())
    }

    #[test]
    fn a_wake_up_during_a_wait_ends_it() -> io::Result<()> {
        let poller = std::sync::Arc::new(Poller::new()?);
        let waker = std::sync::Arc::clone(&poller);
        let mut events = Events::with_capacity(8);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake()
        });
        let start = Instant::now();
        poller.wait(&mut events, Some(Duration::from_secs(10)))?;
        let slept = start.elapsed();
        thread.join().expect("the waker panicked")?;
        assert_eq!(keys(&events), [WAKE_KEY]);
        assert!(slept < Duration::from_secs(5), "slept {slept:?}");
        Ok(())
    }

    #[test]
    fn a_full_counter_still_wakes() -> io::Result<()> {
        let poller = Poller::new()?;
        let mut events = Events::with_capacity(8);
        // The most an eventfd holds; one more `write` would block.
        rustix::io::write(&poller.wake, &(u64::MAX - 1).to_ne_bytes())?;
        poller.wait(&mut events, Some(Duration::from_secs(5)))?;
        assert_eq!(keys(&events), [WAKE_KEY]);
        poller.wake()?;
        poller.wait(&mut events, Some(Duration::from_secs(5)))?;
        assert_eq!(keys(&events), [WAKE_KEY]);
        poller.wait(&mut events, Some(Duration::ZERO))?;
        assert_eq!(keys(&events), [] as [usize; 0]);
        Ok(())
    }

    #[test]
    fn translation_table_matches_its_definition_for_every_flag_set() {
        use rustix::event::epoll::{Event, EventData, EventFlags as F};
        // Every combination of the flags translate reads, plus flags it must ignore.
        let relevant = [F::IN, F::PRI, F::OUT, F::ERR, F::HUP, F::RDHUP];
        let ignored = F::ET | F::ONESHOT | F::RDNORM | F::WRNORM | F::MSG;
        for combination in 0..1u32 << relevant.len() {
            let mut flags = F::empty();
            for (bit, flag) in relevant.iter().enumerate() {
                if combination & (1 << bit) != 0 {
                    flags |= *flag;
                }
            }
            for extra in [F::empty(), ignored] {
                let event = Event {
                    flags: flags | extra,
                    data: EventData::new_u64(7),
                };
                let (key, readiness) = translate(event);
                assert_eq!(key, 7);
                assert_eq!(
                    readiness,
                    Readiness::from_bits(readiness_bits(flags.bits())),
                    "{flags:?} | {extra:?}"
                );
            }
        }
        let hup = translate(Event {
            flags: F::HUP,
            data: EventData::new_u64(0),
        })
        .1;
        assert!(hup.is_readable() && hup.is_writable() && hup.is_hangup() && !hup.is_error());
    }
}
