//! The loop: wait, then dispatch I/O, fire due timers, run deferred calls.

use std::io;
use std::time::{Duration, Instant};

use crate::registry::Registry;
use crate::selector::Selector;

impl Selector {
    /// Runs until [`stop`](Registry::stop) is called (from a callback, or through a
    /// [`Handle`](crate::Handle)), or until nothing is left to wait for: no registrations, no
    /// timers, no deferred calls and no live handles.
    ///
    /// # Errors
    ///
    /// Only the OS's errors from waiting, which mean the selector itself is broken. A callback's
    /// error does not end the loop: see [`Registry::set_error_handler`].
    ///
    /// # Panics
    ///
    /// A panic in a callback unwinds out of `run`. The panicking registration (or repeating
    /// timer) is removed first, so the selector is consistent and `run` can be called again.
    pub fn run(&mut self) -> io::Result<()> {
        loop {
            if self.is_idle() {
                return Ok(());
            }
            self.turn(None)?;
            if std::mem::take(&mut self.stop_requested) {
                return Ok(());
            }
        }
    }

    /// One iteration: waits up to `timeout` (`None`: until something happens) for I/O or the
    /// next timer, then runs, in order,
    /// 1. the callbacks of the sources found ready,
    /// 2. the timers that are due,
    /// 3. the calls queued (by [`call_soon`](Registry::call_soon) or a handle) before this
    ///    iteration's callbacks started.
    ///
    /// Work queued during the iteration waits for the next one. The wait does not block if calls
    /// are already queued, and never ends early because of a signal. A zero timeout polls: ready
    /// sources are still dispatched. Returns how many callbacks ran.
    ///
    /// # Errors
    ///
    /// As for [`run`](Selector::run).
    ///
    /// # Panics
    ///
    /// As for [`run`](Selector::run).
    ///
    /// # Examples
    ///
    /// Driving the loop from code that has other work between iterations:
    ///
    /// ```
    /// use selreactor::Selector;
    /// use std::cell::Cell;
    /// use std::rc::Rc;
    /// use std::time::Duration;
    ///
    /// let mut sel = Selector::new()?;
    /// let done = Rc::new(Cell::new(false));
    /// let flag = Rc::clone(&done);
    /// sel.call_later(Duration::from_millis(30), move |_| flag.set(true));
    /// while !done.get() {
    ///     // ... other work ...
    ///     sel.run_once(Some(Duration::from_millis(10)))?; // at most 10 ms
    /// }
    /// assert_eq!(sel.run_once(Some(Duration::ZERO))?, 0); // a poll: nothing was ready
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn run_once(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        self.turn(timeout)
    }

    /// The body of [`run_once`](Selector::run_once), inlined into `run`'s loop so that a
    /// turn costs no call of its own.
    #[inline(always)]
    fn turn(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let (registry, events) = self.parts();
        let wait = wait_timeout(registry, timeout);
        registry.shared.poller.wait(events, wait)?;
        if registry.shared.collect(events, &mut registry.deferred)? {
            registry.stop_requested = true;
        }
        let calls_due = registry.deferred.len();
        let timers_due = registry.timer_cutoff();

        let mut ran = 0;
        for (key, readiness) in events.iter() {
            ran += usize::from(registry.dispatch(key, readiness));
        }
        if !registry.timers.is_empty() {
            ran += registry.fire_timers(Instant::now(), timers_due);
        }
        for _ in 0..calls_due {
            let Some(call) = registry.deferred.pop_front() else {
                break;
            };
            call(registry);
            ran += 1;
        }
        Ok(ran)
    }
}

/// The caller's timeout, shortened to the next timer, and zero if work is already waiting or
/// a stop is pending (the iteration that honours it must not block).
#[inline]
fn wait_timeout(registry: &mut Registry, timeout: Option<Duration>) -> Option<Duration> {
    if registry.stop_requested || registry.has_pending_calls() || registry.shared.is_pending() {
        return Some(Duration::ZERO);
    }
    if registry.timers.is_empty() {
        return timeout;
    }
    match registry.timers.next_deadline() {
        None => timeout,
        Some(deadline) => {
            let until = deadline.saturating_duration_since(Instant::now());
            Some(timeout.map_or(until, |t| t.min(until)))
        }
    }
}
