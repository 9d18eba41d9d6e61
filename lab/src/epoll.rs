//! A minimal level-triggered epoll, shared by the load generator and the echo benchmark's floor
//! server so that neither pays for any library's bookkeeping. It is rustix's safe `epoll`, the
//! same calls the raw-epoll peer of the in-process benches makes, with `u64` tokens. Every
//! function is `#[inline]`: the floor must cost what a hand-written loop costs, and without it
//! each would be a call into this crate from the binaries that use it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll::{self, Event, EventData, EventFlags};

/// An epoll instance; every registration is level-triggered and carries a `u64` token.
pub struct Epoll {
    fd: OwnedFd,
}

#[inline]
fn flags(read: bool, write: bool) -> EventFlags {
    let mut flags = EventFlags::empty();
    if read {
        flags |= EventFlags::IN;
    }
    if write {
        flags |= EventFlags::OUT;
    }
    flags
}

impl Epoll {
    #[inline]
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        })
    }

    /// Starts polling `fd`. The caller deletes it (or closes it) when done.
    #[inline]
    pub fn add(&self, fd: impl AsFd, token: u64, read: bool, write: bool) -> io::Result<()> {
        Ok(epoll::add(
            &self.fd,
            fd,
            EventData::new_u64(token),
            flags(read, write),
        )?)
    }

    #[inline]
    pub fn modify(&self, fd: impl AsFd, token: u64, read: bool, write: bool) -> io::Result<()> {
        Ok(epoll::modify(
            &self.fd,
            fd,
            EventData::new_u64(token),
            flags(read, write),
        )?)
    }

    #[inline]
    pub fn delete(&self, fd: impl AsFd) -> io::Result<()> {
        Ok(epoll::delete(&self.fd, fd)?)
    }

    /// One `epoll_wait` into `events` (cleared first, filled up to its capacity); `None` waits
    /// indefinitely. `EINTR` comes back as an empty batch, which every caller already handles.
    #[inline]
    pub fn wait(&self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        let timeout = timeout.map(|t| rustix::event::Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        });
        match epoll::wait(
            &self.fd,
            rustix::buffer::spare_capacity(events),
            timeout.as_ref(),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The token the event's source was registered with.
#[inline]
pub fn token(event: &Event) -> u64 {
    event.data.u64()
}

/// Whether an event reports readability (or a hang-up or error, which a read will surface).
#[inline]
pub fn is_readable(event: &Event) -> bool {
    let flags = event.flags; // a copy: the kernel's struct is packed
    flags.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR)
}

/// Whether an event reports writability (or a hang-up or error, which a write will surface).
#[inline]
pub fn is_writable(event: &Event) -> bool {
    let flags = event.flags; // a copy: the kernel's struct is packed
    flags.intersects(EventFlags::OUT | EventFlags::HUP | EventFlags::ERR)
}
