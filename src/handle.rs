//! The cross-thread handle: wake the loop, queue `Send` work onto it, stop it.

use std::fmt;
use std::io;
use std::mem;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::poller::Poller;
use crate::registry::Registry;

type Remote = Box<dyn FnOnce(&mut Registry) + Send>;

/// What the loop shares with its handles.
///
/// # Why no wake-up is lost
///
/// A handle call pushes its work (a queued call, a task in the executor's inbox) and then
/// [`signal`](Shared::signal) swaps `pending` to true; the caller that found it false (the
/// *flip*) writes the poller's wake-up after its swap, and callers that found it true write
/// nothing. After each wait the loop swaps `pending` to false and, if it was true, collects;
/// it waits with a non-zero timeout only after loading `pending` as false (`run.rs`,
/// `wait_timeout`). On Linux the wake-up is an edge-triggered eventfd: each write puts it on
/// epoll's ready list, and only a wait takes it off, by returning it. Every write to `pending`
/// is a `SeqCst` swap, so one modification order holds them all and each swap reads the value
/// of the one before it.
///
/// Take work W pushed before swap S, and let L be the first loop swap after S in that order.
/// - L, if it exists, collects W: nothing between S and L writes false, so L reads true, and
///   since every write in between is a read-modify-write, L synchronizes with S. The push of
///   W happens before S, S before L, and L before the collection (unless the loop took W
///   earlier: [`Registry::call_soon`] and the executor take what they see without swapping).
/// - L exists, unless the loop never waits again (then it never sleeps on W). Let F be the
///   last flip at or before S (S itself if S read false); F's caller writes the wake-up after
///   F. If the loop's check before a wait loaded a false written after S, the swap that wrote
///   it is an L. Otherwise the check preceded F's effect, and so did the wait that follows it:
///   F's write finds that wait running or puts the wake-up on the ready list before it starts,
///   and in both cases the wait returns after the write, unless an earlier wait already took
///   it off the list, that is, returned after it. Either way a wait returns after F's write
///   (the eventfd's counter and epoll's ready list change under their locks, so that return
///   happens after the write), and the loop's collection after that wait happens after F: its
///   load of `pending` reads F's value or a later one. Only loop swaps write false, so either
///   a loop swap already follows F, or the load reads true and the loop swaps. No loop swap
///   lies between F and S (F is the last flip before S), so a loop swap after F comes after S:
///   it is an L.
///
/// A flip can be preempted between its swap and its write, and the loop can collect its work
/// in between: the write then lands late, for work already taken. The next wait returns for it
/// once, the loop finds nothing to collect, and the wait after that blocks again: an
/// edge-triggered wake-up needs no clearing, so a stale one costs one extra turn, never a spin.
///
/// Off Linux the wake-up is `polling`'s `notify`, which wakes the current or next wait and is
/// cleared by that wait: the same argument holds.
pub(crate) struct Shared {
    pub(crate) poller: Poller,
    /// Whether a handle has flagged work the loop has not collected yet (see above).
    pending: AtomicBool,
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
    /// handle asked the loop to stop.
    #[inline]
    pub(crate) fn collect(
        &self,
        deferred: &mut std::collections::VecDeque<crate::registry::Deferred>,
    ) -> bool {
        // A plain load first: most iterations of most loops have no handle traffic at all.
        if !self.pending.load(Ordering::SeqCst) {
            return false;
        }
        self.collect_pending(deferred)
    }

