//! A minimal level-triggered epoll wrapper over `libc`, shared by the load generator and the
//! benchmark's floor server so that neither pays for any library's bookkeeping.
//!
//! Not an example on its own: `echo_load.rs` and `peer_echo.rs` include it with `#[path]`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// An epoll instance; every registration is level-triggered and carries a `u64` token.
pub struct Epoll {
    fd: OwnedFd,
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn flags(read: bool, write: bool) -> u32 {
    let mut bits = 0;
    if read {
        bits |= libc::EPOLLIN as u32;
    }
    if write {
        bits |= libc::EPOLLOUT as u32;
    }
    bits
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a fresh descriptor
        // that nothing else owns, so wrapping it in an OwnedFd is sound.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ctl(
        &self,
        op: libc::c_int,
        fd: RawFd,
        token: u64,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: flags(read, write),
            u64: token,
        };
        // SAFETY: `event` is a valid, initialised epoll_event that outlives the call; the kernel
        // copies it and keeps no pointer to it.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) }).map(drop)
    }

    /// Starts polling `fd`. The caller deletes it (or closes it) when done.
    pub fn add(&self, fd: RawFd, token: u64, read: bool, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, read, write)
    }

    pub fn modify(&self, fd: RawFd, token: u64, read: bool, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, read, write)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, false, false)
    }

    /// One `epoll_wait` into `events` (cleared first); `None` waits indefinitely. `EINTR` comes
    /// back as an empty batch, which every caller already handles.
    pub fn wait(
        &self,
        events: &mut Vec<libc::epoll_event>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        events.clear();
        let millis = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
        let capacity = events.capacity().min(i32::MAX as usize) as libc::c_int;
        // SAFETY: the kernel writes at most `capacity` events into the vector's spare capacity,
        // which is allocated and exclusively borrowed for the call.
        let n =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), capacity, millis) };
        match check(n) {
            // SAFETY: the kernel initialised exactly `n` (≤ capacity) events.
            Ok(n) => unsafe { events.set_len(n as usize) },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Whether an event reports readability (or a hang-up or error, which a read will surface).
pub fn is_readable(event: &libc::epoll_event) -> bool {
    event.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
}

/// Whether an event reports writability (or a hang-up or error, which a write will surface).
pub fn is_writable(event: &libc::epoll_event) -> bool {
    event.events & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
}
