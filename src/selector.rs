//! The selector: a registry plus the buffer its waits fill.

use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use crate::poller::{Events, Poller};
use crate::registry::Registry;

/// How many events one wait collects by default; more stay ready for the next wait.
const DEFAULT_EVENTS: usize = 1024;

/// A callback reactor: register sources with closures, then [`run`](Selector::run).
///
/// Everything about registrations, timers and deferred calls is on [`Registry`], which the
/// selector dereferences to and which every callback receives; what only the loop's owner may
/// do (run it) is here. A selector is neither `Send` nor `Sync`: it holds closures that need not
/// be, and it is driven from one thread. Other threads use a [`Handle`](crate::Handle).
///
/// Its descriptor (`AsFd`) is the epoll instance, so a selector can be nested in another event
/// loop (wait for it to be readable, then `run_once(Some(Duration::ZERO))`), and on Linux the
/// kernel's view of its registrations can be read from `/proc/self/fdinfo/<fd>`.
///
/// Dropping it deletes every source from the poller, then closes it and drops its callback,
/// each exactly once; pending timers and deferred calls are dropped without running.
pub struct Selector {
    registry: Registry,
    events: Events,
}

impl Selector {
    /// Creates a selector that collects up to 1024 events per wait.
    ///
    /// # Errors
    ///
    /// The OS's error creating the epoll instance and its notification descriptors (`EMFILE`
    /// when out of descriptors).
    pub fn new() -> io::Result<Selector> {
        Selector::with_capacity(DEFAULT_EVENTS)
    }

    /// Creates a selector that collects up to `events` events per wait (at least one). Sources
    /// beyond that stay ready and are reported by later waits, in the kernel's round-robin
    /// order.
    ///
    /// # Errors
    ///
    /// As for [`new`](Selector::new).
    pub fn with_capacity(events: usize) -> io::Result<Selector> {
        Ok(Selector {
            registry: Registry::new(Poller::new()?),
            events: Events::with_capacity(events),
        })
    }

    pub(crate) fn parts(&mut self) -> (&mut Registry, &mut Events) {
        (&mut self.registry, &mut self.events)
    }
}

impl Deref for Selector {
    type Target = Registry;

    fn deref(&self) -> &Registry {
        &self.registry
    }
}

impl DerefMut for Selector {
    fn deref_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }
}

impl AsFd for Selector {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.registry.shared.poller.as_fd()
    }
}

impl AsRawFd for Selector {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selector")
            .field("fd", &self.as_raw_fd())
            .field("registry", &self.registry)
            .finish()
    }
}