    #[cold]
    #[inline(never)]
    fn collect_pending(
        &self,
        deferred: &mut std::collections::VecDeque<crate::registry::Deferred>,
    ) -> bool {
        if !self.pending.swap(false, Ordering::SeqCst) {
            return false;
        }
        self.take_queued(deferred);
        self.stop.swap(false, Ordering::SeqCst)
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
        if self.pending.swap(true, Ordering::SeqCst) {
            return Ok(()); // the caller that set it writes the wake-up
        }
        self.poller.wake()
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
/// since a handle may still send some. Handles share the selector's poller, so its
/// descriptors (on Linux: epoll, the wake-up's eventfd, and `polling`'s own eventfd and
/// timerfd) stay open until the selector *and* every handle are dropped.
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
    use crate::poller::{Events, WAKE_KEY};
    use std::collections::VecDeque;
    use std::thread;
    use std::time::{Duration, Instant};

    /// A loop turn as `run` makes it: the wait (not blocking while work is flagged), then the
    /// collection. Returns how long the wait took.
    fn turn(
        shared: &Shared,
        events: &mut Events,
        deferred: &mut VecDeque<crate::registry::Deferred>,
        timeout: Duration,
    ) -> io::Result<Duration> {
        let timeout = if shared.is_pending() {
            Duration::ZERO
        } else {
            timeout
        };
        let start = Instant::now();
        shared.poller.wait(events, Some(timeout))?;
        let slept = start.elapsed();
        shared.collect(deferred);
        Ok(slept)
    }

    /// The interleaving of the docs' last paragraph, played step by step: a handle flags work,
    /// the loop collects it, and only then does the handle's wake-up land.
    #[test]
    fn a_late_notification_does_not_swallow_later_wake_ups() -> io::Result<()> {
        let shared = Arc::new(Shared::new(Poller::new()?));
        let mut events = Events::with_capacity(8);
        let mut deferred = VecDeque::new();

        // The handle pushes, flips `pending`, and is preempted before its write.
        shared.queue.lock().unwrap().push(Box::new(|_| {}));
        assert!(!shared.pending.swap(true, Ordering::SeqCst));
        turn(&shared, &mut events, &mut deferred, Duration::from_secs(5))?;
        assert_eq!(deferred.len(), 1);
        shared.poller.wake()?; // the preempted handle resumes

        // The loop wakes for it once, with nothing to collect.
        assert!(!shared.is_pending());
        turn(&shared, &mut events, &mut deferred, Duration::from_secs(5))?;
        assert_eq!(
            events.iter().map(|(key, _)| key).collect::<Vec<_>>(),
            [WAKE_KEY]
        );
        assert_eq!(deferred.len(), 1);
        // Reported once: the next wait sleeps its timeout rather than spin on the stale wake-up.
        let slept = turn(
            &shared,
            &mut events,
            &mut deferred,
            Duration::from_millis(20),
        )?;
        assert!(slept >= Duration::from_millis(20), "woke after {slept:?}");

        // The loop goes to sleep; a later handle call must still wake it.
        let handle = Handle::new(Arc::clone(&shared));
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            handle.call_soon(|_| {})
        });
        let slept = turn(&shared, &mut events, &mut deferred, Duration::from_secs(3))?;
        sender.join().unwrap()?;
        assert!(
            slept < Duration::from_secs(2),
            "the wake-up was lost: slept {slept:?}"
        );
        assert_eq!(deferred.len(), 2);
        Ok(())
    }

    /// Calls made while a wake-up is already pending write nothing, and the one wake-up
    /// delivers them all.
    #[test]
    fn calls_made_while_a_wake_up_is_pending_ride_on_it() -> io::Result<()> {
        let shared = Arc::new(Shared::new(Poller::new()?));
        let handle = Handle::new(Arc::clone(&shared));
        let mut events = Events::with_capacity(8);
        let mut deferred = VecDeque::new();
        for _ in 0..3 {
            handle.call_soon(|_| {})?;
        }
        // One wait delivers all three; then the loop sleeps again.
        shared
            .poller
            .wait(&mut events, Some(Duration::from_secs(5)))?;
        assert_eq!(
            events.iter().map(|(key, _)| key).collect::<Vec<_>>(),
            [WAKE_KEY]
        );
        shared.collect(&mut deferred);
        assert_eq!(deferred.len(), 3);
        let slept = turn(
            &shared,
            &mut events,
            &mut deferred,
            Duration::from_millis(20),
        )?;
        assert!(slept >= Duration::from_millis(20), "woke after {slept:?}");
        Ok(())
    }
}
