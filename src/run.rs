//! The loop: wait, then dispatch I/O, fire due timers, run deferred calls.

use std::cell::Cell;
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
        let _running = Running::enter();
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
    ///    iteration's callbacks started,
    /// 4. the tasks woken before this step started (with the `async` feature), so a task woken
    ///    by this iteration's I/O, timers or calls runs in the same iteration.
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
        let _running = Running::enter();
        self.turn(timeout)
    }

    /// The body of [`run_once`](Selector::run_once), inlined into `run`'s loop so that a
    /// turn costs no call of its own.
    #[inline(always)]
    fn turn(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let (registry, events) = self.parts();
        let wait = wait_timeout(registry, timeout);
        registry.shared.poller.wait(events, wait)?;
        if registry.shared.collect(&mut registry.deferred) {
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
        #[cfg(feature = "async")]
        if registry.has_ready_tasks() {
            ran += registry.run_tasks();
        }
        Ok(ran)
    }
}

/// The caller's timeout, shortened to the next timer, and zero if work is already waiting or
/// a stop is pending (the iteration that honours it must not block).
#[inline]
fn wait_timeout(registry: &mut Registry, timeout: Option<Duration>) -> Option<Duration> {
    if registry.stop_requested
        || registry.has_pending_calls()
        || registry.shared.is_pending()
        || registry.has_ready_tasks()
    {
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

thread_local! {
    /// How many loops (`run`, `run_once`, `block_on`) are running on this thread.
    static LOOPS_RUNNING: Cell<u32> = const { Cell::new(0) };
}

/// Marks a loop as running on this thread while it lives.
pub(crate) struct Running(());

impl Running {
    pub(crate) fn enter() -> Running {
        LOOPS_RUNNING.set(LOOPS_RUNNING.get() + 1);
        Running(())
    }

    /// Whether a loop is running on this thread: code running now is inside its callbacks or
    /// tasks, and must not block the thread on another loop.
    #[cfg_attr(not(feature = "async"), allow(dead_code))]
    pub(crate) fn on_this_thread() -> bool {
        LOOPS_RUNNING.get() != 0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        LOOPS_RUNNING.set(LOOPS_RUNNING.get() - 1);
    }
}
