//! The cross-thread handle: wake the loop, queue `Send` work onto it, stop it.

use std::fmt;
use std::io;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::poller::{Events, Poller};
use crate::registry::Registry;

type Remote = Box<dyn FnOnce(&mut Registry) + Send>;

/// What the loop shares with its handles.
pub(crate) struct Shared {
    pub(crate) poller: Poller,
    /// Set (before notifying) by every handle operation; the loop clears it, then clears the
    /// poller's notification, then takes the queue. That order is what makes wake-ups lossless:
    /// work queued after the loop looked at the queue either finds `pending` still set (and the
    /// loop, checking it before it sleeps, does not sleep) or notifies the poller anew.
    pending: AtomicBool,
    stop: AtomicBool,
    closed: AtomicBool,
    queue: Mutex<Vec<Remote>>,
}

impl Shared {
    pub(crate) fn new(poller: Poller) -> Shared {
        Shared {
            poller,
            pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            queue: Mutex::new(Vec::new()),
        }
    }

    /// Whether a handle has flagged work the loop has not collected yet.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// Collects what handles sent: their calls go to the back of `deferred`. Returns whether a
    /// handle asked the loop to stop.
    pub(crate) fn collect(
        &self,
        events: &mut Events,
        deferred: &mut std::collections::VecDeque<crate::registry::Deferred>,
    ) -> io::Result<bool> {
        if !self.pending.swap(false, Ordering::SeqCst) {
            return Ok(false);
        }
        self.poller.clear_notification(events)?;
        let queued = mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        deferred.extend(queued.into_iter().map(|f| -> crate::registry::Deferred { f }));
        Ok(self.stop.swap(false, Ordering::SeqCst))
    }

    /// Called when the selector is dropped: later handle operations fail, and calls still
    /// queued are dropped here, on the loop's thread.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        drop(mem::take(
            &mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner),
        ));
    }

    fn signal(&self) -> io::Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        self.pending.store(true, Ordering::SeqCst);
        self.poller.notify()
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the selector has been dropped")
}

/// A `Send + Sync + Clone` handle to a [`Selector`](crate::Selector), for other threads.
///
/// It wakes the loop ([`wake`](Handle::wake)), queues closures to run on the loop's thread with
/// full access to the registry ([`call_soon`](Handle::call_soon), asyncio's
/// `call_soon_threadsafe`) and stops it ([`stop`](Handle::stop)). Wake-ups coalesce: many
/// calls before the loop wakes cost one wake-up, and none is lost when a call races with the
/// loop going to sleep.
///
/// While any handle lives, [`run`](crate::Selector::run) does not return for want of work,
/// since a handle may still send some.
///
/// # Examples
///
/// ```
/// use selreactor::Selector;
/// use std::thread;
///
/// let mut sel = Selector::new()?;
/// let handle = sel.handle();
/// let worker = thread::spawn(move || {
///     let answer = 6 * 7; // work done off the loop
///     handle.call_soon(move |reg| {
///         println!("the answer is {answer}");
///         reg.stop();
///     })
/// });
/// sel.run()?;
/// worker.join().unwrap()?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    pub(crate) fn new(shared: Arc<Shared>) -> Handle {
        Handle { shared }
    }

    /// Wakes the loop: its current or next wait returns at once.
    ///
    /// # Errors
    ///
    /// [`NotConnected`](io::ErrorKind::NotConnected) once the selector is dropped, or the OS's
    /// error from writing the wake-up.
    pub fn wake(&self) -> io::Result<()> {
        self.shared.signal()
    }

    /// Queues `f` to run on the loop's thread, in its next iteration, and wakes the loop.
    /// Calls from one thread run in the order queued.
    ///
    /// # Errors
    ///
    /// [`NotConnected`](io::ErrorKind::NotConnected) once the selector is dropped (`f` is
    /// dropped, not run), or the OS's error from writing the wake-up (`f` stays queued).
    pub fn call_soon<F>(&self, f: F) -> io::Result<()>
    where
        F: FnOnce(&mut Registry) + Send + 'static,
    {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(f));
        self.shared.signal()
    }

    /// Makes [`run`](crate::Selector::run) return after the iteration in which the loop wakes.
    ///
    /// # Errors
    ///
    /// As for [`wake`](Handle::wake).
    pub fn stop(&self) -> io::Result<()> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.signal()
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
