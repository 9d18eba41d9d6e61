//! The cross-thread handle: wake the loop, queue `Send` work onto it, stop it.

use std::fmt;
use std::io;
use std::mem;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::poller::{Events, Poller};
use crate::registry::Registry;

type Remote = Box<dyn FnOnce(&mut Registry) + Send>;

/// What `polling` reports a notification as (it reserves this key).
const NOTIFY_KEY: usize = usize::MAX;

/// What the loop shares with its handles.
pub(crate) struct Shared {
    pub(crate) poller: Poller,
    /// Set (before notifying) by every handle operation; the loop clears it, then clears the
    /// poller's notification, then takes the queue. Work queued after the loop looked at the
    /// queue either finds `pending` still set (and the loop, checking it before it sleeps, does
    /// not sleep) or notifies the poller anew.
    ///
    /// A handle can be preempted between setting `pending` and notifying, and the loop can
    /// collect its work in between: its notification then lands late, for work already taken.
    /// The loop's next wait reports it, which disarms `polling`'s one-shot notifier while
    /// `polling` still counts it as notified, so every later `notify` would be swallowed. So
    /// [`collect`](Shared::collect) also clears the notification whenever a wait reported it,
    /// flagged or not: every report is paired with a clear, and no wake-up is lost.
    pending: AtomicBool,
    /// Whether any handle has ever signalled: until then no notification can be in flight, and
    /// the loop skips looking for one among its events.
    signalled: AtomicBool,
    stop: AtomicBool,
    closed: AtomicBool,
    /// Live [`Handle`]s. Kept apart from the `Arc`'s count so that the last handle can wake the
    /// loop *after* it stops counting: `run` then sees none left and returns.
    handles: AtomicUsize,
    queue: Mutex<Vec<Remote>>,
}

impl Shared {
    pub(crate) fn new(poller: Poller) -> Shared {
        Shared {
            poller,
            pending: AtomicBool::new(false),
            signalled: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            handles: AtomicUsize::new(0),
            queue: Mutex::new(Vec::new()),
        }
    }

    /// Whether a handle has flagged work the loop has not collected yet.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst)
    }

    /// Whether any [`Handle`] is alive (one may still send work).
    pub(crate) fn has_handles(&self) -> bool {
        self.handles.load(Ordering::SeqCst) != 0
    }

    /// Collects what handles sent: their calls go to the back of `deferred`. Returns whether a
    /// handle asked the loop to stop. `events` is what the wait just reported.
    #[inline]
    pub(crate) fn collect(
        &self,
        events: &mut Events,
        deferred: &mut std::collections::VecDeque<crate::registry::Deferred>,
    ) -> io::Result<bool> {
        // Plain loads first: most iterations of most loops have no handle traffic at all.
        if !self.pending.load(Ordering::SeqCst) && !self.signalled.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.collect_signalled(events, deferred)
    }

    #[cold]
    #[inline(never)]
    fn collect_signalled(
        &self,
        events: &mut Events,
        deferred: &mut std::collections::VecDeque<crate::registry::Deferred>,
    ) -> io::Result<bool> {
        if !self.pending.swap(false, Ordering::SeqCst) {
            if reports_notification(events) {
                // A late notification for work already collected (see `pending`).
                self.poller.clear_notification(events)?;
            }
            return Ok(false);
        }
        self.poller.clear_notification(events)?;
        self.take_queued(deferred);
        Ok(self.stop.swap(false, Ordering::SeqCst))
    }

    /// Moves the calls handles have queued to the back of `deferred`. The loop does it when it
    /// wakes, and [`Registry::call_soon`] does it first whenever a handle call is pending, so
    /// both kinds of call run in the order they were queued. `pending` stays as it is: the
    /// loop's next [`collect`](Shared::collect) clears it with the notification.
    pub(crate) fn take_queued(
        &self,
        deferred: &mut std::collections::VecDeque<crate::registry::Deferred>,
    ) {
        let queued = mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        deferred.extend(
            queued
                .into_iter()
                .map(|f| -> crate::registry::Deferred { f }),
        );
    }

    /// Called when the selector is dropped: later handle operations fail, and calls still
    /// queued are dropped here, on the loop's thread.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        drop(mem::take(
            &mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner),
        ));
    }

    /// Flags the loop and wakes its wait (from any thread).
    pub(crate) fn signal(&self) -> io::Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(closed());
        }
        self.signalled.store(true, Ordering::SeqCst);
        self.pending.store(true, Ordering::SeqCst);
        self.poller.notify()
    }
}

fn reports_notification(events: &Events) -> bool {
    events.iter().any(|(key, _)| key == NOTIFY_KEY)
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
/// since a handle may still send some. Handles share the selector's poller, so its three
/// descriptors (epoll, and `polling`'s eventfd and timerfd) stay open until the selector *and*
/// every handle are dropped.
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
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    pub(crate) fn new(shared: Arc<Shared>) -> Handle {
        shared.handles.fetch_add(1, Ordering::SeqCst);
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
    ///
    /// Handle calls and [`Registry::call_soon`] feed one queue: a call queued through a handle
    /// before a `call_soon` runs before it, and calls from one thread run in the order queued.
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

impl Clone for Handle {
    fn clone(&self) -> Handle {
        Handle::new(Arc::clone(&self.shared))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Uncount first, then wake: a loop blocked only because this handle lived wakes, finds
        // no handles left, and `run` returns. Once the selector is gone there is nothing to wake.
        if self.shared.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = self.shared.signal();
        }
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("closed", &self.shared.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, direct_epoll))]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::thread;
    use std::time::{Duration, Instant};

    /// The interleaving of the `pending` docs, played step by step: a handle flags work, the loop
    /// collects it, and only then does the handle's notification land.
    #[test]
    fn a_late_notification_does_not_swallow_later_wake_ups() -> io::Result<()> {
        let shared = Arc::new(Shared::new(Poller::new()?));
        let mut events = Events::with_capacity(8);
        let mut deferred = VecDeque::new();

        shared.queue.lock().unwrap().push(Box::new(|_| {}));
        shared.signalled.store(true, Ordering::SeqCst);
        shared.pending.store(true, Ordering::SeqCst);
        shared.collect(&mut events, &mut deferred)?;
        assert_eq!(deferred.len(), 1);
        shared.poller.notify()?; // the preempted handle resumes

        // The loop wakes for it, with nothing to collect.
        assert!(!shared.is_pending());
        shared
            .poller
            .wait(&mut events, Some(Duration::from_secs(5)))?;
        assert!(reports_notification(&events));
        shared.collect(&mut events, &mut deferred)?;
        assert_eq!(deferred.len(), 1);

        // The loop goes to sleep; a later handle call must still wake it.
        assert!(!shared.is_pending());
        let handle = Handle::new(Arc::clone(&shared));
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            handle.call_soon(|_| {})
        });
        let start = Instant::now();
        shared
            .poller
            .wait(&mut events, Some(Duration::from_secs(3)))?;
        let slept = start.elapsed();
        sender.join().unwrap()?;
        assert!(
            slept < Duration::from_secs(2),
            "the wake-up was lost: slept {slept:?}"
        );
        shared.collect(&mut events, &mut deferred)?;
        assert_eq!(deferred.len(), 2);
        Ok(())
    }
}
